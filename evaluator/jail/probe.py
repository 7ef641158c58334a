"""The measuring instrument that runs inside a worker, next to the model it measures.

It loads the task (and, for a candidate, its ModelNew), runs calls with instrumentation and
times them, and reports raw facts: outputs, the aten ops a call dispatched, kernel launches,
threads, guard bands, timings. It decides nothing; the supervisor does. Clocks are captured
at import, before any candidate code can patch them.
"""
from __future__ import annotations

import collections
import contextlib
import functools
import threading
import time
from pathlib import Path
from typing import Any

import torch

from evaluator import inputs as inputs_mod
from evaluator.jail.instruments import (
    Checksums,
    CountingModule,
    CudaTimer,
    OpRecorder,
    Signs,
    aliases,
    checksums,
    guarded,
    native_threads,
)
from evaluator.messages import (
    CallReport,
    CoresRequest,
    Empty,
    GoRequest,
    InitRequest,
    Last,
    Loaded,
    LoadRequest,
    Outputs,
    RunRequest,
    SeededRequest,
    Staged,
    StageRequest,
    Sums,
    SumsRequest,
    Went,
)
from sandbox import cpus, extension, fastpath
from sandbox.compiler import CompileSpec
from sandbox.jail import seccomp as sandbox_seccomp
from sandbox.jail.loop import CompileFailure
from sandbox.protocol import pack_tree
from tasks.spec import apply_variant, import_file

_clock_ns = time.perf_counter_ns


def warm_up() -> None:
    """Called once in the fork server: pays torch's lazy imports for dispatch modes. One-element
    ops never start a thread pool, so forks stay clean (and no CUDA is touched)."""
    with torch.no_grad(), OpRecorder():
        torch.ones(1).add(1)


def _compile_inline_cuda(ce: Any, rpc: Any, arch: str, args: tuple, kwargs: dict[str, Any]) -> Any:
    """Compile-only: build load_inline's CUDA sources with plain nvcc (through the supervisor,
    which keeps ptxas's resource report); no torch extension is built or loaded."""
    import sysconfig

    names = ["name", "cpp_sources", "cuda_sources"]
    given = {**dict(zip(names, args)), **kwargs}
    cuda = given.get("cuda_sources") or []
    cuda = [cuda] if isinstance(cuda, str) else list(cuda)
    includes = [f"-I{p}" for p in ce.include_paths()] + [f"-I{sysconfig.get_paths()['include']}"]
    flags = ("-std=c++20", *includes, *[str(f) for f in given.get("extra_cuda_cflags") or []])
    for src in cuda:  # device code only: torch's headers make a host build slow and pointless here
        rpc.build(CompileSpec(source=src, lang="cuda", flags=flags, arch=arch, output="cubin"))

    class CompileOnly:
        def __getattr__(self, attr: str) -> Any:
            raise RuntimeError("compile-only: the extension was not built")

    return CompileOnly()


class Probe:
    def __init__(self, rpc: Any, args: dict[str, Any]):
        self.rpc = rpc
        self.device = torch.device(args.get("device", "cpu"))
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", 0)  # set_device and the caching allocator want an index
        torch.set_num_threads(int(args.get("threads", 1)))
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32, on both sides
        torch.backends.cudnn.allow_tf32 = False
        self.task: Any = None
        self.cls: Any = None
        self.signs: Signs | None = None
        self.model: Any = None
        self.inline_calls: collections.Counter[str] = collections.Counter()
        self.placement: list[str] = []
        self.host_inputs: dict[str, Any] = {}
        self.compiled: Any = None
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        # sandbox/cpus.py: the timing cores are this worker's for its timing phase only
        self.timing_cpus: list[int] = list(args.get("timing_cpus") or [])
        self.rest_cpus: list[int] = list(args.get("rest_cpus") or [])
        if self.timing_cpus and args.get("pin_at_start"):  # the supervisor cannot follow this one
            cpus.pin_all_threads(self.rest_cpus)

    # --- load and build ---------------------------------------------------------------
    def do_load(self, meta: LoadRequest, _: list[Any]) -> tuple[str, Loaded, list[Any]]:
        if meta.get("compile_only"):  # import the candidate only: its builds are what we want
            self._patch_cpp_extension(compile_only=str(meta.get("arch") or "sm_90"))
            import_file(Path("candidate.py").resolve(), "kw_candidate")
            return "loaded", {}, []
        self.task = import_file(Path("task.py").resolve(), "kw_task")
        self.placement = [str(p) for p in meta.get("input_devices", [])]
        if meta.get("candidate"):
            self._patch_cpp_extension()
            self._count_triton_launches()
            module = import_file(Path("candidate.py").resolve(), "kw_candidate")
            self.cls = module.ModelNew
            # sandbox/jail/seccomp.py, once the candidate's builds and imports are done (CPU only: the
            # CUDA driver maps executable memory and forks helpers at any time)
            seccomp = sandbox_seccomp.lock_down() if self.device.type == "cpu" else "not applied: cuda"
            return "loaded", {"device": self._device_info(), "seccomp": seccomp}, []
        self.cls = self.task.Model
        return "loaded", {"device": self._device_info()}, []

    def _patch_cpp_extension(self, compile_only: str | None = None) -> None:
        """load_inline, as candidates call it: the build goes to the supervisor (sandbox/
        extension.py), which compiles outside the jail; the extension is imported here from the
        path it answers with. No compiler, ninja or build directory is needed in the worker."""
        import inspect

        import torch.utils.cpp_extension as ce

        signature, counter = inspect.signature(ce.load_inline), self.inline_calls

        def load_inline(*args: Any, **kwargs: Any) -> Any:
            if compile_only:
                return _compile_inline_cuda(ce, self.rpc, compile_only, args, kwargs)
            given = signature.bind(*args, **kwargs).arguments  # a TypeError, as torch's own would raise
            try:
                spec = extension.from_call(given, arch=self._cuda_arch())
            except ValueError as e:
                raise CompileFailure(f"load_inline: {e}") from None
            result = self.rpc.build_extension(spec)
            if not result.ok:
                raise CompileFailure(result.log or "the extension failed to build")
            python_module = bool(given.get("is_python_module", True))
            module = extension.load(spec.name, result.path, python_module)
            return CountingModule(module, counter) if python_module else module

        ce.load_inline = load_inline

    def _cuda_arch(self) -> str | None:
        """The CUDA target of this worker's GPU (None on the CPU: the supervisor's default)."""
        if self.device.type != "cuda":
            return None
        major, minor = torch.cuda.get_device_capability(self.device)
        return f"sm_{major}{minor}"

    def _count_triton_launches(self) -> None:
        """Triton launches count as kernel calls too (where the profiler cannot name them)."""
        try:
            from triton.runtime.jit import JITFunction
        except ImportError:
            return
        original, counter = JITFunction.run, self.inline_calls

        def run(fn_self: Any, *args: Any, **kwargs: Any) -> Any:
            counter["triton:" + getattr(fn_self, "__name__", "kernel")] += 1
            return original(fn_self, *args, **kwargs)

        JITFunction.run = run

    def _device_info(self) -> dict[str, Any]:
        if self.device.type != "cuda":
            return {}
        p = torch.cuda.get_device_properties(self.device)
        import importlib.metadata as md

        try:
            triton = md.version("triton")
        except md.PackageNotFoundError:
            triton = None
        return {"gpu": p.name, "capability": f"{p.major}.{p.minor}", "sm_count": p.multi_processor_count,
                "gpu_memory": p.total_memory, "cuda": torch.version.cuda, "triton": triton}

    # --- construct ----------------------------------------------------------------------
    def do_init(self, meta: InitRequest, _: list[Any]) -> tuple[str, Empty, list[Any]]:
        variant = meta.get("variant")
        old = apply_variant(self.task, variant)
        try:
            init_args = inputs_mod.make_init_inputs(self.task)
            torch.manual_seed(int(meta["seed"]))
            model = self.cls(*init_args)
        finally:
            apply_variant(self.task, old)
        self.model = model.to(self.device) if hasattr(model, "to") else model
        if hasattr(self.model, "eval"):
            self.model.eval()
        return "ready", {}, []

    # --- one call, fully instrumented ---------------------------------------------------
    def do_run(self, meta: RunRequest, tensors: list[Any]) -> tuple[str, Outputs, list[Any]]:
        args = [tensors[a["t"]] if isinstance(a, dict) and "t" in a else a["scalar"] for a in meta["inputs"]]
        return self._run(args, bool(meta.get("checks", True)))

    def do_run_seeded(self, meta: SeededRequest, _: list[Any]) -> tuple[str, Outputs, list[Any]]:
        """The inputs of timed call `index` of a timing phase, recomputed here (reference side)."""
        args = self._timed_inputs(int(meta["seed"]), int(meta["index"]), meta.get("variant"))
        return self._run(args, False)

    def _timed_inputs(self, seed: int, index: int, variant: Any) -> list[Any]:
        """Inputs of timed call `index`: those on the device fresh for every call (made there
        directly: fast, and the same on every worker); those kept on the host (offload tasks'
        large pinned tables) drawn and placed once per timing phase."""
        gen = self.device.type if self.device.type != "cpu" else None
        fresh = inputs_mod.make_inputs(self.task, inputs_mod.derive_seed(seed, index), variant, device=gen)
        hosted = {i for i, p in enumerate(self.placement) if p in ("cpu", "pinned")}
        if hosted and self.device.type != "cpu":
            key = (seed, repr(variant))
            if self.host_inputs.get("key") != key:
                host = inputs_mod.make_inputs(self.task, inputs_mod.derive_seed(seed, "host"), variant, device=gen)
                self.host_inputs = {"key": key, "args": self._place(host)}
            fresh = [self.host_inputs["args"][i] if i in hosted else x for i, x in enumerate(fresh)]
        return self._place(fresh)

    def _place(self, args: list[Any]) -> list[Any]:
        """Move inputs where the task wants them: the device (default), the host, pinned host."""
        placed = []
        for i, a in enumerate(args):
            where = self.placement[i] if i < len(self.placement) else "device"
            if not isinstance(a, torch.Tensor):
                placed.append(a)
            elif where == "device" or self.device.type == "cpu":
                placed.append(a.to(self.device))
            elif where == "pinned":
                placed.append(a if a.device.type == "cpu" and a.is_pinned() else a.cpu().pin_memory())
            else:
                placed.append(a.cpu())
        return placed

    def _run(self, args: list[Any], checks: bool) -> tuple[str, Outputs, list[Any]]:
        args = self._place(args)
        guards: list[Any] = []
        if checks and self.device.type == "cpu":
            args, guards = guarded(args)
        report: CallReport = {}
        py0, os0 = threading.active_count(), native_threads()
        launches0, inline0 = sum(fastpath.launches().values()), sum(self.inline_calls.values())
        recorder: Any = OpRecorder() if checks else contextlib.nullcontext()
        profiler = self._profiler() if checks and self.device.type == "cuda" else None
        try:
            if profiler is not None:
                profiler.__enter__()
        except Exception as e:  # noqa: BLE001 - no CUPTI here: fall back to counted launches
            report["profiler"] = f"unavailable: {type(e).__name__}: {e}"[:200]
            profiler = None
        try:
            with torch.no_grad(), recorder:
                out = self.model(*args)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
        finally:
            if profiler is not None:
                profiler.__exit__(None, None, None)
        # snapshot at once: a thread still writing after return must not get the chance
        sent: list[Any] = []
        tree = pack_tree(out, sent)
        plain = [type(t) is torch.Tensor for t in sent]
        snap = [t.detach().clone() for t in sent]
        if checks:
            report["aten_ops"] = sorted(recorder.ops)
            report["kernel_calls"] = (sum(fastpath.launches().values()) - launches0
                                      + sum(self.inline_calls.values()) - inline0)
            report["python_threads_added"] = threading.active_count() - py0
            report["native_threads_added"] = native_threads() - os0
            report["guard_violations"] = [i for i, g in guards if not g()]
            report["aliases"] = aliases(sent, args)
            report["plain"] = plain
            if profiler is not None:
                try:
                    kernels = [k for k in profiler.events() if k.device_type.name == "CUDA"]
                    report["gpu_kernels"] = sorted({k.name for k in kernels})
                    spent: dict[str, float] = {}  # GPU time per kernel name, for coverage on CUDA
                    for k in kernels:
                        spent[k.name] = spent.get(k.name, 0.0) + float(k.time_range.elapsed_us())
                    report["gpu_kernel_us"] = spent
                except Exception as err:  # noqa: BLE001 - as above
                    report["profiler"] = f"no events: {type(err).__name__}: {err}"[:200]
        inputs_after: list[Any] = [a for a in args if isinstance(a, torch.Tensor)] if checks else []
        return "outputs", {"tree": tree, "report": report, "n_outputs": len(snap)}, snap + inputs_after

    def _profiler(self) -> Any:
        from torch.profiler import ProfilerActivity, profile

        return profile(activities=[ProfilerActivity.CUDA])

    # --- timing -------------------------------------------------------------------------
    def do_cores(self, meta: CoresRequest, _: list[Any]) -> tuple[str, Empty, list[Any]]:
        """Onto the timing cores for a timing phase (timed loop and spot checks), or back."""
        if self.timing_cpus:
            cpus.pin_all_threads(self.timing_cpus if meta.get("timing") else self.rest_cpus)
        return "cores", {}, []

    def do_stage(self, meta: StageRequest, _: list[Any]) -> tuple[str, Staged, list[Any]]:
        """Inputs of timed calls first .. first+calls-1, made now (untimed) for the next round."""
        seed, first, calls = int(meta["seed"]), int(meta["first"]), int(meta["calls"])
        self.staged = []  # the last round's inputs go first
        self.staged = [self._timed_inputs(seed, first + j, meta.get("variant")) for j in range(calls)]
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        per_call = sum(a.numel() * a.element_size() for a in self.staged[0] if isinstance(a, torch.Tensor)) if calls else 0
        return "staged", {"bytes_per_call": per_call}, []

    def do_go(self, meta: GoRequest, _: list[Any]) -> tuple[str, Went, list[Any]]:
        """One timing round: the staged calls back to back, each output checksummed at once
        (the sampler's round, evaluator/coverage.py, goes without checksums).
        The supervisor times this request from its send to this reply (evaluator/rounds.py);
        the per-call times measured here are claims it only cross-checks. On a GPU each call
        is timed by events after an L2 flush, and again after a device-wide synchronize."""
        model = self.model
        if meta.get("compiled"):  # the reference under torch.compile (reference worker only)
            if self.compiled is None:
                self.compiled = torch.compile(self.model)
            model = self.compiled
        timer = self.timer if self.device.type == "cuda" else None
        claims, synced, out = [], [], None
        sums, check = Checksums(self._signs(int(meta.get("sign_seed", 0)))), meta.get("checksums", True)
        began = _clock_ns()
        with torch.no_grad():
            for args in self.staged:
                if timer:
                    ms, ms_synced, out = timer.time(model, args)
                else:
                    t0 = _clock_ns()
                    out = model(*args)
                    ms = ms_synced = (_clock_ns() - t0) / 1e6
                claims.append(ms)
                synced.append(ms_synced)
                if check:
                    sums.add(out)
        if self.staged and check:  # what do_last sends: the last checked output
            self.last_out = out
        return "went", {"claims_ms": claims, "synced_ms": synced, "checksums": sums.values(),
                        "loop_ms": (_clock_ns() - began) / 1e6}, []  # loop_ms: a diagnostic claim

    def do_last(self, meta: Empty, _: list[Any]) -> tuple[str, Last, list[Any]]:
        """The last timed output in full, for the supervisor to compare (outside any round)."""
        sent: list[Any] = []
        tree = pack_tree(self.last_out, sent)
        return "last", {"tree": tree}, sent

    def do_sums(self, meta: SumsRequest, _: list[Any]) -> tuple[str, Sums, list[Any]]:
        """Checksums of timed calls by index (reference side: what the candidate's must match)."""
        seed, sums, signs = int(meta["seed"]), [], self._signs(int(meta.get("sign_seed", 0)))
        with torch.no_grad():
            for i in meta["indices"]:
                sums += checksums([self.model(*self._timed_inputs(seed, int(i), None))], signs)  # default shape
        return "sums", {"checksums": sums}, []

    def _signs(self, seed: int) -> Signs:
        if self.signs is None or self.signs.seed != seed:
            self.signs = Signs(seed)
        return self.signs

    @functools.cached_property
    def timer(self) -> CudaTimer:
        return CudaTimer(self.device)
