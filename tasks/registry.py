"""Built-in suites: each a folder of task files under tasks/suites/."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tasks.spec import Task, TaskError, load_task

if TYPE_CHECKING:
    from tasks.kernelbench import KernelBenchSelection

SUITES_DIR = Path(__file__).resolve().parent / "suites"


def suites() -> list[str]:
    return sorted(p.name for p in SUITES_DIR.iterdir() if p.is_dir() and not p.name.startswith("_"))


def suite_tasks(name: str) -> list[Task]:
    folder = SUITES_DIR / name
    if not folder.is_dir():
        raise TaskError(f"unknown suite {name!r} (known: {', '.join(suites())}, and kernelbench with --kernelbench DIR)")
    return [load_task(p) for p in sorted(folder.glob("*.py")) if not p.name.startswith("_")]


def resolve(suite: str | None, files: list[str] | None, kernelbench: KernelBenchSelection | None = None,
            cache_dir: Path | None = None) -> list[Task]:
    """Tasks named on a command line: a suite (kernelbench: from a checkout), files, or both."""
    tasks: list[Task] = []
    if suite == "kernelbench":
        from tasks.kernelbench import load_suite

        if kernelbench is None or cache_dir is None:
            raise TaskError("--suite kernelbench needs --kernelbench DIR (a local KernelBench checkout)")
        tasks += load_suite(kernelbench, cache_dir)
    elif suite:
        tasks += suite_tasks(suite)
    for f in files or []:
        tasks.append(load_task(f))
    if not tasks:
        raise TaskError("no tasks: give --suite or --task")
    names = [t.name for t in tasks]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise TaskError(f"two tasks share the name {sorted(dup)[0]!r}")
    return tasks
