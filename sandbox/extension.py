"""load_inline's torch extensions: built by the supervisor, never loaded there; loaded in the worker.

A candidate's `torch.utils.cpp_extension.load_inline(...)` call becomes, in the worker, a build
request (an ExtensionSpec: plain data) sent to the supervisor over the worker's channel. The
supervisor writes the sources as load_inline does (main.cpp: the C++ sources, then a
PYBIND11_MODULE binding each name in `functions`; cuda.cu: the CUDA sources), compiles them
with g++ (and nvcc) against torch's headers and links one library against libtorch, into a
cache the worker can read, keyed by a hash of everything that goes into the build. Nothing on
the supervisor's side ever imports or loads the result: a library's static constructors are
candidate code and run only in the jail, where `load` imports it. So no compiler, ninja or
build directory is needed in the worker, and the process and docker sandboxes build alike.

Unlike a fast-path library, an extension is not screened (sandbox/binscreen.py): it links
libtorch and the interpreter by design. The jail (namespaces or a container, seccomp, limits)
is what holds it.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any, Mapping

from sandbox.compiler import BuildResult, CompilerConfig, Recipe, cached_build, compiler_version, run_until

FORMAT = "1"  # bump when the recipe below changes: old cache entries are then never hit
STD = "-std=c++20"  # what torch's own headers need (2.10 and later)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")
_FUNCTION = re.compile(r"^[A-Za-z_]\w*(::[A-Za-z_]\w*)*$")
_ARCH = re.compile(r"^sm_\d{2,3}[af]?$")
# as torch builds CUDA extensions: at::Half and friends, not CUDA's own operators on __half
CUDA_DEFINES = ("-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
                "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__", "--expt-relaxed-constexpr")
_ARCH_FLAGS = ("-arch", "--gpu-architecture", "-gencode", "--generate-code", "-code", "--gpu-code")


@dataclasses.dataclass(frozen=True)
class ExtensionSpec:
    name: str  # the module name: PyInit_<name>, the library <name>.so
    cpp_sources: tuple[str, ...] = ()
    cuda_sources: tuple[str, ...] = ()
    functions: tuple[tuple[str, str], ...] = ()  # (name, docstring) bound in the generated module
    extra_cflags: tuple[str, ...] = ()
    extra_cuda_cflags: tuple[str, ...] = ()
    extra_ldflags: tuple[str, ...] = ()
    extra_include_paths: tuple[str, ...] = ()
    with_cuda: bool = False
    error_handling: bool = True  # load_inline's with_pytorch_error_handling
    implicit_headers: bool = True  # load_inline's `not no_implicit_headers`
    arch: str | None = None  # CUDA target, e.g. "sm_90"; None: the compiler config's default

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(f"bad extension name {self.name!r} (a Python identifier is needed)")
        for field in ("cpp_sources", "cuda_sources", "extra_cflags", "extra_cuda_cflags", "extra_ldflags",
                      "extra_include_paths"):
            value = getattr(self, field)
            if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{field} must be strings")
        for fn, doc in self.functions:
            if not isinstance(fn, str) or not _FUNCTION.match(fn) or not isinstance(doc, str):
                raise ValueError(f"bad function name {fn!r}")
        if any("\n" in p or "\0" in p or not p.strip() for p in self.extra_include_paths):
            raise ValueError("bad include path")
        if self.arch is not None and not _ARCH.match(str(self.arch)):
            raise ValueError(f"bad CUDA architecture {self.arch!r}")

    @property
    def cuda(self) -> bool:
        return self.with_cuda or bool(self.cuda_sources)

    def flags(self) -> tuple[str, ...]:
        """Every flag the candidate chose (for the supervisor's flag screen)."""
        return (*self.extra_cflags, *self.extra_cuda_cflags, *self.extra_ldflags,
                *(f"-I{p}" for p in self.extra_include_paths))

    def key(self) -> str:
        blob = json.dumps([FORMAT, dataclasses.astuple(self), toolchain(self.cuda)])
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def to_meta(self) -> dict[str, Any]:
        meta = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
        meta["functions"] = [list(f) for f in self.functions]
        return meta  # as JSON gives it back

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> ExtensionSpec:
        """From a worker's request (untrusted): strict types, or ValueError / TypeError / KeyError."""
        def strs(field: str) -> tuple[str, ...]:
            value = meta.get(field) or []
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{field} must be a list of strings")
            return tuple(value)

        functions = meta.get("functions") or []
        if not isinstance(functions, list) or not all(
                isinstance(f, list) and len(f) == 2 and all(isinstance(x, str) for x in f) for f in functions):
            raise ValueError("functions must be [name, docstring] pairs")
        arch = meta.get("arch")
        return cls(name=str(meta["name"]), cpp_sources=strs("cpp_sources"), cuda_sources=strs("cuda_sources"),
                   functions=tuple((f[0], f[1]) for f in functions), extra_cflags=strs("extra_cflags"),
                   extra_cuda_cflags=strs("extra_cuda_cflags"), extra_ldflags=strs("extra_ldflags"),
                   extra_include_paths=strs("extra_include_paths"), with_cuda=bool(meta.get("with_cuda")),
                   error_handling=bool(meta.get("error_handling", True)),
                   implicit_headers=bool(meta.get("implicit_headers", True)),
                   arch=None if arch is None else str(arch))


# --- worker side ----------------------------------------------------------------------------

def _listed(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError(f"{what} must be a string or a list of strings")


def from_call(given: Mapping[str, Any], arch: str | None = None) -> ExtensionSpec:
    """The build request for one load_inline call, from its bound arguments (by parameter name)."""
    if given.get("sycl_sources") or given.get("with_sycl"):
        raise ValueError("SYCL sources are not supported here")
    functions = given.get("functions")
    if functions is None:
        pairs: tuple[tuple[str, str], ...] = ()
    elif isinstance(functions, str):
        pairs = ((functions, functions),)
    elif isinstance(functions, (list, tuple)):
        pairs = tuple((str(f), str(f)) for f in functions)
    elif isinstance(functions, dict):
        pairs = tuple((str(k), str(v)) for k, v in functions.items())
    else:
        raise ValueError(f"functions must be a list or dict, not {type(functions).__name__}")
    cuda_sources = _listed(given.get("cuda_sources"), "cuda_sources")
    with_cuda = given.get("with_cuda")
    return ExtensionSpec(
        name=str(given.get("name")), cpp_sources=_listed(given.get("cpp_sources"), "cpp_sources"),
        cuda_sources=cuda_sources, functions=pairs,
        extra_cflags=_listed(given.get("extra_cflags"), "extra_cflags"),
        extra_cuda_cflags=_listed(given.get("extra_cuda_cflags"), "extra_cuda_cflags"),
        extra_ldflags=_listed(given.get("extra_ldflags"), "extra_ldflags"),
        extra_include_paths=_listed(given.get("extra_include_paths"), "extra_include_paths"),
        with_cuda=bool(cuda_sources) if with_cuda is None else bool(with_cuda),
        error_handling=bool(given.get("with_pytorch_error_handling", True)),
        implicit_headers=not given.get("no_implicit_headers", False),
        arch=arch if (bool(cuda_sources) if with_cuda is None else bool(with_cuda)) else None)


def load(name: str, path: str, python_module: bool = True) -> Any:
    """Import a built extension in the worker (its constructors run here, in the jail): as a
    Python module named `name`, or, like load_inline's is_python_module=False, as a library of
    torch ops (the path is returned then)."""
    if not python_module:
        import torch

        torch.ops.load_library(path)
        return path
    import importlib.machinery
    import importlib.util

    loader = importlib.machinery.ExtensionFileLoader(name, path)
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    if spec is None:
        raise ImportError(f"cannot import the extension {name!r} from {path}")
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


# --- supervisor side: the recipe ----------------------------------------------------------------

@functools.cache
def toolchain(cuda: bool) -> tuple[str, ...]:
    """What a build depends on besides its spec: compilers, torch, the interpreter's ABI."""
    import torch

    parts = [compiler_version("cpp"), torch.__version__, str(getattr(torch.version, "git_version", "")),
             sys.version, str(sysconfig.get_config_var("EXT_SUFFIX")), str(_cxx11_abi()), str(Path(torch.__file__).parent)]
    if cuda:
        parts += [compiler_version("cuda"), str(_cuda_home())]
    return tuple(parts)


def _cxx11_abi() -> int:
    import torch

    return int(bool(torch._C._GLIBCXX_USE_CXX11_ABI))


@functools.cache
def _cuda_home() -> Path | None:
    for env in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(env) and Path(os.environ[env], "include", "cuda_runtime.h").is_file():
            return Path(os.environ[env])
    which = shutil.which("nvcc")  # (a wrapper script may stand in for it: then the usual place)
    candidates = [Path(which).resolve().parent.parent] if which else []
    candidates.append(Path("/usr/local/cuda"))
    return next((c for c in candidates if (c / "include" / "cuda_runtime.h").is_file()), None)


@functools.cache
def _cudart(torch_lib: str) -> str | None:
    """The CUDA runtime library torch itself loads (its wheel may ship one of its own), so that an
    extension binds the same runtime torch does: its path, from ldd on libtorch_cuda."""
    target = Path(torch_lib) / "libtorch_cuda.so"
    if not target.is_file():
        return None
    try:
        out = subprocess.run(["ldd", str(target)], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"libcudart\.so[.\d]*\s*=>\s*(/\S+)", out)
    return m.group(1) if m else None


def _c_string(text: str) -> str:
    """A C++ string literal of `text` (octal escapes: never greedy, never a trigraph)."""
    safe = set(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _.,:;-+*/()[]<>=!&|^~%#{}")
    return '"' + "".join(chr(b) if b in safe else f"\\{b:03o}" for b in text.encode()) + '"'


def sources(spec: ExtensionSpec) -> dict[str, str]:
    """The files of a build, as load_inline lays them out: main.cpp, and cuda.cu with CUDA sources."""
    cpp = ["#include <torch/extension.h>"] if spec.implicit_headers else []
    cpp += list(spec.cpp_sources)
    if spec.functions:
        cpp.append("PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {")
        for fn, doc in spec.functions:
            target = f"torch::wrap_pybind_function({fn})" if spec.error_handling else fn
            cpp.append(f"m.def({_c_string(fn)}, {target}, {_c_string(doc)});")
        cpp.append("}")
    files = {"main.cpp": "\n".join(cpp)}
    if spec.cuda_sources:
        cu = ["#include <torch/types.h>", "#include <cuda.h>", "#include <cuda_runtime.h>"] if spec.implicit_headers else []
        files["cuda.cu"] = "\n".join([*cu, *spec.cuda_sources])
    return files


def commands(spec: ExtensionSpec, cfg: CompilerConfig) -> tuple[list[list[str]], list[str]]:
    """(the compile commands, run side by side; the link command), relative to the build directory."""
    import torch.utils.cpp_extension as ce

    system = [*ce.include_paths("cpu"), sysconfig.get_paths()["include"]]
    libdirs = ce.library_paths("cpu")
    cuda_home = _cuda_home() if spec.cuda else None
    if spec.cuda:
        if cuda_home is None:
            raise FileNotFoundError("no CUDA toolkit found (set CUDA_HOME)")
        system.append(str(cuda_home / "include"))
    includes = [f"-I{p}" for p in spec.extra_include_paths] + [x for p in system for x in ("-isystem", p)]
    defines = [f"-DTORCH_EXTENSION_NAME={spec.name}", "-DTORCH_API_INCLUDE_EXTENSION_H",
               f"-D_GLIBCXX_USE_CXX11_ABI={_cxx11_abi()}"]
    compile_ = [[cfg.cxx, "-c", "main.cpp", "-o", "main.o", *defines, *includes, "-fPIC", "-O3", STD,
                 *spec.extra_cflags]]
    objects = ["main.o"]
    if spec.cuda_sources:
        arch = spec.arch or cfg.default_arch
        target = [] if any(f.split("=")[0] in _ARCH_FLAGS for f in spec.extra_cuda_cflags) else \
            [f"-gencode=arch=compute_{arch[3:]},code={arch}"]
        compile_.append([cfg.nvcc, "-c", "cuda.cu", "-o", "cuda.o", *defines, *includes, "-Xcompiler", "-fPIC",
                         "-O3", STD, *CUDA_DEFINES, *target, "-Xptxas", "-v", *spec.extra_cuda_cflags])
        objects.append("cuda.o")
    libs = ["-lc10", "-ltorch", "-ltorch_cpu", "-ltorch_python"]
    if spec.cuda:
        assert cuda_home is not None
        cudart = _cudart(libdirs[0]) if libdirs else None
        libs += ["-lc10_cuda", "-ltorch_cuda", cudart or "-lcudart"]
        libdirs = [*libdirs, str(cuda_home / "lib64")]
    link = [cfg.cxx, *objects, "-shared", "-o", f"{spec.name}.so", *[f"-L{p}" for p in libdirs], *libs,
            *spec.extra_ldflags]
    return compile_, link


# --- supervisor side: the build ------------------------------------------------------------------

def build(spec: ExtensionSpec, cfg: CompilerConfig) -> BuildResult:
    """Compile (or find in the cache) one extension; never loads it, never raises on bad source."""
    try:
        key = spec.key()
    except Exception as e:  # noqa: BLE001 - torch or a compiler unusable here
        return BuildResult(False, "", f"cannot build torch extensions here: {e}", 0.0, False, "")
    recipe = Recipe(key, f"{spec.name}.so", sources(spec), lambda where, deadline: _steps(spec, cfg, where, deadline),
                    cfg.timeout_s, keep_failures=True)
    return cached_build(recipe, cfg.cache_dir)


def _steps(spec: ExtensionSpec, cfg: CompilerConfig, where: Path, deadline: float) -> tuple[int | None, str]:
    """Compile the sources side by side, then link; (exit code, None on timeout; the log). The
    objects are not kept: the library is what the worker loads."""
    compile_, link = commands(spec, cfg)

    def run(cmd: list[str]) -> tuple[int | None, str]:
        return run_until(cmd, where, deadline, cfg.max_log_bytes)

    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(compile_)) as pool:
            results = list(pool.map(run, compile_))
        log = "".join(text for _, text in results)
        codes = [c for c, _ in results]
        if None in codes:
            return None, log
        bad = next((c for c in codes if c != 0), 0)
        if bad:
            return bad, log
        code, text = run(link)
        return code, log + text
    finally:
        for obj in where.glob("*.o"):
            obj.unlink()


