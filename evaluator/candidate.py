"""One candidate's trip through the cascade (evaluator/cascade.py holds the configuration and
the Evaluator that starts it): load and compile, correctness trials, the timing phase by the
supervisor's clock (evaluator/rounds.py), the checks of the timed outputs, coverage and the
physical-bound gate. Each step raises Fail, or a worker error, to stop.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import statistics
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Iterator

import torch

from evaluator import coverage, roofline, rounds, rules, timing_checks
from evaluator.compare import Tolerance, compare, degenerate
from evaluator.inputs import derive_seed, make_inputs
from evaluator.messages import CoresRequest, Empty, InitRequest, LoadRequest, RunRequest, checked, checked_timed
from evaluator.reference import ReferenceSession, decode_outputs, encode_args, timing_from_rounds
from evaluator.verdict import Status, Timing, Trial
from sandbox import cpus
from sandbox.protocol import ProtocolError, unpack_tree
from sandbox.worker import Worker, WorkerDied, WorkerError
from tasks import work as task_work
from tasks.spec import Task

_log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from evaluator.cascade import Evaluator



class Fail(Exception):
    def __init__(self, status: Status, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


class CandidateRun:
    """One candidate's trip through the cascade; raises _Fail (or a worker error) to stop."""

    def __init__(self, ev: Evaluator, task: Task, ref: ReferenceSession, worker: Worker,
                 kernel_names: set[str], deadline: float):
        self.ev, self.task, self.ref, self.w = ev, task, ref, worker
        self.kernel_names, self.deadline = kernel_names, deadline
        self.tol = Tolerance(task.meta.atol, task.meta.rtol)
        self.device = ev.cfg.device
        self.init_seed = ev._init_seed(task)
        self.trials: list[Trial] = []
        self.flags: list[str] = []
        self.stages: dict[str, float] = {}
        self.log = ""
        self.timing: Timing | None = None
        self.ref_timing: Timing | None = None
        self.compiled_timing: Timing | None = None
        self.rounds = rounds.Rounds()
        self.coverage: coverage.Coverage | None = None
        self.work: task_work.Work | None = None
        self.torch_ops: set[str] = set()  # PyTorch compute ops forward ran (allowed by some policies)
        self.peak: dict[str, Any] = {}  # the Verdict's peak_fraction, bound, reference_peak_fraction
        self._variant: Any = "unset"

    def call(self, kind: str, meta: Mapping[str, Any], tensors: list[Any] | tuple[Any, ...] = ()) -> tuple[str, dict, list]:
        return checked(kind, self.w.call(kind, meta, tensors, deadline=self.deadline))

    def go(self, slow_ms: float | None) -> None:
        """Compile and checks share the device with other candidates' compiles and checks;
        the timing phase has it alone (see DeviceLock)."""
        lock = self.ev.device_lock
        with lock.shared():
            t = time.monotonic()
            self.load()
            self.stages["compile"] = time.monotonic() - t
            t = time.monotonic()
            first = self.correctness()
            self.stages["correctness"] = time.monotonic() - t
            if self.ev.ceilings is not None:  # derived here, never during a timing phase
                found = self.ev.work(self.task)
                self.work = found if isinstance(found, task_work.Work) else None
                self.flags += [found] if isinstance(found, str) else []
        t = time.monotonic()
        with self.ev.timing_phase():
            self.stages["timing_wait"] = time.monotonic() - t
            t = time.monotonic()
            params = self.time(slow_ms)
            self.stages["timing"] = time.monotonic() - t
            if self.timing is not None:
                _log.debug("%s: %d timing rounds, median %.4g ms a call (reference %.4g ms)", self.task.name,
                           len(self.timing.samples_ms), self.timing.median_ms,
                           self.ref_timing.median_ms if self.ref_timing else float("nan"))
        with lock.shared():  # sampling needs no timing core: other candidates may be timed meanwhile
            if self.device == "cpu":
                self._attribute(params)
            self.validate_timed(params)
            self.final_check(first)
        # last: a kernel that is wrong is incorrect before it is anything else
        self._reject(coverage.check(self.coverage, self.ev.cfg.policy.min_coverage))
        if flag := rules.lazy(self.coverage.share if self.coverage else None, self.ev.cfg.policy):
            self.flags.append(flag)
        self._roofline()

    def _resolve(self) -> None:
        """A kernel too fast to tell from the rounds' overhead (an overhead measured apart, on the
        reference's worker, that a loaded machine can inflate past a whole round) gets the time
        with the overhead in as its figure, before anything reads its median: never faster than
        it ran, so its speedup is a lower bound of the true one, and said so."""
        t = self.timing
        if t is None or t.median_ms > 0 or not self.rounds.calls:
            return
        gross = Timing.from_samples(self.rounds.gross_ms, t.wall_ms)
        self.flags.append(f"timing_unresolved: no time beyond the rounds' overhead; the figure is "
                          f"{gross.median_ms:.3g} ms per call with the overhead in (its speedup a lower bound)")
        self.timing = dataclasses.replace(t, samples_ms=gross.samples_ms, median_ms=gross.median_ms,
                                          spread_ms=gross.spread_ms)

    def _roofline(self) -> None:
        """Peak fractions of both sides' medians; the physical-bound gate on the candidate's,
        which re-measures the ceilings before it rejects (Evaluator.recheck_ceilings), as it does
        when the reference itself comes out beyond them. The gate judges the time per call with
        the rounds' overhead left in (an upper bound of the kernel's own): the figure without it
        rests on an overhead measured apart, and a kernel too fast to resolve from that is not
        proof of one faster than the machine."""
        c, w, ms = self.ev.ceilings, self.work, self.timing.median_ms if self.timing else 0.0
        if c is None or w is None:
            return
        gross = statistics.median(self.rounds.gross_ms) if self.rounds.calls else ms
        ref_ms = self.ref_timing.median_ms if self.ref_timing else 0.0
        beyond = roofline.beyond_roofline(w, c, gross)
        # the reference is trusted code: faster than the ceilings, it proves them low
        low = ref_ms > 0 and roofline.beyond_roofline(w, c, ref_ms) is not None
        if (beyond or low) and (fresh := self.ev.recheck_ceilings()) is not None:
            c, beyond = fresh, roofline.beyond_roofline(w, fresh, gross)
            self.flags.append(f"ceilings re-measured before the physical-bound gate: copy {fresh.copy_gbs:.3g} GB/s "
                              f"out of cache, {fresh.copy_gbs_cached:.3g} in L2, FMA {fresh.fma_gflops:.3g} GFLOP/s")
        fraction, bound = roofline.peak_fraction(w, c, ms)
        self.peak = {"peak_fraction": fraction, "bound": bound,
                     "reference_peak_fraction": roofline.peak_fraction(w, c, ref_ms)[0] if ref_ms > 0 else None}
        self._reject(beyond)

    def load(self) -> None:
        _, hello, _ = self.w.receive(self.deadline)
        self.w.notes = [str(n) for n in hello.get("notes", [])][:10]
        try:
            _, loaded, _ = self.call("load", LoadRequest(candidate=True, input_devices=list(self.task.meta.input_devices)))
        except WorkerError as e:
            failed = [b for b in self.w.builds if not b.ok]
            if failed or e.error_class == "compile_error":
                self.log = failed[-1].log if failed else str(e.meta.get("log") or e.meta.get("message", ""))
                first = next((ln for ln in self.log.splitlines() if "error" in ln), self.log.strip()[:200])
                raise Fail(Status.COMPILE_ERROR, f"compile failed: {first.strip()[:300]}") from None
            raise
        if any(not b.ok for b in self.w.builds):
            self.flags.append("a kernel build failed, yet the candidate loaded")
        if loaded.get("seccomp") != "on":  # sandbox/jail/seccomp.py, applied in the worker after the import
            self.flags.append(f"sandbox: no seccomp filter ({str(loaded.get('seccomp', 'not reported'))[:200]})")

    def init(self, variant: dict | None) -> None:
        key = repr(variant)
        if self._variant != key:
            self.call("init", InitRequest(variant=variant, seed=self.init_seed))
            self._variant = key

    def checked_run(self, args: list[Any], name: str) -> Any:
        tree, tensors = encode_args(args)
        _, meta, out = self.call("run", RunRequest(inputs=tree, checks=True), tensors)
        try:
            got, after = decode_outputs(meta, out)
        except ProtocolError as e:
            raise WorkerDied(f"protocol violation: {e}") from None
        report = meta["report"]  # its fields' types checked (evaluator/messages.py CallReport)
        reason = rules.check_call(report, self.ev.cfg.policy, self.kernel_names)
        self.torch_ops.update(rules.compute_ops(report.get("aten_ops", [])))
        if reason:
            raise Fail(Status.REJECTED, f"{reason} [{name}]")
        sent = [a for a in args if isinstance(a, torch.Tensor)]
        if len(after) != len(sent) or not all(_same_bytes(a, b) for a, b in zip(after, sent)):
            raise Fail(Status.REJECTED, f"inputs_mutated: forward changed its input tensors [{name}]")
        spent = report.get("gpu_kernel_us")
        if self.device == "cuda" and spent is not None and self.coverage is None:
            self.coverage = coverage.from_gpu_profile(spent, self.kernel_names)
        if report.get("native_threads_added", 0) > 0 and self.trials:
            self.flags.append("thread_growth: native threads kept appearing after the first call")
        return got

    def correctness(self) -> tuple[list[Any], Any]:
        module = self.ev.module(self.task)
        first: tuple[list[Any], Any] | None = None
        wants: dict[str, Any] = {}
        for name, variant, seed, transform in self.ev._plan(self.task):
            self.init(variant)
            args = make_inputs(module, seed, variant, transform)
            want = self.ref.outputs(args, name, variant, self.init_seed)
            wants[name] = want
            got = self.checked_run(args, name)
            ok, errors, note = compare(got, want, self.tol)
            self.trials.append(Trial(name, ok, tuple(errors), note))
            if not ok:
                raise Fail(Status.INCORRECT, f"{name}: {note}")
            if first is None:
                first = (args, got)
        self._degenerate_flags(wants)
        assert first is not None
        self.init(None)
        again = self.checked_run(first[0], "determinism")
        ok, errors, note = compare(again, first[1], self.tol)
        self.trials.append(Trial("determinism", ok, tuple(errors), note))
        if not ok:
            raise Fail(Status.INCORRECT, f"nondeterministic: two runs on the same input disagree ({note})")
        return first

    def _degenerate_flags(self, wants: dict[str, Any]) -> None:
        key = self.task.source_hash
        if key not in self.ev._task_flags:
            outs = list(wants.values())
            self.ev._task_flags[key] = degenerate(outs[0], outs[1], self.tol) if len(outs) > 1 else []

    def time(self, slow_ms: float | None) -> dict[str, Any]:
        params = self.ev._timing_params(self.task)
        self.ref_timing, self.compiled_timing, note = self.ev._reference_timings(self.task, self.ref)
        self.flags += [note] if note else []
        overhead = rounds.Overhead(self.ref_timing.round_overhead_ms, self.ref_timing.overhead_ms)
        self.init(None)
        self.call("cores", CoresRequest(timing=True))  # onto the timing cores for the rounds
        params = self._timed_rounds(params, overhead, slow_ms)
        self.call("cores", CoresRequest(timing=False))
        return params

    def _attribute(self, params: dict[str, Any]) -> None:
        """Coverage: the worker's threads sampled from outside through one more round of the same
        calls (evaluator/coverage.py); the strict policy's rule on it comes after the checks."""
        watch = coverage.Watch(self.w.proc)
        try:
            if watch.unavailable:
                self.flags.append(f"coverage unavailable: {watch.unavailable}")
                return
            r = self.rounds
            assert self.timing is not None  # sampled after the timed rounds
            rounds.sampled_round(self._round_call(), params, r.last_index + 1, self.timing.median_ms, r.bytes_per_call,
                                 watch.window)
            # the supervisor's builds (fast path, load_inline) are in `builds`; an extension torch's own
            # `load` built inside the worker lands in the shared torch_ext cache
            torch_ext = str(self.ev.sandbox.cfg.cache_dir / "torch_ext") + "/"
            self.coverage = watch.result([b.path for b in self.w.builds if b.ok and b.path], own_prefix=torch_ext)
        finally:
            watch.close()

    def _timed_rounds(self, params: dict[str, Any], overhead: rounds.Overhead, slow_ms: float | None) -> dict[str, Any]:
        for attempt in (1, 2):  # a lone slow call may be the machine's hiccup: it must happen twice
            self.go_cpu = [0.0, 0.0, True]  # CPU and wall seconds inside the rounds; measurable
            self.escaped: list[tuple[int, str]] = []  # worker threads found allowed off the timing cores
            r = rounds.measure(self._round_call(), params, overhead, slow_ms, self._round_window)
            self.rounds, self.timing = r, timing_from_rounds(r, overhead)
            cpu_s, wall_s, measured = self.go_cpu
            self._reject(timing_checks.threads_escaped(self.escaped, self.ev.timing_cpus))
            if self.ev.timing_cpus and measured:
                self._reject(timing_checks.cores_escaped(cpu_s, wall_s, len(self.ev.timing_cpus)))
            if not r.per_call_ms:
                raise Fail(Status.RUNTIME_ERROR, "the timing rounds returned no samples")
            skipped = timing_checks.batch_and_skip(r.claimed)
            if skipped is None:
                break
            if attempt == 2:
                self._reject(skipped)
        assert self.timing is not None and self.ref_timing is not None  # set by the rounds above
        if self.device == "cuda":
            self._reject(timing_checks.hidden_stream_work(r.synced, r.claimed))
        # on the figure without the overhead: the time with it in is always more than the claims
        self._reject(timing_checks.clock_mismatch(self.timing))
        self._resolve()
        cand = self.timing
        speedup = self.ref_timing.median_ms / cand.median_ms if cand.median_ms > 0 else float("inf")
        if speedup > self.ev.cfg.policy.suspicious_speedup:
            self.flags.append(f"suspicious_speedup: {speedup:.1f}x is above {self.ev.cfg.policy.suspicious_speedup:g}x; "
                              "confirm with a second measurement before trusting it")
        if cand.early_exit:
            self.flags.append(f"early_exit: stopped after {sum(cand.calls)} calls, clearly slower than the best")
        return params

    def _round_call(self) -> Any:
        """self.call for evaluator/rounds.py, with a timed form for the rounds' "go"."""
        def call(kind: str, meta: dict[str, Any]) -> tuple[str, dict, list]:
            return self.call(kind, meta)

        call.timed = lambda kind, meta: checked_timed(kind, self.w.call_timed(kind, meta, deadline=self.deadline))  # type: ignore[attr-defined]
        return call

    @contextlib.contextmanager
    def _round_window(self) -> Iterator[None]:
        """Around each timed round: the worker's cgroup CPU time (which it cannot touch) against
        the supervisor's clock."""
        t0, cpu0 = time.perf_counter(), self.w.proc_cpu_seconds()
        yield
        cpu1 = self.w.proc_cpu_seconds()
        if cpu0 is None or cpu1 is None:
            self.go_cpu[2] = False
        else:
            self.go_cpu[0] += cpu1 - cpu0
        self.go_cpu[1] += time.perf_counter() - t0
        pid = self.w.proc.worker_pid() if self.ev.timing_cpus and hasattr(self.w.proc, "worker_pid") else None
        if pid is not None and not self.escaped:  # the threads' affinity, read from /proc
            self.escaped = cpus.escaped_threads(pid, self.ev.timing_cpus)

    @staticmethod
    def _reject(reason: str | None) -> None:
        if reason:
            raise Fail(Status.REJECTED, reason)

    def validate_timed(self, params: dict[str, Any]) -> None:
        """Outputs produced during timing must be right: the last in full, every one by checksum."""
        r = self.rounds
        _, meta, out = self.call("last", Empty())
        try:
            got = unpack_tree(meta["tree"], out)
        except (ProtocolError, KeyError):
            raise Fail(Status.INCORRECT, "post-timing: no usable output from the timing rounds") from None
        want = self.ref.seeded(params["seed"], r.last_index, None, self.init_seed)
        ok, errors, note = compare(got, want, self.tol)
        self.trials.append(Trial("timed/last", ok, tuple(errors), note))
        if not ok:
            raise Fail(Status.INCORRECT, f"post-timing: the last timed output is wrong ({note})")
        indices = list(range(r.last_index + 1))
        wants = self.ref.sums(params["seed"], params["sign_seed"], indices, self.init_seed)
        bad = [i for i in indices if not timing_checks.checksums_match(r.sums.get(i), wants[i], self.tol)]
        self.trials.append(Trial("timed/checksums", not bad, (), f"{len(indices) - len(bad)} of {len(indices)} "
                                 "timed outputs match the reference's checksums"))
        if bad:
            raise Fail(Status.INCORRECT, f"post-timing: the outputs of {len(bad)} of {len(indices)} timed calls "
                        f"do not match the reference (first: call {bad[0]})")

    def final_check(self, first: tuple[list[Any], Any]) -> None:
        """New inputs after timing: a kernel that is right first and wrong later is caught here."""
        module = self.ev.module(self.task)
        args = make_inputs(module, derive_seed(self.ev.seed, self.task.source_hash, "final"), None, "none")
        want = self.ref.outputs(args, "final", None, self.init_seed)
        got = self.checked_run(args, "final")
        ok, errors, note = compare(got, want, self.tol)
        self.trials.append(Trial("final", ok, tuple(errors), note))
        if not ok:
            raise Fail(Status.INCORRECT, f"final: wrong after the timing loop ({note})")


def _same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.numel() == 0:
        return True
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))
