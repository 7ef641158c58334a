"""A frame's header read in C, with the clock read there the moment its last byte arrives.

The supervisor times a round from just before it sends "go" to the arrival of the answer. In
Python the arrival is seen only when the waiting thread gets the GIL back, which another
evaluation's thread may hold for milliseconds (comparisons, decoding): time the worker never
spent. ctypes releases the GIL for the whole call, so this reader waits, reads and takes the
time without it. Supervisor side only; built once with the fast path's compiler.
"""
from __future__ import annotations

import ctypes
import threading
from typing import Any

from sandbox.compiler import CompileSpec

SRC = r"""
#include <cerrno>
#include <cstdint>
#include <ctime>
#include <poll.h>
#include <sys/socket.h>

static long long now_ns() {
    timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

// 0 when all n bytes are read, -1 peer closed, -2 deadline, -5 error
static int read_full(int fd, unsigned char* buf, long n, long long deadline_ns) {
    long got = 0;
    while (got < n) {
        long long left = deadline_ns - now_ns();
        if (left <= 0) return -2;
        pollfd p = {fd, POLLIN, 0};
        int r = poll(&p, 1, (int)(left / 1000000 + 1));
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return -5;
        if (r == 0) continue;
        long k = recv(fd, buf + got, n - got, 0);
        if (k < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (k <= 0) return k == 0 ? -1 : -5;
        got += k;
    }
    return 0;
}

// One frame's head (magic, u32 length) and JSON header into buf; returns the header's length,
// or -1 closed, -2 deadline, -3 bad magic, -4 too large, -5 error. *stamp: when it was all in.
extern "C" long read_header(int fd, unsigned char* buf, long cap, long long deadline_ns, long long* stamp) {
    unsigned char head[8];
    int r = read_full(fd, head, 8, deadline_ns);
    if (r) return r;
    if (head[0] != 'K' || head[1] != 'W' || head[2] != 'P' || head[3] != '1') return -3;
    long n = (long)head[4] | ((long)head[5] << 8) | ((long)head[6] << 16) | ((long)head[7] << 24);
    if (n > cap) return -4;
    r = read_full(fd, buf, n, deadline_ns);
    *stamp = now_ns();
    return r ? r : n;
}
"""

_lock = threading.Lock()
_readers: dict[str, Any] = {}  # library path -> its read_header


def reader(builder: Any) -> Any:
    """read_header from a library built by `builder.build(spec)` (a sandbox); None where it
    cannot be built (then the caller reads the clock in Python, and says so)."""
    with _lock:
        try:
            result = builder.build(CompileSpec(source=SRC))
        except Exception:  # noqa: BLE001 - no compiler: the Python clock it is
            return None
        if not result.ok:
            return None
        if result.path not in _readers:
            fn = ctypes.CDLL(result.path).read_header
            fn.restype = ctypes.c_long
            fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_long, ctypes.c_longlong,
                           ctypes.POINTER(ctypes.c_longlong)]
            _readers[result.path] = fn
        return _readers[result.path]


def buffer(size: int) -> Any:
    """A buffer for read_header, its pages touched now (not during a timed read)."""
    buf = ctypes.create_string_buffer(size)
    ctypes.memset(buf, 1, size)
    return buf
