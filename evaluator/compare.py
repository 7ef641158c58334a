"""Comparing a candidate's outputs with the reference's, on the supervisor side."""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

from evaluator.verdict import OutputError
from sandbox.protocol import OtherValue, TensorInfo

DEFAULT_TOL = {  # (atol, rtol) per dtype
    torch.float32: (1e-4, 1e-4), torch.float64: (1e-7, 1e-7), torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (1e-2, 1e-2), torch.complex64: (1e-4, 1e-4),
}


@dataclasses.dataclass(frozen=True)
class Tolerance:
    atol: float | None = None  # None: per-dtype default
    rtol: float | None = None

    def for_dtype(self, dtype: torch.dtype) -> tuple[float, float]:
        a, r = DEFAULT_TOL.get(dtype, (0.0, 0.0))  # integers and bools: exact
        return (a if self.atol is None else self.atol, r if self.rtol is None else self.rtol)


def flatten(value: Any) -> list[Any]:
    if isinstance(value, tuple):
        return [x for v in value for x in flatten(v)]
    return [value]


def structure(value: Any) -> Any:
    if isinstance(value, tuple):
        return tuple(structure(v) for v in value)
    if isinstance(value, TensorInfo):
        return "tensor"
    return type(value).__name__


def tensor_error(index: int, got: torch.Tensor, want: torch.Tensor, tol: Tolerance) -> OutputError:
    if got.shape != want.shape:
        return OutputError(index, float("inf"), float("inf"), 1.0, False,
                           f"shape {tuple(got.shape)} != expected {tuple(want.shape)}")
    if got.dtype != want.dtype:
        return OutputError(index, float("inf"), float("inf"), 1.0, False, f"dtype {got.dtype} != expected {want.dtype}")
    if got.numel() == 0:
        return OutputError(index, 0.0, 0.0, 0.0, True)
    atol, rtol = tol.for_dtype(want.dtype)
    if not (want.is_floating_point() or want.is_complex()):
        bad = got != want
        frac = float(bad.float().mean())
        worst = float((got.long() - want.long()).abs().max()) if want.dtype != torch.bool else float(bad.any())
        return OutputError(index, worst, worst, frac, frac == 0.0, "" if frac == 0 else "integer outputs differ")
    g, w = got.double(), want.double()
    nonfinite = ~torch.isfinite(g)
    diff = (g - w).abs()
    diff = torch.where(nonfinite, torch.full_like(diff, float("inf")), diff)
    rel = diff / (w.abs() + 1e-12)
    bad = diff > atol + rtol * w.abs()
    frac = float(bad.double().mean())
    note = ""
    if bool(nonfinite.any()):
        note = f"{int(nonfinite.sum())} non-finite values"
    elif frac:
        where = int(torch.argmax(diff.reshape(-1)))
        note = f"worst at flat index {where}: got {float(g.reshape(-1)[where]):.6g}, want {float(w.reshape(-1)[where]):.6g}"
    return OutputError(index, float(diff.max()), float(rel.max()), frac, frac == 0.0, note)


def compare(got: Any, want: Any, tol: Tolerance) -> tuple[bool, list[OutputError], str]:
    """(ok, per-output errors, note). `got` comes from the candidate's worker; each output must
    be on the device the reference put it on."""
    if structure(got) != structure(want):
        return False, [], f"output structure {structure(got)} != expected {structure(want)}"
    errors: list[OutputError] = []
    for i, (g, w) in enumerate(zip(flatten(got), flatten(want))):
        if isinstance(w, TensorInfo):
            if g.device != w.device:
                errors.append(OutputError(i, float("inf"), float("inf"), 1.0, False,
                                          f"output on {g.device}, expected {w.device}"))
                continue
            errors.append(tensor_error(i, g.tensor, w.tensor, tol))
        elif isinstance(w, OtherValue) or isinstance(g, OtherValue):
            errors.append(OutputError(i, 0.0, 0.0, 0.0, False, "output is not a tensor or number"))
        elif isinstance(w, (int, float)) and not isinstance(w, bool) and isinstance(g, (int, float)):
            a, r = tol.for_dtype(torch.float32 if isinstance(w, float) else torch.int64)
            d = abs(float(g) - float(w))
            errors.append(OutputError(i, d, d / (abs(w) + 1e-12), float(d > a + r * abs(w)), d <= a + r * abs(w)))
        else:
            same = g == w
            errors.append(OutputError(i, 0.0 if same else float("inf"), 0.0, 0.0 if same else 1.0, same))
    ok = all(e.ok for e in errors)
    bad = next((e for e in errors if not e.ok), None)
    note = "" if bad is None else f"output {bad.index}: max abs error {bad.max_abs:.3g}" + (f" ({bad.note})" if bad.note else "")
    return ok, errors, note


def degenerate(outputs_a: Any, outputs_b: Any, tol: Tolerance) -> list[str]:
    """Warnings about a task from two reference outputs on different inputs."""
    warnings = []
    a = [x.tensor for x in flatten(outputs_a) if isinstance(x, TensorInfo)]
    b = [x.tensor for x in flatten(outputs_b) if isinstance(x, TensorInfo)]
    if a and all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, b)):
        warnings.append("degenerate: the output does not depend on the input")
    for i, x in enumerate(a):
        if x.is_floating_point() and x.numel():
            atol, rtol = tol.for_dtype(x.dtype)
            if float(x.double().abs().max()) <= atol:
                warnings.append(f"degenerate: output {i} is so close to zero that zeros would pass")
    return warnings
