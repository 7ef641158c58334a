"""Run-time rules: what a candidate's instrumented call may and may not do.

The probe reports raw facts about a call; these functions turn them into rejections. A policy
says whose code may compute: `strict` (the default, and what a kernel library wants) rejects
PyTorch compute standing in for the candidate's own kernel, so only ops that allocate, view,
copy or fill are allowed inside ModelNew.forward; `kernelbench` lets PyTorch ops run beside at
least one custom kernel and records which ran and what share of the time the custom code
carried (KernelBench's own setting); `library` also allows vendor libraries and needs no custom
kernel (the fastest system, not a kernel). Every other check (aliasing, guard bands, threads,
mutated inputs, the timing checks, the static screen's other rules) holds under all three.
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
    name: str = "strict"
    static_screen: bool = True
    ban_torch_compute: bool = True
    allow_vendor_libraries: bool = False  # cuBLAS, cuDNN, BLAS, MKL, oneDNN called from kernel source
    require_kernel: bool = True  # some custom kernel must run in every checked call
    ban_threads: bool = True
    suspicious_speedup: float = 10.0
    # of the user-space CPU samples of timed calls, the share in the candidate's own code (evaluator/
    # coverage.py); the cpu suite's seeds measure 0.89-0.99 here, a forward computing in PyTorch near 0
    min_coverage: float = 0.5
    # below this share of the time in the custom code, an ok verdict is flagged lazy_optimization (0: never)
    lazy_share: float = 0.0


POLICIES = {
    "strict": Policy(),
    "kernelbench": Policy(name="kernelbench", ban_torch_compute=False, min_coverage=0.0, lazy_share=0.1),
    "library": Policy(name="library", ban_torch_compute=False, allow_vendor_libraries=True, require_kernel=False,
                      min_coverage=0.0),
}


def policy(name: str) -> Policy:
    """The named policy; a ValueError (one line) for any other name."""
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r} (use {', '.join(POLICIES)})")
    return POLICIES[name]


def prompt_rules(p: Policy) -> tuple[str, ...]:
    """The policy's rules on whose code computes, as a prompt states them (agent/loop/prompts.py): worded
    from the same fields the checks read, so the two cannot disagree."""
    if p.ban_torch_compute:
        compute = ("forward runs only your kernels: no PyTorch ops that compute (matmul, F.*, softmax, sum, "
                   "torch.compile ...); only allocation and views (torch.empty_like, .view, .contiguous) are allowed.")
    else:
        compute = ("PyTorch ops may compute beside your kernels (replace the operators that pay, keep the rest); "
                   "each evaluation records which PyTorch ops ran"
                   + (f", and one where your own code carries under {100 * p.lazy_share:.0f}% of the time is "
                      "flagged as lazy optimization" if p.lazy_share > 0 else "") + ".")
    vendor = ("Vendor libraries (cuBLAS, cuDNN, MKL, BLAS, oneDNN) are allowed; no numpy, scipy, numba or cupy."
              if p.allow_vendor_libraries else
              "No vendor libraries (cuBLAS, cuDNN, MKL, BLAS, oneDNN) and no numpy, scipy, numba or cupy.")
    out = [compute, vendor]
    if p.require_kernel:
        out.append("Your kernel must run on every forward call; a compiled kernel that is never launched is rejected.")
    if p.min_coverage > 0:
        out.append(f"Your own kernels must carry at least {100 * p.min_coverage:.0f}% of forward's time "
                   "(measured from outside the process).")
    return tuple(out)


def screened(findings: list[Any], p: Policy) -> list[Any]:
    """The static screen's findings that count under the policy (vendor calls are the library policy's)."""
    return [f for f in findings if not (p.allow_vendor_libraries and getattr(f, "rule", "") == "vendor_library")]


def lazy(share: float | None, p: Policy) -> str | None:
    """The lazy-optimization flag: the custom code carried a negligible share of the time."""
    if p.lazy_share <= 0 or share is None or share >= p.lazy_share:
        return None
    return (f"lazy_optimization: the candidate's own code carried {100 * share:.0f}% of the time, under the "
            f"{p.name} policy's {100 * p.lazy_share:.0f}%: PyTorch does nearly all of the work")


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
