"""KernelBench as a suite: the level folders of a local checkout, selected, scaled and varied.

Two layouts are read: the current one (`ROOT/KernelBench/level1/23_Softmax.py`) and v0's, whose
level folders sit at the root (`ROOT/level1/...`); ROOT may also be the `KernelBench` folder. A
problem file is `<id>_<Name>.py`, a task in kernelwright's own format already.

Scaling (`scale` < 1) shrinks the module-level integer constants that size the problem (batch,
features, sequence lengths: any int above SMALL whose name is not structural) to
max(1, round(v * scale)), so a CPU or a small GPU can run level 1-3 at all; kernel sizes,
strides, padding, groups and small axis counts stay. The scale is recorded with the task (its
metadata and a header line in its source, so a scaled task is a different task). Two shape
variants are derived from the same constants (half the size, and an odd size) to catch kernels
hard-coded to the one shape. Each task is written, content-addressed, under a cache folder with
its metadata beside it (tasks/spec.py's `<stem>.json`), and loaded like any task file.
"""
from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import re
from pathlib import Path

from tasks.spec import Task, TaskError, load_task

SMALL = 16  # constants at or below this are structural (axis counts, tiny channel counts)
# (a small `dim = 1` is an axis, a large `dim = 16384` a size: SMALL tells them apart)
STRUCTURAL = re.compile(r"(kernel|stride|padding|pad|dilation|groups|axis|eps|num_layers|heads?$|order)", re.IGNORECASE)
LEVELS = (1, 2, 3, 4)
_FILE = re.compile(r"^(\d+)_(.+)\.py$")


@dataclasses.dataclass(frozen=True)
class KernelBenchSelection:
    root: Path
    levels: tuple[int, ...] = ()  # empty: every level
    task_ids: tuple[int, ...] = ()  # empty: every problem of the chosen levels
    scale: float = 1.0


def layout(root: Path) -> tuple[str, Path]:
    """("current" or "v0", the folder holding level1...); TaskError if neither is there."""
    root = Path(root)

    def has_levels(base: Path) -> bool:
        return any((base / f"level{n}").is_dir() for n in LEVELS)

    if has_levels(root / "KernelBench"):
        return "current", root / "KernelBench"
    if has_levels(root):
        return ("current" if root.name == "KernelBench" else "v0"), root
    raise TaskError(f"{root}: not a KernelBench checkout (looked for KernelBench/level1..4 and level1..4)")


def problems(sel: KernelBenchSelection) -> list[tuple[int, int, Path]]:
    """(level, id, file) of every problem selected, in order."""
    _, base = layout(sel.root)
    found = []
    for level in sel.levels or LEVELS:
        folder = base / f"level{level}"
        if not folder.is_dir():
            if sel.levels:
                raise TaskError(f"{sel.root}: no level {level} (no {folder})")
            continue
        numbered = [(int(m.group(1)), p) for p in folder.glob("*.py") if (m := _FILE.match(p.name))]
        found += [(level, pid, p) for pid, p in sorted(numbered) if not sel.task_ids or pid in sel.task_ids]
    if not found:
        what = f"task ids {', '.join(map(str, sel.task_ids))}" if sel.task_ids else "problems"
        raise TaskError(f"{sel.root}: no {what} in level {', '.join(map(str, sel.levels or LEVELS))}")
    return found


def size_constants(source: str) -> dict[str, int]:
    """The module-level `NAME = <int>` constants that size the problem (see SMALL, STRUCTURAL)."""
    out = {}
    for node in ast.parse(source).body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and isinstance(node.value, ast.Constant) and type(node.value.value) is int):
            name, value = node.targets[0].id, node.value.value
            if value > SMALL and not STRUCTURAL.search(name):
                out[name] = value
    return out


def scaled(source: str, scale: float) -> tuple[str, dict[str, tuple[int, int]]]:
    """The source with its size constants scaled, and what changed (name: (old, new))."""
    if not 0.0 < scale <= 1.0:
        raise TaskError(f"--scale {scale:g}: use a factor in (0, 1]")
    changed = {k: (v, max(1, round(v * scale))) for k, v in size_constants(source).items()}
    changed = {k: vs for k, vs in changed.items() if vs[0] != vs[1]}
    lines = source.splitlines(keepends=True)
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and node.targets[0].id in changed:
            i = node.lineno - 1
            lines[i] = re.sub(r"=\s*\d+", f"= {changed[node.targets[0].id][1]}", lines[i], count=1)
    return "".join(lines), changed


def variants(source: str) -> list[dict[str, int]]:
    """Half the size and an odd size of the size constants (each distinct from the default)."""
    sizes = size_constants(source)
    half = {k: max(1, v // 2) for k, v in sizes.items()}
    odd = {k: (v // 2 + 1) | 1 for k, v in sizes.items()}
    return [v for i, v in enumerate((half, odd)) if v and v != sizes and v not in (half, odd)[:i]]


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def load_suite(sel: KernelBenchSelection, cache_dir: Path) -> list[Task]:
    return [task for _, _, task in load_numbered(sel, cache_dir)]


def load_numbered(sel: KernelBenchSelection, cache_dir: Path) -> list[tuple[int, int, Task]]:
    """(level, problem id, task) of every problem selected, in order."""
    tasks = []
    for level, pid, path in problems(sel):
        try:
            source = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise TaskError(f"cannot read {path}: {e}") from None
        name = f"kb_l{level}_{pid}_{_slug(_FILE.match(path.name).group(2))}"  # type: ignore[union-attr]
        tasks.append((level, pid, task_from_source(source, name, f"KernelBench level {level} problem {pid}",
                                                   sel.scale, cache_dir, path.name, where=str(path))))
    return tasks


def task_from_source(source: str, name: str, what: str, scale: float, cache_dir: Path, filename: str | None = None,
                     suite: str = "kernelbench", where: str | None = None) -> Task:
    """A KernelBench-style task file, scaled and given derived shape variants, written where
    tasks are loaded from (cache_dir/kernelbench/<digest>/, content-addressed) and loaded."""
    try:
        source, changed = scaled(source, scale)
    except SyntaxError as e:
        raise TaskError(f"{where or name}:{e.lineno}: syntax error: {e.msg}") from None
    if changed:
        shown = ", ".join(f"{k} {a}->{b}" for k, (a, b) in changed.items())
        source = f"# kernelwright: {what}, scaled by {scale:g} ({shown})\n" + source
    meta = {"name": _slug(name)[:80] or "task", "suite": suite,
            "description": what + (f", scaled by {scale:g}" if changed else ""),
            "variants": variants(source), "scale": scale if changed else 1.0}
    digest = hashlib.sha256((source + json.dumps(meta, sort_keys=True)).encode()).hexdigest()[:16]
    folder = Path(cache_dir) / "kernelbench" / digest
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / (filename or f"{meta['name']}.py")
    if not target.is_file() or target.read_text() != source:
        target.write_text(source)
        target.with_suffix(".json").write_text(json.dumps(meta))
    return load_task(target)
