"""The evaluation cascade: static screen, compile, correctness, timing, re-validation.

The supervisor (this module and evaluator/candidate.py, one candidate's trip) draws every input
from a secret per-run seed, keeps the reference outputs in its own process, compares what the
candidate's worker sends back and times both sides with the same procedure by its own clock.
Expected failures become verdicts; only a broken task (ReferenceFailed) or a bug in kernelwright
raises.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import secrets
import threading
import time
from typing import Any, Iterator

from evaluator import ceilings as ceilings_mod
from evaluator import fingerprint, rules, static
from evaluator.candidate import CandidateRun, Fail
from evaluator.ceilings import Ceilings
from evaluator.devicelock import DeviceLock
from evaluator.inputs import TRANSFORMS, derive_seed
from evaluator.messages import MalformedReply
from evaluator.reference import ReferenceFailed, ReferenceSession
from evaluator.verdict import Status, Timing, Verdict
from sandbox import ptxas
from sandbox.process import ProcessSandbox
from sandbox.worker import WorkerDied, WorkerError, WorkerTimeout
from tasks import work as task_work
from tasks.spec import Task

_log = logging.getLogger(__name__)

MAX_RECHECKS = 2  # ceilings re-measured before a beyond_roofline verdict, per evaluator


@dataclasses.dataclass(frozen=True)
class TimingConfig:
    warmup: int = 3
    min_iters: int = 20
    max_iters: int = 20000  # calls in all (small kernels run hundreds per round)
    target_s: float = 0.5  # wall-clock seconds of the timed loop, fresh inputs included
    early_iters: int = 5  # a candidate slower than `slow_ms` after this many calls stops early
    round_ms: float = 10.0  # a timing round lasts about this long (evaluator/rounds.py)
    min_rounds: int = 5
    max_rounds: int = 1000
    reference_max_age_s: float = 120.0  # re-time the reference after this: load and clocks drift
    reference_windows: int = 3  # the reference's figure pools this many recent windows (reference.py)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    device: str = "cpu"
    timeout_s: float = 120.0
    reference_timeout_s: float = 300.0
    transforms: tuple[str, ...] = TRANSFORMS  # one correctness trial each, on the default shape
    timing: TimingConfig = TimingConfig()
    policy: rules.Policy = rules.Policy()
    seed: int | None = None  # None: a secret random seed for this evaluator
    compare_compile: bool = True  # on GPUs, also time torch.compile(Model) where the task allows
    # The machine's ceilings for the timing cores and threads (evaluator/ceilings.py): with them an
    # ok verdict carries its peak fraction and a time beyond them is rejected; None: neither.
    ceilings: Ceilings | None = None


class Evaluator:
    """Evaluates candidates against tasks; holds reference sessions for reuse across candidates."""

    def __init__(self, sandbox: ProcessSandbox, cfg: EvalConfig):
        self.sandbox, self.cfg = sandbox, cfg
        self.seed = cfg.seed if cfg.seed is not None else secrets.randbits(62)
        self._refs: dict[str, ReferenceSession] = {}
        self._modules: dict[str, Any] = {}
        self._task_flags: dict[str, list[str]] = {}
        self._work: dict[str, task_work.Work | str] = {}  # per task: its work, or why there is none
        self._work_lock = threading.Lock()  # apart from _lock: deriving runs the reference once
        self._host = {**fingerprint.host(cfg.device, sandbox.cfg.threads),
                      "sandbox": getattr(sandbox, "description", "process")}  # not part of the id
        self._lock = threading.Lock()  # several candidates may be evaluated at once (threads)
        self.timing_cpus = tuple(getattr(sandbox.cfg, "timing_cpus", ())) if cfg.device == "cpu" else ()
        self.device_lock = DeviceLock(timing_apart=bool(self.timing_cpus))
        self.ceilings = cfg.ceilings  # raised by recheck_ceilings, never lowered
        self._rechecks = 0

    # --- reference side ---------------------------------------------------------------
    def reference(self, task: Task) -> ReferenceSession:
        with self._lock:
            ref = self._refs.get(task.source_hash)
            if ref is None:
                ref = ReferenceSession(self.sandbox, task, self.cfg.reference_timeout_s)
                self._refs[task.source_hash] = ref
        with self.device_lock.shared():
            ref.start(self._init_seed(task))
        return ref

    def warm(self, task: Task) -> None:
        """Reference outputs and timings (all their windows) now, once per task (they are reused
        by every candidate until they age): what the task's first evaluations would otherwise pay."""
        ref = self.reference(task)
        with self.timing_phase():
            self._reference_timings(task, ref, fill=True)

    @contextlib.contextmanager
    def timing_phase(self) -> Iterator[None]:
        """The device alone: other timing phases wait; with timing cores apart, everything else
        the sandbox runs moves off them meanwhile (sandbox/cpus.py)."""
        confine = getattr(self.sandbox, "confine", None) if self.device_lock.timing_apart else None
        with self.device_lock.exclusive():
            if confine:
                confine(True)
            try:
                yield
            finally:
                if confine:
                    confine(False)

    def _reference_timings(self, task: Task, ref: ReferenceSession,
                           fill: bool = False) -> tuple[Timing, Timing | None, str]:
        """Eager (and on GPUs torch.compile) reference timings, cached by the session; call with
        the device held exclusively. A failed torch.compile leaves a note, not a failure."""
        params, t = self._timing_params(task), self.cfg.timing
        max_age, n = t.reference_max_age_s, t.reference_windows
        eager, compiled, note = ref.timing(params, None, self._init_seed(task), max_age, n, fill), None, ""
        if self.cfg.device == "cuda" and self.cfg.compare_compile and task.meta.compile_reference:
            try:
                compiled = ref.timing({**params, "compiled": True}, None, self._init_seed(task), max_age, n, fill)
            except ReferenceFailed as e:  # no torch.compile figure, but the eager one stands
                note = f"no torch.compile reference: {str(e).splitlines()[0][:200]}"
        return eager, compiled, note

    def recheck_ceilings(self) -> Ceilings | None:
        """Before a candidate is rejected as beyond the roofline: the ceilings measured again on
        the timing cores held alone, each figure the better of both (a measurement taken while the
        machine was busy came out low, and an honest kernel must never pay for it). None: nothing
        to re-measure (GPU figures come from the device script), or done MAX_RECHECKS times
        already (a cheat re-submitted in a loop does not keep the cores busy measuring)."""
        c = self.ceilings
        if c is None or c.device != "cpu" or self._rechecks >= MAX_RECHECKS:
            return None
        with self.timing_phase():
            if self._rechecks >= MAX_RECHECKS or self.ceilings is None:
                return None
            self._rechecks += 1
            _log.debug("re-measuring the ceilings before a beyond_roofline verdict (%d of %d)", self._rechecks,
                       MAX_RECHECKS)
            try:
                self.ceilings = ceilings_mod.remeasure(self.ceilings)
            except ceilings_mod.CeilingError:
                return None
        return self.ceilings

    def module(self, task: Task) -> Any:
        with self._lock:
            if task.source_hash not in self._modules:
                self._modules[task.source_hash] = task.load_module()
            return self._modules[task.source_hash]

    def work(self, task: Task) -> task_work.Work | str:
        """The task's work at its default shape (the timed one), once per task; a string says
        why there is none (a reference the FLOP counter cannot run), and the verdicts go without."""
        with self._work_lock:
            if task.source_hash not in self._work:
                try:
                    self._work[task.source_hash] = task_work.work(task)
                except Exception as e:  # noqa: BLE001 - task code: no figures, not a failed evaluation
                    self._work[task.source_hash] = f"no peak fraction: the task's work: {type(e).__name__}: {e}"[:300]
            return self._work[task.source_hash]

    def fingerprint(self, task: Task) -> dict[str, Any]:
        return fingerprint.with_device(self._host, self.reference(task).device_info)

    def _init_seed(self, task: Task) -> int:
        return derive_seed(self.seed, task.source_hash, "init") % (2**31)

    def _plan(self, task: Task) -> list[tuple[str, dict | None, int, str]]:
        plan: list[tuple[str, dict | None, int, str]] = [(f"default/{t}", None, derive_seed(self.seed, task.source_hash, "trial", t), t)
                for t in self.cfg.transforms if t == "none" or task.meta.input_transforms]
        for i, v in enumerate(task.meta.variants):
            plan.append((f"variant{i}", v, derive_seed(self.seed, task.source_hash, "variant", i), "none"))
        return plan

    def _timing_params(self, task: Task) -> dict[str, Any]:
        t = self.cfg.timing
        return {"seed": derive_seed(self.seed, task.source_hash, "timing"), "warmup": t.warmup,
                "sign_seed": derive_seed(self.seed, task.source_hash, "signs") % (2**40),
                "min_iters": t.min_iters, "max_iters": t.max_iters, "target_s": t.target_s,
                "early_iters": t.early_iters, "round_ms": t.round_ms, "min_rounds": t.min_rounds,
                "max_rounds": t.max_rounds}

    def close(self) -> None:
        for ref in self._refs.values():
            ref.close()
        self._refs.clear()

    # --- candidate side ---------------------------------------------------------------
    def evaluate(self, task: Task, source: str, slow_ms: float | None = None) -> Verdict:
        """The verdict on one candidate, under this evaluator's policy (recorded with it)."""
        return dataclasses.replace(self._evaluate(task, source, slow_ms), policy=self.cfg.policy.name)

    def _evaluate(self, task: Task, source: str, slow_ms: float | None) -> Verdict:
        t0 = time.monotonic()
        try:
            findings = static.screen(source)
        except SyntaxError as e:
            return Verdict(Status.COMPILE_ERROR, f"syntax error at line {e.lineno}: {e.msg}")
        if not static.defines_modelnew(source):
            return Verdict(Status.COMPILE_ERROR, "the candidate defines no class ModelNew")
        findings = rules.screened(findings, self.cfg.policy)
        if self.cfg.policy.static_screen and findings:
            return Verdict(Status.REJECTED, str(findings[0]), flags=tuple(str(f) for f in findings[1:]))
        stages = {"static": time.monotonic() - t0}
        _log.debug("%s: evaluating a candidate of %d bytes (static screen passed)", task.name, len(source))
        ref = self.reference(task)
        fp = self.fingerprint(task)  # (the reference started above: no device work here)
        worker = self.sandbox.spawn(self.cfg.timeout_s + 30, files={"task.py": task.source, "candidate.py": source})
        run = CandidateRun(self, task, ref, worker, static.kernel_names(source), time.monotonic() + self.cfg.timeout_s)
        try:
            run.go(slow_ms)
            status, reason = Status.OK, ""
        except Fail as f:
            status, reason = f.status, f.reason
        except WorkerTimeout:
            status, reason = Status.TIMEOUT, f"no result within the {self.cfg.timeout_s:g} s limit"
        except MalformedReply as e:  # only a tampered probe answers out of shape
            status, reason = Status.REJECTED, str(e)
        except WorkerDied as e:
            status, reason = Status.RUNTIME_ERROR, str(e)
        except WorkerError as e:
            status, reason = Status.RUNTIME_ERROR, str(e.meta.get("message", e))
            run.log = str(e.meta.get("traceback", ""))[-4000:] + "\n" + run.log
        finally:
            log = worker.log_tail()
            worker.close()
        refused = next((b.screen for b in worker.builds if b.screen), "")
        if refused:  # a library the binary screen refused: rejected, whatever the candidate did next
            status, reason = Status.REJECTED, refused
        stages.update(run.stages)
        stages["total"] = time.monotonic() - t0
        _log.debug("%s: %s%s in %.2f s (%s)", task.name, status.value, f": {reason[:160]}" if reason else "",
                   stages["total"], ", ".join(f"{k} {v:.2f}" for k, v in stages.items() if k != "total"))
        flags = [f"sandbox: {n}" for n in [*self.sandbox.notes, *worker.notes]] + self._task_flags.get(task.source_hash, []) + run.flags
        resources = tuple(k for b in worker.builds if b.ok for k in ptxas.parse(b.log))
        return Verdict(status=status, reason=reason, trials=tuple(run.trials), resources=resources,
                       candidate=run.timing if status is Status.OK else None,
                       reference=run.ref_timing if status is Status.OK else None,
                       reference_compiled=run.compiled_timing if status is Status.OK else None,
                       flags=tuple(flags), fingerprint=fp, stages=stages, log=(run.log + log)[-8000:],
                       coverage=run.coverage, torch_ops=tuple(sorted(run.torch_ops)), **(run.peak if status is Status.OK else {}))
