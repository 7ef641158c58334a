"""`kernelwright export`: the best correct kernel per task, written as a pip-installable package.

    <out>/pyproject.toml, README.md
    <out>/<name>/__init__.py       one function per task, with the reference's forward signature
    <out>/<name>/_dispatch.py      preconditions, kernel-or-reference dispatch (agent/export_support.py)
    <out>/<name>/_runtime.py       the fast path and its compiler, generated from sandbox/
    <out>/<name>/kernels/<t>.py    the candidate, importing _runtime instead of kernelwright
    <out>/<name>/references/<t>.py the task file (fallback and self-test)
    <out>/<name>/manifest.json     task, speedup, peak fraction, fingerprint, evaluation, candidate, source hash
    <out>/<name>/selftest.py       python -m <name>.selftest

The package must not import kernelwright, so its runtime is generated from kernelwright's own
sandbox sources at export time (one copy of that code, in the repo, ever).
"""
from __future__ import annotations

import ast
import dataclasses
import datetime as dt
import hashlib
import json
import keyword
import re
import tempfile
from pathlib import Path
from typing import Any

from agent import export_support
from sandbox import compiler, fastpath
from tasks.spec import Task, TaskError, import_file, load_task

KERNELWRIGHT_PACKAGES = {"agent", "sandbox", "evaluator", "tasks", "store"}
RESERVED = {"last_path", "last_reason", "manifest", "selftest", "kernels", "references"}
INIT_SEED = 0  # weights of the exported modules are drawn under this seed


class ExportError(ValueError):
    """Nothing to export, or a kernel that cannot stand alone (one line, for the user)."""


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    out: Path
    name: str = "kw_kernels"
    min_speedup: float | None = None
    device: str | None = None  # only kernels measured on this device (cpu or cuda)
    version: str = "0.1.0"


def export(store: Any, cfg: ExportConfig) -> dict[str, Any]:
    """Write the package; returns its manifest."""
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", cfg.name) or keyword.iskeyword(cfg.name) \
            or cfg.name in KERNELWRIGHT_PACKAGES | {"torch"}:
        raise ExportError(f"--name {cfg.name!r}: use a lower-case Python identifier that is not a kernelwright "
                          "package or torch")
    if cfg.out.exists() and any(cfg.out.iterdir()):
        raise ExportError(f"{cfg.out} exists and is not empty")
    rows = _newest_per_name([r for r in store.best(device=cfg.device)
                             if cfg.min_speedup is None or r["speedup"] >= cfg.min_speedup])
    if not rows:
        raise ExportError("no correct kernel in the store" + (f" with a speedup of at least {cfg.min_speedup:g}"
                                                               if cfg.min_speedup is not None else "")
                          + (f" measured on {cfg.device}" if cfg.device else ""))
    pkg = cfg.out / cfg.name
    for sub in ("kernels", "references"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    entries, functions = [], []
    with tempfile.TemporaryDirectory(prefix="kw-export-") as scratch:
        for row in rows:
            cand = store.candidate(row["candidate_id"])
            task = _task(store.task(row["task_id"]), Path(scratch))
            module = _identifier(task.name)
            (pkg / "references" / f"{module}.py").write_text(task.source)
            (pkg / "kernels" / f"{module}.py").write_text(rewrite_imports(cand["source"], task.name))
            entries.append(_entry(task, module, row, cand, store.evaluation(row["evaluation_id"])))
            functions.append(_function(task, module))
    manifest = {"package": cfg.name, "version": cfg.version, "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
                "tasks": entries}
    (pkg / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    (pkg / "_runtime.py").write_text(runtime_source(cfg.name))
    (pkg / "_dispatch.py").write_text(Path(export_support.__file__).read_text())
    (pkg / "__init__.py").write_text(_init(cfg.name, functions))
    (pkg / "selftest.py").write_text(f'"""Every kernel of {cfg.name} against its PyTorch reference; exit 1 on any '
                                     'failure."""\nimport sys\n\nfrom ._dispatch import selftest\n\n'
                                     'if __name__ == "__main__":\n    sys.exit(selftest())\n')
    (cfg.out / "pyproject.toml").write_text(_pyproject(cfg))
    (cfg.out / "README.md").write_text(_readme(cfg.name, entries))
    return manifest


def _newest_per_name(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per task name: an edited task file is a new task, and the newest one is what users run."""
    by_name: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["task"] not in by_name or r["task_id"] > by_name[r["task"]]["task_id"]:
            by_name[r["task"]] = r
    return sorted(by_name.values(), key=lambda r: r["task"])


def _identifier(name: str) -> str:
    ident = re.sub(r"\W", "_", name).lower()
    if not ident or ident[0].isdigit():
        ident = "k_" + ident
    return ident + "_kernel" if keyword.iskeyword(ident) or ident in RESERVED else ident


def _task(row: dict[str, Any], scratch: Path) -> Task:
    """The task as stored; read from its file (metadata may sit beside it) while that holds the same source."""
    path = Path(row["path"] or "")
    if path.is_file() and path.read_text(errors="replace") == row["source"]:
        return load_task(path)
    path = scratch / f"{_identifier(row['name'])}_{row['id']}.py"
    path.write_text(row["source"])
    task = load_task(path)
    return dataclasses.replace(task, meta=dataclasses.replace(task.meta, name=row["name"]))


def rewrite_imports(source: str, task: str) -> str:
    """The candidate with `from sandbox import fastpath` (and its variants) pointing at the
    package's runtime; any other import of kernelwright cannot be exported."""
    tree = ast.parse(source)
    edits: list[tuple[ast.stmt, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            root = node.module.split(".")[0]
            if root not in KERNELWRIGHT_PACKAGES:
                continue
            if node.module == "sandbox" and [a.name for a in node.names] == ["fastpath"]:
                edits.append((node, f"from .. import _runtime as {node.names[0].asname or 'fastpath'}"))
            elif node.module == "sandbox.fastpath":
                names = ", ".join(a.name + (f" as {a.asname}" if a.asname else "") for a in node.names)
                edits.append((node, f"from .._runtime import {names}"))
            else:
                raise ExportError(f"{task}: the kernel imports {node.module}, which an exported package lacks")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] not in KERNELWRIGHT_PACKAGES:
                    continue
                if a.name != "sandbox.fastpath" or a.asname is None or len(node.names) > 1:
                    raise ExportError(f"{task}: `import {a.name}` cannot be exported "
                                      "(use `from sandbox import fastpath`)")
                edits.append((node, f"from .. import _runtime as {a.asname}"))
    lines = source.splitlines(keepends=True)
    for node, text in sorted(edits, key=lambda e: (e[0].lineno, e[0].col_offset), reverse=True):
        start, end = node.lineno - 1, (node.end_lineno or node.lineno) - 1
        head, tail = lines[start][:node.col_offset], lines[end][node.end_col_offset or 0:]
        lines[start:end + 1] = [head + text + tail]
    return "".join(lines)


def runtime_source(package: str) -> str:
    """sandbox/compiler.py then sandbox/fastpath.py as one module, with imports between them dropped and
    the compile cache moved to ~/.cache/<package> (or $<PACKAGE>_CACHE)."""
    parts = [f'"""{package}\'s kernel runtime: generated by kernelwright export from its sandbox/compiler.py and '
             'sandbox/fastpath.py.\n\nCompiles each kernel source once into a plain shared library, cached by content '
             f'hash under\n$' f'{package.upper()}_CACHE or ~/.cache/{package}, and calls it with tensors.\n"""',
             "from __future__ import annotations\n"]
    defined: set[str] = set()
    for module in (compiler, fastpath):
        source = Path(module.__file__).read_text()
        tree = ast.parse(source)
        lines, drop = source.splitlines(keepends=True), set()
        for i, node in enumerate(tree.body):
            docstring = i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            ours = isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in KERNELWRIGHT_PACKAGES
            if isinstance(node, ast.Import) and any(a.name.split(".")[0] in KERNELWRIGHT_PACKAGES for a in node.names):
                raise ExportError(f"{module.__name__} imports kernelwright by `import`: cannot generate the runtime")
            if ours and not {a.name for a in node.names} <= defined:
                raise ExportError(f"{module.__name__} needs {node.module}, which the runtime does not include")
            if docstring or ours or (isinstance(node, ast.ImportFrom) and node.module == "__future__"):
                drop.update(range(node.lineno - 1, node.end_lineno or node.lineno))
            elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                defined.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                defined.update(t.id for t in targets if isinstance(t, ast.Name))
        parts.append(f"# --- from kernelwright's {module.__name__} ---\n"
                     + "".join(line for i, line in enumerate(lines) if i not in drop).strip("\n") + "\n")
    env = package.upper() + "_CACHE"
    parts.append(f"""# --- the package's compile cache (its own, never kernelwright's) ---
def _package_builder(spec: CompileSpec) -> BuildResult:
    cache = os.environ.get("{env}") or str(Path.home() / ".cache" / "{package}")
    return build(spec, CompilerConfig(cache_dir=Path(cache)))


set_builder(_package_builder)
""")
    return "\n\n".join(parts)


def _input_specs(task: Task, device: str) -> list[dict[str, Any]]:
    """What each input was when the evaluator checked the kernel: made by the task's get_inputs()."""
    import torch

    module = import_file(task.path, f"kw_export_{task.source_hash[:12]}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        args = list(module.get_inputs())
    specs = []
    for i, a in enumerate(args):
        if not isinstance(a, torch.Tensor):
            specs.append({"kind": "value", "type": type(a).__name__})
            continue
        where = task.meta.input_devices[i] if i < len(task.meta.input_devices) else "device"
        on = device if where == "device" else "cpu"
        specs.append({"kind": "tensor", "dtype": str(a.dtype).removeprefix("torch."), "ndim": a.dim(),
                      "device": on, "pinned": device == "cuda" and where == "pinned"})
    return specs


def _entry(task: Task, module: str, row: dict[str, Any], cand: dict[str, Any], evaluation: dict[str, Any]) -> dict:
    from evaluator.compare import DEFAULT_TOL, Tolerance

    tol = Tolerance(task.meta.atol, task.meta.rtol)
    device = row["device"] or "cpu"
    try:
        inputs = _input_specs(task, device)
    except Exception as e:  # noqa: BLE001 - task code: anything it raises means the same thing here
        raise TaskError(f"{task.name}: get_inputs() failed: {type(e).__name__}: {e}") from None
    return {"task": task.name, "function": module, "module": module, "description": task.meta.description,
            "speedup": row["speedup"], "candidate_ms": row["candidate_ms"], "reference_ms": row["reference_ms"],
            "peak_fraction": row.get("peak_fraction"), "bound": row.get("bound"),
            "device": device, "fingerprint_id": row["fingerprint_id"], "fingerprint": evaluation["fingerprint"],
            "evaluation_id": row["evaluation_id"], "candidate_id": row["candidate_id"],
            "source_hash": hashlib.sha256(cand["source"].encode()).hexdigest(), "knobs": cand["knobs"],
            "inputs": inputs, "variants": list(task.meta.variants), "init_seed": INIT_SEED,
            "tolerances": {str(d).removeprefix("torch."): list(tol.for_dtype(d)) for d in DEFAULT_TOL}}


def _function(task: Task, name: str) -> str:
    """`def <name>(<forward's parameters>)`, calling the dispatcher with them."""
    tree = ast.parse(task.source)
    model = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Model")
    forward = next((n for n in model.body if isinstance(n, ast.FunctionDef) and n.name == "forward"), None)
    if forward is None or not all(isinstance(d, ast.Constant) for d in [*forward.args.defaults,
                                                                          *filter(None, forward.args.kw_defaults)]):
        params, call = "*args, **kwargs", "*args, **kwargs"  # defaults that name module constants stay with Model
    else:
        a = forward.args
        if a.posonlyargs:  # drop self
            a.posonlyargs = a.posonlyargs[1:]
        else:
            a.args = a.args[1:]
        params = ast.unparse(a)
        call = ", ".join([p.arg for p in [*a.posonlyargs, *a.args]] + ([f"*{a.vararg.arg}"] if a.vararg else [])
                         + [f"{k.arg}={k.arg}" for k in a.kwonlyargs] + ([f"**{a.kwarg.arg}"] if a.kwarg else []))
    returns = f" -> {ast.unparse(forward.returns)}" if forward is not None and forward.returns else ""
    doc = (task.meta.description or f"The {task.name} task.").replace('"""', "'''")
    return (f'def {name}({params}){returns}:\n    """{doc}\n\n    The exported kernel when the inputs fit it, else the '
            f'PyTorch reference: see last_path({task.name!r})."""\n    return _call({task.name!r}, {call})\n')


def _init(package: str, functions: list[str]) -> str:
    names = [f.split("(", 1)[0].removeprefix("def ") for f in functions]
    return (f'"""Kernels exported by kernelwright: one function per task (see manifest.json).\n\n    import {package}\n'
            f'    y = {package}.{names[0]}(...)\n    {package}.last_path("{names[0]}")  # "kernel" or "reference"\n\n'
            f'${package.upper()}_FORCE_REFERENCE=1 runs every reference; '
            f'${package.upper()}_CACHE holds the builds.\n"""\n'
            "from __future__ import annotations\n\nfrom ._dispatch import call as _call\n"
            "from ._dispatch import last_path, last_reason, manifest\n\n"
            f"__all__ = {[*names, 'last_path', 'last_reason', 'manifest']!r}\n\n\n" + "\n\n".join(functions))


def _pyproject(cfg: ExportConfig) -> str:
    return f"""[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "{cfg.name}"
version = "{cfg.version}"
description = "Kernels exported by kernelwright, each checked against its PyTorch reference"
requires-python = ">=3.10"
dependencies = ["torch"]

[tool.setuptools]
packages = ["{cfg.name}", "{cfg.name}.kernels", "{cfg.name}.references"]

[tool.setuptools.package-data]
"{cfg.name}" = ["manifest.json"]
"""


def _readme(package: str, entries: list[dict[str, Any]]) -> str:
    rows = "\n".join(f"| `{package}.{e['function']}` | {e['speedup']:.2f}x | {e['device']} | {e['fingerprint_id']} "
                     f"| {e['candidate_id']} |" for e in entries)
    return f"""# {package}

Kernels exported by kernelwright: for each task, the fastest kernel that passed its evaluation.
A function runs the kernel when its inputs match those it was checked with (dtype, rank, device,
contiguous), and the PyTorch reference otherwise; `{package}.last_path(task)` says which ran.
Kernels compile on first use (g++ or nvcc must be on PATH) into ~/.cache/{package}.

| function | speedup | device | fingerprint | candidate |
|---|---|---|---|---|
{rows}

Check this machine: `python -m {package}.selftest`.
"""
