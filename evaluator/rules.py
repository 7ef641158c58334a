"""Run-time rules: what a candidate's instrumented call may and may not do.

The probe reports raw facts about a call; these functions turn them into rejections. The
default policy rejects PyTorch compute standing in for the candidate's own kernel: only ops
that allocate, view, copy or fill are allowed inside ModelNew.forward.
"""
from __future__ import annotations

import dataclasses
from typing import Any

ALLOWED_ATEN = {
    # allocation and initialisation
    "aten::empty", "aten::empty_like", "aten::empty_strided", "aten::new_empty", "aten::new_empty_strided",
    "aten::zeros", "aten::zeros_like", "aten::new_zeros", "aten::ones", "aten::ones_like", "aten::new_ones",
    "aten::full", "aten::full_like", "aten::new_full", "aten::fill_", "aten::zero_", "aten::resize_",
    "aten::scalar_tensor", "aten::lift_fresh", "aten::lift_fresh_copy", "aten::arange",
    # views and shape
    "aten::view", "aten::_unsafe_view", "aten::_reshape_alias", "aten::reshape", "aten::as_strided",
    "aten::t", "aten::transpose", "aten::permute", "aten::expand", "aten::unsqueeze", "aten::squeeze",
    "aten::slice", "aten::select", "aten::narrow", "aten::alias", "aten::detach", "aten::unbind",
    "aten::split", "aten::split_with_sizes", "aten::chunk", "aten::flatten", "aten::unflatten",
    "aten::view_as_real", "aten::view_as_complex", "aten::unfold", "aten::contiguous",
    # copies, moves, scalars
    "aten::clone", "aten::copy_", "aten::_to_copy", "aten::to", "aten::_local_scalar_dense",
    "aten::is_nonzero", "aten::item", "aten::is_same_size", "aten::_has_compatible_shallow_copy_type",
    "aten::sym_size", "aten::sym_stride", "aten::sym_numel", "aten::sym_storage_offset",
    "aten::record_stream", "aten::is_pinned", "aten::_pin_memory", "aten::pin_memory",
}


@dataclasses.dataclass(frozen=True)
class Policy:
    static_screen: bool = True
    ban_torch_compute: bool = True
    require_kernel: bool = True  # some custom kernel must run in every checked call
    ban_threads: bool = True
    suspicious_speedup: float = 10.0
    # of the user-space CPU samples of timed calls, the share in the candidate's own code (evaluator/
    # coverage.py); the cpu suite's seeds measure 0.89-0.99 here, a forward computing in PyTorch near 0
    min_coverage: float = 0.5


def compute_ops(ops: list[str]) -> list[str]:
    return [op for op in ops if op not in ALLOWED_ATEN]


def check_call(report: dict[str, Any], policy: Policy, kernel_names: set[str]) -> str | None:
    """A rejection reason for one instrumented call, or None."""
    if not all(report.get("plain", [])):
        return "lazy_output: an output is a tensor subclass, not a plain torch.Tensor"
    if report.get("aliases"):
        return f"aliased_output: output {report['aliases'][0]} shares memory with an input"
    if report.get("guard_violations"):
        return f"out_of_bounds_write: the guard band around input {report['guard_violations'][0]} was overwritten"
    if policy.ban_threads and report.get("python_threads_added", 0) > 0:
        return "background_thread: forward left a Python thread running"
    if policy.ban_torch_compute:
        ops = compute_ops(report.get("aten_ops", []))
        if ops:
            shown = ", ".join(ops[:5]) + (" ..." if len(ops) > 5 else "")
            return f"pytorch_compute: forward ran PyTorch ops instead of its own kernel ({shown})"
    if policy.require_kernel:
        gpu = report.get("gpu_kernels")
        if gpu:  # on a GPU the profiler names the kernels that really ran
            if not any(k in g for g in gpu for k in kernel_names):
                return "ghost_kernel: none of the candidate's GPU kernels was launched"
        elif report.get("kernel_calls", 0) <= 0:  # no profiler: counted launches
            return "ghost_kernel: no custom kernel ran during forward"
    return None
