"""The binary screen: what a fast-path library imports, read from its ELF file.

The source screen sees spellings; a library's dynamic symbol table sees what the loader will
bind (asm labels, macros and token pasting all end up as the same undefined symbol). A kernel
needs memory, math, OpenMP and C++ runtime support, and on CUDA the runtime API; it has no
business with the interpreter, libtorch, the loader, the clock, files, processes or raw
syscalls. Every undefined symbol must be on the allowlist; a few are named as banned so that
the rejection says why. Weak undefined symbols are screened like strong ones: a weak reference
to a present symbol binds just the same. Only 64-bit little-endian ELF is read (x86-64 and
aarch64 Linux); anything else is refused, not guessed at.

A CUDA library carries the static CUDA runtime, which itself imports dlopen, syscall, sockets
and the clock: it is judged by the candidate's own host object (compiler.HOST_OBJECT, linked in
a separate step), and the library itself only for the interpreter and libtorch. Not seen here:
instructions (an inline `syscall` or `rdtsc`) and addresses computed at run time (seccomp and
the worker's isolation are for those).
"""
from __future__ import annotations

import dataclasses
import re
import shutil
import struct
from pathlib import Path
from typing import Any

_ET_REL, _ET_DYN, _PT_DYNAMIC = 1, 3, 2
_SHT_SYMTAB, _SHT_STRTAB, _SHT_DYNSYM = 2, 3, 11
_DT_NEEDED, _DT_STRTAB, _DT_SYMTAB = 1, 5, 6
_STB_WEAK = 2


class NotElf(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Symbol:
    name: str
    weak: bool


@dataclasses.dataclass(frozen=True)
class Finding:
    symbol: str
    reason: str
    what: str = "imports"

    def __str__(self) -> str:
        return f"binary_screen: the library {self.what} {self.symbol} ({self.reason})"


def _names(*alternatives: str) -> re.Pattern[str]:
    return re.compile("(?:" + "|".join(alternatives) + ")")


# Checked first, so that the rejection says why; a match here is refused whatever follows.
BANNED: list[tuple[re.Pattern[str], str]] = [
    (_names(r"_?Py\w+", r"THP\w+"), "the Python interpreter: kernels must not reach the harness"),
    (_names(r"_Z\w*?[A-Z](?:2at|3c10|5torch|8pybind11|6caffe2)\d\w*", r"aoti_torch\w*"),
     "libtorch: kernels must not reach the harness"),
    (_names(r"dl(?:open|mopen|sym|vsym|close|error|addr1?|info)", r"dl_iterate_phdr", r"_dl_\w+", r"__libc_dl\w+",
            r"cudaGetDriverEntryPoint\w*", r"cuGetProcAddress\w*"), "loads or looks up code at run time"),
    (_names(r"ptrace", r"process_vm_(?:readv|writev)"), "reads or writes another process's memory"),
    (_names(r"syscall"), "raw system calls"),
    (_names(r"mprotect", r"pkey_mprotect", r"mmap(?:64)?", r"munmap", r"mremap"),
     "changes memory mappings (code patching)"),
    (_names(r"(?:__)?open(?:at)?(?:64)?(?:_2)?", r"creat(?:64)?", r"f?open(?:64)?", r"freopen(?:64)?", r"fdopen",
            r"(?:__)?p?read(?:v|64)?(?:_chk)?", r"p?write(?:v|64)?", r"fread", r"fwrite", r"unlink", r"remove",
            r"rename"), "file I/O"),
    (_names(r"\w*printf\w*", r"f?puts", r"putchar", r"fputc", r"_ZSt4c(?:out|err|log)", r"_ZNSo\w*",
            r"_ZSt\d+__ostream_insert\w*"), "prints: results and inputs must not leak into logs"),
    (_names(r"v?fork", r"clone3?", r"exec\w*", r"fexecve", r"system", r"popen", r"posix_spawnp?", r"kill", r"tgkill"),
     "starts or signals processes"),
    (_names(r"pthread_(?:create|detach|cancel)", r"thrd_create", r"_ZNSt6thread\w*", r"cudaLaunchHostFunc",
            r"cudaStreamAddCallback"), "starts a thread or a host callback (work that outlives the call)"),
    (_names(r"signal", r"sigaction", r"__sysv_signal", r"bsd_signal", r"sigprocmask", r"pthread_sigmask", r"alarm",
            r"setitimer", r"timer_create"), "signal handlers and timers"),
    (_names(r"(?:secure_)?getenv", r"setenv", r"putenv", r"unsetenv", r"clearenv", r"_?_?environ"),
     "the environment (secrets live there)"),
    (_names(r"clock_gettime", r"clock_getres", r"gettimeofday", r"time", r"clock", r"times", r"ftime",
            r"_ZNSt6chrono\w*", r"omp_get_wtime", r"omp_get_wtick", r"cudaEventElapsedTime"),
     "reads the clock: a kernel has no business with time"),
    (_names(r"socket(?:pair)?", r"connect", r"bind", r"listen", r"accept4?", r"send(?:to|msg)?", r"recv(?:from|msg)?",
            r"getaddrinfo", r"gethostbyname\w*"), "network"),
    (_names(r"_?_?exit", r"_Exit", r"quick_exit"), "exits the process (a forged result)"),
    (_names(r"sched_setaffinity", r"pthread_setaffinity_np", r"setpriority", r"nice", r"prctl", r"setrlimit",
            r"prlimit(?:64)?", r"ioctl", r"personality", r"seccomp"), "changes process-wide state"),
    (_names(r"cudaDeviceSet\w+", r"cudaCtxResetPersistingL2Cache", r"cudaStreamSetAttribute", r"cudaDeviceReset",
            r"cudaSetDeviceFlags", r"cudaMemPoolSet\w+", r"cudaIpc\w+"), "changes device-wide state or shares memory"),
]
_MATH = (r"(?:exp|exp2|exp10|expm1|log|log2|log10|log1p|logb|ilogb|pow|sqrt|cbrt|hypot|sin|cos|tan|sincos|asin|acos|"
         r"atan|atan2|sinh|cosh|tanh|asinh|acosh|atanh|erf|erfc|tgamma|lgamma|fabs|fmod|remainder|remquo|fma|fmax|"
         r"fmin|fdim|floor|ceil|trunc|round|lround|llround|rint|lrint|llrint|nearbyint|copysign|frexp|ldexp|scalbl?n|"
         r"modf|nextafter|nexttoward|nan)[fl]?")
_STD_EXCEPTIONS = (r"(?:9exception|9bad_alloc|20bad_array_new_length|13runtime_error|11logic_error|12length_error|"
                   r"12out_of_range|16invalid_argument|12domain_error|11range_error|14overflow_error|15underflow_error)")
# What honest kernels use: memory and string functions, libm, the C++ runtime, OpenMP, CUDA's runtime API.
ALLOWED = _names(
    rf"(?:__)?{_MATH}(?:_finite)?", rf"_ZGV[a-z][NM]\d+[a-z]+_{_MATH}",  # libm, glibc's finite and vector forms
    r"mem(?:cpy|set|move|cmp|chr)", r"__mem(?:cpy|set|move)_chk", r"str(?:len|nlen|cmp|ncmp|chr)",
    r"malloc", r"calloc", r"realloc", r"free", r"aligned_alloc", r"posix_memalign", r"memalign",
    r"abs", r"labs", r"llabs", r"qsort", r"bsearch", r"abort", r"__assert_fail", r"__errno_location",
    r"__stack_chk_fail", r"__tls_get_addr", r"atexit", r"_GLOBAL_OFFSET_TABLE_",
    r"__gmon_start__", r"_ITM_(?:de)?registerTMCloneTable", r"__cxa_\w+", r"__gxx_personality_v0", r"_Unwind_\w+",
    r"_Zn[wa]m(?:St11align_val_t)?(?:RKSt9nothrow_t)?", r"_Zd[la]Pv(?:m)?(?:St11align_val_t)?(?:RKSt9nothrow_t)?",
    r"_ZSt\d+__throw_\w+", r"_ZSt9terminatev", r"_ZSt\d+_Rb_tree_\w+", r"_ZNK?St7__cxx1112basic_string\w+",
    r"_ZNK?St8__detail\d+_(?:Prime_rehash_policy|List_node_base)\w+", rf"_ZNK?St{_STD_EXCEPTIONS}\w*",
    rf"_ZT[VIS](?:N10__cxxabiv1\d+\w+|St{_STD_EXCEPTIONS}|P?K?[a-z])",
    r"GOMP_\w+", r"omp_\w+",  # OpenMP
    r"cuda[A-Z]\w*", r"__cuda[A-Z]\w*",  # the CUDA runtime API and nvcc's registration stubs
)
# A CUDA library's runtime is linked in statically and imports what it likes; the screen reads
# the candidate's host object for that, and checks the library itself only for these.
_ALWAYS = BANNED[:2]
NEEDED = _names(r"lib(?:c|m|mvec|dl|rt|pthread)\.so\.\d+", r"libstdc\+\+\.so\.6", r"libgcc_s\.so\.1",
                r"libgomp\.so\.1", r"ld-linux-[\w-]+\.so\.\d+")


def check(symbol: str, rules: list[tuple[re.Pattern[str], str]] = BANNED, allowed: re.Pattern[str] | None = ALLOWED) -> str | None:
    """Why `symbol` may not be imported, or None when it may."""
    for pattern, why in rules:
        if pattern.fullmatch(symbol):
            return why
    if allowed is not None and not allowed.fullmatch(symbol):
        return "not on the allowlist of what kernels need"
    return None


def _cstr(blob: bytes, off: int) -> str:
    end = blob.find(b"\0", off)
    return blob[off:end if end >= 0 else len(blob)].decode("latin-1")


def read_elf(data: bytes) -> tuple[list[Symbol], list[str]]:
    """(undefined symbols, DT_NEEDED libraries) of a 64-bit little-endian ELF file: the dynamic
    symbols of a shared library, the symbol table of a relocatable object (a CUDA host object).

    A library's symbol and string tables are found through the section headers and checked
    against the addresses PT_DYNAMIC gives the loader, so the table read is the one that binds."""
    if data[:4] != b"\x7fELF":
        raise NotElf("not an ELF file")
    if data[4] != 2 or data[5] != 1:
        raise NotElf("only 64-bit little-endian ELF is screened")
    try:
        (e_type, _, _, _, phoff, shoff, _, _, phentsize, phnum, shentsize, shnum, _) = \
            struct.unpack_from("<HHIQQQIHHHHHH", data, 16)
        if e_type not in (_ET_REL, _ET_DYN):
            raise NotElf(f"ELF type {e_type} is neither a shared library nor an object")
        sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
        dynamic: dict[int, list[int]] = {}
        for i in range(phnum):
            p_type, _, p_off, _, _, p_filesz, _, _ = struct.unpack_from("<IIQQQQQQ", data, phoff + i * phentsize)
            for j in range(0, p_filesz - 15 if p_type == _PT_DYNAMIC else 0, 16):
                tag, val = struct.unpack_from("<qQ", data, p_off + j)
                if tag == 0:
                    break
                dynamic.setdefault(tag, []).append(val)
        kind = _SHT_SYMTAB if e_type == _ET_REL else _SHT_DYNSYM
        tables = [s for s in sections if s[1] == kind]
        if len(tables) != 1:
            raise NotElf(f"{len(tables)} symbol tables where one was expected")
        _, _, _, sym_addr, sym_off, sym_size, link, _, _, entsize = tables[0]
        strtab = sections[link]
        if strtab[1] != _SHT_STRTAB or entsize != 24:
            raise NotElf("malformed symbol table")
        if e_type == _ET_DYN and (dynamic.get(_DT_SYMTAB) != [sym_addr] or dynamic.get(_DT_STRTAB) != [strtab[3]]):
            raise NotElf("the section headers disagree with PT_DYNAMIC")
        names = data[strtab[4]:strtab[4] + strtab[5]]
        undefined = []
        for k in range(1, sym_size // 24):
            st_name, st_info, _, st_shndx, _, _ = struct.unpack_from("<IBBHQQ", data, sym_off + 24 * k)
            if st_shndx == 0 and st_name:  # SHN_UNDEF
                undefined.append(Symbol(_cstr(names, st_name), st_info >> 4 == _STB_WEAK))
        needed = [_cstr(names, v) for v in dynamic.get(_DT_NEEDED, [])]
    except (struct.error, IndexError) as e:
        raise NotElf(f"truncated or malformed ELF: {e}") from None
    return undefined, needed


def screen_file(path: str | Path, lang: str = "cpp") -> list[Finding]:
    """Findings for a built library; empty when it may be loaded. A CUDA library is judged by its
    host object (compiler.HOST_OBJECT, next to it) and its own imports only for the hard bans."""
    from sandbox.compiler import HOST_OBJECT

    path = Path(path)
    try:
        symbols, needed = read_elf(path.read_bytes())
        found = [Finding(lib, "a library outside the C, C++ and OpenMP runtimes", "links")
                 for lib in needed if not NEEDED.fullmatch(lib)]
        if lang == "cuda":
            found += [Finding(s.name, why) for s in symbols if (why := check(s.name, _ALWAYS, None))]
            symbols, _ = read_elf((path.parent / HOST_OBJECT).read_bytes())
    except (OSError, NotElf) as e:
        return [Finding(path.name, f"cannot be screened: {e}", "is")]
    seen: set[str] = set()
    for s in symbols:
        why = check(s.name)
        if why and s.name not in seen:
            seen.add(s.name)
            found.append(Finding(s.name, why + ("; a weak reference binds all the same" if s.weak else "")))
    return found


def screen_build(spec: Any, result: Any) -> Any:
    """The supervisor's hook: a successful shared build that fails the screen becomes a failed
    BuildResult (`screen` set to the first finding), and leaves the cache, so that no path to it
    is ever handed to a worker."""
    if not result.ok or spec.output != "shared" or spec.lang not in ("cpp", "cuda"):
        return result
    found = screen_file(result.path, spec.lang)
    if not found:
        return result
    entry = Path(result.path).parent
    if result.key and entry.name == result.key:
        shutil.rmtree(entry, ignore_errors=True)
    log = result.log + "\n" + "\n".join(str(f) for f in found[:20])
    return dataclasses.replace(result, ok=False, path="", log=log.strip(), screen=str(found[0]))
