"""The dispatcher of an exported kernel package: which path a call takes, and why.

Copied verbatim into the package as `<package>/_dispatch.py`, next to `manifest.json`,
`kernels/` and `references/`: it imports only torch and the standard library.

A task's op (`torch.ops.<package>.<task>`, registered by `_ops.py`) takes the reference's
forward inputs followed by the reference module's state (its parameters and buffers, in the
manifest's order), so one op serves every module of that configuration with that module's own
weights. A call runs the exported kernel only when its tensors look like those the evaluator
checked it with: the same kinds, dtypes, ranks and device, contiguous, non-empty, no autograd,
and shapes related as in every checked shape (dims equal in all of them still equal, dims that
never changed unchanged). Anything else runs the PyTorch reference, which handles whatever
PyTorch handles. `last_path(task)` says which path the last call took, `last_reason(task)` why,
`kernel_origin(task)` where the kernel's binary came from.

Models are built once per configuration, as the evaluator builds them (`_models.py`).
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import torch

from ._models import _default, _models, build, init_inputs, state_of  # noqa: F401 - the package's API

PACKAGE = __name__.rpartition(".")[0]
FORCE_REFERENCE_ENV = PACKAGE.upper() + "_FORCE_REFERENCE"
_last: dict[str, tuple[str, str]] = {}
_counts: dict[str, dict[str, int]] = {}  # per task, calls that took each path


@functools.lru_cache(maxsize=None)
def manifest() -> dict[str, Any]:
    return json.loads(Path(__file__).with_name("manifest.json").read_text())


_ENTRIES = {**{e["function"]: e for e in manifest()["tasks"]}, **{e["task"]: e for e in manifest()["tasks"]}}


def entry(task: str) -> dict[str, Any]:
    """A task's manifest entry, by task or function name (a plain lookup: torch.compile traces it)."""
    if task not in _ENTRIES:
        raise KeyError(f"{PACKAGE} has no task {task!r}")
    return _ENTRIES[task]


def last_path(task: str) -> str | None:
    """"kernel" or "reference": which path the last call of this task took (None before any call)."""
    return _last.get(entry(task)["task"], (None, ""))[0]


def last_reason(task: str) -> str:
    """Why the last call of this task took the reference path ("" when the kernel ran)."""
    return _last.get(entry(task)["task"], (None, ""))[1]


def path_counts() -> dict[str, dict[str, int]]:
    """Per task, how many calls took the kernel path and how many the reference, so far."""
    return {task: dict(c) for task, c in _counts.items()}


def _took(task: str, path: str, reason: str = "") -> None:
    _last[task] = (path, reason)
    counts = _counts.setdefault(task, {"kernel": 0, "reference": 0})
    counts[path] += 1


def kernel_origin(task: str) -> str | None:
    """Where this task's kernel binary came from ("prebuilt for this machine", "built here ...") or
    why there is none; None until the kernel was first needed."""
    e = entry(task)
    return _models.origin.get(e["task"]) or _models.kernel_error.get(e["task"])


def _names(e: dict[str, Any]) -> list[str]:
    return [s.get("name", f"input {i}") for i, s in enumerate(e["inputs"])] + [s["arg"] for s in e["state"]]


def _tensor_mismatch(spec: dict[str, Any], a: Any, name: str) -> str:
    if not isinstance(a, torch.Tensor):
        return f"{name} is not a tensor"
    got = {"dtype": str(a.dtype).removeprefix("torch."), "ndim": a.dim(), "device": a.device.type}
    for key, value in got.items():
        if value != spec[key]:
            return f"{name} has {key} {value}, the kernel takes {spec[key]}"
    if spec["device"] == "cuda" and a.device.index != torch.cuda.current_device():
        return f"{name} is on {a.device}, not the current CUDA device"
    if spec.get("pinned") and not a.is_pinned():
        return f"{name} is not in pinned memory"
    if not a.is_contiguous():
        return f"{name} is not contiguous"
    if a.numel() == 0:
        return f"{name} is empty"
    if a.requires_grad and torch.is_grad_enabled():
        return f"{name} requires grad (the kernel has no backward)"
    return ""


class _Checks:
    """One task's preconditions in the form a call checks quickly (the common case: they hold)."""

    def __init__(self, e: dict[str, Any]):
        specs = [*e["inputs"], *({**s, "kind": "tensor", "device": e["device"]} for s in e["state"])]
        self.n_inputs, self.n_state = len(e["inputs"]), len(e["state"])
        self.tensors = [(i, getattr(torch, s["dtype"]), s["ndim"], s["device"]) for i, s in enumerate(specs)
                        if s["kind"] == "tensor"]
        self.values = [(i, s["type"]) for i, s in enumerate(specs) if s["kind"] != "tensor"]
        self.fixed = [tuple(f) for f in e["shapes"]["fixed"]]
        self.tied = [[tuple(d) for d in g] for g in e["shapes"]["tied"]]
        # pinned inputs, CUDA devices: only the full check knows them
        self.simple = e["device"] == "cpu" and not any(s.get("pinned") for s in specs)


_CHECKS = {e["task"]: _Checks(e) for e in manifest()["tasks"]}  # plain lookups: torch.compile traces `fits`


def fits(e: dict[str, Any], args: Any, state: Any = ()) -> bool:
    """Whether the kernel takes these inputs and state (the quick form of `mismatch`)."""
    c = _CHECKS[e["task"]]
    if not c.simple or len(args) != c.n_inputs or len(state) != c.n_state:
        return not mismatch(e, args, state)
    if os.environ.get(FORCE_REFERENCE_ENV, "") not in ("", "0"):
        return False
    slots, grad = (*args, *state), torch.is_grad_enabled()
    for i, dtype, ndim, device in c.tensors:
        a = slots[i]
        if not isinstance(a, torch.Tensor) or a.dtype != dtype or a.dim() != ndim or a.device.type != device \
                or not a.is_contiguous() or a.numel() == 0 or (grad and a.requires_grad):
            return False
    for i, kind in c.values:
        if type(slots[i]).__name__ != kind:
            return False
    for slot, axis, size in c.fixed:
        if slots[slot].shape[axis] != size:
            return False
    for group in c.tied:
        first = slots[group[0][0]].shape[group[0][1]]
        if any(slots[s].shape[a] != first for s, a in group[1:]):
            return False
    return True


def mismatch(e: dict[str, Any], args: Any, state: Any = (), kwargs: dict[str, Any] | None = None) -> str:
    """Why these inputs and state are not like those the kernel was checked with ("" when they are)."""
    if os.environ.get(FORCE_REFERENCE_ENV, "") not in ("", "0"):
        return f"${FORCE_REFERENCE_ENV} is set"
    if kwargs:
        return "keyword arguments (the kernel was checked with positional inputs)"
    specs, names = e["inputs"], _names(e)
    if len(args) != len(specs):
        return f"{len(args)} inputs, the kernel was checked with {len(specs)}"
    for i, (spec, a) in enumerate(zip(specs, args)):
        if spec["kind"] != "tensor":
            if type(a).__name__ != spec["type"]:
                return f"{names[i]} is a {type(a).__name__}, not a {spec['type']}"
            continue
        why = _tensor_mismatch(spec, a, names[i])
        if why:
            return why
    if len(state) != len(e["state"]):
        return f"{len(state)} state tensors, the kernel takes {len(e['state'])}"
    for spec, t, name in zip(e["state"], state, names[len(specs):]):
        why = _tensor_mismatch({**spec, "device": e["device"]}, t, name)
        if why:
            return why
    slots = [*args, *state]
    for slot, axis, size in e["shapes"]["fixed"]:
        if slots[slot].shape[axis] != size:
            return (f"{names[slot]} has size {slots[slot].shape[axis]} in dim {axis}; the kernel was only checked "
                    f"with {size}")
    for group in e["shapes"]["tied"]:
        sizes = [slots[s].shape[a] for s, a in group]
        if any(n != sizes[0] for n in sizes):
            return (f"dims {', '.join(f'{names[s]}[{a}]' for s, a in group)} are {sizes}: they were equal in every "
                    "shape the kernel was checked with")
    if e["device"] == "cuda" and not torch.cuda.is_available():
        return "no CUDA device"
    return ""


def _needs_grad(tensors: Any) -> bool:
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)


def _fresh(out: Any, args: Any, kernel: bool) -> Any:
    """An op's outputs are new, contiguous tensors (a reference may return a view of an input; the
    evaluator refused kernels whose outputs alias their inputs)."""
    storages = set() if kernel else {a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor)}

    def one(t: Any) -> Any:
        if not isinstance(t, torch.Tensor):
            return t
        if storages and t.untyped_storage().data_ptr() in storages:
            return t.clone(memory_format=torch.contiguous_format)
        return t if t.is_contiguous() else t.contiguous()
    return tuple(one(t) for t in out) if isinstance(out, (tuple, list)) else one(out)


def _init_for(e: dict[str, Any], slots: list[Any]) -> Any:
    try:
        return init_inputs(e, slots)
    except (IndexError, AttributeError):  # state of another rank: the reference's default says what is wrong
        return _default(e)


def forward(e: dict[str, Any], args: Any, state: Any, kwargs: dict[str, Any] | None = None) -> Any:
    """One call: the kernel when the inputs fit it, else the reference (both with this state)."""
    return _forward(e, args, state, kwargs)[0]


def _forward(e: dict[str, Any], args: Any, state: Any, kwargs: dict[str, Any] | None) -> tuple[Any, bool]:
    """The outputs, and whether the kernel made them."""
    reason = "" if not kwargs and fits(e, args, state) else (mismatch(e, args, state, kwargs)
                                                               or "inputs unlike the checked ones")
    init = _init_for(e, [*args, *state])
    if not reason:
        bound, reason = _models.kernel(e, init)
        if bound is not None and not bound.swap:
            if all(t is d for t, d in zip(state, _models.default_state(e, e["device"]))):
                out = bound.model(*args)
                _took(e["task"], "kernel")
                return out, True
            reason = "the kernel's parameters differ from the reference's: it runs only with its own weights"
        elif bound is not None:
            out = bound(args, state)
            _took(e["task"], "kernel")
            return out, True
    first = next((a for a in args if isinstance(a, torch.Tensor)), None)
    device = str(first.device) if first is not None else e["device"]
    _took(e["task"], "reference", reason)
    return _models.reference(e, init, device)(args, state, kwargs), False


def run(task: str, *args: Any) -> Any:
    """The op's implementation: the task's inputs, then its state."""
    e = entry(task)
    if _needs_grad(args):
        raise RuntimeError(f"{PACKAGE}::{e['function']} has no backward: call it under torch.no_grad() (modules "
                           f"replaced by {PACKAGE}.apply run PyTorch's own forward when gradients are needed)")
    n = len(e["inputs"])
    out, kernel = _forward(e, args[:n], args[n:], None)
    return _fresh(out, args, kernel)


def invoke(e: dict[str, Any], op: Any, args: Any, state: Any) -> Any:
    """A call from the package's own code: the op where torch.compile or torch.export traces (so the
    graph holds it), the dispatcher directly in eager mode (the op's Python round trip costs tens of
    microseconds a call, about what a small kernel takes)."""
    if torch.compiler.is_compiling():
        return op(*args, *state)
    return run(e["task"], *args, *state)


def fake(task: str, *args: Any) -> Any:
    """The op's fake implementation: the reference run on fake tensors gives shapes and dtypes."""
    e = entry(task)
    n = len(e["inputs"])
    out = _models.reference(e, _init_for(e, list(args)), e["device"])(args[:n], args[n:])
    one = lambda t: torch.empty_like(t, memory_format=torch.contiguous_format)  # noqa: E731
    return tuple(one(t) for t in out) if isinstance(out, (tuple, list)) else one(out)


def call(task: str, *args: Any, **kwargs: Any) -> Any:
    """The package's plain function: the op with the weights the evaluator checked the kernel with."""
    e = entry(task)
    first = next((a for a in args if isinstance(a, torch.Tensor)), None)
    state = _models.default_state(e, str(first.device) if first is not None else e["device"])
    if kwargs or not e.get("op") or _needs_grad(args):
        return forward(e, args, state, kwargs)  # the reference keeps autograd
    return invoke(e, getattr(getattr(torch.ops, PACKAGE), e["function"]), args, state)
