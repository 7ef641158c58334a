"""The static screen: rules checked on the candidate's source before anything runs.

It catches what is cheap to see and unambiguous (harness introspection, monkey-patching,
threads and processes, vendor-library bypasses, try/except fallbacks). What cannot be seen
statically (PyTorch compute, ghost kernels, aliasing) is checked at run time. Each finding
names its rule, so a rejection says exactly which one fired.
"""
from __future__ import annotations

import ast
import dataclasses
import re

BANNED_MODULES = {
    "threading": "threads", "_thread": "threads", "multiprocessing": "processes",
    "concurrent": "threads", "subprocess": "processes", "socket": "network", "signal": "signals",
    "gc": "harness introspection", "inspect": "harness introspection", "ctypes": "raw memory access",
    "cffi": "raw memory access", "importlib": "dynamic imports", "pickle": "serialization",
    "marshal": "serialization", "asyncio": "threads", "requests": "network", "urllib": "network",
    "http": "network", "numpy": "non-kernel compute", "scipy": "non-kernel compute",
    "numba": "non-kernel compute", "cupy": "non-kernel compute", "jax": "non-kernel compute",
    "tensorflow": "non-kernel compute", "builtins": "harness introspection",
    "evaluator": "harness introspection", "tasks": "harness introspection", "store": "harness introspection",
    "agent": "harness introspection", "sandbox.worker": "harness introspection",
    "sandbox.protocol": "harness introspection", "sandbox.zygote": "harness introspection",
    "sandbox.process": "harness introspection", "sandbox.compiler": "harness introspection",
    "sandbox.docker": "harness introspection", "sandbox.container": "harness introspection",
    "sandbox.image": "harness introspection", "sandbox.jail": "harness introspection",
    "sandbox.limits": "harness introspection", "sandbox.env": "harness introspection",
}
BANNED_NAMES = {"eval", "exec", "compile", "__import__", "globals", "vars", "locals", "breakpoint",
                "open", "setattr", "delattr", "memoryview"}
BANNED_OS = re.compile(r"^(system|popen|fork|forkpty|exec\w*|spawn\w*|kill|killpg|_exit|setsid|setpgid|"
                       r"remove|unlink|rmdir|removedirs|rename|replace|chmod|chown|symlink|link|dup2?|"
                       r"write|pipe|open|fdopen)$")
BANNED_SYS = {"_getframe", "modules", "settrace", "setprofile", "exit", "stdout", "stderr", "__stdout__"}
INTROSPECTION = {"_python_dispatch", "_get_dispatch_mode", "_C", "__globals__", "__code__",
                 "__closure__", "f_back", "f_globals", "f_locals", "__subclasses__", "__builtins__",
                 "gi_frame", "tb_frame", "__dict__", "_dispatch_modes"}
CPP_RULES = [
    ("cpp_thread", re.compile(r"std::(j?thread|async)\b|pthread_create|\bclone\s*\("),
     "spawns a thread in kernel source (work that outlives the call)"),
    ("cpp_process", re.compile(r"\b(v?fork|system|popen|execv\w*|execl\w*|posix_spawn\w*|kill)\s*\("),
     "starts or signals processes from kernel source"),
    ("cpp_dynamic_load", re.compile(r"\bdl(open|sym)\s*\("), "loads libraries at run time"),
    ("vendor_library", re.compile(r"\b(cublas\w*|cudnn\w*|cblas_\w+|[sdhc]gemm_|mkl_\w+|dnnl\w*)\b"),
     "calls a vendor library instead of a kernel"),
    ("cpp_file_io", re.compile(r"\b(fopen|freopen|std::[io]?fstream|ofstream|ifstream)\b"), "file I/O in kernel source"),
    ("cpp_constructor", re.compile(r"__attribute__\s*\(\(\s*constructor"), "code that runs at library load"),
    ("cpp_getenv", re.compile(r"\b(getenv|environ)\b"), "reads the environment"),
]
_KERNEL_HINT = re.compile(r'extern\s+"C"|#include|__global__|PYBIND11_MODULE|TORCH_LIBRARY')


@dataclasses.dataclass(frozen=True)
class Finding:
    rule: str
    message: str
    line: int = 0

    def __str__(self) -> str:
        where = f" (line {self.line})" if self.line else ""
        return f"static:{self.rule}: {self.message}{where}"


def _root_name(node: ast.AST) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _banned_module(name: str) -> str | None:
    for mod, why in BANNED_MODULES.items():
        if name == mod or name.startswith(mod + "."):
            return why
    return None


def kernel_sources(tree: ast.Module) -> list[tuple[str, int]]:
    """String constants that look like C++/CUDA sources, with their line."""
    return [(n.value, n.lineno) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and _KERNEL_HINT.search(n.value)]


def kernel_names(source: str) -> set[str]:
    """Names of the GPU kernels a candidate defines (CUDA __global__ functions, Triton jit)."""
    bounds = r"(?:__launch_bounds__\s*\([^)]*\)\s*)?"
    names = set(re.findall(rf"__global__\s+{bounds}\w+\s+{bounds}(\w+)\s*\(", source))
    names |= set(re.findall(r"@triton\.jit[^\n]*\n(?:@[^\n]*\n)*\s*def\s+(\w+)", source))
    return names


def screen(source: str) -> list[Finding]:
    """All rule violations in a candidate. A SyntaxError propagates (that is a compile error)."""
    tree = ast.parse(source)
    found: list[Finding] = []
    modules: set[str] = set()
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import):
            for a in node.names:
                modules.add((a.asname or a.name).split(".")[0])
                if why := _banned_module(a.name):
                    found.append(Finding("banned_import", f"imports {a.name} ({why})", line))
                elif INTROSPECTION & set(a.name.split(".")):
                    found.append(Finding("harness_introspection", f"imports {a.name}", line))
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            for a in node.names:
                modules.add(a.asname or a.name)
                full = f"{mod}.{a.name}" if mod else a.name
                if why := (_banned_module(mod) or _banned_module(full)):
                    found.append(Finding("banned_import", f"imports {full} ({why})", line))
                elif INTROSPECTION & set(full.split(".")):
                    found.append(Finding("harness_introspection", f"imports {full}", line))
        elif isinstance(node, ast.ClassDef) and node.name == "ModelNew":
            if any(_dotted(b).split(".")[-1] == "Model" for b in node.bases):
                found.append(Finding("model_subclass", "ModelNew inherits the reference Model", line))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in BANNED_NAMES:
            found.append(Finding("banned_call", f"calls {node.func.id}()", line))
        elif isinstance(node, ast.Attribute):
            root = _root_name(node)
            if node.attr in INTROSPECTION:
                found.append(Finding("harness_introspection", f"touches {_dotted(node) or node.attr}", line))
            elif root == "os" and BANNED_OS.match(node.attr) and _dotted(node) == f"os.{node.attr}":
                found.append(Finding("banned_call", f"uses os.{node.attr}", line))
            elif root == "sys" and node.attr in BANNED_SYS:
                found.append(Finding("harness_introspection", f"uses sys.{node.attr}", line))
        elif isinstance(node, ast.Try):
            for h in node.handlers:
                if not all(isinstance(s, ast.Raise) for s in h.body):
                    found.append(Finding("try_fallback", "try/except with a fallback path "
                                         "(a kernel must work or fail, never fall back)", h.lineno))
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            for t in targets:
                if isinstance(t, ast.Attribute) and _root_name(t) in modules:
                    found.append(Finding("monkeypatch", f"assigns {_dotted(t)} (patching a module)", line))
    for text, line in kernel_sources(tree):
        clean = re.sub(r"//[^\n]*|/\*.*?\*/", "", text, flags=re.S)
        for rule, pattern, message in CPP_RULES:
            m = pattern.search(clean)
            if m:
                found.append(Finding(rule, f"{message}: {m.group(0).strip()}", line))
    return found


def defines_modelnew(source: str) -> bool:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return False
    return any(isinstance(n, ast.ClassDef) and n.name == "ModelNew" for n in tree.body)
