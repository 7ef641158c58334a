"""The environment a worker sees: an allowlist, then a second filter for anything secret-looking."""
from __future__ import annotations

import re
from typing import Mapping

PASS = (
    "PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "LD_LIBRARY_PATH", "CUDA_HOME", "CUDA_PATH",
    "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "CC", "CXX", "PYTHONPATH", "VIRTUAL_ENV",
)
# glibc maps every block over 32 MiB anew and unmaps it on free, so each call's fresh output
# page-faults 4 KiB at a time (~4 us a fault in this VM: a 64 MiB output cost 70 ms, more than the
# kernel writing it). Transparent huge pages for malloc's mappings (glibc >= 2.35; ignored where THP
# is off) cut that to the kernel's zeroing of the pages. Memory stays fresh per call (keeping freed
# blocks in the heap instead grew it 64 MiB a call); reference and candidate run under the same.
ALLOCATOR = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
SECRET = re.compile(r"KEY|TOKEN|SECRET|PASS(WORD|WD)?|CREDENTIAL|AUTH|COOKIE|SESSION|PRIVATE|CERT", re.I)


def is_secret(name: str) -> bool:
    return bool(SECRET.search(name))


def worker_env(parent: Mapping[str, str], workdir: str, threads: int,
               extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Build a worker's environment from scratch; no key, token or password gets through."""
    env = {k: parent[k] for k in PASS if k in parent and not is_secret(k)}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.update({
        "HOME": workdir, "TMPDIR": f"{workdir}/tmp", "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1", "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE",
        "TORCH_EXTENSIONS_DIR": f"{workdir}/torch_extensions", "TRITON_CACHE_DIR": f"{workdir}/triton",
        "XDG_CACHE_HOME": f"{workdir}/cache", **ALLOCATOR,
    })
    for k, v in (extra or {}).items():
        if not is_secret(k):
            env[k] = v
    return env
