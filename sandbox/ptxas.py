"""Per-kernel resource usage from nvcc's `-Xptxas -v` report: registers, spills, shared memory."""
from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(\w+)'")
_PROPS = re.compile(r"Function properties for (\S+)\s*\n\s*(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def parse(log: str) -> list[dict[str, Any]]:
    """One dict per kernel: kernel, mangled, arch, registers, spill_stores, spill_loads, shared_bytes, stack_bytes."""
    props = {m.group(1): tuple(int(m.group(i)) for i in (2, 3, 4)) for m in _PROPS.finditer(log)}
    kernels = []
    lines = log.splitlines()
    for i, line in enumerate(lines):
        m = _ENTRY.search(line)
        if not m:
            continue
        name, arch = m.groups()
        used = next((_USED.search(x) for x in lines[i + 1:i + 6] if _USED.search(x)), None)
        stack, spill_st, spill_ld = props.get(name, (0, 0, 0))
        kernels.append({
            "kernel": demangle(name), "mangled": name, "arch": arch,
            "registers": int(used.group(1)) if used else None,
            "spill_stores": spill_st, "spill_loads": spill_ld,
            "shared_bytes": int(used.group(2)) if used and used.group(2) else 0,
            "stack_bytes": stack,
        })
    return kernels


def demangle(name: str) -> str:
    if not name.startswith("_Z") or not shutil.which("c++filt"):
        return name
    try:
        out = subprocess.run(["c++filt", name], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or name
    except (OSError, subprocess.TimeoutExpired):
        return name


def summary(kernels: list[dict[str, Any]]) -> str:
    """One line per kernel, for prompts and terminals."""
    return "\n".join(f"{k['kernel']} [{k['arch']}]: {k['registers']} registers, {k['shared_bytes']} B smem, "
                     f"{k['stack_bytes']} B stack, spills {k['spill_stores']} st / {k['spill_loads']} ld"
                     for k in kernels)
