"""The frame format: tensors round-trip; malformed frames from a worker are refused, never executed."""
from __future__ import annotations

import json
import socket
import struct
import time

import pytest
import torch

from sandbox import protocol


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_roundtrip(pair):
    a, b = pair
    ts = [torch.randn(3, 4), torch.arange(5), torch.randn(2, 2).to(torch.bfloat16), torch.empty(0, 3), torch.tensor(True)]
    protocol.send(a, "x", {"k": 1}, ts)
    kind, meta, got = protocol.recv(b, time.monotonic() + 5)
    assert kind == "x" and meta == {"k": 1}
    for t, g in zip(ts, got):
        assert g.dtype == t.dtype and g.shape == t.shape and torch.equal(g, t)


def _raw(a: socket.socket, header: dict, payload: bytes = b"") -> None:
    h = json.dumps(header).encode()
    a.sendall(protocol.MAGIC + struct.pack("<I", len(h)) + h + payload)


@pytest.mark.parametrize("header", [
    {"kind": "x", "meta": {}, "tensors": [{"dtype": "object", "shape": [1]}]},
    {"kind": "x", "meta": {}, "tensors": [{"dtype": "float32", "shape": [-1]}]},
    {"kind": "x", "meta": [], "tensors": []},
    {"meta": {}, "tensors": []},
])
def test_malformed_frames_are_refused(pair, header):
    a, b = pair
    _raw(a, header)
    with pytest.raises(protocol.ProtocolError):
        protocol.recv(b, time.monotonic() + 5)


def test_size_cap_and_bad_magic(pair):
    a, b = pair
    _raw(a, {"kind": "x", "meta": {}, "tensors": [{"dtype": "float32", "shape": [1 << 30]}]})
    with pytest.raises(protocol.ProtocolError, match="cap"):
        protocol.recv(b, time.monotonic() + 5, max_bytes=1 << 20)
    a.sendall(b"NOPE" + b"\0" * 4)
    with pytest.raises(protocol.ProtocolError):
        protocol.recv(b, time.monotonic() + 5)


def test_deadline_and_closed_peer(pair):
    a, b = pair
    with pytest.raises(protocol.Deadline):
        protocol.recv(b, time.monotonic() + 0.1)
    a.close()
    with pytest.raises(protocol.PeerClosed):
        protocol.recv(b, time.monotonic() + 1)
