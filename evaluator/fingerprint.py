"""The environment fingerprint stored with every evaluation: speedups compare only within one."""
from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import subprocess
from typing import Any

from sandbox.compiler import compiler_version, host_cpu


@functools.cache
def _driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return None


def host(device: str, threads: int) -> dict[str, Any]:
    import torch

    fp: dict[str, Any] = {
        "device": device, "cpu": host_cpu(), "cores": os.cpu_count(), "threads": threads,
        "machine": platform.machine(), "os": platform.system(), "python": platform.python_version(),
        "torch": torch.__version__, "cxx": compiler_version("cpp").split(" on ")[0],
    }
    if device == "cuda":
        fp["nvcc"] = compiler_version("cuda")
        fp["driver"] = _driver()
    return fp


def with_device(fp: dict[str, Any], device_info: dict[str, Any]) -> dict[str, Any]:
    out = {**fp, **device_info}
    out["id"] = fingerprint_id(out)
    return out


def fingerprint_id(fp: dict[str, Any]) -> str:
    """A short id over what decides speed: processor or GPU model, threads, torch and compilers."""
    keys = ("device", "cpu", "threads", "torch", "cxx", "gpu", "capability", "sm_count", "driver", "cuda", "nvcc", "triton")
    blob = json.dumps({k: fp.get(k) for k in keys}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
