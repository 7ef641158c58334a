"""A task is a KernelBench file, unchanged: `Model`, `get_inputs()`, `get_init_inputs()`.

Optional metadata sits inside the file as a module-level dict `KERNELWRIGHT = {...}` or beside
it as `<stem>.json`; a plain KernelBench file needs none. Shape variants are overrides of the
file's module-level constants (KernelBench files size their inputs that way).
"""
from __future__ import annotations

import ast
import dataclasses
import hashlib
import importlib.util
import json
import sys
import types
from pathlib import Path
from typing import Any

META_KEYS = {
    "name", "suite", "description", "atol", "rtol", "variants", "input_transforms",
    "seeds", "devices", "flops", "bytes", "input_devices", "compile_reference", "scale",
}


class TaskError(ValueError):
    """The file is not a usable task (one line, meant for the user)."""


@dataclasses.dataclass(frozen=True)
class TaskMeta:
    name: str
    suite: str = ""
    description: str = ""
    atol: float | None = None  # None: the per-dtype default
    rtol: float | None = None
    variants: tuple[dict[str, Any], ...] = ()  # module-constant overrides for extra shapes
    input_transforms: bool = True  # sign-preserving rescaling of float inputs in extra trials
    seeds: tuple[str, ...] = ()  # seed kernels, paths relative to the task file
    devices: tuple[str, ...] = ("cpu", "cuda")
    flops: float | None = None  # per call, for roofline sanity checks, where known
    bytes: float | None = None
    # where each input lives when the task runs on a GPU: "device" (moved there, the
    # KernelBench default), "cpu" (left on the host) or "pinned" (page-locked host memory)
    input_devices: tuple[str, ...] = ()
    compile_reference: bool = True  # also time torch.compile(Model) on GPUs
    scale: float = 1.0  # KernelBench tasks: the factor their size constants were shrunk by (tasks/kernelbench.py)


@dataclasses.dataclass(frozen=True)
class Task:
    path: Path
    source: str
    meta: TaskMeta

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def source_hash(self) -> str:
        return hashlib.sha256(self.source.encode()).hexdigest()

    def seed_paths(self) -> list[Path]:
        return [(self.path.parent / s).resolve() for s in self.meta.seeds]

    def load_module(self) -> types.ModuleType:
        return import_file(self.path, f"kw_task_{self.source_hash[:12]}")


def import_file(path: Path, module_name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise TaskError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look modules up by name
    spec.loader.exec_module(module)
    return module


def _literal_meta(tree: ast.Module) -> dict[str, Any]:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "KERNELWRIGHT" for t in node.targets
        ):
            try:
                value = ast.literal_eval(node.value)
            except ValueError as e:
                raise TaskError(f"KERNELWRIGHT metadata must be a literal dict: {e}") from None
            if not isinstance(value, dict):
                raise TaskError("KERNELWRIGHT metadata must be a dict")
            return value
    return {}


def read_python(p: Path, what: str) -> tuple[str, ast.Module]:
    """A Python file's text and syntax tree, without running it; errors are TaskError with one line."""
    if not p.is_file():
        raise TaskError(f"{what} not found: {p}")
    try:
        source = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise TaskError(f"cannot read {what} {p}: {e}") from None
    try:
        return source, ast.parse(source, filename=str(p))
    except SyntaxError as e:
        raise TaskError(f"{p}:{e.lineno}: syntax error: {e.msg}") from None


def load_task(path: str | Path) -> Task:
    """Parse a task file without running it; errors are TaskError with one line."""
    p = Path(path)
    source, tree = read_python(p, "task file")
    names = {n.name for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))}
    missing = [n for n in ("Model", "get_inputs", "get_init_inputs") if n not in names]
    if missing:
        raise TaskError(f"{p} is not a task: missing {', '.join(missing)}")
    meta = _literal_meta(tree)
    side = p.with_suffix(".json")
    if side.is_file():
        try:
            meta = {**json.loads(side.read_text()), **meta}
        except json.JSONDecodeError as e:
            raise TaskError(f"{side}: invalid JSON: {e}") from None
    unknown = set(meta) - META_KEYS
    if unknown:
        raise TaskError(f"{p}: unknown metadata keys: {', '.join(sorted(unknown))}")
    meta.setdefault("name", p.stem)
    for key in ("variants", "seeds", "devices", "input_devices"):
        if key in meta:
            meta[key] = tuple(meta[key])
    if any(not isinstance(v, dict) for v in meta.get("variants", ())):
        raise TaskError(f"{p}: each variant must be a dict of module-constant overrides")
    if set(meta.get("input_devices", ())) - {"device", "cpu", "pinned"}:
        raise TaskError(f"{p}: input_devices entries must be 'device', 'cpu' or 'pinned'")
    return Task(path=p.resolve(), source=source, meta=TaskMeta(**meta))


def apply_variant(module: types.ModuleType, variant: dict[str, Any] | None) -> dict[str, Any]:
    """Set module constants for a shape variant; returns the old values to restore."""
    old: dict[str, Any] = {}
    for key, value in (variant or {}).items():
        if not hasattr(module, key):
            raise TaskError(f"variant sets {key!r}, which the task does not define")
        old[key] = getattr(module, key)
        setattr(module, key, value)
    return old
