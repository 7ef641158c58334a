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

# What candidate code may import, in one place (agent/loop/prompts.py words its rule from these).
# Of kernelwright itself only the fast path's public API: every other module of the harness, and
# anything private or internal of the fast path (_launches, set_builder, launches), is off limits.
KERNELWRIGHT_PACKAGES = ("agent", "benchmarks", "evaluator", "kernelwright", "sandbox", "scripts", "store",
                         "tasks", "tests")
ALLOWED_KERNELWRIGHT = {"sandbox.fastpath": ("compile", "CompileError", "Library")}
ALLOWED_IMPORTS = ("torch", "math")  # what the prompt offers; other modules are judged by BANNED_MODULES
ALLOWED_GPU_IMPORTS = ("triton",)
PROMPT_BANNED = ("ctypes", "os", "sys", "importlib")  # named as banned in the prompt, with eval and exec
BANNED_MODULES = {
    "threading": "threads", "_thread": "threads", "multiprocessing": "processes",
    "concurrent": "threads", "subprocess": "processes", "socket": "network", "signal": "signals",
    "gc": "harness introspection", "inspect": "harness introspection", "ctypes": "raw memory access",
    "cffi": "raw memory access", "importlib": "dynamic imports", "pickle": "serialization",
    "marshal": "serialization", "asyncio": "threads", "requests": "network", "urllib": "network",
    "http": "network", "numpy": "non-kernel compute", "scipy": "non-kernel compute",
    "numba": "non-kernel compute", "cupy": "non-kernel compute", "jax": "non-kernel compute",
    "tensorflow": "non-kernel compute", "builtins": "harness introspection",
    "os": "the process, its files and environment", "sys": "interpreter internals (modules, frames, exit)",
    "posix": "the process, its files and environment", "_ctypes": "raw memory access",
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


_HARNESS = "kernelwright's harness: candidates get only " + ", ".join(
    f"{m.rpartition('.')[2]}.{n}" for m, names in ALLOWED_KERNELWRIGHT.items() for n in names)


def _kw_allowed(module: str, name: str | None = None) -> bool:
    """Whether a kernelwright module (or package on the way to one), or a name in it, is allowed."""
    if name is not None and module in ALLOWED_KERNELWRIGHT:
        return name in ALLOWED_KERNELWRIGHT[module]  # (private names never are)
    full = f"{module}.{name}" if name else module
    return any(m == full or m.startswith(full + ".") for m in ALLOWED_KERNELWRIGHT)


def _harness_api(tree: ast.Module) -> list[Finding]:
    """Kernelwright imports are an allowlist; the modules bound by allowed imports may only be
    used through their allowed attributes (never passed around, assigned or looked up by name)."""
    found: list[Finding] = []
    aliases: dict[str, str] = {}  # local name -> the kernelwright module or package it holds
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] not in KERNELWRIGHT_PACKAGES:
                    continue
                if not _kw_allowed(a.name):
                    found.append(Finding("harness_api", f"imports {a.name} ({_HARNESS})", line))
                else:  # `import sandbox.fastpath` binds the package, `... as fp` the module
                    aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level or mod.split(".")[0] not in KERNELWRIGHT_PACKAGES:
                continue
            for a in node.names:
                full = f"{mod}.{a.name}"
                if _kw_allowed(full):  # an allowed module, or a package on the way to one
                    aliases[a.asname or a.name] = full
                elif not (mod in ALLOWED_KERNELWRIGHT and _kw_allowed(mod, a.name)):
                    found.append(Finding("harness_api", f"imports {full} ({_HARNESS})", line))

    def module_of(node: ast.AST) -> str | None:
        if isinstance(node, ast.Name):
            return aliases.get(node.id)
        if isinstance(node, ast.Attribute):
            base = module_of(node.value)
            if base and base not in ALLOWED_KERNELWRIGHT and _kw_allowed(f"{base}.{node.attr}"):
                return f"{base}.{node.attr}"
        return None

    used: set[int] = set()  # Name nodes that are the base of an attribute access
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Attribute) and (base := module_of(node.value)):
            used.update(id(n) for n in ast.walk(node.value) if isinstance(n, ast.Name))
            if not _kw_allowed(base, node.attr):
                found.append(Finding("harness_api", f"uses {base}.{node.attr} ({_HARNESS})", line))
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in aliases and id(node) not in used:
            found.append(Finding("harness_api", f"uses the module {aliases[node.id]} itself, not its API "
                                 f"({_HARNESS})", node.lineno))
    return found


def screen(source: str) -> list[Finding]:
    """All rule violations in a candidate. A SyntaxError propagates (that is a compile error)."""
    tree = ast.parse(source)
    found: list[Finding] = _harness_api(tree)
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
        clean = re.sub(r"//[^\n]*|/\*.*?\*/", "", text, flags=re.DOTALL)
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
