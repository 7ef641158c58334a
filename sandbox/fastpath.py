"""kernelwright's fast path: compile a C++/CUDA source with no torch headers, call it with tensors.

    from sandbox import fastpath
    lib = fastpath.compile(SOURCE, defines={"BLOCK": 64})
    lib.softmax_rows(out, x, rows, cols)

Every `extern "C"` function of the source becomes a method. Its C prototype is read from the
source, so each call is checked: tensors for pointer parameters (device, dtype and contiguity
must fit), Python numbers for scalars; a CUDA launcher's trailing `cudaStream_t` parameter is
filled with torch's current stream when left out. Calls are counted per function, which is how
the evaluator knows that a kernel actually ran.
"""
from __future__ import annotations

import collections
import ctypes
import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from sandbox.compiler import BuildResult, CompilerConfig, CompileSpec, build


class CompileError(RuntimeError):
    def __init__(self, log: str):
        super().__init__("kernel failed to compile:\n" + log)
        self.log = log


# Set by the sandbox worker so that builds happen in the trusted supervisor.
Builder = Callable[[CompileSpec], BuildResult]
_builder: Builder | None = None
_launches: collections.Counter[str] = collections.Counter()
_built: set[str] = set()  # libraries the builder handed out: the only paths a Library loads


def set_builder(builder: Builder | None) -> None:
    global _builder
    _builder = builder


def launches() -> dict[str, int]:
    """How many times each fast-path function was called in this process."""
    return dict(_launches)


def _local_builder(spec: CompileSpec) -> BuildResult:
    cache = os.environ.get("KERNELWRIGHT_CACHE") or str(Path.home() / ".cache" / "kernelwright")
    return build(spec, CompilerConfig(cache_dir=Path(cache) / "fastpath"))


def compile(source: str, *, lang: str | None = None, flags: Sequence[str] = (),
            defines: Mapping[str, Any] | None = None, arch: str | None = None) -> Library:
    if lang is None:
        lang = "cuda" if "__global__" in source else "cpp"
    spec = CompileSpec(source=source, lang=lang, flags=tuple(flags),
                       defines=tuple(sorted((k, str(v)) for k, v in (defines or {}).items())), arch=arch)
    result = (_builder or _local_builder)(spec)
    if not result.ok:
        raise CompileError(result.log)
    _built.add(result.path)
    return Library(result.path, source, lang)


# --- prototypes ---------------------------------------------------------------------------

_POINTEE_DTYPES = {
    "float": ("float32",), "double": ("float64",), "int": ("int32",), "int32_t": ("int32",),
    "unsigned": ("int32",), "uint32_t": ("int32", "uint32"), "long": ("int64",),
    "long long": ("int64",), "int64_t": ("int64",), "uint64_t": ("int64", "uint64"),
    "int16_t": ("int16",), "short": ("int16",), "int8_t": ("int8",), "char": ("int8", "uint8", "bool"),
    "signed char": ("int8",), "uint8_t": ("uint8", "bool"), "unsigned char": ("uint8", "bool"),
    "bool": ("bool",), "half": ("float16",), "__half": ("float16",),
    "__nv_bfloat16": ("bfloat16",), "nv_bfloat16": ("bfloat16",), "uint16_t": ("float16", "bfloat16", "int16"),
    "void": None,  # any dtype
}
_SCALARS: dict[str, Any] = {
    "int": ctypes.c_int, "int32_t": ctypes.c_int32, "unsigned": ctypes.c_uint, "unsigned int": ctypes.c_uint,
    "uint32_t": ctypes.c_uint32, "long": ctypes.c_long, "long long": ctypes.c_longlong,
    "int64_t": ctypes.c_int64, "uint64_t": ctypes.c_uint64, "size_t": ctypes.c_size_t,
    "ptrdiff_t": ctypes.c_ssize_t, "float": ctypes.c_float, "double": ctypes.c_double,
    "bool": ctypes.c_bool, "char": ctypes.c_char,
}
_QUALIFIERS = re.compile(r"\b(const|volatile|__restrict__|__restrict|restrict|struct|std::)\b|std::")


class Param:
    def __init__(self, decl: str):
        decl = " ".join(_QUALIFIERS.sub(" ", decl).split())
        m = re.match(r"^(.*?)([A-Za-z_]\w*)(\s*\[\s*\])?$", decl)
        if not m or not m.group(1).strip():
            raise ValueError(f"cannot read parameter {decl!r}")
        ctype, self.name = m.group(1).strip(), m.group(2)
        self.pointer = "*" in ctype or bool(m.group(3))
        self.base = ctype.replace("*", "").strip()
        self.stream = self.base == "cudaStream_t"
        if not self.pointer and not self.stream and self.base not in _SCALARS:
            raise ValueError(f"unsupported parameter type {ctype!r} for {self.name!r}")


class Prototype:
    def __init__(self, name: str, ret: str, params: list[Param]):
        self.name, self.ret, self.params = name, ret, params


def _strip_comments(src: str) -> str:
    src = re.sub(r"/\*.*?\*/", " ", src, flags=re.S)
    return re.sub(r"//[^\n]*", "", src)


_FUNC = re.compile(r"([A-Za-z_][\w\s\*:]*?)\b([A-Za-z_]\w*)\s*\(([^()]*)\)\s*(?=[{;])")


def prototypes(source: str) -> dict[str, Prototype]:
    """The `extern "C"` functions of a source, with their parameters."""
    src = _strip_comments(source)
    found: dict[str, Prototype] = {}
    for m in re.finditer(r'extern\s+"C"\s*', src):
        rest = src[m.end():]
        if rest.startswith("{"):
            depth, i = 0, 0
            for i, ch in enumerate(rest):  # noqa: B007 - i: where the block ends, read below
                depth += ch == "{"
                depth -= ch == "}"
                if depth == 0:
                    break
            body, decls = rest[1:i], []
            depth = 0
            top = []
            for ch in body:  # keep only text at brace depth 0 of the block
                if ch == "{":
                    depth += 1
                    if depth == 1:
                        top.append("{;")
                elif ch == "}":
                    depth -= 1
                elif depth == 0:
                    top.append(ch)
            decls = list(_FUNC.finditer("".join(top)))
        else:
            first = _FUNC.match(rest)
            decls = [first] if first else []
        for d in decls:
            ret = " ".join(re.sub(r"\b(__host__|__device__|inline|static|__attribute__\(\(.*?\)\))\b", " ", d.group(1)).split())
            args = [a.strip() for a in d.group(3).split(",") if a.strip() and a.strip() != "void"]
            found[d.group(2)] = Prototype(d.group(2), ret, [Param(a) for a in args])
    return found


# --- calling ------------------------------------------------------------------------------

_LM_ID_NEWLM, _RTLD_NOW, _RTLD_DI_LMID = -1, 2, 1
_namespace: dict[str, Any] = {}  # libc's dlmopen; "lmid": the kernels' namespace; "none": why there is none


def _open_library(path: str, lang: str) -> tuple[ctypes.CDLL, str]:
    """C++ libraries go into one link-map namespace of their own (dlmopen), with their own
    libc, libm, libstdc++ and libgomp and nothing else: they cannot bind the interpreter's or
    libtorch's symbols (an undefined one fails the load). One namespace for all of a process's
    kernels: a process has 16, and each new one with libgomp costs static TLS (about 5 fit).
    Where none can be made, plain dlopen, and `loader` says why. CUDA libraries keep dlopen: a
    second copy of the driver library would not share torch's context."""
    if lang != "cpp" or "none" in _namespace:
        return ctypes.CDLL(path), "dlopen" + (f" (no namespace: {_namespace['none']})" if "none" in _namespace else "")
    dl = _namespace.get("libc")
    if dl is None:
        dl = _namespace["libc"] = ctypes.CDLL(None)
        dl.dlmopen.restype, dl.dlmopen.argtypes = ctypes.c_void_p, [ctypes.c_long, ctypes.c_char_p, ctypes.c_int]
        dl.dlerror.restype = ctypes.c_char_p
        dl.dlinfo.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
    lmid = _namespace.get("lmid", _LM_ID_NEWLM)
    handle = dl.dlmopen(lmid, os.fsencode(path), _RTLD_NOW)
    if not handle:
        err = (dl.dlerror() or b"dlmopen failed").decode(errors="replace")
        if lmid == _LM_ID_NEWLM and ("no more namespaces" in err or "static TLS" in err):
            _namespace["none"] = err
            return _open_library(path, lang)
        hint = ("after the candidate's import the worker maps no new code: compile kernels at module level"
                if "failed to map segment" in err else "kernel libraries cannot use the interpreter's or libtorch's symbols")
        raise OSError(f"{err} ({hint})")
    if lmid == _LM_ID_NEWLM:
        found = ctypes.c_long(0)
        if dl.dlinfo(handle, _RTLD_DI_LMID, ctypes.byref(found)) == 0:
            _namespace["lmid"] = found.value
    return ctypes.CDLL(path, handle=handle), "dlmopen"


class Library:
    def __init__(self, path: str, source: str, lang: str = "cpp"):
        if path not in _built:  # (else any library, libc's system() included, would be callable)
            raise ValueError(f"fastpath.Library loads only what fastpath.compile built, not {path!r}")
        self.path, self.lang = path, lang
        self._cdll, self.loader = _open_library(path, lang)
        self._protos = prototypes(source)
        if not self._protos:
            raise CompileError('no extern "C" function found in the source')
        for name, proto in self._protos.items():
            setattr(self, name, self._bind(proto))

    def _bind(self, proto: Prototype) -> Callable[..., Any]:
        fn = getattr(self._cdll, proto.name)
        ret = proto.ret.replace("extern", "").strip()
        fn.restype = None if ret in ("void", "") else _SCALARS.get(ret, ctypes.c_int64)
        stream_last = bool(proto.params) and proto.params[-1].stream
        device = "cuda" if self.lang == "cuda" else "cpu"

        def call(*args: Any) -> Any:
            params = proto.params
            if stream_last and len(args) == len(params) - 1:
                args = (*args, _current_stream())
            if len(args) != len(params):
                raise TypeError(f"{proto.name}() takes {len(params)} arguments, got {len(args)}")
            cargs = [_convert(p, a, device, proto.name) for p, a in zip(params, args)]
            _launches[proto.name] += 1
            return fn(*cargs)

        call.__name__ = proto.name
        return call


def _current_stream() -> int:
    import torch
    return torch.cuda.current_stream().cuda_stream


def _convert(p: Param, value: Any, device: str, fname: str) -> Any:
    import torch

    where = f"{fname}(): parameter {p.name!r}"
    if p.stream:
        return ctypes.c_void_p(int(value) if value is not None else None)
    if p.pointer:
        if value is None:
            return ctypes.c_void_p(None)
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{where} wants a tensor, got {type(value).__name__}")
        zero_copy = device == "cuda" and value.device.type == "cpu" and value.is_pinned()
        if value.device.type != device and not zero_copy:  # pinned host memory is mapped for the GPU
            raise TypeError(f"{where}: tensor is on {value.device}, the kernel runs on {device}")
        allowed = _POINTEE_DTYPES.get(p.base, ())
        dtype = str(value.dtype).removeprefix("torch.")
        if allowed is not None and dtype not in allowed:
            raise TypeError(f"{where} is {p.base}*, got a {dtype} tensor")
        if not value.is_contiguous():
            raise TypeError(f"{where}: tensor is not contiguous (call .contiguous())")
        return ctypes.c_void_p(value.data_ptr())
    if isinstance(value, torch.Tensor):
        raise TypeError(f"{where} is a {p.base}, got a tensor")
    ctype = _SCALARS[p.base]
    if ctype in (ctypes.c_float, ctypes.c_double):
        if not isinstance(value, (int, float)):
            raise TypeError(f"{where} wants a number, got {type(value).__name__}")
        return ctype(float(value))
    if isinstance(value, bool) or not isinstance(value, int):
        if ctype is ctypes.c_bool and isinstance(value, bool):
            return ctype(value)
        raise TypeError(f"{where} wants an int, got {type(value).__name__}")
    return ctype(value)
