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


def _run(cmd: list[str], cwd: Path, timeout_s: float, max_log: int) -> tuple[int | None, str]:
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


def build(spec: CompileSpec, cfg: CompilerConfig) -> BuildResult:
    """Compile (or find in the cache) one shared library. Never raises on bad source."""
    t0 = time.perf_counter()
    key = spec.key()
    entry = cfg.cache_dir / key[:2] / key
    lib = entry / "lib.so"
    if lib.is_file():
        log = (entry / "build.log").read_text(errors="replace") if (entry / "build.log").exists() else ""
        return BuildResult(True, str(lib), log, time.perf_counter() - t0, True, key)
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmpd = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".{key}."))
    try:
        src = tmpd / ("kernel.cu" if spec.lang == "cuda" else "kernel.cpp")
        src.write_text(spec.source)
        out = tmpd / "lib.so"  # a cubin keeps this name too: one cache layout
        try:
            code, log = _run(command(spec, cfg, src, out), tmpd, cfg.timeout_s, cfg.max_log_bytes)
            link = link_command(spec, cfg, out)
            if code == 0 and link:
                code, more = _run(link, tmpd, cfg.timeout_s, cfg.max_log_bytes)
                log += more
        except FileNotFoundError as e:
            return BuildResult(False, "", f"compiler not found: {e.filename}", time.perf_counter() - t0, False, key)
        log = log.replace(str(tmpd) + "/", "")
        if code is None:
            return BuildResult(False, "", log + f"\ncompile timed out after {cfg.timeout_s:.0f} s",
                               time.perf_counter() - t0, False, key)
        if code != 0 or not out.is_file():
            return BuildResult(False, "", log, time.perf_counter() - t0, False, key)
        (tmpd / "build.log").write_text(log)
        (tmpd / "kernel.src").write_text(spec.source)
        try:
            os.rename(tmpd, entry)  # atomic publish; a concurrent identical build may win
        except OSError:
            if not lib.is_file():
                return BuildResult(False, "", log + "\ncannot publish the build into the cache",
                                   time.perf_counter() - t0, False, key)
        return BuildResult(True, str(lib), log, time.perf_counter() - t0, False, key)
    finally:
        shutil.rmtree(tmpd, ignore_errors=True)
