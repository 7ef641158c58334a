"""The generated text of an exported package: its __init__.py, pyproject.toml and README.md."""
from __future__ import annotations

import ast
from typing import Any

from tasks.spec import Task


def function(task: Task, name: str) -> str:
    """`def <name>(<forward's parameters>)`, calling the dispatcher with them."""
    tree = ast.parse(task.source)
    model = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Model")
    forward = next((n for n in model.body if isinstance(n, ast.FunctionDef) and n.name == "forward"), None)
    if forward is None or not all(isinstance(d, ast.Constant) for d in [*forward.args.defaults,
                                                                          *filter(None, forward.args.kw_defaults)]):
        params, call = "*args, **kwargs", "*args, **kwargs"  # defaults that name module constants stay with Model
    else:
        a = forward.args
        if a.posonlyargs:  # drop self
            a.posonlyargs = a.posonlyargs[1:]
        else:
            a.args = a.args[1:]
        params = ast.unparse(a)
        call = ", ".join([p.arg for p in [*a.posonlyargs, *a.args]] + ([f"*{a.vararg.arg}"] if a.vararg else [])
                         + [f"{k.arg}={k.arg}" for k in a.kwonlyargs] + ([f"**{a.kwarg.arg}"] if a.kwarg else []))
    returns = f" -> {ast.unparse(forward.returns)}" if forward is not None and forward.returns else ""
    doc = (task.meta.description or f"The {task.name} task.").replace('"""', "'''")
    return (f'def {name}({params}){returns}:\n    """{doc}\n\n    The exported kernel when the inputs fit it, else the '
            f'PyTorch reference: see last_path({task.name!r})."""\n    return _call({task.name!r}, {call})\n')


def init(package: str, functions: list[str]) -> str:
    names = [f.split("(", 1)[0].removeprefix("def ") for f in functions]
    api = ["apply", "restore", "op", "last_path", "last_reason", "path_counts", "kernel_origin", "manifest"]
    return (f'"""Kernels exported by kernelwright: one function and one op per task (see manifest.json).\n\n'
            f'    import {package}\n    y = {package}.{names[0]}(...)  # or torch.ops.{package}.{names[0]}(...)\n'
            f'    {package}.last_path("{names[0]}")  # "kernel" or "reference"\n'
            f'    {package}.apply(model)              # replace what the kernels compute in a model\n\n'
            f'${package.upper()}_FORCE_REFERENCE=1 runs every reference; '
            f'${package.upper()}_CACHE holds the builds.\n"""\n'
            "from __future__ import annotations\n\n"
            "from . import _ops  # noqa: F401 - registers torch.ops." + package + ".*\n"
            "from ._apply import Applied, Replacement, apply, restore\n"
            "from ._dispatch import call as _call\n"
            "from ._dispatch import kernel_origin, last_path, last_reason, manifest, path_counts\n"
            "from ._ops import op\n\n"
            f"__all__ = {[*names, *api]!r}\n\n\n" + "\n\n".join(functions))


def pyproject(name: str, version: str) -> str:
    return f"""[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "{name}"
version = "{version}"
description = "Kernels exported by kernelwright, each checked against its PyTorch reference"
requires-python = ">=3.10"
dependencies = ["torch>=2.4"]

[tool.setuptools]
packages = ["{name}", "{name}.kernels", "{name}.references"]

[tool.setuptools.package-data]
"{name}" = ["manifest.json", "prebuilt/*"]
"""


def readme(package: str, entries: list[dict[str, Any]], left_out: list[dict[str, Any]], rule: str,
           prebuilt: str) -> str:
    rows = "\n".join(f"| `{package}.{e['function']}` | {e['speedup']:.2f}x | "
                     f"{(e.get('binding') or {}).get('pattern', '-')} | {e['device']} | {e['fingerprint_id']} "
                     f"| {e['candidate_id']} |" for e in entries)
    out = "\n".join(f"| {e['task']} | {e['speedup']:.2f}x | {e['reason']} |" for e in left_out) or "| - | - | - |"
    return f"""# {package}

Kernels exported by kernelwright: for each task, the fastest kernel that passed its evaluation,
shipped only if {rule}.

Each task is a function (`{package}.<task>(...)`, with the weights the kernel was checked with)
and a custom op, `torch.ops.{package}.<task>(inputs..., state...)`, that works eagerly, under
`torch.compile(fullgraph=True)` and under `torch.export`. A call runs the kernel when its
inputs look like those it was checked with (dtype, rank, device, contiguous, shapes related as in
every checked shape), and the PyTorch reference otherwise; `{package}.last_path(task)` says which
ran and `{package}.last_reason(task)` why. The ops have no backward.

`{package}.apply(model)` replaces, in place, the modules and calls the kernels compute (matched by
type and configuration: see the pattern column) and returns what it replaced;
`{package}.restore(model)` undoes it.

{prebuilt}

| function | speedup | pattern | device | fingerprint | candidate |
|---|---|---|---|---|---|
{rows}

Left out:

| task | speedup | why |
|---|---|---|
{out}

Check this machine: `python -m {package}.selftest`.
"""
