"""Instruments the probe uses inside a worker: an aten-op recorder, call counters, guard bands,
aliasing and thread checks, output checksums, and a CUDA timer. Each reports facts; none decides."""
from __future__ import annotations

import collections
import os
import threading
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sandbox.protocol import pack_tree

GUARD_BYTES = 4096


class OpRecorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func._schema.name)
        return func(*args, **(kwargs or {}))


class CountingModule:
    """Wraps a load_inline module so that calls into it are counted (ghost-kernel check)."""

    def __init__(self, module: Any, counter: collections.Counter):
        self._module, self._counter = module, counter

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._module, name)
        if not callable(attr):
            return attr
        counter = self._counter

        def call(*args: Any, **kwargs: Any) -> Any:
            counter[name] += 1
            return attr(*args, **kwargs)

        return call


def native_threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


class Signs:
    """Secret random signs, one per output element (seeded by the supervisor, cached per shape):
    a signed sum of an output moves by about the size of any change to it, while honest
    rounding differences, small and unrelated to the signs, mostly cancel."""

    def __init__(self, seed: int):
        self.seed = seed
        self._cache: dict[tuple, torch.Tensor] = {}

    def for_tensor(self, t: torch.Tensor) -> torch.Tensor:
        key = (t.numel(), t.dtype, t.device)
        if key not in self._cache:
            gen = torch.Generator(device="cpu").manual_seed(self.seed + t.numel())
            bits = torch.randint(0, 2, (t.numel(),), generator=gen, dtype=torch.int8)
            self._cache[key] = (bits.to(t.dtype) * 2 - 1).to(t.device)
        return self._cache[key]


def _flat(t: torch.Tensor) -> torch.Tensor:
    t = t.detach()
    if t.is_complex():
        t = t.abs()
    if not t.is_floating_point():
        t = t.double()
    elif t.element_size() < 4:
        t = t.float()
    return t.reshape(-1)


class Checksums:
    """Per call's output, per output tensor: its signed sum, sum of squares, element count and
    dtype. Two read-only passes (dot products, as fast as a plain sum) right after each call,
    while the output is in cache; the figures stay tensors until `values()`, so a call costs
    two tensor ops and no conversions. A stale, skipped or partial output shows."""

    def __init__(self, signs: Signs):
        self.signs = signs
        self.rows: list[list[tuple[Any, Any, int, str]]] = []

    def add(self, value: Any) -> None:
        if isinstance(value, torch.Tensor):
            tensors = [value]
        else:
            tensors = []
            pack_tree(value, tensors)
        row = []
        for t in tensors:
            f = _flat(t)
            dtype = str(t.dtype).removeprefix("torch.")
            n = f.numel()
            row.append((torch.dot(f, self.signs.for_tensor(f)), torch.dot(f, f), n, dtype) if n else (0.0, 0.0, 0, dtype))
        self.rows.append(row)

    def values(self) -> list[list[list[Any]]]:
        figures = [x for row in self.rows for a, b, n, _ in row if n for x in (a, b)]
        it = iter(torch.stack(figures).tolist() if figures else [])
        return [[[next(it), next(it), n, d] if n else [0.0, 0.0, 0, d] for _, _, n, d in row] for row in self.rows]


def checksums(values: list[Any], signs: Signs) -> list[list[list[Any]]]:
    c = Checksums(signs)
    for v in values:
        c.add(v)
    return c.values()


def checksum(value: Any, signs: Signs) -> list[list[Any]]:
    return checksums([value], signs)[0]


class CudaTimer:
    """Events around one call, after an L2 flush; a second end event after a device-wide
    synchronize exposes work hidden on other streams."""

    def __init__(self, device: torch.device):
        props = torch.cuda.get_device_properties(device)
        l2 = getattr(props, "L2_cache_size", 50 << 20) or (50 << 20)
        self.flush = torch.empty(2 * l2 // 4, dtype=torch.float32, device=device)
        self.events = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
        self.reset_l2 = persisting_l2_reset()

    def time(self, model: Any, args: list[Any]) -> tuple[float, float, Any]:
        if self.reset_l2:
            self.reset_l2()
        self.flush.zero_()
        torch.cuda.synchronize()
        start, end, end_synced = self.events
        start.record()
        out = model(*args)
        end.record()
        torch.cuda.synchronize()
        end_synced.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end), start.elapsed_time(end_synced), out


def persisting_l2_reset() -> Any:
    import ctypes

    for name in ("libcudart.so", "libcudart.so.13", "libcudart.so.12"):
        try:
            fn = ctypes.CDLL(name).cudaCtxResetPersistingL2Cache
            return lambda: fn()
        except (OSError, AttributeError):
            continue
    return None


def guarded(args: list[Any]) -> tuple[list[Any], list[tuple[int, Any]]]:
    """Place each input tensor between two guard bands; a check reports any write into them."""
    out, checks = [], []
    for i, a in enumerate(args):
        if not isinstance(a, torch.Tensor) or a.numel() == 0:
            out.append(a)
            continue
        pad = max(1, GUARD_BYTES // a.element_size())
        buf = torch.empty(a.numel() + 2 * pad, dtype=a.dtype, device=a.device)
        buf.view(torch.uint8).fill_(0xA5)
        view = buf[pad:pad + a.numel()].view(a.shape)
        view.copy_(a)
        head, tail = buf[:pad].clone(), buf[pad + a.numel():].clone()

        def ok(buf=buf, pad=pad, n=a.numel(), head=head, tail=tail) -> bool:
            return bool(torch.equal(buf[:pad].view(torch.uint8), head.view(torch.uint8))
                        and torch.equal(buf[pad + n:].view(torch.uint8), tail.view(torch.uint8)))

        out.append(view)
        checks.append((i, ok))
    return out, checks


def aliases(outputs: list[Any], args: list[Any]) -> list[int]:
    spans = []
    for a in args:
        if isinstance(a, torch.Tensor) and a.numel():
            s = a.untyped_storage()
            spans.append((s.data_ptr(), s.data_ptr() + s.nbytes()))
    found = []
    for i, t in enumerate(outputs):
        if t.numel() == 0:
            continue
        lo = t.data_ptr()
        hi = lo + t.numel() * t.element_size()
        if any(lo < b and a < hi for a, b in spans):
            found.append(i)
    return found
