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


Checksum = list[list[Union[float, str]]]  # per output: [signed sum, sum of squares, elements, dtype]


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
    "go": ("went", Went), "last": ("last", Last), "sums": ("sums", Sums),
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
    problem = _checker(shape)(meta)
    if problem is not None:
        raise MalformedReply(f"malformed_reply: {kind}{problem}")
    return reply


def checked_timed(request: str, reply: tuple[str, dict[str, Any], list[Any], float]
                  ) -> tuple[str, dict[str, Any], list[Any], float]:
    """`checked`, for a Worker's call_timed (the round trip in ms last)."""
    checked(request, reply[:3])
    return reply


Check = typing.Callable[[Any], "str | None"]  # None, or where below the value and what is wrong there


@functools.cache
def _checker(shape: Any) -> Check:
    """A check of `shape`, built once per shape (the answers of every timing round go through
    it). Keys a shape does not name are allowed."""
    if shape is Any:
        return lambda value: None
    if typing.is_typeddict(shape):
        required = sorted(shape.__required_keys__)
        fields = {k: _checker(t) for k, t in typing.get_type_hints(shape).items()}

        def typed(value: Any) -> str | None:
            if not isinstance(value, dict):
                return f" is {type(value).__name__}, not an object"
            missing = [k for k in required if k not in value]
            if missing:
                return f" lacks {', '.join(missing)}"
            for k, v in value.items():
                check = fields.get(k)
                if check is not None and (p := check(v)) is not None:
                    return f".{k}{p}"
            return None
        return typed
    origin, args = typing.get_origin(shape), typing.get_args(shape)
    if origin in (Union, types.UnionType):
        options = [_checker(a) for a in args]
        if all(o in _LEAVES for o in options):  # numbers or strings, say: one look at the type
            return _leaf(frozenset().union(*(_LEAVES[o] for o in options)), " or ".join(a.__name__ for a in args))
        return lambda value: None if any(c(value) is None for c in options) else f" is {_name(value)}"
    if origin is list:
        item = _checker(args[0])
        kinds = _LEAVES.get(item)

        def listed(value: Any) -> str | None:
            if not isinstance(value, list):
                return f" is {_name(value)}, not a list"
            if kinds is not None and all(type(v) in kinds for v in value):
                return None
            for i, v in enumerate(value):
                if (p := item(v)) is not None:
                    return f"[{i}]{p}"
            return None
        return listed
    if origin is dict:
        entry = _checker(args[1])

        def mapped(value: Any) -> str | None:
            if not isinstance(value, dict):
                return f" is {_name(value)}, not an object"
            for k, v in value.items():
                if (p := entry(v)) is not None:
                    return f".{k}{p}"
            return None
        return mapped
    # JSON writes 2.0 as 2.0 but a count as an int: a float may be either; a bool is neither
    accepted = {float: (int, float), int: (int,)}.get(shape, (shape,))
    return _leaf(frozenset(accepted), "null" if shape is type(None) else shape.__name__)


_LEAVES: dict[Check, frozenset[type]] = {}  # the checks that only look at a value's type, and the types they accept


def _leaf(accepted: frozenset[type], what: str) -> Check:
    def check(value: Any) -> str | None:
        return None if type(value) in accepted else f" is {_name(value)}, not {what}"
    _LEAVES[check] = accepted
    return check


def _name(value: Any) -> str:
    return f"{type(value).__name__} {str(value)[:40]!r}"
