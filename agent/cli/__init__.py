"""The typer CLI, one module per command group. Importing the package registers every command
on `app`; `main` is the `kernelwright` entry point. This layer and agent/runtime.py (what the
commands share: options, the store, the evaluator, the run guard) read settings and print; the loop
and the outputs take their configuration as arguments."""
from __future__ import annotations

from agent.cli import (
    batch,
    device,
    e2e,
    evaluate,
    imports,
    optimize,
    review,
    sandbox,
)
from agent.cli.typer_app import app

__all__ = ["app", "batch", "device", "e2e", "evaluate", "imports", "main", "optimize", "review", "sandbox"]


def main() -> None:
    app()
