"""Linux namespaces for a worker, where the OS lets us (root, or a container that allows it).

- network: a new, empty network namespace (not even loopback is up);
- pid: the worker is pid 1 of its own namespace, so everything it spawns dies with it;
- mount: every mount read-only except the worker's own directories;
- then every capability is dropped, so candidate code cannot undo any of it.
Anything that fails here is reported, never fatal: the process sandbox still has its limits.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 24, 38
KEEP_WRITABLE = ("/proc", "/dev")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def die_with_parent() -> None:
    _libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0)


def become_subreaper() -> None:
    _libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans are reparented to us


def _mount(src: str | None, target: str, flags: int, fstype: str | None = None) -> None:
    _check(_libc.mount(src.encode() if src else None, target.encode(), fstype.encode() if fstype else None,
                       flags, None), f"mount {target}")


def mount_proc() -> None:
    """A /proc of our own pid namespace (drivers that look up /proc/<getpid()> need it). The
    mounts are made private first, so nothing of this reaches the host."""
    _mount(None, "/", MS_REC | MS_PRIVATE)
    _mount("proc", "/proc", MS_NOSUID | MS_NODEV | 8, "proc")  # 8: MS_NOEXEC


def lock_filesystem(writable: list[str]) -> None:
    """In a fresh mount namespace: make every mount read-only but `writable` (and /proc, /dev)."""
    _mount(None, "/", MS_REC | MS_PRIVATE)
    for path in writable:
        _mount(path, path, MS_BIND | MS_REC)
    keep = {os.path.realpath(p) for p in writable}
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in points:
        point = point.encode().decode("unicode_escape")
        if point in keep or any(point == k or point.startswith(k + "/") for k in KEEP_WRITABLE):
            continue
        try:
            _mount(None, point, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID)
        except OSError:
            pass  # a mount we cannot remount stays as it is; the caps drop still holds


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def drop_capabilities() -> None:
    """No capability now or after any exec; root inside the jail is an ordinary user."""
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    for cap in range(64):
        _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)  # EINVAL past the last cap: fine
    header = _CapHeader(0x20080522, 0)
    data = (_CapData * 2)()
    _check(_libc.capset(ctypes.byref(header), data), "capset")
