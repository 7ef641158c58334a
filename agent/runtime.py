"""Building the components a command needs from settings and options, in one place."""
from __future__ import annotations

import contextlib
import os
import dataclasses
import functools
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import typer

from agent import settings as settings_mod

F = TypeVar("F", bound=Callable[..., Any])


class UserError(Exception):
    """Bad input: shown as one line, exit code 2, nothing written."""


def cli_errors(fn: F) -> F:
    """Turn expected failures into `Error: ...` and exit 2; typer's Exit passes through."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from evaluator.reference import ReferenceFailed
        from store.db import StoreError
        from tasks.spec import TaskError

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


def options(db: str | None, device: str, timeout: float | None) -> Options:
    try:
        s = settings_mod.read()
    except ValueError as e:
        raise UserError(str(e)) from None
    if device not in ("cpu", "cuda"):
        raise UserError(f"unknown device {device!r} (use cpu or cuda)")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA GPU is visible to torch on this machine")
    t = timeout if timeout is not None else s["timeout"]
    if t <= 0:
        raise UserError("--timeout must be positive")
    return Options(
        db=db or s["db"], device=device, timeout_s=t, cache_dir=Path(s["cache"]).expanduser(),
        workdir=Path(s["workdir"] or Path(tempfile.gettempdir()) / "kernelwright"),
        memory_bytes=int(s["memory_gb"] * (1 << 30)) or None, threads=s["threads"] or (os.cpu_count() or 1),
        isolate=s["isolate"],
    )


@contextlib.contextmanager
def evaluator(opts: Options, **eval_kw: Any) -> Iterator[Any]:
    from evaluator.cascade import EvalConfig, Evaluator
    from sandbox.process import ProcessSandbox, SandboxConfig

    sb_cfg = SandboxConfig(cache_dir=opts.cache_dir, root=opts.workdir, memory_bytes=opts.memory_bytes,
                           threads=opts.threads, isolate=opts.isolate, device=opts.device)
    with ProcessSandbox(sb_cfg) as sb:
        ev = Evaluator(sb, EvalConfig(device=opts.device, timeout_s=opts.timeout_s, **eval_kw))
        try:
            yield ev
        finally:
            ev.close()


def open_store(db: str) -> Any:
    from store.api import Store
    from store.db import open_engine

    return Store(open_engine(db, Path("kernelwright.db")))
