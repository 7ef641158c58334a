"""Seeded inputs: the same seed gives the same tensors in the supervisor and in any worker.

Extra correctness trials rescale floating inputs by positive factors (heavy-tailed or large),
which keeps every sign, so tasks that need positive inputs stay valid while kernels that
only work on the default distribution (or guess it) are caught.
"""
from __future__ import annotations

import hashlib
import random
import threading
import types
from typing import Any

TRANSFORMS = ("none", "heavy", "scaled")

# get_inputs() reads module globals (which variants change) and the global RNGs (which seeding
# sets): one thread at a time, or concurrent evaluations would draw each other's inputs
_GLOBAL_STATE = threading.RLock()


def derive_seed(seed: int, *parts: Any) -> int:
    blob = repr((seed, *parts)).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little") >> 1


def _seed_all(seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % (2**32))
    except ImportError:
        pass


def _transform(x: Any, kind: str, seed: int) -> Any:
    import torch

    if kind == "none" or not isinstance(x, torch.Tensor) or not x.is_floating_point():
        return x
    g = torch.Generator(device="cpu").manual_seed(seed)
    if kind == "heavy":  # log-normal magnitudes: occasional values tens of times the usual
        factor = torch.exp(1.5 * torch.randn(x.shape, generator=g, dtype=torch.float32))
    elif kind == "scaled":
        factor = torch.full(x.shape, 8.0)
    else:
        raise ValueError(f"unknown input transform {kind!r}")
    return (x.float() * factor.to(x.device)).to(x.dtype)


def make_inputs(module: types.ModuleType, seed: int, variant: dict[str, Any] | None = None,
                transform: str = "none", device: str | None = None) -> list[Any]:
    """The task's get_inputs() under a seed; with `device`, tensors are created there directly
    (on a GPU this is the device's generator: fast, and the same on every worker)."""
    import contextlib

    import torch

    from tasks.spec import apply_variant

    with _GLOBAL_STATE:
        old = apply_variant(module, variant)
        try:
            _seed_all(seed)
            with torch.device(device) if device else contextlib.nullcontext():
                inputs = list(module.get_inputs())
        finally:
            apply_variant(module, old)
    return [_transform(x, transform, derive_seed(seed, "transform", i)) for i, x in enumerate(inputs)]


def make_init_inputs(module: types.ModuleType, variant: dict[str, Any] | None = None) -> list[Any]:
    from tasks.spec import apply_variant

    with _GLOBAL_STATE:
        old = apply_variant(module, variant)
        try:
            _seed_all(0)
            return list(module.get_init_inputs())
        finally:
            apply_variant(module, old)

