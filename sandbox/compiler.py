"""Build C++ (g++) and CUDA (nvcc) sources into plain shared libraries, cached by content.

No torch headers are involved: a build here costs a fraction of a second where
`load_inline` costs tens of seconds. The cache key covers the source, the flags, the target
and the compiler's own version, so a cache directory can be shared by runs and machines.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

CXX_FLAGS = ("-O3", "-march=native", "-fPIC", "-shared", "-fopenmp")
NVCC_FLAGS = ("-O3", "-Xptxas", "-v")
_DEFINE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclasses.dataclass(frozen=True)
class CompileSpec:
    source: str
    lang: str = "cpp"  # "cpp" or "cuda"
    flags: tuple[str, ...] = ()
    defines: tuple[tuple[str, str], ...] = ()
    arch: str | None = None  # e.g. "sm_90"; CUDA only
    output: str = "shared"  # "shared" library, or "cubin" (CUDA device code only: resource reports)

    def __post_init__(self) -> None:
        if self.lang not in ("cpp", "cuda"):
            raise ValueError(f"unknown kernel language {self.lang!r} (use 'cpp' or 'cuda')")
        if self.output not in ("shared", "cubin") or (self.output == "cubin" and self.lang != "cuda"):
            raise ValueError(f"bad output kind {self.output!r}")
        for name, _ in self.defines:
            if not _DEFINE_NAME.match(name):
                raise ValueError(f"bad macro name {name!r}")

    def key(self) -> str:
        ident = compiler_version(self.lang)
        recipe = ["host-object"] if self.lang == "cuda" else []  # CUDA: compile, then link (see command)
        blob = json.dumps([self.lang, self.source, self.flags, self.defines, self.arch, self.output, ident, *recipe])
        return hashlib.sha256(blob.encode()).hexdigest()[:32]


@dataclasses.dataclass(frozen=True)
class BuildResult:
    ok: bool
    path: str  # the shared library, when ok
    log: str  # compiler output, capped
    seconds: float
    cached: bool
    key: str
    screen: str = ""  # set when the binary screen refused the library (sandbox/binscreen.py)


@dataclasses.dataclass(frozen=True)
class CompilerConfig:
    cache_dir: Path
    timeout_s: float = 120.0
    max_log_bytes: int = 64 * 1024
    cxx: str = "g++"
    nvcc: str = "nvcc"
    default_arch: str = "sm_90"


@functools.cache
def compiler_version(lang: str) -> str:
    exe = "nvcc" if lang == "cuda" else "g++"
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return f"{exe}: unavailable"
    lines = [ln for ln in out.stdout.splitlines() if ln.strip()]
    if lang == "cuda":
        return lines[-1] if lines else "nvcc: unknown"
    # -march=native makes a C++ build specific to the host processor
    return f"{lines[0] if lines else 'g++: unknown'} on {host_cpu()}"


@functools.cache
def host_cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


HOST_OBJECT = "kernel.o"  # a CUDA library's own host code, kept next to it for the binary screen


def command(spec: CompileSpec, cfg: CompilerConfig, src: Path, out: Path) -> list[str]:
    defines = [f"-D{k}={v}" for k, v in spec.defines]
    std = [] if any(f.startswith("-std=") for f in spec.flags) else ["-std=c++17"]
    if spec.lang == "cuda":
        arch = spec.arch or cfg.default_arch
        kind = ["-cubin"] if spec.output == "cubin" else ["-c", "-Xcompiler", "-fPIC"]
        dest = out if spec.output == "cubin" else out.with_name(HOST_OBJECT)
        return [cfg.nvcc, *NVCC_FLAGS, *kind, *std, f"-arch={arch}", *defines, *spec.flags, "-o", str(dest), str(src)]
    return [cfg.cxx, *CXX_FLAGS, *std, *defines, *spec.flags, "-o", str(out), str(src)]


def link_command(spec: CompileSpec, cfg: CompilerConfig, out: Path) -> list[str] | None:
    """A CUDA library is linked in a second step from its host object alone, so that the object
    shows what the candidate's code imports apart from what the static CUDA runtime does."""
    if spec.lang != "cuda" or spec.output != "shared":
        return None
    arch = spec.arch or cfg.default_arch
    return [cfg.nvcc, "-shared", f"-arch={arch}", "-o", str(out), str(out.with_name(HOST_OBJECT))]


_running: set[int] = set()  # process groups of the compilers running now
_placed: list[tuple[int, ...] | None] = [None]  # cores a new compiler goes to; None: any
_state = threading.Lock()


def place_compilers(cpus: tuple[int, ...] | None) -> set[int]:
    """Where compilers started from now on run (sandbox/cpus.py moves the running ones, whose
    process groups this returns)."""
    with _state:
        _placed[0] = cpus
        return set(_running)


def run_compiler(cmd: list[str], cwd: Path, timeout_s: float, max_log: int) -> tuple[int | None, str]:
    """Run a compiler in its own process group; None as the code means it timed out."""
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        with _state:
            _running.add(proc.pid)
            where = _placed[0]
        if where:  # a timing phase: off its cores (the driver's children inherit this)
            try:
                os.sched_setaffinity(proc.pid, where)
            except OSError:
                pass
        try:
            code: int | None = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
        finally:
            with _state:
                _running.discard(proc.pid)
        log.seek(0)
        text = log.read(max_log + 1).decode(errors="replace")
    if len(text) > max_log:
        text = text[:max_log] + "\n[compiler output truncated]"
    return code, text


def run_until(cmd: list[str], cwd: Path, deadline: float, max_log: int) -> tuple[int | None, str]:
    """run_compiler by a deadline (time.perf_counter) that all of a build's steps share."""
    left = deadline - time.perf_counter()
    return run_compiler(cmd, cwd, left, max_log) if left > 0 else (None, "")


FAILED = "failed.log"  # a build the compiler refused, where kept: the same source then fails at once


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One build into the content-addressed cache: the files written first, the commands run
    in that directory, the file that comes out. `keep_failures`: a source the compiler refused
    is cached too (a build killed by a signal never is)."""

    key: str
    product: str
    files: Mapping[str, str]
    steps: Callable[[Path, float], tuple[int | None, str]]  # (where, deadline) -> (exit code, None on timeout; log)
    timeout_s: float  # all the steps together
    keep_failures: bool = False


def cached_build(recipe: Recipe, cache_dir: Path) -> BuildResult:
    """Find `recipe`'s product in the cache, or build it in a private directory beside its entry
    and publish that atomically. Never raises on bad source: a failure is a BuildResult."""
    t0 = time.perf_counter()
    key = recipe.key
    entry = cache_dir / key[:2] / key
    product = entry / recipe.product

    def result(ok: bool, log: str, cached: bool = False) -> BuildResult:
        return BuildResult(ok, str(product) if ok else "", log, time.perf_counter() - t0, cached, key)

    if product.is_file():
        return result(True, _read(entry / "build.log"), cached=True)
    if recipe.keep_failures and (entry / FAILED).is_file():
        return result(False, _read(entry / FAILED), cached=True)
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmpd = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".{key}."))
    try:
        for name, text in recipe.files.items():
            (tmpd / name).write_text(text)
        try:
            code, log = recipe.steps(tmpd, time.perf_counter() + recipe.timeout_s)
        except FileNotFoundError as e:
            return result(False, f"compiler not found: {e.filename or e}")
        log = log.replace(str(tmpd) + "/", "")
        if code is None:
            return result(False, log + f"\nbuild timed out after {recipe.timeout_s:.0f} s")
        built = code == 0 and (tmpd / recipe.product).is_file()
        if not built and (not recipe.keep_failures or code <= 0):
            return result(False, log or f"the build failed (code {code})")
        (tmpd / ("build.log" if built else FAILED)).write_text(log)
        try:
            os.rename(tmpd, entry)  # atomic publish; a concurrent identical build may win
        except OSError:
            if built and not product.is_file():
                return result(False, log + "\ncannot publish the build into the cache")
        return result(built, log)
    finally:
        shutil.rmtree(tmpd, ignore_errors=True)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def build(spec: CompileSpec, cfg: CompilerConfig) -> BuildResult:
    """Compile (or find in the cache) one shared library. Never raises on bad source."""
    src = "kernel.cu" if spec.lang == "cuda" else "kernel.cpp"

    def steps(where: Path, deadline: float) -> tuple[int | None, str]:
        out = where / "lib.so"  # a cubin keeps this name too: one cache layout
        code, log = run_until(command(spec, cfg, where / src, out), where, deadline, cfg.max_log_bytes)
        link = link_command(spec, cfg, out)
        if code == 0 and link:
            code, more = run_until(link, where, deadline, cfg.max_log_bytes)
            log += more
        return code, log

    recipe = Recipe(spec.key(), "lib.so", {src: spec.source, "kernel.src": spec.source}, steps, cfg.timeout_s)
    return cached_build(recipe, cfg.cache_dir)
