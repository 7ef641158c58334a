"""`kernelwright tasks check`: is this file a usable task?

The reference runs in a sandbox worker like any evaluation (a broken task must not take the
CLI down). Errors make the task unusable; warnings name tasks on which a cheat would pass.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any

from evaluator.compare import Tolerance, compare, degenerate, flatten
from evaluator.inputs import derive_seed, make_inputs
from evaluator.reference import ReferenceFailed, ReferenceSession
from sandbox.process import ProcessSandbox
from sandbox.protocol import TensorInfo
from tasks.spec import Task

SLOW_MS = 1000.0


@dataclasses.dataclass
class CheckResult:
    file: str
    name: str
    errors: list[str] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)
    outputs: list[str] = dataclasses.field(default_factory=list)
    reference_ms: float | None = None

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "ok": self.ok}


def _describe(value: Any) -> list[str]:
    return [f"{tuple(v.tensor.shape)} {str(v.tensor.dtype).removeprefix('torch.')}" if isinstance(v, TensorInfo)
            else type(v).__name__ for v in flatten(value)]


def check_task(task: Task, sandbox: ProcessSandbox, timeout_s: float = 120.0) -> CheckResult:
    result = CheckResult(str(task.path), task.name)
    try:
        module = task.load_module()
    except Exception as e:  # noqa: BLE001 - the user's file may raise anything at import
        result.errors.append(f"import failed: {type(e).__name__}: {e}")
        return result
    ref = ReferenceSession(sandbox, task, timeout_s)
    tol = Tolerance(task.meta.atol, task.meta.rtol)
    try:
        ref.start(0)
        a_args = make_inputs(module, derive_seed(1, "check"))
        a = ref.outputs(a_args, "a", None, 0)
        result.outputs = _describe(a)
        again = ref.outputs(a_args, "a-again", None, 0)  # same process: catches RNG use in forward
        ref2 = ReferenceSession(sandbox, task, timeout_s)  # another process: catches the rest
        try:
            ref2.start(0)
            other = ref2.outputs(a_args, "a", None, 0)
        finally:
            ref2.close()
        for twin in (again, other):
            same, _, note = compare(twin, a, Tolerance(0.0, 0.0))
            if not same:
                result.errors.append(f"the reference is not deterministic: two runs on one input differ ({note})")
                break
        b = ref.outputs(make_inputs(module, derive_seed(2, "check")), "b", None, 0)
        result.warnings += degenerate(a, b, tol)
        for i, variant in enumerate(task.meta.variants):
            try:
                ref.outputs(make_inputs(module, derive_seed(3, i), variant), f"v{i}", variant, 0)
            except ReferenceFailed as e:
                result.errors.append(f"variant {i} {variant}: {str(e).splitlines()[0]}")
        t0 = time.perf_counter()
        timing = ref.timing({"seed": 7, "warmup": 1, "min_iters": 3, "max_iters": 10, "target_s": 0.2},
                            None, 0, max_age_s=0)
        result.reference_ms = timing.median_ms
        if timing.median_ms > SLOW_MS:
            result.warnings.append(f"slow: the reference takes {timing.median_ms:.0f} ms per call "
                                   f"({time.perf_counter() - t0:.0f} s to time)")
    except ReferenceFailed as e:
        result.errors.append(str(e).splitlines()[0])
    finally:
        ref.close()
    return result
