"""How an exported package builds its models: once per configuration, as the evaluator builds them.

Copied verbatim into the package as `<package>/_models.py` (torch and the standard library only).
The task's constructor arguments come from the manifest's `init` (those that varied between the
checked shapes are read off the state's shapes) or the task's own get_init_inputs(); weights are
drawn under the manifest's seed; eval mode. A model's state tensors are swapped for a call's own
(`_Bound`), so one model serves every module of its configuration.
"""
from __future__ import annotations

import contextlib
import importlib
import threading
import warnings
from typing import Any

import torch

try:  # models are built with real tensors even when first needed while tracing with fake ones
    from torch._subclasses.fake_tensor import unset_fake_temporarily as _real_tensors
except ImportError:  # pragma: no cover - older torch
    _real_tensors = contextlib.nullcontext  # type: ignore[assignment]

PACKAGE = __name__.rpartition(".")[0]
_lock = threading.RLock()


def _module(kind: str, e: dict[str, Any]) -> Any:
    return importlib.import_module(f"{PACKAGE}.{kind}.{e['module']}")


def init_inputs(e: dict[str, Any], tensors: list[Any]) -> tuple[Any, ...] | None:
    """The constructor arguments for these shapes (None: the task's own get_init_inputs())."""
    init = e.get("init")
    if init is None:
        return None
    values = list(init["default"])
    for i, (slot, axis) in init["from"].items():
        values[int(i)] = int(tensors[slot].shape[axis])
    return tuple(values)


def build(e: dict[str, Any], kernel: bool, init: tuple[Any, ...] | None = None, device: str | None = None) -> Any:
    """The task's Model (or the exported ModelNew) made as the evaluator makes it. The caller's
    random state is left as it was."""
    ref = _module("references", e)
    cls = _module("kernels", e).ModelNew if kernel else ref.Model
    with _real_tensors(), torch.inference_mode(False), torch.random.fork_rng(devices=[]):
        if init is None:
            torch.manual_seed(0)
            init = tuple(ref.get_init_inputs())
        torch.manual_seed(e["init_seed"])
        model = cls(*init)
        return model.to(device or e["device"]).eval()


def state_of(model: Any, e: dict[str, Any]) -> list[torch.Tensor]:
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    return [tensors[s["name"]].detach() for s in e["state"]]


class _Bound:
    """A model whose state tensors are swapped for a call's own (two dict writes per tensor).
    `swap` is False for a kernel whose parameters are not the reference's: it then runs only
    with its own weights."""

    def __init__(self, model: Any, names: list[str], swap: bool = True):
        self.model, self.swap, self.slots = model, swap, []
        for name in names if swap else ():
            path, _, attr = name.rpartition(".")
            sub = model.get_submodule(path)
            self.slots.append((sub._parameters if attr in sub._parameters else sub._buffers, attr))
        self.lock = threading.Lock()

    def __call__(self, args: Any, state: Any, kwargs: dict[str, Any] | None = None) -> Any:
        with self.lock:
            old = [table[attr] for table, attr in self.slots]
            for (table, attr), t in zip(self.slots, state):
                table[attr] = t
            try:
                return self.model(*args, **(kwargs or {}))
            finally:
                for (table, attr), t in zip(self.slots, old):
                    table[attr] = t


def _shapes(model: Any) -> dict[str, tuple[int, ...]]:
    return {n: tuple(t.shape) for n, t in [*model.named_parameters(), *model.named_buffers()]}


class _Models:
    """Built on first use, per configuration: kernel models (compiling their kernels once),
    reference models per device, and the default state the package's functions pass."""

    def __init__(self) -> None:
        self.kernels: dict[tuple[str, Any], _Bound] = {}
        self.kernel_error: dict[str, str] = {}
        self.origin: dict[str, str] = {}
        self.references: dict[tuple[str, Any, str], _Bound] = {}
        self.defaults: dict[tuple[str, str], tuple[torch.Tensor, ...]] = {}

    def kernel(self, e: dict[str, Any], init: Any) -> tuple[_Bound | None, str]:
        task = e["task"]
        with _lock:
            if task in self.kernel_error:
                return None, self.kernel_error[task]
            if (task, init) not in self.kernels:
                runtime = importlib.import_module(f"{PACKAGE}._runtime")
                seen = len(runtime.origins)
                try:
                    model = build(e, kernel=True, init=init)
                except Exception as ex:  # noqa: BLE001 - no compiler, a build that fails on this machine
                    text = " ".join(ln.strip() for ln in str(ex).splitlines() if ln.strip())[:300]
                    self.kernel_error[task] = f"the kernel could not be built here: {type(ex).__name__}: {text}"
                    warnings.warn(f"{PACKAGE}.{e['function']}: {self.kernel_error[task]}; using the PyTorch "
                                  "reference", RuntimeWarning, stacklevel=4)
                    return None, self.kernel_error[task]
                if runtime.origins[seen:]:
                    self.origin[task] = "; ".join(dict.fromkeys(runtime.origins[seen:]))
                names = [s["name"] for s in e["state"]]
                theirs, ours = _shapes(model), _shapes(self.reference(e, init, e["device"]).model)
                self.kernels[(task, init)] = _Bound(model, names, all(theirs.get(n) == ours[n] for n in names))
            return self.kernels[(task, init)], ""

    def reference(self, e: dict[str, Any], init: Any, device: str) -> _Bound:
        key = (e["task"], init, device)
        with _lock:
            if key not in self.references:
                self.references[key] = _Bound(build(e, kernel=False, init=init, device=device),
                                              [s["name"] for s in e["state"]])
            return self.references[key]

    def default_state(self, e: dict[str, Any], device: str) -> tuple[torch.Tensor, ...]:
        key = (e["task"], device)
        with _lock:
            if key not in self.defaults:
                self.defaults[key] = tuple(state_of(self.reference(e, _default(e), device).model, e))
            return self.defaults[key]


_models = _Models()


def _default(e: dict[str, Any]) -> tuple[Any, ...] | None:
    return None if e.get("init") is None else tuple(e["init"]["default"])
