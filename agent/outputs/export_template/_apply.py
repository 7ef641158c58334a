"""`<package>.apply(model)`: what the package's kernels compute, replaced in a model in place.

Modules are matched by type and configuration against the pattern each task was bound to at
export (`_patterns.py`), never by name:

- `nn.LayerNorm` over one dim with weight and bias, of the bound eps;
- `nn.RMSNorm` (and types passed as `rms_norm_types`, with `.weight` and `.eps`) of the bound eps;
- `nn.Softmax(dim=-1)`;
- in an `nn.Sequential`, an `nn.Linear` with bias followed by an exact `nn.GELU()`;
- calls of `torch.softmax` / `F.softmax` / `Tensor.softmax` over the last dim, and of
  `F.scaled_dot_product_attention(q, k, v, is_causal=True)` (no mask, dropout or other scale),
  made directly in the `forward` of a module.

A replaced forward calls the task's op when the tensors fit the kernel (rows of the last dim
for norms, softmax and the linear layer), and the module's own forward otherwise, or when
gradients are needed. With `verify=True` each replaced module is first run both ways on a
probe input: one whose kernel did not run, or disagreed beyond the task's tolerance, is left
as it was and listed in `.skipped`. The state dict is untouched; `restore(model)` undoes it.
"""
from __future__ import annotations

import dataclasses
import weakref
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from . import _dispatch, _patterns
from ._ops import op as _op

_MARK = "_" + _dispatch.PACKAGE + "_replaces"
_applied: "weakref.WeakKeyDictionary[nn.Module, list[tuple[nn.Module, Any]]]" = weakref.WeakKeyDictionary()
_SOFTMAX = (torch.softmax, F.softmax, torch.Tensor.softmax)


@dataclasses.dataclass(frozen=True)
class Replacement:
    path: str  # the module's name in the model ("" is the model itself)
    replaced: str  # what: "nn.LayerNorm", "nn.Linear + nn.GELU", "softmax calls", ...
    task: str
    op: str  # torch.ops.<package>.<function>


class Applied(list):
    """The replacements made; `.skipped` lists (path, why) for modules of a pattern left alone."""

    def __init__(self, replaced: list[Replacement], skipped: list[tuple[str, str]]):
        super().__init__(replaced)
        self.skipped = skipped


def _bound(pattern: str) -> list[dict[str, Any]]:
    found = [e for e in _dispatch.manifest()["tasks"]
             if e.get("op") and (e.get("binding") or {}).get("pattern") == pattern]
    return sorted(found, key=lambda e: -e["speedup"])


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


def _module_forward(module: nn.Module, e: dict[str, Any], original: Callable[..., Any]) -> Callable[..., Any]:
    """Norms and nn.Softmax: the op over rows of the last dim, with the module's own tensors."""
    kernel, attrs = _op(e["task"]), e["binding"]["attrs"]

    def forward(x: torch.Tensor) -> torch.Tensor:
        state = [getattr(module, a) for a in attrs]
        rows = _rows(x) if isinstance(x, torch.Tensor) and x.dim() >= 1 else x
        if not _dispatch.fits(e, [rows], state):
            return original(x)
        return _dispatch.invoke(e, kernel, [rows], state).reshape(x.shape)
    return forward


class _Fused:
    def __init__(self, linear: nn.Linear, gelu: nn.GELU, e: dict[str, Any]):
        self.linear, self.gelu, self.e, self.kernel = linear, gelu, e, _op(e["task"])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        state = [self.linear.weight, self.linear.bias]
        rows = _rows(x) if isinstance(x, torch.Tensor) and x.dim() >= 1 else x
        if not _dispatch.fits(self.e, [rows], state):
            return self.gelu(self.linear(x))
        return _dispatch.invoke(self.e, self.kernel, [rows], state).reshape(*x.shape[:-1], self.linear.out_features)


def _sequential_forward(seq: nn.Sequential, fused: dict[int, _Fused]) -> Callable[..., Any]:
    """The Sequential's own loop, with each matched Linear + GELU pair computed by one op."""

    def forward(x: Any) -> Any:
        mods, i = list(seq._modules.values()), 0
        while i < len(mods):
            f = fused.get(i)
            if f is not None and mods[i] is f.linear and i + 1 < len(mods) and mods[i + 1] is f.gelu:
                x, i = f(x), i + 2
            else:
                x, i = mods[i](x), i + 1
        return x
    return forward


def _softmax_call(entries: list[tuple[dict[str, Any], Any]], args: tuple, kwargs: dict[str, Any]) -> Any:
    x = args[0] if args else kwargs.get("input")
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    plain = len(args) <= 2 and kwargs.get("dtype") is None and set(kwargs) <= {"input", "dim", "dtype", "_stacklevel"}
    if not plain or not isinstance(x, torch.Tensor) or x.dim() < 1 or dim not in (-1, x.dim() - 1):
        return None
    rows = _rows(x)
    for e, kernel in entries:
        if _dispatch.fits(e, [rows]):
            return _dispatch.invoke(e, kernel, [rows], ()).reshape(x.shape)
    return None


_SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


def _attention_call(entries: list[tuple[dict[str, Any], Any]], args: tuple, kwargs: dict[str, Any]) -> Any:
    if len(args) > len(_SDPA_ARGS) or set(kwargs) - set(_SDPA_ARGS):
        return None
    a = {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None, "enable_gqa": False,
         **dict(zip(_SDPA_ARGS, args)), **kwargs}
    q, k, v = a["query"], a["key"], a["value"]
    if a["attn_mask"] is not None or a["dropout_p"] != 0 or a["is_causal"] is not True or a["enable_gqa"]:
        return None
    if not all(isinstance(t, torch.Tensor) for t in (q, k, v)) or not (q.shape == k.shape == v.shape):
        return None
    if a["scale"] is not None and abs(a["scale"] - q.shape[-1] ** -0.5) > 1e-12:
        return None
    q, k, v = (t.contiguous() for t in (q, k, v))  # heads split off a projection are views: same values
    for e, kernel in entries:
        if _dispatch.fits(e, [q, k, v]):
            return _dispatch.invoke(e, kernel, [q, k, v], ())
    return None


class _Calls(TorchFunctionMode):
    """While a matched module's forward runs: its softmax and attention calls go to the ops."""

    def __init__(self, softmax: list[dict[str, Any]], attention: list[dict[str, Any]]):
        super().__init__()  # the ops are looked up here, not while a compiled forward is traced
        self.softmax = [(e, _op(e["task"])) for e in softmax]
        self.attention = [(e, _op(e["task"])) for e in attention]

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = None
        if self.softmax and func in _SOFTMAX:
            out = _softmax_call(self.softmax, args, kwargs)
        elif self.attention and func is F.scaled_dot_product_attention:
            out = _attention_call(self.attention, args, kwargs)
        return func(*args, **kwargs) if out is None else out


def _calls_forward(original: Callable[..., Any], softmax: list, attention: list) -> Callable[..., Any]:
    calls = _Calls(softmax, attention)

    def forward(*args: Any, **kwargs: Any) -> Any:
        with calls:
            return original(*args, **kwargs)
    return forward


def _probe(e: dict[str, Any], original: Callable[..., Any], replaced: Callable[..., Any], features: int,
           like: torch.Tensor | None, why: Callable[[torch.Tensor], str]) -> str:
    """"" when the replacement ran the kernel on a probe input and agreed with the original; `why`
    says why the kernel would not take an input."""
    dtype = like.dtype if like is not None else torch.float32
    device = like.device if like is not None else torch.device(e["device"])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, features, generator=g).to(device=device, dtype=dtype)
    with torch.no_grad():
        reason = why(x)
        if reason:
            return f"the kernel did not run on a probe input: {reason}"
        want, got = original(x), replaced(x)
    if _dispatch.last_path(e["task"]) != "kernel":  # it could not be built here, say
        return f"the kernel did not run on a probe input: {_dispatch.last_reason(e['task'])}"
    atol, rtol = e["tolerances"].get(str(dtype).removeprefix("torch."), (0.0, 0.0))
    if got.shape != want.shape or not torch.allclose(got, want, atol=atol, rtol=rtol):
        return f"the kernel differs from the module on a probe input (atol {atol:g}, rtol {rtol:g})"
    return ""


def _install(model: nn.Module, module: nn.Module, forward: Callable[..., Any]) -> None:
    setattr(forward, _MARK, True)
    _applied.setdefault(model, []).append((module, module.__dict__.get("forward")))
    module.forward = forward


def apply(model: nn.Module, *, verify: bool = True, rms_norm_types: tuple[type, ...] = ()) -> Applied:
    """Replace, in place, what this package's kernels compute; returns what was replaced."""
    done: list[Replacement] = []
    skipped: list[tuple[str, str]] = []
    counts: dict[int, int] = {}
    for _, m in model.named_modules(remove_duplicate=False):
        counts[id(m)] = counts.get(id(m), 0) + 1
    softmax, gelu, attention = _bound("softmax"), _bound("gelu_linear"), _bound("causal_attention")
    for path, m in list(model.named_modules()):
        if getattr(m.__dict__.get("forward"), _MARK, False):
            skipped.append((path, "already replaced"))
        elif not _replace_module(model, path, m, verify, tuple(rms_norm_types), done, skipped):
            if isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward and gelu:
                _fuse(model, path, m, gelu, counts, verify, done, skipped)
            code = getattr(type(m).forward, "__code__", None)
            names = set(code.co_names) if code is not None else set()
            soft = softmax if "softmax" in names else []
            att = attention if "scaled_dot_product_attention" in names else []
            if (soft or att) and "forward" not in m.__dict__:
                _install(model, m, _calls_forward(m.forward, soft, att))
                for what, entries in (("softmax calls", soft), ("scaled_dot_product_attention calls", att)):
                    if entries:
                        done.append(Replacement(path, what, entries[0]["task"],
                                                f"{_dispatch.PACKAGE}.{entries[0]['function']}"))
    return Applied(done, skipped)


def _replace_module(model: nn.Module, path: str, m: nn.Module, verify: bool, rms_norm_types: tuple[type, ...],
                    done: list[Replacement], skipped: list[tuple[str, str]]) -> bool:
    """A norm or nn.Softmax: replaced by the first bound kernel that fits it; False for other modules."""
    for pattern in ("layer_norm", "rms_norm", "softmax"):
        entries = _bound(pattern)
        if not entries or not _looks_like(pattern, m, rms_norm_types):
            continue
        reasons = []
        for e in entries:
            why = _patterns.module_fits(pattern, m, e["binding"]["config"], rms_norm_types)
            if not why:
                forward = _module_forward(m, e, m.forward)
                like = getattr(m, "weight", None)
                like = like if isinstance(like, torch.Tensor) else None
                state = [getattr(m, a) for a in e["binding"]["attrs"]]
                why = _probe(e, m.forward, forward, like.shape[-1] if like is not None else 16, like,
                             lambda x: _dispatch.mismatch(e, [_rows(x)], state)) if verify else ""
            if not why:
                _install(model, m, forward)
                done.append(Replacement(path, type(m).__name__, e["task"], f"{_dispatch.PACKAGE}.{e['function']}"))
                return True
            reasons.append(f"{e['task']}: {why}")
        skipped.append((path, "; ".join(reasons)))
        return True
    return False


def _looks_like(pattern: str, m: nn.Module, rms_norm_types: tuple[type, ...]) -> bool:
    kinds = {"layer_norm": (nn.LayerNorm,), "softmax": (nn.Softmax,),
             "rms_norm": tuple(rms_norm_types) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())}[pattern]
    return isinstance(m, kinds)


def _fuse(model: nn.Module, path: str, seq: nn.Sequential, entries: list[dict[str, Any]], counts: dict[int, int],
          verify: bool, done: list[Replacement], skipped: list[tuple[str, str]]) -> None:
    mods, fused = list(seq._modules.items()), {}
    for i, ((name, lin), (_, act)) in enumerate(zip(mods, mods[1:])):
        if not (type(lin) is nn.Linear and type(act) is nn.GELU and act.approximate == "none"):
            continue
        where = f"{path}.{name}" if path else name
        if lin.bias is None:
            skipped.append((where, "nn.Linear without a bias"))
            continue
        if counts[id(lin)] > 1 or counts[id(act)] > 1:
            skipped.append((where, "the nn.Linear or nn.GELU is used more than once in the model"))
            continue
        why = []
        for e in entries:
            f = _Fused(lin, act, e)
            reason = _probe(e, lambda x: act(lin(x)), f, lin.in_features, lin.weight,
                            lambda x: _dispatch.mismatch(e, [_rows(x)], [lin.weight, lin.bias])) if verify else ""
            if not reason:
                fused[i] = f
                done.append(Replacement(where, "nn.Linear + nn.GELU", e["task"],
                                        f"{_dispatch.PACKAGE}.{e['function']}"))
                break
            why.append(f"{e['task']}: {reason}")
        else:
            skipped.append((where, "; ".join(why)))
    if fused:
        _install(model, seq, _sequential_forward(seq, fused))


def restore(model: nn.Module) -> int:
    """Undo `apply(model)`; returns how many modules got their own forward back."""
    installed = _applied.pop(model, [])
    for module, previous in reversed(installed):
        if previous is None:
            module.__dict__.pop("forward", None)
        else:
            module.forward = previous
    return len(installed)
