"""Other people's candidates, read for re-judging: CUDA-L1's JSONL release, a KernelBench
generations folder, a plain folder of task and ModelNew files. Each becomes an `Imported`: the
reference task's source, the candidate's, and what its publisher claimed for it. Nothing here
runs candidate code or judges it; `kernelwright import` (agent/cli/imports.py) does, under a
policy, and keeps the claim beside the measurement.

Formats (the field names as the releases write them; what else a record holds is kept):
- cuda-l1: one JSON object per line with `ref_code` (the KernelBench task), `custom_code` (the
  ModelNew file) and score fields (`score_default`, `score_torch_compile_default`, ...: claimed
  speedups over eager and torch.compile); `level_id` and `task_id` where given. A line with an
  empty custom_code (no candidate released for that task) is skipped and counted.
- kernelbench: KernelBench's generation runs, files `level_{L}_problem_{P}_sample_{S}_kernel.py`,
  judged against the problems of a checkout (`--kernelbench DIR`); no claims.
- folder: `<name>.py` (the task) beside `<name>_new.py` (the candidate), with an optional
  `<name>_new.json` holding the claim (`{"speedup": 2.1}`).
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

FORMATS = ("cuda-l1", "kernelbench", "folder")
_CLAIM_KEYS = ("speedup", "score_default", "score")  # the claimed speedup over eager, first found
_GENERATED = re.compile(r"^level_(\d+)_problem_(\d+)_sample_(\d+)_kernel\.py$")


class ImportFormatError(ValueError):
    """Input that cannot be imported (one line, naming the file and line)."""


@dataclasses.dataclass(frozen=True)
class Imported:
    key: str  # stable within its file: "line 12", "level_1_problem_19_sample_0", "softmax"
    task_name: str
    task_source: str | None  # the reference's source; None: task_path names a loaded task
    candidate_source: str
    claimed: dict[str, Any]  # "speedup" (or None) plus every figure the release gave
    task_path: str | None = None


@dataclasses.dataclass(frozen=True)
class Parsed:
    items: tuple[Imported, ...]
    skipped: tuple[str, ...] = ()  # why records were left out, one line each


def parse(fmt: str, path: Path, kernelbench_tasks: dict[tuple[int, int], Any] | None = None) -> Parsed:
    if fmt not in FORMATS:
        raise ImportFormatError(f"unknown format {fmt!r} (use {', '.join(FORMATS)})")
    if not path.exists():
        raise ImportFormatError(f"{path}: no such file or folder")
    if fmt == "cuda-l1":
        return cuda_l1(path)
    if fmt == "kernelbench":
        if kernelbench_tasks is None:
            raise ImportFormatError("import kernelbench needs --kernelbench DIR (the checkout the problems come from)")
        return kernelbench_generations(path, kernelbench_tasks)
    return folder(path)


def _claimed(record: dict[str, Any]) -> dict[str, Any]:
    figures = {k: v for k, v in record.items() if k.startswith("score") or k == "speedup"}
    if isinstance(record.get("correct"), bool):
        figures["correct"] = record["correct"]
    speedup = next((record[k] for k in _CLAIM_KEYS if isinstance(record.get(k), (int, float))
                    and not isinstance(record.get(k), bool)), None)
    return {**figures, "speedup": None if speedup is None else float(speedup)}


def cuda_l1(path: Path) -> Parsed:
    if not path.is_file():
        raise ImportFormatError(f"{path}: cuda-l1 needs a JSONL file")
    items, skipped = [], []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ImportFormatError(f"{path}:{n}: not JSON ({e.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("ref_code"), str) or not record["ref_code"].strip():
            raise ImportFormatError(f"{path}:{n}: a record needs ref_code (the reference task's source)")
        code = record.get("custom_code")
        level, task = record.get("level_id", record.get("level")), record.get("task_id")
        where = f"level {level} task {task}" if level is not None and task is not None else f"line {n}"
        if not isinstance(code, str) or not code.strip():
            skipped.append(f"{where}: no custom_code")
            continue
        name = f"cudal1_l{level}_{task}" if level is not None and task is not None else f"cudal1_line{n}"
        items.append(Imported(f"line {n}", name, record["ref_code"], code, _claimed(record)))
    return Parsed(tuple(items), tuple(skipped))


def kernelbench_generations(path: Path, tasks: dict[tuple[int, int], Any]) -> Parsed:
    if not path.is_dir():
        raise ImportFormatError(f"{path}: kernelbench needs a generations folder")
    items, skipped = [], []
    for p in sorted(path.rglob("*.py")):
        m = _GENERATED.match(p.name)
        if not m:
            continue
        level, problem = int(m.group(1)), int(m.group(2))
        task = tasks.get((level, problem))
        if task is None:
            skipped.append(f"{p.name}: no level {level} problem {problem} in the checkout")
            continue
        items.append(Imported(p.stem, task.name, None, p.read_text(errors="replace"), {"speedup": None},
                              str(task.path)))
    return Parsed(tuple(items), tuple(skipped))


def folder(path: Path) -> Parsed:
    if not path.is_dir():
        raise ImportFormatError(f"{path}: folder needs a folder of <name>.py and <name>_new.py files")
    items, skipped = [], []
    for cand in sorted(path.glob("*_new.py")):
        task = cand.with_name(cand.name[: -len("_new.py")] + ".py")
        if not task.is_file():
            skipped.append(f"{cand.name}: no {task.name} beside it")
            continue
        claim_file, claimed = cand.with_suffix(".json"), {"speedup": None}
        if claim_file.is_file():
            try:
                claimed = _claimed(json.loads(claim_file.read_text()))
            except (json.JSONDecodeError, AttributeError) as e:
                raise ImportFormatError(f"{claim_file}: not a JSON object ({e})") from None
        items.append(Imported(task.stem, task.stem, None, cand.read_text(errors="replace"), claimed, str(task)))
    return Parsed(tuple(items), tuple(skipped))
