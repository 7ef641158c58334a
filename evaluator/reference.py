"""The reference side of an evaluation: PyTorch's Model in its own clean worker.

Reference outputs and the reference timing are computed once per task, device and run and
then reused by every candidate; the candidate's process never sees them.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

from evaluator import rounds
from evaluator.messages import (
    CoresRequest,
    InitRequest,
    LoadRequest,
    MalformedReply,
    RunRequest,
    SeededRequest,
    SumsRequest,
    checked,
    checked_timed,
)
from evaluator.verdict import Timing
from sandbox.process import ProcessSandbox
from sandbox.protocol import pack_tree, unpack_tree
from sandbox.worker import Worker, WorkerDied, WorkerError, WorkerTimeout
from tasks.spec import Task


class ReferenceFailed(RuntimeError):
    """The task's own Model failed: the task is broken, not the candidate."""


def encode_args(args: list[Any]) -> tuple[list[dict[str, Any]], list[Any]]:
    tensors: list[Any] = []
    return [pack_tree(a, tensors) for a in args], tensors


def decode_outputs(meta: dict[str, Any], tensors: list[Any]) -> tuple[Any, list[Any]]:
    """(output value, tensors after the outputs: the inputs as the call left them)."""
    n = int(meta.get("n_outputs", len(tensors)))
    return unpack_tree(meta["tree"], tensors[:n]), tensors[n:]


class ReferenceSession:
    def __init__(self, sandbox: ProcessSandbox, task: Task, timeout_s: float):
        self.task, self.timeout_s = task, timeout_s
        self.worker: Worker | None = None
        self.sandbox = sandbox
        self.device_info: dict[str, Any] = {}
        self._variant: Any = "unset"
        self._outputs: dict[Any, Any] = {}
        self._timing: dict[Any, list[tuple[float, Timing]]] = {}  # per params: (when, window), oldest first
        self._sums: dict[int, Any] = {}  # timed call index -> checksums of the reference's output
        self._lock = threading.RLock()  # one conversation with the worker at a time

    def _call(self, kind: str, meta: Mapping[str, Any], tensors: list[Any] | tuple[Any, ...] = ()) -> tuple[str, dict, list]:
        with self._lock:
            return self._call_locked(kind, meta, tensors)

    def _call_locked(self, kind: str, meta: Mapping[str, Any], tensors: list[Any] | tuple[Any, ...] = ()) -> tuple[str, dict, list]:
        if self.worker is None:
            self.worker = self.sandbox.spawn(self.timeout_s * 4, files={"task.py": self.task.source})
            deadline = time.monotonic() + self.timeout_s
            try:
                self.worker.receive(deadline)  # hello
                _, loaded, _ = checked("load", self.worker.call("load", LoadRequest(candidate=False, input_devices=list(
                    self.task.meta.input_devices)), deadline=deadline))
            except (WorkerDied, WorkerTimeout, WorkerError, MalformedReply) as e:
                tail = self.worker.log_tail(1500).strip()
                raise ReferenceFailed(f"the reference Model failed to load: {e}" + (f"\n{tail}" if tail else "")) from None
            self.device_info = loaded.get("device", {})
        try:
            return checked(kind, self.worker.call(kind, meta, tensors, deadline=time.monotonic() + self.timeout_s))
        except (WorkerDied, WorkerTimeout, WorkerError, MalformedReply) as e:
            tail = self.worker.log_tail(800).strip()
            raise ReferenceFailed(f"the reference Model failed ({kind}): {e}" + (f"\n{tail}" if tail else "")) from None

    def start(self, init_seed: int) -> dict[str, Any]:
        """Start the worker and build the default-shape Model; returns the device info."""
        self._init(None, init_seed)
        return self.device_info

    def _init(self, variant: dict | None, seed: int) -> None:
        key = (repr(variant), seed)
        if self._variant != key:
            self._call("init", InitRequest(variant=variant, seed=seed))
            self._variant = key

    def outputs(self, args: list[Any], key: Any, variant: dict | None, init_seed: int) -> Any:
        with self._lock:  # init and run together: another thread may want another shape
            if key not in self._outputs:
                self._init(variant, init_seed)
                tree, tensors = encode_args(args)
                _, meta, out = self._call("run", RunRequest(inputs=tree, checks=False), tensors)
                self._outputs[key] = decode_outputs(meta, out)[0]
            return self._outputs[key]

    def seeded(self, seed: int, index: int, variant: dict | None, init_seed: int) -> Any:
        """Reference output for timed call `index` of the timing phase with this seed."""
        with self._lock:
            self._init(variant, init_seed)
            _, meta, out = self._call("run_seeded", SeededRequest(seed=seed, index=index, variant=variant))
            return decode_outputs(meta, out)[0]

    def timing(self, params: dict[str, Any], variant: dict | None, init_seed: int, max_age_s: float,
               windows: int = 1, fill: bool = False) -> Timing:
        """The reference's timing, pooled over its last `windows` timing windows younger than
        max_age_s; while it has fewer, this call times one more. One window's figure can be off
        by 10-30% on a shared machine, and it is the denominator of every speedup of the task
        until it ages, so several windows, spread over the first evaluations, are pooled.
        fill: take all the missing windows now."""
        with self._lock:
            key = repr(sorted(params.items()))
            now = time.monotonic()
            kept = [(at, t) for at, t in self._timing.get(key, []) if now - at < max_age_s]
            while len(kept) < windows or not kept:
                kept.append((time.monotonic(), self._time_window(params, variant, init_seed)))
                if not fill:
                    break
            self._timing[key] = kept[-max(1, windows):]
            return Timing.pooled([t for _, t in self._timing[key]])

    def _time_window(self, params: dict[str, Any], variant: dict | None, init_seed: int) -> Timing:
        self._init(variant, init_seed)
        self._call("cores", CoresRequest(timing=True))  # sandbox/cpus.py: a no-op without timing cores apart
        deadline = time.monotonic() + self.timeout_s
        assert self.worker is not None
        worker = self.worker

        def call(kind: str, meta: dict[str, Any]) -> tuple[str, dict, list]:
            try:
                return checked(kind, worker.call(kind, meta, deadline=deadline))
            except (WorkerDied, WorkerTimeout, WorkerError, MalformedReply) as e:
                raise ReferenceFailed(f"the reference Model failed ({kind}): {e}") from None

        def timed(kind: str, meta: dict[str, Any]) -> tuple[str, dict, list, float]:
            try:
                return checked_timed(kind, worker.call_timed(kind, meta, deadline=deadline))
            except (WorkerDied, WorkerTimeout, WorkerError, MalformedReply) as e:
                raise ReferenceFailed(f"the reference Model failed ({kind}): {e}") from None

        call.timed = timed  # type: ignore[attr-defined]  # rounds' "go": the arrival read in C

        r = rounds.measure(call, {**params, "variant": variant})
        self._call("cores", CoresRequest(timing=False))
        if variant is None and not params.get("compiled"):
            self._sums.update(r.sums)  # what every candidate's timed outputs must match
        return timing_from_rounds(r)

    def sums(self, seed: int, sign_seed: int, indices: list[int], init_seed: int) -> dict[int, Any]:
        """Checksums of the reference's outputs for these timed calls (default shape), cached:
        the timing seed of a task is the same for every candidate."""
        with self._lock:
            missing = [i for i in indices if i not in self._sums]
            if missing:
                self._init(None, init_seed)
                _, meta, _ = self._call("sums", SumsRequest(seed=seed, sign_seed=sign_seed, indices=missing))
                self._sums.update(zip(missing, meta["checksums"]))
            return {i: self._sums[i] for i in indices}

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None


def timing_from_rounds(r: rounds.Rounds, overhead: rounds.Overhead | None = None) -> Timing:
    """A side's Timing from its rounds: the reference's carries the overhead it measured."""
    used = overhead or r.overhead
    return Timing.from_samples(r.per_call_ms, r.phase_ms, r.early_exit, used.call_ms if used else 0.0,
                               r.warmup_ms, claimed_ms=tuple(r.claims_ms),
                               round_overhead_ms=used.round_ms if used else 0.0, calls=tuple(r.calls))
