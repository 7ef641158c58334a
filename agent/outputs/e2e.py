"""`kernelwright e2e`: an exported package applied to a whole model, measured end to end.

A small transformer (agent/outputs/e2e_model.py) is built twice with the same random weights; one copy
gets `<package>.apply`. Both run the same tokens, eagerly and under torch.compile(fullgraph=True):
parity is the largest difference of each output from the untouched model's eager output,
judged against the tolerances of the tasks whose kernels ran; speed is the median of
interleaved timed forwards of the two copies (their interquartile spread beside it).
"""
from __future__ import annotations

import copy
import dataclasses
import importlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from agent.outputs.e2e_model import OUTPUTS, TransformerConfig, build, tokens


class E2EError(ValueError):
    """The package cannot be loaded or applied (one line, for the user)."""


@dataclasses.dataclass(frozen=True)
class E2EConfig:
    model: TransformerConfig = TransformerConfig()
    compiled: bool = True  # also under torch.compile(fullgraph=True)
    repeats: int = 20  # timed forwards of each copy, interleaved
    warmup: int = 3
    device: str = "cpu"
    threads: int | None = None  # torch's (and, sharing its OpenMP runtime, the kernels') threads; None: as set


def load_package(path: Path) -> Any:
    """The exported package in `path` (its project folder, or the package folder itself), imported."""
    path = path.resolve()
    if not path.is_dir():
        raise E2EError(f"{path} is not a directory")
    if (path / "manifest.json").is_file() and (path / "__init__.py").is_file():
        pkg_dir = path
    else:
        found = [p for p in sorted(path.iterdir()) if (p / "manifest.json").is_file() and (p / "__init__.py").is_file()]
        if len(found) != 1:
            raise E2EError(f"{path} is not an exported kernel package (no <name>/manifest.json beside an __init__.py)")
        pkg_dir = found[0]
    try:
        manifest = json.loads((pkg_dir / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise E2EError(f"{pkg_dir / 'manifest.json'}: not a kernel package manifest ({e})") from None
    name = pkg_dir.name
    if manifest.get("package") != name or not isinstance(manifest.get("tasks"), list):
        raise E2EError(f"{pkg_dir / 'manifest.json'} is not the manifest of package {name!r}")
    loaded = sys.modules.get(name)
    if loaded is not None:
        if Path(getattr(loaded, "__file__", "") or "").resolve().parent != pkg_dir:
            where = getattr(loaded, "__file__", "?")
            raise E2EError(f"a different module named {name!r} is already imported ({where})")
        return loaded
    sys.path.insert(0, str(pkg_dir.parent))
    try:
        package = importlib.import_module(name)
    except Exception as e:  # noqa: BLE001 - whatever the package raises on import, the user sees one line
        sys.modules.pop(name, None)
        raise E2EError(f"importing {name} from {pkg_dir.parent} failed: {type(e).__name__}: {e}") from None
    finally:
        sys.path.remove(str(pkg_dir.parent))
    if not callable(getattr(package, "apply", None)):
        raise E2EError(f"{name} has no apply(): it was exported by an older kernelwright; export it again")
    return package


def _parity(got: tuple[torch.Tensor, ...], want: tuple[torch.Tensor, ...], tol: tuple[float, float]) -> dict[str, Any]:
    atol, rtol = tol
    out = {}
    for name, g, w in zip(OUTPUTS, got, want):
        diff = (g.double() - w.double()).abs()
        out[name] = {"max_abs": diff.max().item(), "max_rel": (diff / w.double().abs().clamp_min(atol)).max().item(),
                     "within": bool(torch.allclose(g, w, atol=atol, rtol=rtol))}
    return out


def _tolerance(package: Any, replaced: list[Any], dtype: torch.dtype) -> tuple[float, float]:
    """The loosest tolerance of the tasks that stand in (a whole model is held to what each op is);
    with none, of the package's tasks (torch.compile's own rounding is judged by it too)."""
    key = str(dtype).removeprefix("torch.")
    tasks = package.manifest()["tasks"]
    tols = [e["tolerances"][key] for e in tasks if e["task"] in {r.task for r in replaced}] \
        or [e["tolerances"][key] for e in tasks]
    return max(t[0] for t in tols), max(t[1] for t in tols)


def _time(fns: dict[str, Callable[[], Any]], warmup: int, repeats: int, device: str) -> dict[str, dict[str, float]]:
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)  # a GPU forward ends when its work does
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(repeats):
        for k in (list(fns) if i % 2 == 0 else list(fns)[::-1]):  # alternate the order: drift hits both
            sync()
            t0 = time.perf_counter()
            fns[k]()
            sync()
            samples[k].append((time.perf_counter() - t0) * 1e3)
    out = {}
    for k, ms in samples.items():
        q = statistics.quantiles(ms, n=4) if len(ms) > 1 else [ms[0]] * 3
        out[k] = {"median_ms": statistics.median(ms), "spread_ms": q[2] - q[0]}
    return out


def _counted(package: Any, forward: Callable[[], Any]) -> tuple[Any, dict[str, dict[str, int]]]:
    """One forward, and per task how many of its op calls ran the kernel and how many the reference."""
    before = package.path_counts()
    out = forward()
    after = package.path_counts()
    return out, {task: {path: n - before.get(task, {}).get(path, 0) for path, n in c.items()}
                 for task, c in after.items() if c != before.get(task)}


def run(package: Any, cfg: E2EConfig) -> dict[str, Any]:
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _run(package, cfg)
    finally:
        torch.set_num_threads(threads)


def _run(package: Any, cfg: E2EConfig) -> dict[str, Any]:
    base = build(cfg.model, cfg.device)
    model = copy.deepcopy(base)
    applied = package.apply(model)
    toks = tokens(cfg.model, cfg.device)
    report: dict[str, Any] = {
        "package": package.__name__, "model": dataclasses.asdict(cfg.model), "device": cfg.device,
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "replaced": [dataclasses.asdict(r) for r in applied], "skipped": [list(s) for s in applied.skipped]}
    tol = _tolerance(package, list(applied), getattr(torch, cfg.model.dtype))
    report["tolerance"] = {"atol": tol[0], "rtol": tol[1]}
    with torch.no_grad():
        want = base(toks)
        got, paths = _counted(package, lambda: model(toks))
        report["reasons"] = {r.task: package.last_reason(r.task) for r in applied
                             if package.last_path(r.task) != "kernel"}
        runs: dict[str, Any] = {"eager": {"parity": _parity(got, want, tol), "calls": paths,
                          "timing": _time({"base": lambda: base(toks), "applied": lambda: model(toks)},
                                          cfg.warmup, cfg.repeats, cfg.device)}}
        if cfg.compiled:
            compiled_base = torch.compile(base, fullgraph=True)
            compiled = torch.compile(model, fullgraph=True)
            t0 = time.perf_counter()
            compiled_base(toks)
            compiled(toks)
            if cfg.device == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            got, paths = _counted(package, lambda: compiled(toks))
            runs["compiled"] = {"parity": _parity(got, want, tol), "calls": paths,
                                "base_parity": _parity(compiled_base(toks), want, tol), "compile_s": seconds,
                                "timing": _time({"base": lambda: compiled_base(toks),
                                                 "applied": lambda: compiled(toks)},
                                                cfg.warmup, cfg.repeats, cfg.device)}
    for r in runs.values():
        t = r["timing"]
        r["speedup"] = t["base"]["median_ms"] / t["applied"]["median_ms"]
    report["runs"] = runs
    report["parity_ok"] = all(o["within"] for r in runs.values() for o in r["parity"].values())
    package.restore(model)
    return report
