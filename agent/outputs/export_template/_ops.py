"""The package's custom ops: `torch.ops.<package>.<task>` for every task the manifest gives an op.

Each op is defined with its schema from the manifest (the reference's forward inputs, then the
reference module's state), implemented by the dispatcher (kernel or reference, per call) and
given a fake implementation (the reference run on fake tensors) so that torch.compile and
torch.export can trace through it without running it. The ops have no backward.
"""
from __future__ import annotations

from typing import Any

import torch

from . import _dispatch

_library = torch.library.Library(_dispatch.PACKAGE, "DEF")  # kept alive: the ops live as long as it does


def _register(e: dict[str, Any]) -> None:
    task, name = e["task"], e["function"]

    def impl(*args: Any) -> Any:
        return _dispatch.run(task, *args)

    def fake(*args: Any) -> Any:
        return _dispatch.fake(task, *args)

    _library.define(name + e["op"]["schema"])
    _library.impl(name, impl, "CompositeExplicitAutograd")
    torch.library.register_fake(f"{_dispatch.PACKAGE}::{name}", fake, lib=_library)


for _e in _dispatch.manifest()["tasks"]:
    if _e.get("op"):
        _register(_e)


def op(task: str) -> Any:
    """The op of a task (by task or function name)."""
    e = _dispatch.entry(task)
    if not e.get("op"):
        raise KeyError(f"{_dispatch.PACKAGE}.{e['function']} has no op: {e.get('op_note', '')}")
    return getattr(getattr(torch.ops, _dispatch.PACKAGE), e["function"])
