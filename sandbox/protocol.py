"""Framing between the supervisor and a worker: a JSON header, then raw tensor bytes.

The worker is untrusted, so what comes back is only ever data: no pickle, dtypes from an
allowlist, sizes checked against the header and capped, and a deadline on every read.
"""
from __future__ import annotations

import json
import math
import select
import socket
import struct
import time
from collections.abc import Mapping
from typing import Any

MAGIC = b"KWP1"
MAX_HEADER = 4 * 1024 * 1024
DTYPES = {
    "float32": 4, "float64": 8, "float16": 2, "bfloat16": 2, "int8": 1, "uint8": 1,
    "int16": 2, "int32": 4, "int64": 8, "bool": 1, "complex64": 8,
}


class ProtocolError(RuntimeError):
    """The peer sent something that is not a well-formed frame."""


class PeerClosed(ProtocolError):
    """The peer closed the connection (it exited or was killed)."""


class Deadline(RuntimeError):
    """No complete frame arrived in time."""


def _tensor_bytes(t: Any) -> tuple[dict[str, Any], memoryview]:
    import torch

    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous()
    dtype = str(t.dtype).removeprefix("torch.")
    if dtype not in DTYPES:
        raise ProtocolError(f"unsupported dtype {dtype}")
    flat = t.reshape(-1)
    raw = flat.view(torch.uint8).numpy() if flat.numel() else b""
    return {"dtype": dtype, "shape": list(t.shape)}, memoryview(raw).cast("B")


def send(sock: socket.socket, kind: str, meta: Mapping[str, Any] | None = None,
         tensors: list[Any] | tuple[Any, ...] = ()) -> None:
    heads, blobs = [], []
    for t in tensors:
        h, b = _tensor_bytes(t)
        heads.append(h)
        blobs.append(b)
    header = json.dumps({"kind": kind, "meta": meta or {}, "tensors": heads}).encode()
    sock.sendall(MAGIC + struct.pack("<I", len(header)) + header)
    for b in blobs:
        sock.sendall(b)


def _recv_exact(sock: socket.socket, n: int, deadline: float | None) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Deadline("no answer in time")
            ready, _, _ = select.select([sock], [], [], left)
            if not ready:
                raise Deadline("no answer in time")
        try:
            k = sock.recv_into(view[got:], n - got)
        except ConnectionResetError:
            k = 0
        if k == 0:
            raise PeerClosed("the worker closed the connection")
        got += k
    return buf


def recv(sock: socket.socket, deadline: float | None = None,
         max_bytes: int = 8 << 30) -> tuple[str, dict[str, Any], list[Any]]:
    """Read one frame: (kind, meta, tensors). Raises ProtocolError, PeerClosed or Deadline."""
    head = _recv_exact(sock, 8, deadline)
    if bytes(head[:4]) != MAGIC:
        raise ProtocolError("bad frame magic")
    (n,) = struct.unpack("<I", head[4:])
    if n > MAX_HEADER:
        raise ProtocolError(f"frame header too large ({n} bytes)")
    return _rest(sock, bytes(_recv_exact(sock, n, deadline)), deadline, max_bytes)


_READ_ERRORS = {-1: PeerClosed("the worker closed the connection"), -2: Deadline("no answer in time"),
                -3: ProtocolError("bad frame magic"), -4: ProtocolError("frame header too large"),
                -5: ProtocolError("socket error")}


def recv_stamped(sock: socket.socket, deadline: float | None, read_header: Any, buf: Any = None,
                 max_bytes: int = 8 << 30) -> tuple[str, dict[str, Any], list[Any], int]:
    """recv, and the CLOCK_MONOTONIC time (ns) at which the frame's header had fully arrived,
    read in C without the GIL by `read_header` (sandbox/stamped.py) into `buf` (a ctypes buffer of
    MAX_HEADER bytes, made once: a fresh one costs page faults before the read), or in Python."""
    if read_header is None:
        kind, meta, tensors = recv(sock, deadline, max_bytes)
        return kind, meta, tensors, time.monotonic_ns()
    import ctypes

    buf = buf if buf is not None else ctypes.create_string_buffer(MAX_HEADER)
    stamp = ctypes.c_longlong(0)
    left = (deadline - time.monotonic()) if deadline is not None else 1e9
    n = read_header(sock.fileno(), buf, MAX_HEADER, time.monotonic_ns() + int(max(left, 0) * 1e9), ctypes.byref(stamp))
    if n < 0:
        raise _READ_ERRORS.get(n, ProtocolError("socket error"))
    kind, meta, tensors = _rest(sock, buf.raw[:n], deadline, max_bytes)
    return kind, meta, tensors, stamp.value


def _rest(sock: socket.socket, raw: bytes, deadline: float | None,
          max_bytes: int) -> tuple[str, dict[str, Any], list[Any]]:
    """A frame after its head: the JSON header (given), then its tensors (read)."""
    import torch

    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProtocolError(f"frame header is not JSON: {e}") from None
    if not isinstance(header, dict) or not isinstance(header.get("kind"), str):
        raise ProtocolError("frame header lacks a kind")
    meta = header.get("meta")
    specs = header.get("tensors")
    if not isinstance(meta, dict) or not isinstance(specs, list):
        raise ProtocolError("frame header is malformed")
    sizes = []
    for spec in specs:
        if not isinstance(spec, dict) or spec.get("dtype") not in DTYPES:
            raise ProtocolError("tensor with an unknown dtype")
        shape = spec.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and 0 <= d < 2**40 for d in shape):
            raise ProtocolError("tensor with a bad shape")
        sizes.append(math.prod(shape) * DTYPES[spec["dtype"]])
    if sum(sizes) > max_bytes:
        raise ProtocolError(f"frame carries {sum(sizes)} bytes, over the cap of {max_bytes}")
    tensors = []
    for spec, size in zip(specs, sizes):
        dtype = getattr(torch, spec["dtype"])
        if size == 0:
            tensors.append(torch.empty(spec["shape"], dtype=dtype))
            continue
        raw_t = _recv_exact(sock, size, deadline)
        tensors.append(torch.frombuffer(raw_t, dtype=dtype).reshape(spec["shape"]))
    return header["kind"], meta, tensors


# --- nested values (a forward may return a tensor, a tuple of tensors, numbers) ----------

def pack_tree(value: Any, tensors: list[Any]) -> Any:
    """Describe a value as JSON, appending its tensors to `tensors`."""
    import torch

    if isinstance(value, torch.Tensor):
        tensors.append(value)
        return {"t": len(tensors) - 1, "cls": type(value).__qualname__,
                "device": value.device.type, "dtype": str(value.dtype).removeprefix("torch.")}
    if isinstance(value, (tuple, list)):
        return {"seq": [pack_tree(v, tensors) for v in value], "type": type(value).__name__}
    if value is None or isinstance(value, (bool, int, float)):
        return {"scalar": value if not isinstance(value, float) or math.isfinite(value) else repr(value)}
    return {"other": type(value).__qualname__}


def unpack_tree(node: Any, tensors: list[Any]) -> Any:
    """Inverse of pack_tree on the supervisor side; raises ProtocolError on anything odd."""
    if not isinstance(node, dict):
        raise ProtocolError("malformed value tree")
    if "t" in node:
        i = node["t"]
        if not isinstance(i, int) or not 0 <= i < len(tensors):
            raise ProtocolError("value tree names a missing tensor")
        return TensorInfo(tensors[i], str(node.get("cls")), str(node.get("device")), str(node.get("dtype")))
    if "seq" in node:
        if not isinstance(node["seq"], list):
            raise ProtocolError("malformed value tree")
        return tuple(unpack_tree(v, tensors) for v in node["seq"])
    if "scalar" in node:
        return node["scalar"]
    return OtherValue(str(node.get("other")))


class TensorInfo:
    """A tensor received from a worker, with what the worker said it was."""

    def __init__(self, tensor: Any, cls: str, device: str, dtype: str):
        self.tensor, self.cls, self.device, self.dtype = tensor, cls, device, dtype


class OtherValue:
    def __init__(self, type_name: str):
        self.type_name = type_name
