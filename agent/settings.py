"""Every knob a user can set from the environment, declared once. Only the CLI (agent/cli/ and
agent/runtime.py) reads these."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, Mapping


@dataclasses.dataclass(frozen=True)
class Setting:
    env: str
    default: Any
    parse: Callable[[str], Any]
    help: str


def _ceilings_mode(raw: str) -> str:
    if raw.lower() not in ("measure", "quick", "off"):
        raise ValueError(raw)
    return raw.lower()


def _log_level(raw: str) -> str:
    if raw.lower() not in ("debug", "info", "warning"):
        raise ValueError(raw)
    return raw.lower()


SETTINGS: dict[str, Setting] = {
    "db": Setting("KERNELWRIGHT_DB", "kernelwright.db", str, "store: SQLite path or SQLAlchemy URL"),
    "cache": Setting("KERNELWRIGHT_CACHE", str(Path.home() / ".cache" / "kernelwright"), str,
                     "compile cache shared by runs (fast-path libraries, torch extensions)"),
    "workdir": Setting("KERNELWRIGHT_WORKDIR", "", str, "where sandbox work directories go (default: the temp dir)"),
    "timeout": Setting("KERNELWRIGHT_TIMEOUT", 120.0, float, "seconds one candidate may take, compile to verdict"),
    "memory_gb": Setting("KERNELWRIGHT_MEMORY_GB", 0.0, float, "memory cap per worker (0: half of RAM)"),
    "threads": Setting("KERNELWRIGHT_THREADS", 0, int, "threads per worker (0: all timing cores)"),
    "timing_cpus": Setting("KERNELWRIGHT_TIMING_CPUS", "auto", str,
                           "CPU device: cores kept for timing while others compile and check: auto (the "
                           "upper half), all (timing has the whole machine, one evaluation at a time), or 2,3"),
    "isolate": Setting("KERNELWRIGHT_ISOLATE", True, lambda s: s.lower() not in ("0", "false", "no"),
                       "namespaces for workers where the OS allows"),
    "ceilings": Setting("KERNELWRIGHT_CEILINGS", "measure", _ceilings_mode,
                        "CPU device: the machine's ceilings, read from the store or measured when missing "
                        "(measure), measured with tiny sizes (quick: tests; not ceilings), or none (off: no "
                        "peak fraction and no physical-bound gate)"),
    "kernelbench": Setting("KERNELWRIGHT_KERNELBENCH", "", str, "a local KernelBench checkout (--suite kernelbench)"),
    "base_url": Setting("OPENAI_BASE_URL", "", str, "OpenAI-compatible endpoint"),
    "model": Setting("KERNELWRIGHT_MODEL", "", str, "LLM model name"),
    "log": Setting("KERNELWRIGHT_LOG", "warning", _log_level,
                   "what goes to stderr: debug (what the loop, the evaluator and the sandbox do; as --verbose), "
                   "info or warning"),
}


def read(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    env = os.environ if environ is None else environ
    out = {}
    for name, s in SETTINGS.items():
        raw = env.get(s.env)
        try:
            out[name] = s.default if raw in (None, "") else s.parse(raw)
        except ValueError:
            raise ValueError(f"{s.env}={raw!r} is not valid ({s.help})") from None
    return out
