"""python -m <package>.selftest: every kernel of the package against its PyTorch reference.

For each task, on every shape the evaluator checked it with: the package's function and the op
(with the reference's own weights for that shape) must take the kernel path and agree with the
reference within the task's tolerances, and the op's fake implementation must give the real
outputs' shapes and dtypes. Exit 1 on any failure.
"""
from __future__ import annotations

import importlib
import sys
from typing import Any

import torch

from . import _dispatch


class _constants:
    """Set a reference module's constants for a shape variant, and put them back."""

    def __init__(self, module: Any, variant: dict[str, Any] | None):
        self.module, self.variant = module, variant or {}
        self.old: dict[str, Any] = {}

    def __enter__(self) -> None:
        for k, v in self.variant.items():
            self.old[k] = getattr(self.module, k)
            setattr(self.module, k, v)

    def __exit__(self, *exc: object) -> None:
        for k, v in self.old.items():
            setattr(self.module, k, v)


def _case(e: dict[str, Any], variant: dict[str, Any] | None, seed: int) -> tuple[list[Any], tuple[Any, ...]]:
    """The inputs (on the device) and constructor arguments of one checked shape."""
    ref = importlib.import_module(f"{_dispatch.PACKAGE}.references.{e['module']}")
    with _constants(ref, variant), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        args = list(ref.get_inputs())
        torch.manual_seed(0)
        init = tuple(ref.get_init_inputs())
    placed = []
    for spec, a in zip(e["inputs"], args):
        if isinstance(a, torch.Tensor):
            a = a.to(spec["device"])
            a = a.pin_memory() if spec.get("pinned") else a
        placed.append(a)
    return placed, init


def _flat(value: Any) -> list[Any]:
    return [x for v in value for x in _flat(v)] if isinstance(value, (tuple, list)) else [value]


def difference(e: dict[str, Any], got: Any, want: Any) -> str:
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
        atol, rtol = e["tolerances"].get(str(w.dtype).removeprefix("torch."), (0.0, 0.0))
        if not torch.allclose(g, w, atol=atol, rtol=rtol):
            worst = (g.double() - w.double()).abs().max().item()
            return f"output {i} is off by up to {worst:.3g} (atol {atol:g}, rtol {rtol:g})"
    return ""


def _fake_difference(op: Any, args: list[Any], real: Any) -> str:
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=False) as mode:
        fake = op(*[mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args])
    pairs = list(zip(_flat(fake), _flat(real)))
    if len(pairs) != len(_flat(real)) or any(f.shape != r.shape or f.dtype != r.dtype for f, r in pairs):
        return "the op's fake implementation gives other shapes or dtypes than the op"
    return ""


def _check(e: dict[str, Any], package: Any) -> list[str]:
    problems, task = [], e["task"]
    args, _ = _case(e, None, seed=1)
    got = getattr(package, e["function"])(*args)
    if _dispatch.last_path(task) != "kernel":
        problems.append(f"the reference path ran: {_dispatch.last_reason(task)}")
    default = _dispatch._models.reference(e, _dispatch._default(e), e["device"])
    state = _dispatch.state_of(default.model, e)
    problems.append(difference(e, got, default(args, state)))
    op = getattr(getattr(torch.ops, _dispatch.PACKAGE), e["function"]) if e.get("op") else None
    if op is not None:
        problems.append(_fake_difference(op, [*args, *state], got))
    for i, variant in enumerate(e["variants"]):
        args, init = _case(e, variant, seed=2 + i)
        if e.get("init") is None:  # models only at their default construction: compare them directly
            wrong = difference(e, _dispatch.build(e, True, init)(*args), _dispatch.build(e, False, init)(*args))
        else:
            ref = _dispatch.build(e, False, init)
            state = _dispatch.state_of(ref, e)
            got = op(*args, *state) if op is not None else _dispatch.forward(e, args, state)
            wrong = (difference(e, got, ref(*args)) or ("" if _dispatch.last_path(task) == "kernel"
                                                        else f"the reference path ran: {_dispatch.last_reason(task)}"))
            if op is not None and not wrong:
                wrong = _fake_difference(op, [*args, *state], got)
        problems.append(f"variant{i}: {wrong}" if wrong else "")
    return [p for p in problems if p]


def selftest() -> int:
    package = importlib.import_module(_dispatch.PACKAGE)
    failed = 0
    for e in _dispatch.manifest()["tasks"]:
        if e["device"] == "cuda" and not torch.cuda.is_available():
            print(f"skip  {e['task']}: needs a CUDA device")
            continue
        with torch.no_grad():
            problems = _check(e, package)
        failed += bool(problems)
        shapes = 1 + len(e["variants"])
        print(("FAIL  " if problems else "ok    ") + f"{e['task']}: " + ("; ".join(problems) or
              f"matches the reference on {shapes} shapes ({_dispatch.kernel_origin(e['task'])})"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(selftest())
