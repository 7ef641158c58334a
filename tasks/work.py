"""Work per task and shape variant: FLOPs and the minimum bytes a kernel must move.

Declared figures come first: a task's metadata may give `flops` and `bytes` per call at its
default shape (a variant's declared figures are scaled by how the derived ones change from the
default to the variant). Otherwise both are derived from the reference, run once on the task's
default inputs (seed 0):

- FLOPs: PyTorch's FLOP counter (matmuls, convolutions, attention; causal attention counted
  for its unmasked half), plus ONE FLOP per element for every other op that computes (the
  largest tensor it reads or writes): softmax, norms, activations, reductions are several
  FLOPs per element in truth, so the derived figure is a lower bound, the safe side for a
  physical-bound gate. Views, copies and factories count nothing.
- bytes: every input, output, parameter and buffer tensor once (distinct storages): what a
  kernel must read and write at least, if nothing stays in cache between calls.

`source` says where the figures came from: "declared" (both), "derived" (neither), "mixed".
"""
from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from tasks.spec import Task, apply_variant

_LOCK = threading.Lock()
_CACHE: dict[tuple[Any, ...], Work] = {}


@dataclasses.dataclass(frozen=True)
class Work:
    flops: float
    bytes: float
    source: str  # "declared", "derived" or "mixed"
    variant: Mapping[str, Any] | None = None  # None: the task's default shape

    def to_json(self) -> dict[str, Any]:
        return {"flops": self.flops, "bytes": self.bytes, "source": self.source,
                "variant": None if self.variant is None else dict(self.variant)}


def _tensors(x: Any) -> Iterable[Any]:
    import torch

    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, (list, tuple)):
        for v in x:
            yield from _tensors(v)
    elif isinstance(x, dict):
        for v in x.values():
            yield from _tensors(v)


def _nbytes(tensors: Iterable[Any]) -> int:
    seen: set[tuple[Any, int]] = set()
    total = 0
    for t in tensors:
        key = (t.device, t.untyped_storage().data_ptr()) if t.device.type != "meta" else (id(t), 0)
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


def _causal_share(q_len: int, k_len: int) -> float:
    """The unmasked share of a causal (top-left aligned, as PyTorch's is_causal) score matrix."""
    if q_len <= 0 or k_len <= 0:
        return 0.0
    return sum(min(i + 1, k_len) for i in range(q_len)) / (q_len * k_len)


def _attention(causal_at: int):
    """A FLOP formula for a fused attention op whose is_causal is positional argument `causal_at`."""
    from torch.utils.flop_counter import sdpa_flop_count

    def formula(*args: Any, out_val: Any = None, **kwargs: Any) -> int:
        q, k, v = args[:3]  # shapes (the counter passes shapes for tensors)
        causal = kwargs.get("is_causal", args[causal_at] if len(args) > causal_at else False)
        flops = sdpa_flop_count(q, k, v)
        return int(flops * _causal_share(q[-2], k[-2])) if causal else flops

    return formula


def _mapping() -> dict[Any, Any]:
    import torch

    aten, out = torch.ops.aten, {}
    for name, causal_at in (("_scaled_dot_product_flash_attention_for_cpu", 4), ("_scaled_dot_product_flash_attention", 4),
                            ("_scaled_dot_product_efficient_attention", 6), ("_scaled_dot_product_cudnn_attention", 6)):
        if hasattr(aten, name):
            out[getattr(aten, name)] = _attention(causal_at)
    return out


_FREE = {"clone", "copy_", "_to_copy", "detach", "alias", "lift_fresh", "empty_like", "zeros_like", "ones_like",
         "fill_", "zero_", "contiguous", "_unsafe_view", "expand", "resize_", "set_", "empty_strided", "new_empty"}


def _elementwise_counter(counted: Mapping[Any, Any]) -> Any:
    from torch.utils._python_dispatch import TorchDispatchMode

    class Elementwise(TorchDispatchMode):
        """One FLOP per element of the largest tensor each computing op touches."""

        def __init__(self) -> None:
            super().__init__()
            self.flops = 0

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            out = func(*args, **(kwargs or {}))
            ins = list(_tensors((args, kwargs or {})))
            packet = func.overloadpacket
            if ins and packet not in counted and not func.is_view and packet.__name__ not in _FREE:
                self.flops += max(t.numel() for t in (*ins, *_tensors(out)))
            return out

    return Elementwise()


def derive(task: Task, variant: Mapping[str, Any] | None = None, device: str = "cpu") -> Work:
    """FLOPs and bytes of one call of the task's reference on its inputs (seed 0), measured."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode, flop_registry

    from evaluator.inputs import make_init_inputs, make_inputs

    module = task.load_module()
    var = dict(variant) if variant else None
    inputs = make_inputs(module, 0, var, device=device if device != "cpu" else None)
    init = make_init_inputs(module, var)
    old = apply_variant(module, var)
    try:
        torch.manual_seed(0)
        with torch.device(device):
            model = module.Model(*init)
    finally:
        apply_variant(module, old)
    if hasattr(model, "eval"):
        model.eval()
    mapping = _mapping()
    counter = FlopCounterMode(display=False, custom_mapping=mapping)
    elementwise = _elementwise_counter({**flop_registry, **mapping})
    with torch.no_grad(), counter, elementwise:
        out = model(*inputs)
    state = list(model.parameters()) + list(model.buffers()) if isinstance(model, torch.nn.Module) else []
    nbytes = _nbytes(_tensors(inputs)) + _nbytes(_tensors(out)) + _nbytes(state)
    return Work(flops=float(counter.get_total_flops() + elementwise.flops), bytes=float(nbytes), source="derived",
                variant=var)


def _derive_or(task: Task, variant: dict[str, Any] | None, first: str, then: str) -> Work:
    try:
        return derive(task, variant, first)
    except Exception:  # an op with no meta kernel, data-dependent shapes: run it for real
        if first == then:
            raise
        return derive(task, variant, then)


def work(task: Task, variant: Mapping[str, Any] | None = None, device: str = "cpu") -> Work:
    """The task's work at its default shape or a variant: declared figures first (see the module doc)."""
    var = dict(variant) if variant else None
    key = (task.source_hash, task.meta.flops, task.meta.bytes, repr(sorted((var or {}).items())), device)
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
    declared = {"flops": task.meta.flops, "bytes": task.meta.bytes}
    if all(v is not None for v in declared.values()) and var is None:
        found = Work(float(declared["flops"] or 0), float(declared["bytes"] or 0), "declared", None)
    else:
        # with the FLOPs declared only the bytes are needed: shapes and dtypes, on the meta device
        how = "meta" if declared["flops"] is not None else device
        derived = _derive_or(task, var, how, device)
        base = _derive_or(task, None, how, device) if var is not None and any(v is not None for v in declared.values()) else None
        figures: dict[str, float] = {}
        sources: list[str] = []
        for name, value in declared.items():
            mine = getattr(derived, name)
            if value is None:
                figures[name] = mine
            elif base is None:
                figures[name] = float(value)
            elif getattr(base, name) > 0:  # a variant: the declared figure scaled as the derived one scales
                figures[name] = float(value) * mine / getattr(base, name)
            else:
                figures[name] = mine
            sources.append("derived" if value is None or (base is not None and getattr(base, name) <= 0) else "declared")
        source = sources[0] if len(set(sources)) == 1 else "mixed"
        found = Work(figures["flops"], figures["bytes"], source, var)
    with _LOCK:
        _CACHE[key] = found
    return found


def per_variant(task: Task, device: str = "cpu") -> list[Work]:
    """The default shape's work, then each declared variant's."""
    return [work(task, None, device)] + [work(task, v, device) for v in task.meta.variants]
