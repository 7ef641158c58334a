"""What an exported package needs to know about a task beyond its files, drawn from the task itself.

For every shape the evaluator checked (the default and each variant) the task's reference is
built as the evaluator builds it and its inputs drawn. From those cases come:

- the op's signature: the forward's inputs, then the reference module's state (parameters and
  buffers) and the outputs;
- the shape rules a call must meet for the kernel to run: dims that had one size in every case
  keep it (`fixed`), dims that were equal in every case stay equal (`tied`);
- how constructor arguments follow the state's shapes (`init`): an argument that varied between
  the cases is read off the state dim (or input dim) that varied with it; one that did not stays;
- the pattern the reference is (agent/outputs/export_template/_patterns.py), established numerically.

With a single case (no variants) every dim is fixed: the kernel runs only at the checked shape.
"""
from __future__ import annotations

import copy
import inspect
import keyword
import re
from typing import Any

import torch

from agent.outputs.export_template import _patterns
from tasks.spec import Task, apply_variant, import_file

SCHEMA_TYPES = {bool: "bool", int: "int", float: "float"}
BIND_NUMEL = 1 << 22  # inputs larger than this are not used to establish a pattern (CPU time at export)


def _cases(task: Task, init_seed: int) -> tuple[Any, list[tuple[list[Any], list[Any], Any]]]:
    """(module, [(inputs, init args, reference model)]) for the default and each variant."""
    module = import_file(task.path, f"kw_describe_{task.source_hash[:12]}")
    cases = []
    for variant in [None, *task.meta.variants]:
        old = apply_variant(module, variant)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                args = list(module.get_inputs())
                torch.manual_seed(0)
                init = list(module.get_init_inputs())
                torch.manual_seed(init_seed)
                model = module.Model(*init).eval()
        finally:
            apply_variant(module, old)
        cases.append((args, init, model))
    return module, cases


def _identifier(name: str, taken: set[str]) -> str:
    ident = re.sub(r"\W", "_", name) or "t"
    ident = "t_" + ident if ident[0].isdigit() or keyword.iskeyword(ident) else ident
    while ident in taken:
        ident += "_"
    taken.add(ident)
    return ident


def _input_names(model_cls: Any, n: int) -> list[str]:
    try:
        params = list(inspect.signature(model_cls.forward).parameters.values())[1:]
    except (TypeError, ValueError):
        params = []
    names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return names[:n] if len(names) >= n else [f"input{i}" for i in range(n)]


def _state(model: Any) -> list[tuple[str, str, torch.Tensor]]:
    return [*[(n, "parameter", t) for n, t in model.named_parameters()],
            *[(n, "buffer", t) for n, t in model.named_buffers()]]


def _rank(shape: tuple[int, ...] | None) -> int | None:
    return None if shape is None else len(shape)


def _rules(shapes: list[list[tuple[int, ...] | None]]) -> dict[str, list[Any]]:
    """Fixed and tied dims over the cases (shapes[case][slot]; None: not a tensor)."""
    slots = range(len(shapes[0]))
    ranks_agree = all(len({_rank(c[s]) for c in shapes}) == 1 for s in slots)
    cases = shapes if ranks_agree else shapes[:1]  # ranks vary: only the default shape is known to work
    fixed: list[list[int]] = []
    groups: dict[tuple[int, ...], list[list[int]]] = {}
    for s in slots:
        first = cases[0][s]
        if first is None:
            continue
        for axis in range(len(first)):
            sizes = tuple((c[s] or ())[axis] for c in cases)  # (ranks agree: every case has a shape here)
            if len(set(sizes)) == 1:
                fixed.append([s, axis, sizes[0]])
            else:
                groups.setdefault(sizes, []).append([s, axis])
    return {"fixed": fixed, "tied": [g for g in groups.values() if len(g) > 1]}


def _init(inits: list[list[Any]], shapes: list[list[tuple[int, ...] | None]], n_inputs: int) -> dict[str, Any] | None:
    """Constructor arguments as a default plus, for those that varied, the dim that gives them."""
    if not all(isinstance(v, (bool, int, float, str, type(None))) for v in inits[0]):
        return None
    if len({len(i) for i in inits}) != 1:
        return None
    found = {}
    order = [*range(n_inputs, len(shapes[0])), *range(n_inputs)]  # the state's dims first
    for i, _value in enumerate(inits[0]):
        values = tuple(init[i] for init in inits)
        if len(set(values)) == 1:
            continue
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            return None
        source = next(([s, a] for s in order if shapes[0][s] is not None for a in range(len(shapes[0][s]))
                       if all(len(c[s]) > a and c[s][a] == v for c, v in zip(shapes, values))), None)
        if source is None:
            return None
        found[str(i)] = source
    return {"default": inits[0], "from": found}


def _outputs(model: Any, args: list[Any]) -> tuple[list[dict[str, Any]], bool]:
    with torch.no_grad():
        try:  # shapes and dtypes on the meta device: no arithmetic at export
            out = copy.deepcopy(model).to("meta")(*[a.to("meta") if isinstance(a, torch.Tensor) else a for a in args])
        except Exception:  # noqa: BLE001 - task code that needs real data: run it
            out = model(*args)
    return _describe_outputs(out)


def _describe_outputs(out: Any) -> tuple[list[dict[str, Any]], bool]:
    many = isinstance(out, (tuple, list))
    outs = list(out) if many else [out]
    if not outs or not all(isinstance(o, torch.Tensor) for o in outs):
        raise ValueError("the reference returns something other than tensors")
    return [{"dtype": str(o.dtype).removeprefix("torch."), "ndim": o.dim()} for o in outs], many


def describe(task: Task, device: str, init_seed: int, tolerances: dict[str, list[float]]) -> dict[str, Any]:
    """The manifest fields of one task: inputs, state, shapes, init, op (or op_note), binding
    (or binding_note)."""
    module, cases = _cases(task, init_seed)
    args0, _, model0 = cases[0]
    names = _input_names(module.Model, len(args0))
    taken = set(names)
    inputs: list[dict[str, Any]] = []
    for i, (name, a) in enumerate(zip(names, args0)):
        if not isinstance(a, torch.Tensor):
            inputs.append({"name": name, "kind": "value", "type": type(a).__name__})
            continue
        where = task.meta.input_devices[i] if i < len(task.meta.input_devices) else "device"
        inputs.append({"name": name, "kind": "tensor", "dtype": str(a.dtype).removeprefix("torch."), "ndim": a.dim(),
                       "device": device if where == "device" else "cpu",
                       "pinned": device == "cuda" and where == "pinned"})
    state: list[dict[str, Any]] = [{"name": n, "arg": _identifier(n, taken), "kind": kind, "dtype": str(t.dtype).removeprefix("torch."),
              "ndim": t.dim(), "shape": list(t.shape)} for n, kind, t in _state(model0)]
    shapes = []
    for args, _, model in cases:
        tensors = {n: t for n, _, t in _state(model)}
        shapes.append([tuple(a.shape) if isinstance(a, torch.Tensor) else None for a in args]
                      + [tuple(tensors[s["name"]].shape) if s["name"] in tensors else None for s in state])
    rules = _rules(shapes)
    init = _init([c[1] for c in cases], shapes, len(inputs))
    if init is None:  # models are then only built one way: their state must have the default's shapes
        extra = [[len(inputs) + j, axis, size] for j, s in enumerate(state) for axis, size in enumerate(s["shape"])]
        rules["fixed"] += [f for f in extra if f not in rules["fixed"]]
    out = {"inputs": inputs, "state": state, "shapes": rules, "init": init}
    out.update(_op(inputs, state, model0, args0))
    out.update(_binding(cases, state, tolerances))
    return out


def _op(inputs: list[dict[str, Any]], state: list[dict[str, Any]], model: Any, args: list[Any]) -> dict[str, Any]:
    params = []
    for spec, a in zip(inputs, args):
        kind = "Tensor" if spec["kind"] == "tensor" else SCHEMA_TYPES.get(type(a))
        if kind is None:
            return {"op": None, "op_note": f"input {spec['name']} is a {type(a).__name__}, which an op cannot take"}
        params.append(f"{kind} {spec['name']}")
    params += [f"Tensor {s['arg']}" for s in state]
    try:
        outputs, many = _outputs(model, args)
    except Exception as e:  # noqa: BLE001 - task code: anything it raises means no op
        return {"op": None, "op_note": f"the reference's outputs could not be described: {type(e).__name__}: {e}"}
    returns = "(" + ", ".join("Tensor" for _ in outputs) + ")" if many else "Tensor"
    return {"op": {"schema": f"({', '.join(params)}) -> {returns}", "outputs": outputs, "tuple": many}, "op_note": ""}


def _binding(cases: list[tuple[list[Any], list[Any], Any]], state: list[dict[str, Any]],
             tolerances: dict[str, list[float]]) -> dict[str, Any]:
    def close(got: torch.Tensor, want: torch.Tensor) -> bool:
        atol, rtol = tolerances.get(str(want.dtype).removeprefix("torch."), (1e-4, 1e-4))
        return bool(torch.allclose(got, want, atol=atol, rtol=rtol))

    small = [c for c in cases if sum(a.numel() for a in c[0] if isinstance(a, torch.Tensor)) <= BIND_NUMEL]
    use = small or [min(cases, key=lambda c: sum(a.numel() for a in c[0] if isinstance(a, torch.Tensor)))]
    try:
        binding, why = _patterns.bind([c[2] for c in use], [c[0] for c in use], [s["name"] for s in state], close)
    except Exception as e:  # noqa: BLE001 - task code: a reference that fails on the probes binds to nothing
        binding, why = None, f"{type(e).__name__}: {e}"
    return {"binding": binding, "binding_note": why}
