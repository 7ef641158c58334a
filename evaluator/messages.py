"""The probe's messages, as named types both ends import: what the supervisor asks a worker
(evaluator/candidate.py, reference.py, rounds.py) and what the probe answers (evaluator/jail/
probe.py).

Requests come from the supervisor and are trusted. Answers come from a process that runs
candidate code, so `checked` holds every answer to its shape before anything reads it: a key
missing, a count that is a string, a list that is a number is a forged or broken probe, and
the evaluation ends there (MalformedReply) instead of somewhere deeper with a TypeError.
"""
# No `from __future__ import annotations`: `checked` reads these types at run time.
import functools
import types
import typing
from typing import Any, NotRequired, TypedDict, Union

# --- requests (supervisor to probe) -----------------------------------------------------------

class LoadRequest(TypedDict, total=False):
    candidate: bool  # ModelNew from candidate.py, else the task's Model
    input_devices: list[str]  # per input: device | cpu | pinned
    compile_only: bool  # import candidate.py for its builds only
    arch: str  # compile-only: the CUDA target


class InitRequest(TypedDict):
    variant: dict[str, Any] | None
    seed: int


class RunRequest(TypedDict):
    inputs: list[Any]  # pack_tree nodes
    checks: bool  # instrument the call (ops, launches, threads, guards, aliases)


class SeededRequest(TypedDict):
    seed: int
    index: int
    variant: dict[str, Any] | None


class CoresRequest(TypedDict):
    timing: bool


class StageRequest(TypedDict):
    seed: int
    first: int
    calls: int
    variant: dict[str, Any] | None


class GoRequest(TypedDict):
    compiled: bool
    sign_seed: int
    checksums: NotRequired[bool]


class SumsRequest(TypedDict):
    seed: int
    sign_seed: int
    indices: list[int]
    variant: NotRequired[dict[str, Any] | None]


class Empty(TypedDict):
    pass


# --- answers (probe to supervisor; untrusted) ---------------------------------------------------

class Loaded(TypedDict, total=False):
    device: dict[str, Any]  # the GPU's name, capability, memory, versions; {} on the CPU
    seccomp: str  # "on", or why not


class CallReport(TypedDict, total=False):
    """What one instrumented call did (present when the run request asked for checks)."""
    aten_ops: list[str]
    kernel_calls: int
    python_threads_added: int
    native_threads_added: int
    guard_violations: list[int]
    aliases: list[int]
    plain: list[bool]
    gpu_kernels: list[str]
    gpu_kernel_us: dict[str, float]
    profiler: str


class Outputs(TypedDict):
    tree: dict[str, Any]
    report: CallReport
    n_outputs: int


class Staged(TypedDict):
    bytes_per_call: int


Checksum = list[list[Union[float, str]]]  # per output: [sum, signed sum, elements, dtype]


class Went(TypedDict):
    claims_ms: list[float]
    synced_ms: list[float]
    checksums: list[Checksum]
    loop_ms: float


class Last(TypedDict):
    tree: dict[str, Any]


class Sums(TypedDict):
    checksums: list[Checksum]


ANSWERS: dict[str, tuple[str, type]] = {  # request kind -> (answer kind, its shape)
    "load": ("loaded", Loaded), "init": ("ready", Empty), "run": ("outputs", Outputs),
    "run_seeded": ("outputs", Outputs), "cores": ("cores", Empty), "stage": ("staged", Staged),
    "go": ("went", Went), "last": ("last", Last), "sums": ("sums", Sums), "ping": ("pong", Empty),
}


class MalformedReply(RuntimeError):
    """The probe answered with something its shape does not allow: only a tampered worker does."""


Reply = tuple[str, dict[str, Any], list[Any]]


def checked(request: str, reply: Reply) -> Reply:
    """`reply` to `request`, once it has the kind and the shape the probe answers with."""
    kind, meta, tensors = reply
    want, shape = ANSWERS[request]
    if kind != want:
        raise MalformedReply(f"malformed_reply: {kind!r} answered {request!r} (expected {want!r})")
    problem = _problem(meta, shape, kind)
    if problem:
        raise MalformedReply(f"malformed_reply: {problem}")
    return reply


def checked_timed(request: str, reply: tuple[str, dict[str, Any], list[Any], float]
                  ) -> tuple[str, dict[str, Any], list[Any], float]:
    """`checked`, for a Worker's call_timed (the round trip in ms last)."""
    checked(request, reply[:3])
    return reply


def _problem(value: Any, shape: Any, where: str) -> str | None:
    """Why `value` is not of `shape` (None: it is). Keys a shape does not name are allowed."""
    if shape is Any:
        return None
    if typing.is_typeddict(shape):
        if not isinstance(value, dict):
            return f"{where} is {type(value).__name__}, not an object"
        missing = sorted(k for k in shape.__required_keys__ if k not in value)
        if missing:
            return f"{where} lacks {', '.join(missing)}"
        hints = _hints(shape)
        return next((p for k, v in value.items() if k in hints and (p := _problem(v, hints[k], f"{where}.{k}"))), None)
    origin, args = typing.get_origin(shape), typing.get_args(shape)
    if origin in (Union, types.UnionType):
        return None if any(_problem(value, a, where) is None for a in args) else f"{where} is {_name(value)}"
    if origin is list:
        if not isinstance(value, list):
            return f"{where} is {_name(value)}, not a list"
        return next((p for i, v in enumerate(value) if (p := _problem(v, args[0], f"{where}[{i}]"))), None)
    if origin is dict:
        if not isinstance(value, dict):
            return f"{where} is {_name(value)}, not an object"
        return next((p for k, v in value.items() if (p := _problem(v, args[1], f"{where}.{k}"))), None)
    if shape is type(None):
        return None if value is None else f"{where} is {_name(value)}, not null"
    if shape is float:  # JSON writes 2.0 as 2.0 but a count as an int: both are numbers
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif shape is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, shape)
    return None if ok else f"{where} is {_name(value)}, not {shape.__name__}"


@functools.cache
def _hints(shape: Any) -> dict[str, Any]:
    return typing.get_type_hints(shape)


def _name(value: Any) -> str:
    return f"{type(value).__name__} {str(value)[:40]!r}"
