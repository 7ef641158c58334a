"""Kernel binaries shipped in the package (`kernelwright export --build`), and the machine each
was built for.

`<package>/prebuilt/index.json` maps each kernel's build recipe (source, language, flags,
defines, target) to its binary and the fingerprint of the machine that built it. The runtime's
builder asks `find` first: a binary built for this machine's fingerprint is loaded as it is; one
built for another machine is not (C++ kernels are built with -march=native and may use
instructions this CPU lacks; CUDA ones for one GPU architecture), so the kernel is built here
instead, or, where that fails (no compiler), the PyTorch reference runs. `kernel_origin(task)`
says which happened.
"""
from __future__ import annotations

import functools
import hashlib
import json
import platform
from pathlib import Path
from typing import Any

HERE = Path(__file__).with_name("prebuilt")
recorded: list[tuple[Any, Any]] = []  # (spec, build result) of every build made here: what `main` ships


def recipe(spec: Any) -> str:
    blob = json.dumps([spec.lang, spec.source, list(spec.flags), [list(d) for d in spec.defines], spec.arch,
                       spec.output])
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


@functools.lru_cache(maxsize=None)
def fingerprint(lang: str) -> tuple[tuple[str, Any], ...]:
    """What a binary of this language depends on: the CPU and its instruction set, or the GPU."""
    if lang == "cuda":
        import torch

        if not torch.cuda.is_available():
            return (("gpu", None),)
        p = torch.cuda.get_device_properties(0)
        return (("gpu", p.name), ("capability", f"{p.major}.{p.minor}"))
    cpu, flags = "", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not cpu:
                cpu = value.strip()
            elif key.strip() in ("flags", "Features") and not flags:
                flags = value
    except OSError:
        pass
    isa = hashlib.sha256(" ".join(sorted(flags.split())).encode()).hexdigest()[:16]
    return (("machine", platform.machine()), ("cpu", cpu or platform.processor()), ("isa", isa))


def describe(fp: Any) -> str:
    return ", ".join(f"{k} {v}" for k, v in (fp.items() if isinstance(fp, dict) else fp))


@functools.lru_cache(maxsize=None)
def index() -> dict[str, Any]:
    path = HERE / "index.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def find(spec: Any) -> tuple[str | None, str]:
    """The shipped binary for this build if it was built for this machine, else None and why not
    ("" when the package ships no binaries)."""
    libs = index().get("libs")
    if not libs:
        return None, ""
    lib = libs.get(recipe(spec))
    if lib is None:
        return None, "no prebuilt binary of this kernel"
    here = fingerprint(spec.lang)
    if lib["fingerprint"] != {k: v for k, v in here}:
        return None, (f"the prebuilt binary was built for {describe(lib['fingerprint'])}, "
                      f"this machine is {describe(here)}")
    path = HERE / lib["file"]
    return (str(path), "") if path.is_file() else (None, f"the prebuilt binary {lib['file']} is missing")


def main() -> int:
    """At export (`python -c "import <package>._prebuilt as p; p.main()"`): build every kernel
    this machine can and put the binaries, with this machine's fingerprint, under prebuilt/."""
    import shutil

    import torch

    from . import _dispatch

    HERE.mkdir(exist_ok=True)
    libs: dict[str, Any] = {}
    for e in _dispatch.manifest()["tasks"]:
        if e["device"] == "cuda" and not torch.cuda.is_available():
            print(f"skip {e['task']}: a CUDA kernel, and this machine has no GPU")
            continue
        start = len(recorded)
        _dispatch.build(e, kernel=True)
        for spec, result in recorded[start:]:
            key = recipe(spec)
            shutil.copyfile(result.path, HERE / f"{key}.so")
            libs[key] = {"file": f"{key}.so", "task": e["task"], "lang": spec.lang,
                         "fingerprint": {k: v for k, v in fingerprint(spec.lang)}}
    (HERE / "index.json").write_text(json.dumps({"libs": libs}, indent=1) + "\n")
    print(json.dumps({"libs": len(libs), "tasks": sorted({v["task"] for v in libs.values()})}))
    return 0
