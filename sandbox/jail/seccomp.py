"""A seccomp-BPF filter for the candidate worker, built by hand (no libseccomp).

Candidate C++ is native code in the worker: it can make raw syscalls (`syscall` in inline asm)
that no symbol screen sees. Once the candidate is loaded, `lock_down()` denies the syscalls
that reach beyond the worker's own computation: other processes' memory and tracing, kernel
attack surface (bpf, perf, io_uring, which would also run I/O past seccomp, keys, modules),
new processes and programs, writes through new file descriptors (/proc/self/mem can patch any
code page), and new executable memory (W^X: a page may be made writable, never executable).

Denied calls fail with EPERM (ENOSYS where the flags sit behind a pointer, so glibc falls back
to the plain call) rather than killing: libraries that probe a call (python writing a .pyc,
glibc's clone3, a profiler's perf_event_open) then fail cleanly and the worker goes on, and a
kernel can see, and report, that its call failed. Only another syscall ABI (i386 `int 0x80`,
or a foreign audit arch) kills the process: no 64-bit program uses it except to evade a filter.

The filter covers every thread of the worker (SECCOMP_FILTER_FLAG_TSYNC), also ones a candidate
started before it, is inherited by any thread created later, and cannot be removed.
"""
from __future__ import annotations

import ctypes
import os
import platform

# syscall name -> (x86_64 number, aarch64 number); None where the arch has no such call
NUMBERS: dict[str, tuple[int | None, int | None]] = {
    "ptrace": (101, 117), "process_vm_readv": (310, 270), "process_vm_writev": (311, 271),
    "perf_event_open": (298, 241), "bpf": (321, 280), "userfaultfd": (323, 282),
    "io_uring_setup": (425, 425), "io_uring_enter": (426, 426), "io_uring_register": (427, 427),
    "kexec_load": (246, 104), "kexec_file_load": (320, 294),
    "init_module": (175, 105), "finit_module": (313, 273), "delete_module": (176, 106),
    "mount": (165, 40), "umount2": (166, 39), "pivot_root": (155, 41), "chroot": (161, 51),
    "unshare": (272, 97), "setns": (308, 268), "open_tree": (428, 428), "move_mount": (429, 429),
    "fsopen": (430, 430), "fsconfig": (431, 431), "fsmount": (432, 432), "fspick": (433, 433),
    "mount_setattr": (442, 442),
    "execve": (59, 221), "execveat": (322, 281), "fork": (57, None), "vfork": (58, None),
    "clone": (56, 220), "clone3": (435, 435),
    "open": (2, None), "openat": (257, 56), "openat2": (437, 437), "creat": (85, None),
    "mprotect": (10, 226), "pkey_mprotect": (329, 288), "mmap": (9, 222), "shmat": (30, 196),
    "memfd_create": (319, 279), "process_madvise": (440, 440), "personality": (135, 92),
    "name_to_handle_at": (303, 264), "open_by_handle_at": (304, 265), "pidfd_getfd": (438, 438),
    "keyctl": (250, 219), "add_key": (248, 217), "request_key": (249, 218),
}
ARCHES = {"x86_64": (0, 0xC000003E), "aarch64": (1, 0xC00000B7), "arm64": (1, 0xC00000B7)}

# --- the rules ------------------------------------------------------------------------------
DENIED = (  # always EPERM
    "ptrace", "process_vm_readv", "process_vm_writev", "perf_event_open", "bpf", "userfaultfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "kexec_load", "kexec_file_load",
    "init_module", "finit_module", "delete_module", "mount", "umount2", "pivot_root", "chroot",
    "unshare", "setns", "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick",
    "mount_setattr", "execve", "execveat", "fork", "vfork", "creat", "memfd_create",
    "process_madvise", "personality", "name_to_handle_at", "open_by_handle_at", "pidfd_getfd",
    "keyctl", "add_key", "request_key",
)
NOT_IMPLEMENTED = ("clone3", "openat2")  # ENOSYS: their flags are behind a pointer
O_WRITE = 0o1 | 0o2 | 0o100 | 0o1000  # O_WRONLY | O_RDWR | O_CREAT | O_TRUNC (O_TMPFILE needs one)
PROT_EXEC, SHM_EXEC, CLONE_THREAD = 0x4, 0o100000, 0x10000
# (syscall, argument index, mask, deny when the masked bits are "set" / "clear") -> EPERM
BY_ARGUMENT = (
    ("clone", 0, CLONE_THREAD, "clear"),  # a new process; threads (CLONE_THREAD) are fine
    ("open", 1, O_WRITE, "set"), ("openat", 2, O_WRITE, "set"),
    ("mmap", 2, PROT_EXEC, "set"), ("mprotect", 2, PROT_EXEC, "set"),
    ("pkey_mprotect", 2, PROT_EXEC, "set"), ("shmat", 2, SHM_EXEC, "set"),
)
X32_BIT = 0x40000000  # x86_64's x32 ABI: numbers with this bit are other syscalls -> ENOSYS

# --- BPF --------------------------------------------------------------------------------------
_LD_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
RET_KILL_PROCESS, RET_ALLOW, _RET_ERRNO = 0x80000000, 0x7FFF0000, 0x00050000
EPERM, ENOSYS = 1, 38


class SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]


def _arg(i: int) -> int:  # offset of the low 32 bits of args[i] in struct seccomp_data
    return 16 + 8 * i


def program(machine: str | None = None) -> list[tuple[int, int, int, int]]:
    """The filter as (code, jt, jf, k) tuples for `machine` (default: this one)."""
    machine = machine or platform.machine()
    if machine not in ARCHES:
        raise ValueError(f"unsupported architecture {machine}")
    col, audit = ARCHES[machine]
    nr: dict[str, int] = {name: n for name, ns in NUMBERS.items() if (n := ns[col]) is not None}
    deny, nosys = _RET_ERRNO | EPERM, _RET_ERRNO | ENOSYS
    prog = [(_LD_ABS, 0, 0, 4), (_JEQ, 1, 0, audit), (_RET, 0, 0, RET_KILL_PROCESS), (_LD_ABS, 0, 0, 0)]
    if col == 0:
        prog += [(_JGE, 0, 1, X32_BIT), (_RET, 0, 0, nosys)]
    for names, ret in ((DENIED, deny), (NOT_IMPLEMENTED, nosys)):
        for name in names:
            if name in nr:
                prog += [(_JEQ, 0, 1, nr[name]), (_RET, 0, 0, ret)]
    for name, index, mask, when in BY_ARGUMENT:
        if name not in nr:
            continue
        first, second = (deny, RET_ALLOW) if when == "set" else (RET_ALLOW, deny)
        prog += [(_JEQ, 0, 4, nr[name]), (_LD_ABS, 0, 0, _arg(index)), (_JSET, 0, 1, mask),
                 (_RET, 0, 0, first), (_RET, 0, 0, second)]
    return prog + [(_RET, 0, 0, RET_ALLOW)]


_SECCOMP_NR = {"x86_64": 317, "aarch64": 277, "arm64": 277}
_SET_MODE_FILTER, _FLAG_TSYNC, _FLAG_SPEC_ALLOW = 1, 1, 4
_PR_SET_NO_NEW_PRIVS = 38


def lock_down() -> str:
    """Install the filter on every thread of this process: "on", or why it could not be."""
    try:
        machine = platform.machine()
        if machine not in ARCHES:
            return f"not applied: unsupported architecture {machine}"
        code = program(machine)
        filt = (SockFilter * len(code))(*[SockFilter(*c) for c in code])
        prog = SockFprog(len(code), filt)
        libc = ctypes.CDLL(None, use_errno=True)  # the loaded libc (find_library would run a subprocess)
        libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            return f"not applied: no_new_privs: {os.strerror(ctypes.get_errno())}"
        libc.syscall.restype = ctypes.c_long
        # SPEC_ALLOW: the filter must not switch on speculation mitigations (SSBD) that the
        # reference's unfiltered worker would not have: it would tilt the timing comparison
        for flags in (_FLAG_TSYNC | _FLAG_SPEC_ALLOW, _FLAG_TSYNC):
            ctypes.set_errno(0)
            ret = libc.syscall(ctypes.c_long(_SECCOMP_NR[machine]), ctypes.c_long(_SET_MODE_FILTER),
                               ctypes.c_long(flags), ctypes.byref(prog))
            if ret >= 0 or ctypes.get_errno() != 22:  # EINVAL: a kernel before 4.17
                break
        if ret > 0:
            return f"not applied: thread {ret} could not be synchronised"
        if ret < 0:
            return f"not applied: seccomp: {os.strerror(ctypes.get_errno())}"
        return "on"
    except Exception as e:  # noqa: BLE001 - never raise: the caller reports the reason
        return f"not applied: {type(e).__name__}: {e}"
