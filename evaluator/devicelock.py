"""Who may use the device when: many candidates may compile and check at once, but a timing
phase has the device to itself (a kernel timed while other work shares its device measures the
other work). Writers (timing) are preferred, so compiles cannot starve the timer.

With `timing_apart` (a CPU device whose timing has cores of its own, sandbox/cpus.py) compiles
and checks never touch the timing cores: they need no lock, and timing phases only exclude
each other."""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator


class DeviceLock:
    def __init__(self, timing_apart: bool = False) -> None:
        self.timing_apart = timing_apart
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting = 0

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        if self.timing_apart:
            yield
            return
        with self._cond:
            while self._exclusive or self._waiting:
                self._cond.wait()
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            while self._exclusive or self._shared:
                self._cond.wait()
            self._waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()
