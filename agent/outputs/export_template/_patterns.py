"""What an exported kernel can stand in for inside a model, and how that is established.

A pattern is a computation with a known meaning in PyTorch (a LayerNorm over the last dim, an
RMSNorm, a softmax over the last dim, GELU(Linear(x)), causal attention). A task *binds* to a
pattern only when its reference is that computation: its module structure has the pattern's
parts (one nn.LayerNorm holding all of its state, say), and its outputs equal the pattern's
PyTorch form on the task's own inputs, on every shape the evaluator checked, including inputs
scaled so that constants such as eps change the result. `kernelwright export` runs `bind` on
each task; the package's `apply` then replaces only modules of the pattern's type whose
configuration equals the bound one. Nothing is matched by name.

Only torch here: kernelwright imports this file at export time, the package at run time.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

Close = Callable[[torch.Tensor, torch.Tensor], bool]


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps) * weight


def softmax(x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(x, dim=-1)


def gelu_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return F.gelu(F.linear(x, weight, bias))


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


class NoMatch(Exception):
    """The task is not this pattern (the message says why)."""


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def _one(model: nn.Module, kind: type, what: str) -> tuple[str, Any]:
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, kind)]
    if len(found) != 1:
        raise NoMatch(f"{len(found)} {what} modules in the reference, not one")
    return found[0]


def _owned_by(state: list[str], prefix: str, attrs: list[str]) -> list[str]:
    """The op's state must be exactly the module's tensors: what `apply` will pass for them."""
    want = [f"{prefix}.{a}" if prefix else a for a in attrs]
    if sorted(state) != sorted(want):
        raise NoMatch(f"the reference's state {state} is not the module's {want}")
    return [attrs[want.index(name)] for name in state]


def _inputs(cases: list[list[Any]], ndim: tuple[int, ...]) -> None:
    for args in cases:
        if len(args) != len(ndim) or not all(isinstance(a, torch.Tensor) and a.is_floating_point()
                                             and a.dim() == n for a, n in zip(args, ndim)):
            raise NoMatch(f"the inputs are not {len(ndim)} floating tensors of ranks {ndim}")


def _agree(models: list[nn.Module], cases: list[list[Any]], close: Close, scales: tuple[float, ...],
           form: Callable[[nn.Module, list[torch.Tensor]], torch.Tensor]) -> None:
    with torch.no_grad():
        for model, args in zip(models, cases):
            for s in scales:
                scaled = [a * s for a in args]
                got, want = model(*scaled), form(model, scaled)
                if not isinstance(got, torch.Tensor) or got.shape != want.shape or not close(got, want):
                    raise NoMatch(f"the reference differs from the pattern on inputs of shape "
                                  f"{[tuple(a.shape) for a in args]} scaled by {s:g}")


def _bind_layer_norm(models, cases, state, close):
    _inputs(cases, (2,))
    prefix, ln = _one(models[0], nn.LayerNorm, "nn.LayerNorm")
    if len(ln.normalized_shape) != 1 or not ln.elementwise_affine or ln.bias is None:
        raise NoMatch("its nn.LayerNorm is not over one dim with a weight and a bias")
    attrs = _owned_by(state, prefix, ["weight", "bias"])
    eps = float(ln.eps)

    def form(model, args):
        m = model.get_submodule(prefix)
        return layer_norm(args[0], m.weight, m.bias, eps)
    _agree(models, cases, close, (1.0, 1e-3), form)  # 1e-3: variance near eps, so eps shows
    return {"eps": eps}, attrs


def _bind_rms_norm(models, cases, state, close):
    _inputs(cases, (2,))
    if len(state) != 1 or _state(models[0])[state[0]].dim() != 1:
        raise NoMatch("the reference's state is not one weight vector")
    name = state[0]
    # eps candidates: attributes that hold it by the usual names; the numbers decide which is right
    eps = sorted({float(v) for m in models[0].modules() for a in ("eps", "variance_epsilon")
                  if isinstance(v := getattr(m, a, None), (int, float)) and not isinstance(v, bool)})
    for e in eps:
        try:
            _agree(models, cases, close, (1.0, 1e-3), lambda model, args: rms_norm(args[0], _state(model)[name], e))
        except NoMatch:
            continue
        return {"eps": e}, ["weight"]  # what an RMSNorm module holds it as
    raise NoMatch("no eps of the reference makes it x * rsqrt(mean(x^2) + eps) * weight")


def _bind_softmax(models, cases, state, close):
    _inputs(cases, (2,))
    if state:
        raise NoMatch("the reference has state")
    _agree(models, cases, close, (1.0, 8.0), lambda model, args: softmax(args[0]))
    return {}, []


def _bind_gelu_linear(models, cases, state, close):
    _inputs(cases, (2,))
    prefix, lin = _one(models[0], nn.Linear, "nn.Linear")
    if lin.bias is None:
        raise NoMatch("its nn.Linear has no bias")
    attrs = _owned_by(state, prefix, ["weight", "bias"])

    def form(model, args):
        m = model.get_submodule(prefix)
        return gelu_linear(args[0], m.weight, m.bias)
    _agree(models, cases, close, (1.0, 8.0), form)
    return {}, attrs


def _bind_causal_attention(models, cases, state, close):
    _inputs(cases, (4, 4, 4))
    if state:
        raise NoMatch("the reference has state")
    if any(not (a.shape == b.shape == c.shape) for a, b, c in cases):
        raise NoMatch("q, k and v do not share one shape")
    _agree(models, cases, close, (1.0,), lambda model, args: causal_attention(*args))
    return {}, []


BINDERS = {"layer_norm": _bind_layer_norm, "rms_norm": _bind_rms_norm, "softmax": _bind_softmax,
           "gelu_linear": _bind_gelu_linear, "causal_attention": _bind_causal_attention}


def bind(models: list[nn.Module], cases: list[list[Any]], state: list[str],
         close: Close) -> tuple[dict[str, Any] | None, str]:
    """The pattern the task's reference is ({"pattern", "config", "attrs"}), or None and why not.
    `models[i]` is the reference built for the shapes of `cases[i]`; `state` names the op's
    state tensors in order; `attrs` are the attributes of a model's module that supply them."""
    why = []
    for name, binder in BINDERS.items():
        try:
            config, attrs = binder(models, cases, state, close)
        except NoMatch as e:
            why.append(f"{name}: {e}")
            continue
        return {"pattern": name, "config": config, "attrs": attrs}, ""
    return None, "; ".join(why)


# --- which modules of a model a bound kernel may replace ------------------------------------

def rms_norm_eps(module: nn.Module) -> float | None:
    eps = getattr(module, "eps", getattr(module, "variance_epsilon", None))
    return float(eps) if isinstance(eps, (int, float)) and not isinstance(eps, bool) else None


def module_fits(pattern: str, module: nn.Module, config: dict[str, Any],
                rms_norm_types: tuple[type, ...] = ()) -> str:
    """"" when this module computes the bound pattern with the bound configuration, else why not."""
    if pattern == "layer_norm":
        if type(module) is not nn.LayerNorm:
            return "not an nn.LayerNorm"
        if len(module.normalized_shape) != 1 or not module.elementwise_affine or module.bias is None:
            return "not over one dim with a weight and a bias"
        return "" if module.eps == config["eps"] else f"eps {module.eps:g}, the kernel's is {config['eps']:g}"
    if pattern == "rms_norm":
        stock = hasattr(nn, "RMSNorm") and type(module) is nn.RMSNorm
        if not stock and type(module) not in rms_norm_types:
            return "not an nn.RMSNorm (nor a type given in rms_norm_types)"
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 1:
            return "no weight vector"
        eps = rms_norm_eps(module)
        return "" if eps == config["eps"] else f"eps {eps}, the kernel's is {config['eps']:g}"
    if pattern == "softmax":
        if type(module) is not nn.Softmax:
            return "not an nn.Softmax"
        return "" if module.dim == -1 else f"dim {module.dim} (only dim=-1 is known to be the last)"
    return f"{pattern} replaces no single module"
