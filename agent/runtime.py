"""Building the components a command needs from settings and options, in one place."""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import typer

from agent import settings as settings_mod
from agent.runspec import resume_hint
from sandbox.cpus import partition, usable
from sandbox.docker import DockerConfig, DockerSandbox, DockerUnavailable, client_or_raise
from sandbox.image import find_image, latest_tag
from sandbox.process import ProcessSandbox, SandboxConfig
from tasks.spec import TaskError

F = TypeVar("F", bound=Callable[..., Any])


class UserError(Exception):
    """Bad input: shown as one line, exit code 2, nothing written."""


def cli_errors(fn: F) -> F:
    """Turn expected failures into `Error: ...` and exit 2; typer's Exit passes through."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from evaluator.reference import ReferenceFailed
        from store.db import StoreError

        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except (UserError, TaskError, StoreError, ReferenceFailed, ValueError) as e:
            if os.environ.get("KERNELWRIGHT_DEBUG"):  # re-raise under tests and debugging
                raise
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            typer.echo(f"Error: {first}", err=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True)
class Options:
    """What every evaluating command shares, resolved from settings and flags."""

    db: str
    device: str
    timeout_s: float
    cache_dir: Path
    workdir: Path
    memory_bytes: int | None
    threads: int
    isolate: bool
    sandbox: str = "process"  # or "docker"
    image: str | None = None  # the docker sandbox's image
    timing_cpus: tuple[int, ...] = ()  # sandbox/cpus.py; () : timing has the whole machine
    ceilings: str = "measure"  # KERNELWRIGHT_CEILINGS: measure, quick or off (machine_ceilings)


SandboxOpt = typer.Option("process", "--sandbox", help="process (fork server, OS limits) or docker (a container per evaluation)")
ImageOpt = typer.Option(None, "--image", help="Docker image for --sandbox docker [default: the newest kernelwright-sandbox image]")


DEVICES = ("cpu", "cuda")


def check_device(device: str) -> str:
    if device not in DEVICES:
        raise UserError(f"unknown device {device!r} (use {' or '.join(DEVICES)})")
    return device


def options(db: str | None, device: str, timeout: float | None, sandbox: str = "process",
            image: str | None = None) -> Options:
    try:
        s = settings_mod.read()
    except ValueError as e:
        raise UserError(str(e)) from None
    if check_device(device) == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA GPU is visible to torch on this machine")
    t = timeout if timeout is not None else s["timeout"]
    if t <= 0:
        raise UserError("--timeout must be positive")
    if sandbox not in ("process", "docker"):
        raise UserError(f"unknown sandbox {sandbox!r} (use process or docker)")
    if image and sandbox != "docker":
        raise UserError("--image needs --sandbox docker")
    if sandbox == "docker":
        image = _docker_image(image)

    try:
        timing_cpus = partition(s["timing_cpus"], device)
    except ValueError as e:
        raise UserError(f"KERNELWRIGHT_TIMING_CPUS: {e}") from None
    if sandbox == "docker":  # the engine's own work (starting, removing containers) goes on any core
        timing_cpus = ()
    threads = s["threads"] or len(timing_cpus) or (os.cpu_count() or 1)
    return Options(
        db=db or s["db"], device=device, timeout_s=t, cache_dir=Path(s["cache"]).expanduser(),
        workdir=Path(s["workdir"] or Path(tempfile.gettempdir()) / "kernelwright"),
        memory_bytes=int(s["memory_gb"] * (1 << 30)) or None, threads=threads,
        isolate=s["isolate"], sandbox=sandbox, image=image, timing_cpus=timing_cpus, ceilings=s["ceilings"],
    )


def _docker_image(image: str | None) -> str:
    """The image to use, checked now: a missing daemon or image fails before any work."""
    try:
        client = client_or_raise()
    except DockerUnavailable as e:
        raise UserError(f"--sandbox docker: {e}") from None
    if image is None:
        image = latest_tag(client)
        if image is None:
            raise UserError("--sandbox docker: no kernelwright-sandbox image here (run `kernelwright sandbox build-image`)")
    elif find_image(client, image) is None:
        raise UserError(f"--image {image}: no such image here (build one with `kernelwright sandbox build-image`)")
    return image


def machine_ceilings(opts: Options, store: Any = None) -> Any:
    """The ceilings of what evaluations time on (a CPU's timing cores and thread count, or the
    GPU): from the store (opts.db, unless given one), measured and stored when it has none. None
    with KERNELWRIGHT_CEILINGS=off. Call before anything is timed: a measurement wants the
    device to itself (seconds)."""
    if opts.ceilings == "off" or opts.device not in ("cpu", "cuda"):
        return None
    from evaluator import ceilings, gpu_ceilings
    from store.ceilings import load_ceilings, save_ceilings

    quick = opts.ceilings == "quick"
    own = store is None
    store = open_store(opts.db) if own else store
    try:
        try:
            if opts.device == "cuda":
                cores: tuple[int, ...] = ()
                fingerprint_id = gpu_ceilings.fingerprint_id(opts.threads)
            else:
                cores, fingerprint_id = opts.timing_cpus or usable(), ceilings.cpu_fingerprint_id(opts.threads)
            found = load_ceilings(store, fingerprint_id, cores, opts.threads)
            if found is None or (not quick and found.details.get("quick")):  # tests' figures are no ceilings
                if opts.device == "cuda":
                    found = gpu_ceilings.measure(opts.threads, opts.cache_dir, quick)
                else:
                    found = ceilings.measure(cores, opts.threads, fingerprint_id=fingerprint_id, cache_dir=opts.cache_dir,
                                             sizes=ceilings.Sizes.tiny() if quick else ceilings.Sizes())
                save_ceilings(store, found)
        except ceilings.CeilingError as e:
            raise UserError(f"measuring this machine's ceilings: {e} (KERNELWRIGHT_CEILINGS=off goes without)") from None
        return found
    finally:
        if own:
            store.close()


def sandbox_config(opts: Options) -> SandboxConfig:
    return SandboxConfig(cache_dir=opts.cache_dir, root=opts.workdir, memory_bytes=opts.memory_bytes,
                         threads=opts.threads, isolate=opts.isolate, device=opts.device, timing_cpus=opts.timing_cpus)


@contextlib.contextmanager
def evaluator(opts: Options, store: Any = None, **eval_kw: Any) -> Iterator[Any]:
    """The evaluator of these options in its sandbox; the machine's ceilings from `store` (one is
    opened for them when it is None) unless given."""
    from evaluator.cascade import EvalConfig, Evaluator

    if "ceilings" not in eval_kw:
        eval_kw["ceilings"] = machine_ceilings(opts, store)  # before the sandbox starts anything
    sb_cfg = sandbox_config(opts)
    if opts.sandbox == "docker":
        try:
            sandbox: Any = DockerSandbox(sb_cfg, DockerConfig(image=str(opts.image)))
        except DockerUnavailable as e:
            raise UserError(f"--sandbox docker: {e}") from None
    else:
        sandbox = ProcessSandbox(sb_cfg)
    with sandbox as sb:
        ev = Evaluator(sb, EvalConfig(device=opts.device, timeout_s=opts.timeout_s, **eval_kw))
        if opts.sandbox == "docker":
            sb.device_lock = ev.device_lock  # container warm-ups never overlap a timing phase
        try:
            yield ev
        finally:
            ev.close()


@contextlib.contextmanager
def run_guard(store: Any, run_id: int, command: str, db: str | None) -> Iterator[None]:
    """A stored run's ending: Ctrl-C marks it interrupted and says how to resume (exit 130); any
    other escape marks it failed and goes on up. A normal exit leaves the status to the caller."""
    try:
        yield
    except KeyboardInterrupt:
        store.finish_run(run_id, "interrupted")
        typer.echo(f"Interrupted. Resume with: {resume_hint(command, run_id, db)}", err=True)
        raise typer.Exit(130) from None
    except BaseException:
        store.finish_run(run_id, "failed")
        raise


def open_store(db: str) -> Any:
    from store.api import Store
    from store.db import open_engine

    return Store(open_engine(db, Path("kernelwright.db")))
