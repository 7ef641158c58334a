"""The dispatcher and self-test of an exported kernel package.

`kernelwright export` copies this file verbatim into the package it writes, as
`<package>/_dispatch.py`, next to `manifest.json`, `kernels/` and `references/`. So it imports
nothing of kernelwright: only torch and the standard library. In kernelwright's own tree it is
never imported (there is no manifest beside it).

A call runs the exported kernel only when its inputs look like those the evaluator checked it
with (the same count, kinds, dtypes, ranks and device, contiguous, non-empty, no autograd):
anything else runs the PyTorch reference, which handles whatever PyTorch handles.
`last_path(task)` says which path the last call took and `last_reason(task)` why.
"""
from __future__ import annotations

import functools
import importlib
import json
import os
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import torch

PACKAGE = __name__.rpartition(".")[0]
FORCE_REFERENCE_ENV = PACKAGE.upper() + "_FORCE_REFERENCE"
_last: dict[str, tuple[str, str]] = {}
_lock = threading.Lock()


@functools.lru_cache(maxsize=None)
def manifest() -> dict[str, Any]:
    return json.loads(Path(__file__).with_name("manifest.json").read_text())


def _entry(task: str) -> dict[str, Any]:
    for e in manifest()["tasks"]:
        if e["task"] == task:
            return e
    raise KeyError(f"{PACKAGE} has no task {task!r}")


def last_path(task: str) -> str | None:
    """"kernel" or "reference": which path the last call of this task took (None before any call)."""
    return _last.get(task, (None, ""))[0]


def last_reason(task: str) -> str:
    """Why the last call of this task took the reference path ("" when the kernel ran)."""
    return _last.get(task, (None, ""))[1]


def build(entry: dict[str, Any], kernel: bool, variant: dict[str, Any] | None = None,
          device: str | None = None) -> Any:
    """The task's Model (or the exported ModelNew) made as the evaluator makes it: init inputs
    drawn under seed 0, weights under the manifest's seed, moved to the device, eval mode.
    The caller's random state is left as it was."""
    ref = importlib.import_module(f"{PACKAGE}.references.{entry['module']}")
    cls = importlib.import_module(f"{PACKAGE}.kernels.{entry['module']}").ModelNew if kernel else ref.Model
    with _constants(ref, variant), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        init = list(ref.get_init_inputs())
        torch.manual_seed(entry["init_seed"])
        model = cls(*init)
    model = model.to(device or entry["device"])
    return model.eval()


class _Models:
    """Built on first use: the kernel model (compiling its kernels) and one reference per device."""

    def __init__(self) -> None:
        self.kernel: dict[str, Any] = {}
        self.kernel_error: dict[str, str] = {}
        self.reference: dict[tuple[str, str], Any] = {}

    def get_kernel(self, entry: dict[str, Any]) -> Any:
        task = entry["task"]
        with _lock:
            if task not in self.kernel and task not in self.kernel_error:
                try:
                    self.kernel[task] = build(entry, kernel=True)
                except Exception as e:  # noqa: BLE001 - no compiler here, a build that fails on this machine
                    self.kernel_error[task] = f"the kernel could not be built here: {type(e).__name__}: {e}"
                    warnings.warn(f"{PACKAGE}.{entry['function']}: {self.kernel_error[task]}; using the "
                                  "PyTorch reference", RuntimeWarning, stacklevel=4)
            return self.kernel.get(task)

    def get_reference(self, entry: dict[str, Any], device: str) -> Any:
        key = (entry["task"], device)
        with _lock:
            if key not in self.reference:
                self.reference[key] = build(entry, kernel=False, device=device)
            return self.reference[key]


_models = _Models()


def mismatch(entry: dict[str, Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """Why these inputs are not ones the kernel was checked with ("" when they are)."""
    if os.environ.get(FORCE_REFERENCE_ENV, "") not in ("", "0"):
        return f"${FORCE_REFERENCE_ENV} is set"
    if kwargs:
        return "keyword arguments (the kernel was checked with positional inputs)"
    specs = entry["inputs"]
    if len(args) != len(specs):
        return f"{len(args)} inputs, the kernel was checked with {len(specs)}"
    for i, (spec, a) in enumerate(zip(specs, args)):
        if spec["kind"] != "tensor":
            if type(a).__name__ != spec["type"]:
                return f"input {i} is a {type(a).__name__}, not a {spec['type']}"
            continue
        if not isinstance(a, torch.Tensor):
            return f"input {i} is not a tensor"
        got = {"dtype": str(a.dtype).removeprefix("torch."), "ndim": a.dim(), "device": a.device.type}
        for key, value in got.items():
            if value != spec[key]:
                return f"input {i} has {key} {value}, the kernel takes {spec[key]}"
        if spec["device"] == "cuda" and a.device.index != torch.cuda.current_device():
            return f"input {i} is on {a.device}, not the current CUDA device"
        if spec.get("pinned") and not a.is_pinned():
            return f"input {i} is not in pinned memory"
        if not a.is_contiguous():
            return f"input {i} is not contiguous"
        if a.numel() == 0:
            return f"input {i} is empty"
        if a.requires_grad and torch.is_grad_enabled():
            return f"input {i} requires grad (the kernel has no backward)"
    if entry["device"] == "cuda" and not torch.cuda.is_available():
        return "no CUDA device"
    return ""


def call(task: str, *args: Any, **kwargs: Any) -> Any:
    entry = _entry(task)
    reason = mismatch(entry, args, kwargs)
    model = None if reason else _models.get_kernel(entry)
    if model is None:
        reason = reason or _models.kernel_error.get(task, "the kernel is unavailable")
        first = next((a for a in args if isinstance(a, torch.Tensor)), None)
        device = str(first.device) if first is not None else entry["device"]
        model = _models.get_reference(entry, device)
    _last[task] = ("reference", reason) if reason else ("kernel", "")
    return model(*args, **kwargs)


# --- the self-test: python -m <package>.selftest ------------------------------------------

class _constants:
    """Set a reference module's constants for a shape variant, and put them back."""

    def __init__(self, module: Any, variant: dict[str, Any] | None):
        self.module, self.variant, self.old = module, variant or {}, {}

    def __enter__(self) -> None:
        for k, v in self.variant.items():
            self.old[k] = getattr(self.module, k)
            setattr(self.module, k, v)

    def __exit__(self, *exc: object) -> None:
        for k, v in self.old.items():
            setattr(self.module, k, v)


def _inputs(entry: dict[str, Any], variant: dict[str, Any] | None, seed: int) -> list[Any]:
    ref = importlib.import_module(f"{PACKAGE}.references.{entry['module']}")
    with _constants(ref, variant), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        args = list(ref.get_inputs())
    placed = []
    for spec, a in zip(entry["inputs"], args):
        if isinstance(a, torch.Tensor):
            a = a.to(spec["device"])
            a = a.pin_memory() if spec.get("pinned") else a
        placed.append(a)
    return placed


def _flat(value: Any) -> list[Any]:
    return [x for v in value for x in _flat(v)] if isinstance(value, (tuple, list)) else [value]


def _difference(entry: dict[str, Any], got: Any, want: Any) -> str:
    got, want = _flat(got), _flat(want)
    if len(got) != len(want):
        return f"{len(got)} outputs, the reference gives {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        if not isinstance(w, torch.Tensor):
            if g != w:
                return f"output {i} is {g!r}, the reference gives {w!r}"
            continue
        if not isinstance(g, torch.Tensor) or g.shape != w.shape or g.dtype != w.dtype:
            return f"output {i} differs in type, shape or dtype from the reference"
        atol, rtol = entry["tolerances"].get(str(w.dtype).removeprefix("torch."), (0.0, 0.0))
        if not torch.allclose(g, w, atol=atol, rtol=rtol):
            worst = (g.double() - w.double()).abs().max().item()
            return f"output {i} is off by up to {worst:.3g} (atol {atol:g}, rtol {rtol:g})"
    return ""


def selftest() -> int:
    """Every exported function against its reference, on every shape the evaluator checked;
    0 when all agree and the kernel path ran, 1 otherwise."""
    failed = 0
    package = sys.modules[PACKAGE]
    for entry in manifest()["tasks"]:
        if entry["device"] == "cuda" and not torch.cuda.is_available():
            print(f"skip  {entry['task']}: needs a CUDA device")
            continue
        problems = []
        with torch.no_grad():
            args = _inputs(entry, None, seed=1)
            got = getattr(package, entry["function"])(*args)
            if last_path(entry["task"]) != "kernel":
                problems.append(f"the reference path ran: {last_reason(entry['task'])}")
            problems.append(_difference(entry, got, _models.get_reference(entry, entry["device"])(*args)))
            for i, variant in enumerate(entry["variants"]):
                args = _inputs(entry, variant, seed=2 + i)
                kernel, ref = build(entry, True, variant), build(entry, False, variant)
                wrong = _difference(entry, kernel(*args), ref(*args))
                problems.append(f"variant{i}: {wrong}" if wrong else "")
        problems = [p for p in problems if p]
        failed += bool(problems)
        print(("FAIL  " if problems else "ok    ") + f"{entry['task']}: " + ("; ".join(problems) or
              f"matches the reference on {1 + len(entry['variants'])} shapes"))
    return 1 if failed else 0
