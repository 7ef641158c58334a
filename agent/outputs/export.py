"""`kernelwright export`: the best correct kernel per task, written as a pip-installable package.

    <out>/pyproject.toml, README.md
    <out>/<name>/__init__.py       one function per task, with the reference's forward signature
    <out>/<name>/_ops.py           torch.ops.<name>.<task>: custom ops with fake implementations
    <out>/<name>/_dispatch.py      preconditions, kernel-or-reference dispatch; _models.py: models per configuration
    <out>/<name>/_apply.py         apply(model) / restore(model); _patterns.py: what a kernel may replace
    <out>/<name>/_runtime.py       the fast path and its compiler, generated from sandbox/
    <out>/<name>/_prebuilt.py      shipped binaries (--build) and the machine they were built for
    <out>/<name>/kernels/<t>.py    the candidate, importing _runtime instead of kernelwright
    <out>/<name>/references/<t>.py the task file (fallback, fake implementation and self-test)
    <out>/<name>/manifest.json     per task: speedup and spread, fingerprint, evaluation, candidate, source
                                   hash, op schema, shape rules, pattern; the tasks left out and why
    <out>/<name>/selftest.py       python -m <name>.selftest

The files that are the same for every package live in agent/outputs/export_template/ and are copied
verbatim. The package must not import kernelwright, so its runtime is generated from
kernelwright's own sandbox sources at export time (one copy of that code, in the repo, ever).
The package is written into a staging folder beside --out and renamed into place when
complete: a failed export leaves nothing behind.
"""
from __future__ import annotations

import ast
import dataclasses
import datetime as dt
import hashlib
import json
import keyword
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from agent.outputs import export_describe, export_select, export_text
from sandbox import compiler, fastpath
from tasks.spec import Task, TaskError, load_task

KERNELWRIGHT_PACKAGES = {"agent", "sandbox", "evaluator", "tasks", "store"}
# op namespaces torch itself uses: a package of that name would clash in torch.ops
TORCH_NAMESPACES = {"torch", "aten", "prim", "prims", "quantized", "_quantized", "mkldnn", "onednn", "cuda", "inductor",
                    "higher_order", "profiler", "c10d", "_c10d_functional", "fbgemm", "sparse", "_test"}
RESERVED = {"last_path", "last_reason", "path_counts", "kernel_origin", "manifest", "selftest", "kernels", "references",
            "apply", "restore", "op", "Applied", "Replacement"}
TEMPLATE = Path(__file__).with_name("export_template")
TEMPLATE_FILES = ("_dispatch.py", "_models.py", "_ops.py", "_apply.py", "_patterns.py", "_prebuilt.py", "selftest.py")
INIT_SEED = 0  # weights of the exported modules are drawn under this seed
BUILD_TIMEOUT_S = 900


class ExportError(ValueError):
    """Nothing to export, or a kernel that cannot stand alone (one line, for the user)."""


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    out: Path
    name: str = "kw_kernels"
    min_speedup: float | None = None  # None: ship a kernel only when it beats eager by more than its spread
    device: str | None = None  # only kernels measured on this device (cpu or cuda)
    build: bool = False  # compile the kernels now and ship the binaries for this machine
    version: str = "0.1.0"


def export(store: Any, cfg: ExportConfig) -> dict[str, Any]:
    """Write the package; returns its manifest."""
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", cfg.name) or keyword.iskeyword(cfg.name) \
            or cfg.name in KERNELWRIGHT_PACKAGES | TORCH_NAMESPACES:
        raise ExportError(f"--name {cfg.name!r}: use a lower-case Python identifier that is not a kernelwright "
                          "package or torch")
    if cfg.out.exists() and (not cfg.out.is_dir() or any(cfg.out.iterdir())):
        raise ExportError(f"{cfg.out} exists and is not empty")
    # a library ships kernels that compute themselves: only the strict policy's verdicts count
    rows = _newest_per_name(store.best(device=cfg.device, policy="strict"))
    kept, left_out = export_select.choose(store, rows, cfg.min_speedup)
    if not kept:
        raise ExportError(_nothing(rows, left_out, cfg))
    created = [p for p in [cfg.out.parent, *cfg.out.parent.parents] if not p.exists()]
    try:
        cfg.out.parent.mkdir(parents=True, exist_ok=True)
        stage = cfg.out.parent / f".{cfg.out.name}.partial-{os.getpid()}-{os.urandom(4).hex()}"
        stage.mkdir()  # (mkdtemp's folder would keep mode 0700 once renamed into place)
    except OSError as e:
        raise ExportError(f"cannot write {cfg.out}: {e.strerror}") from None
    try:
        manifest = _write(store, cfg, stage, kept, left_out)
        if cfg.build:
            manifest["prebuilt"] = _prebuild(stage, cfg.name)
            (stage / cfg.name / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        (stage / "README.md").write_text(export_text.readme(cfg.name, manifest["tasks"], left_out, _rule(cfg),
                                                            _prebuilt_text(cfg.name, manifest.get("prebuilt"))))
        if cfg.out.exists():
            cfg.out.rmdir()  # empty (checked above): the rename needs the name free
        os.rename(stage, cfg.out)
    except BaseException as e:
        shutil.rmtree(stage, ignore_errors=True)
        for p in created:  # the folders made for --out, innermost first
            try:
                p.rmdir()
            except OSError:
                break
        if isinstance(e, OSError):
            raise ExportError(f"cannot write {cfg.out}: {e.strerror or e}") from None
        raise
    return manifest


def _rule(cfg: ExportConfig) -> str:
    if cfg.min_speedup is not None:
        return f"its speedup over eager was at least {cfg.min_speedup:g} (--min-speedup)"
    return "it was faster than eager by more than its measured spread"


def _nothing(rows: list[dict[str, Any]], left_out: list[dict[str, Any]], cfg: ExportConfig) -> str:
    where = f" measured on {cfg.device}" if cfg.device else ""
    if not rows:
        return f"no correct kernel in the store{where}"
    if cfg.min_speedup is not None:
        return f"no correct kernel in the store with a speedup of at least {cfg.min_speedup:g}{where}"
    worst = "; ".join(f"{e['task']} {e['speedup']:.2f}x" for e in left_out)
    return (f"no kernel in the store{where} is faster than eager by more than its measured spread ({worst}); "
            "--min-speedup X ships kernels of at least X")


def _write(store: Any, cfg: ExportConfig, stage: Path, kept: list[tuple[dict[str, Any], Any]],
           left_out: list[dict[str, Any]]) -> dict[str, Any]:
    pkg = stage / cfg.name
    for sub in ("kernels", "references"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    entries, functions = [], []
    with tempfile.TemporaryDirectory(prefix="kw-export-") as scratch:
        for row, spread in kept:
            cand = store.candidate(row["candidate_id"])
            task = _task(store.task(row["task_id"]), Path(scratch))
            module = _identifier(task.name)
            (pkg / "references" / f"{module}.py").write_text(task.source)
            (pkg / "kernels" / f"{module}.py").write_text(rewrite_imports(cand["source"], task.name))
            entries.append(_entry(task, module, row, cand, store.evaluation(row["evaluation_id"]), spread))
            functions.append(export_text.function(task, module))
    manifest = {"package": cfg.name, "version": cfg.version, "created_at": dt.datetime.now(dt.UTC).isoformat(),
                "rule": _rule(cfg), "tasks": entries, "left_out": left_out, "prebuilt": None}
    (pkg / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    (pkg / "_runtime.py").write_text(runtime_source(cfg.name))
    for name in TEMPLATE_FILES:
        shutil.copyfile(TEMPLATE / name, pkg / name)
    (pkg / "__init__.py").write_text(export_text.init(cfg.name, functions))
    (stage / "pyproject.toml").write_text(export_text.pyproject(cfg.name, cfg.version))
    return manifest


def _prebuild(stage: Path, name: str) -> dict[str, Any]:
    """Build every kernel in the staged package, in a fresh interpreter that imports the package
    as its users will, and keep the binaries it built (with this machine's fingerprint)."""
    with tempfile.TemporaryDirectory(prefix="kw-prebuild-") as cache:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(stage), os.environ.get("PYTHONPATH", "")]),
               f"{name.upper()}_CACHE": cache}
        try:
            r = subprocess.run([sys.executable, "-c", f"import sys, {name}._prebuilt as p; sys.exit(p.main())"],
                               cwd=stage, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise ExportError(f"--build: building the kernels took more than {BUILD_TIMEOUT_S} s") from None
    if r.returncode != 0:
        lines = [ln for ln in (r.stderr or r.stdout).splitlines() if ln.strip()]
        raise ExportError(f"--build: the kernels could not be built here: {lines[-1] if lines else r.returncode}")
    index = json.loads((stage / name / "prebuilt" / "index.json").read_text())
    fingerprints = list({json.dumps(v["fingerprint"]): v["fingerprint"] for v in index["libs"].values()}.values())
    return {"libs": len(index["libs"]), "fingerprints": fingerprints}


def _prebuilt_text(name: str, prebuilt: dict[str, Any] | None) -> str:
    if not prebuilt:
        return (f"Kernels compile on first use (g++, or nvcc for CUDA kernels, must be on PATH) into "
                f"${name.upper()}_CACHE or ~/.cache/{name}; `export --build` ships them prebuilt.")
    machines = "; ".join(", ".join(f"{k} {v}" for k, v in fp.items()) for fp in prebuilt["fingerprints"])
    return (f"The package ships {prebuilt['libs']} prebuilt kernel binaries built for: {machines}. On another "
            "machine each kernel is built on first use instead (a compiler must be on PATH), or the PyTorch "
            "reference runs where that fails; `kernel_origin(task)` says which.")


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
        source = Path(module.__file__ or "").read_text()
        tree = ast.parse(source)
        lines, drop = source.splitlines(keepends=True), set[int]()
        for i, node in enumerate(tree.body):
            docstring = i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            ours = isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in KERNELWRIGHT_PACKAGES
            if isinstance(node, ast.Import) and any(a.name.split(".")[0] in KERNELWRIGHT_PACKAGES for a in node.names):
                raise ExportError(f"{module.__name__} imports kernelwright by `import`: cannot generate the runtime")
            if isinstance(node, ast.ImportFrom) and ours and not {a.name for a in node.names} <= defined:
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
    parts.append(f"""# --- the package's builds: its shipped binaries, else its own cache (never kernelwright's) ---
from . import _prebuilt

origins: list[str] = []  # where each library this process loaded came from (see kernel_origin)


def _package_builder(spec: CompileSpec) -> BuildResult:
    path, note = _prebuilt.find(spec)
    if path is not None:
        origins.append("prebuilt for this machine")
        return BuildResult(True, path, "", 0.0, True, "prebuilt-" + _prebuilt.recipe(spec))
    cache = os.environ.get("{env}") or str(Path.home() / ".cache" / "{package}")
    result = build(spec, CompilerConfig(cache_dir=Path(cache)))
    if result.ok:
        _prebuilt.recorded.append((spec, result))
        origins.append("built here" + (": " + note if note else ""))
    elif note:
        result = dataclasses.replace(result, log=note + "; building it here failed: " + result.log)
    return result


set_builder(_package_builder)

# C++ kernels load into the process's own namespace (plain dlopen), not a private one as in kernelwright's
# workers: so they share PyTorch's OpenMP runtime, where a second runtime's team of threads would spin against
# PyTorch's on the same cores after every parallel region (milliseconds per call with two teams on two cores).
_namespace["none"] = "an exported package shares the process's OpenMP runtime"
""")
    return "\n\n".join(parts)


def _entry(task: Task, module: str, row: dict[str, Any], cand: dict[str, Any], evaluation: dict[str, Any],
           spread: Any) -> dict:
    from evaluator.compare import DEFAULT_TOL, Tolerance

    tol = Tolerance(task.meta.atol, task.meta.rtol)
    tolerances = {str(d).removeprefix("torch."): list(tol.for_dtype(d)) for d in DEFAULT_TOL}
    device = row["device"] or "cpu"
    try:
        described = export_describe.describe(task, device, INIT_SEED, tolerances)
    except Exception as e:  # noqa: BLE001 - task code: anything it raises means the same thing here
        raise TaskError(f"{task.name}: its reference could not be built and run: {type(e).__name__}: {e}") from None
    return {"task": task.name, "function": module, "module": module, "description": task.meta.description,
            "speedup": row["speedup"], "measurements": row.get("measurements"),
            "spread": {"candidate": spread.candidate, "reference": spread.reference, "needed": spread.needed()},
            "candidate_ms": row["candidate_ms"], "reference_ms": row["reference_ms"],
            "peak_fraction": row.get("peak_fraction"), "bound": row.get("bound"),
            "device": device, "fingerprint_id": row["fingerprint_id"], "fingerprint": evaluation["fingerprint"],
            "evaluation_id": row["evaluation_id"], "candidate_id": row["candidate_id"],
            "source_hash": hashlib.sha256(cand["source"].encode()).hexdigest(), "knobs": cand["knobs"],
            **described, "variants": list(task.meta.variants), "init_seed": INIT_SEED, "tolerances": tolerances}
