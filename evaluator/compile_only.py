"""`kernelwright compile`: build a candidate's kernels without running them (no GPU needed).

The candidate is imported in a sandbox worker with the builds routed to the supervisor, as in
an evaluation; load_inline's CUDA sources are compiled with plain nvcc instead of a torch
extension build. The result is each build's log and, for CUDA, ptxas's per-kernel report.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any

from evaluator.messages import LoadRequest
from sandbox import ptxas
from sandbox.process import ProcessSandbox
from sandbox.worker import WorkerDied, WorkerError, WorkerTimeout


@dataclasses.dataclass
class CompileReport:
    ok: bool
    error: str = ""
    kernels: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    builds: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def compile_candidate(sandbox: ProcessSandbox, source: str, arch: str, timeout_s: float) -> CompileReport:
    t0 = time.monotonic()
    worker = sandbox.spawn(timeout_s + 30, files={"candidate.py": source})
    worker.arch_override = arch
    error = ""
    try:
        deadline = time.monotonic() + timeout_s
        worker.receive(deadline)
        worker.call("load", LoadRequest(compile_only=True, arch=arch), deadline=deadline)
    except WorkerError as e:
        error = str(e.meta.get("message", e))
    except (WorkerDied, WorkerTimeout) as e:
        error = str(e) or type(e).__name__
    finally:
        worker.close()
    builds = [{"ok": b.ok, "cached": b.cached, "seconds": round(b.seconds, 3), "log": b.log} for b in worker.builds]
    failed = [b for b in worker.builds if not b.ok]
    if failed:
        error = failed[0].log.strip() or error or "build failed"
    elif not worker.builds and not error:
        error = "the candidate built no kernel at import (nothing to compile)"
    kernels = [k for b in worker.builds if b.ok for k in ptxas.parse(b.log)]
    return CompileReport(not error, error, kernels, builds, time.monotonic() - t0)
