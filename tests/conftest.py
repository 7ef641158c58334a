"""Shared fixtures: one real fork-server sandbox and evaluator per test session.

Timing is cut short (few iterations) so the suite stays fast; every check still runs.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from evaluator.cascade import EvalConfig, Evaluator, TimingConfig
from evaluator.ceilings import Ceilings, Sizes, measure
from sandbox.process import ProcessSandbox, SandboxConfig
from tasks.spec import load_task

ROOT = Path(__file__).resolve().parent.parent
CPU_SUITE = ROOT / "tasks" / "suites" / "cpu"
FAST_TIMING = TimingConfig(warmup=2, min_iters=5, target_s=0.05, round_ms=5.0, min_rounds=3)
# CLI commands the tests run measure the machine's ceilings with tiny sizes (well under a second)
os.environ.setdefault("KERNELWRIGHT_CEILINGS", "quick")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("jit-cache")


@pytest.fixture(scope="session")
def sandbox(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    sb = ProcessSandbox(SandboxConfig(cache_dir=cache_dir, root=tmp_path_factory.mktemp("sandbox"),
                                      memory_bytes=4 << 30))
    yield sb
    sb.close()


@pytest.fixture(scope="session")
def ceilings(sandbox: ProcessSandbox, cache_dir: Path) -> Ceilings:
    """The session sandbox's ceilings, measured with tiny sizes: their working sets sit in cache,
    so they come out high rather than low (the physical-bound gate errs on the safe side)."""
    return measure(sorted(os.sched_getaffinity(0)), sandbox.cfg.threads, sizes=Sizes.tiny(), cache_dir=cache_dir)


@pytest.fixture(scope="session")
def evaluator(sandbox: ProcessSandbox, ceilings: Ceilings):
    ev = Evaluator(sandbox, EvalConfig(timeout_s=60, timing=FAST_TIMING, ceilings=ceilings))
    yield ev
    ev.close()


@pytest.fixture(scope="session")
def softmax_task():
    return load_task(CPU_SUITE / "softmax.py")


@pytest.fixture(scope="session")
def small_task():
    return load_task(Path(__file__).resolve().parent / "data" / "softmax_small.py")


@pytest.fixture(scope="session")
def loose_evaluator(sandbox: ProcessSandbox):
    """Static screen off: proves the sandbox and run-time checks hold on their own."""
    from evaluator.rules import Policy

    ev = Evaluator(sandbox, EvalConfig(timeout_s=8, timing=FAST_TIMING, policy=Policy(static_screen=False)))
    yield ev
    ev.close()


@pytest.fixture(scope="session")
def docker_image() -> str:
    """The sandbox image, built once per session (reused when the environment is unchanged);
    skips where no docker daemon answers (scripts/start_docker.sh starts one, as root)."""
    from sandbox.docker import DockerUnavailable, client_or_raise
    from sandbox.image import build_image

    try:
        client = client_or_raise()
    except DockerUnavailable as e:
        pytest.skip(f"{e}: as root, scripts/start_docker.sh starts one")
    return build_image(client).tag


# what a supervisor's environment may hold; none of it may reach a container (tests/sandbox/test_docker.py)
SECRETS = {"OPENAI_API_KEY": "sk-kwtest-secret", "MY_SERVICE_TOKEN": "tok-kwtest-secret", "DB_PASSWORD": "pw-kwtest-secret"}


@pytest.fixture(scope="session")
def docker_sandbox(docker_image: str, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """One docker sandbox per session, on the process sandbox's cache, with secrets in its environment."""
    from sandbox.docker import DockerConfig, DockerSandbox

    cfg = SandboxConfig(cache_dir=cache_dir, root=tmp_path_factory.mktemp("docker"), memory_bytes=2 << 30, max_pids=512)
    sb = DockerSandbox(cfg, DockerConfig(image=docker_image), parent_env=dict(os.environ, **SECRETS))
    yield sb
    sb.close()
