"""Proposers: where candidate sources come from. The LLM (prompts built from the store) or
the knob tuner (seed kernels and knob-annotated LLM kernels). Either way a Proposal comes out,
which the loop evaluates and records as one unit."""
from __future__ import annotations

import dataclasses
import random
from typing import Any, Mapping, Sequence

from agent.loop import knobs, prompts, tuner
from agent.loop.llm import Completion, LLMClient
from agent.loop.parse import extract
from agent.loop.strategies import Ask


@dataclasses.dataclass(frozen=True)
class Proposal:
    source: str | None  # None: the LLM gave no usable code (a format failure)
    origin: str  # llm | tuner | seed
    parent_id: str | None = None
    knobs: dict[str, Any] | None = None
    llm_calls: tuple[dict[str, Any], ...] = ()  # the last one produced the source, if any
    reason: str = ""


def target_facts(fp: dict[str, Any], policy: str = "strict") -> prompts.Target:
    if fp.get("device") == "cuda":
        facts = (f"{fp.get('gpu')}, compute capability {fp.get('capability')}, {fp.get('sm_count')} SMs, "
                 f"{(fp.get('gpu_memory') or 0) / 2**30:.0f} GB", f"CUDA {fp.get('cuda')}, nvcc: {fp.get('nvcc')}",
                 f"Triton {fp.get('triton')}, torch {fp.get('torch')}")
    else:
        facts = (f"{fp.get('cpu')}, {fp.get('cores')} cores, {fp.get('threads')} threads per kernel (OpenMP)",
                 f"{fp.get('cxx')}, flags -O3 -march=native -fopenmp", f"torch {fp.get('torch')} (the reference)")
    return prompts.Target(device=str(fp.get("device", "cpu")), facts=facts, policy=policy)


def _exemplar(h: dict[str, Any]) -> prompts.Exemplar:
    e = h["evaluation"]
    resources = "\n".join(f"{k.get('kernel')}: {k.get('registers')} registers, {k.get('spill_stores')} spill stores, "
                          f"{k.get('shared_bytes')} B smem" for k in e.get("resources") or [])
    return prompts.Exemplar(candidate_id=h["id"], source=h["source"], status=e["status"], speedup=e.get("speedup"),
                            reason=e.get("reason") or "", log=e.get("log") or "", resources=resources,
                            peak_fraction=e.get("peak_fraction"), bound=e.get("bound"),
                            reference_peak_fraction=e.get("reference_peak_fraction"))


def pick_exemplars(history: Sequence[dict[str, Any]], parent_id: str | None, k: int = 4,
                   rng: random.Random | None = None) -> tuple[list[prompts.Exemplar], list[prompts.Exemplar]]:
    """Contrast in the CUDA-L1 manner: correct kernels from different speedup buckets (the
    parent always among them), and up to two exploits the evaluator rejected, as negatives."""
    rng = rng or random.Random(0)
    ok = sorted((h for h in history if h["evaluation"]["status"] == "ok"), key=lambda h: h["evaluation"]["speedup"])
    chosen = [h for h in ok if h["id"] == parent_id]
    rest = [h for h in ok if h["id"] != parent_id]
    buckets = [rest[i * len(rest) // k:(i + 1) * len(rest) // k] for i in range(k)]
    for b in reversed(buckets):
        if b and len(chosen) < k:
            chosen.append(rng.choice(b))
    chosen.sort(key=lambda h: h["evaluation"]["speedup"])
    negatives: list[Any] = []
    rules: set[str] = set()
    for h in reversed(history):
        e = h["evaluation"]
        rule = e.get("reason", "").split(":")[0]
        if e["status"] == "rejected" and rule not in rules and len(negatives) < 2:
            rules.add(rule)
            negatives.append(_exemplar(h))
    return [_exemplar(h) for h in chosen], negatives


def _call_record(kind: str, messages: list[dict], c: Completion, status: str, error: str,
                 parent_id: str | None) -> dict[str, Any]:
    return {"kind": kind, "parent_id": parent_id, "model": c.model, "messages": messages, "response": c.text or "",
            "tokens_in": c.tokens_in, "tokens_out": c.tokens_out, "latency_s": c.latency_s, "cost_usd": c.cost_usd,
            "attempts": c.attempts, "status": status, "error": error}


def from_llm(llm: LLMClient, ask: Ask, task_source: str, task_name: str, target: prompts.Target,
             history: Sequence[dict[str, Any]], rng: random.Random) -> Proposal:
    """One proposal from the LLM: the prompt for this ask, the answer, one format retry."""
    by_id = {h["id"]: h for h in history}
    parent = by_id.get(ask.parent_id) if ask.parent_id else None
    if ask.kind == "repair" and parent:
        messages = prompts.repair(task_source, target, task_name, _exemplar(parent))
    elif ask.kind == "contrastive" and parent:
        exemplars, negatives = pick_exemplars(history, ask.parent_id, rng=rng)
        messages = prompts.contrastive(task_source, target, task_name, exemplars, negatives)
    else:
        exemplars, negatives = pick_exemplars(history, None, rng=rng)
        messages = (prompts.contrastive(task_source, target, task_name, exemplars, negatives) if exemplars
                    else prompts.initial(task_source, target, task_name))
    calls: list[dict[str, Any]] = []
    kind = ask.kind
    for _attempt in range(2):
        c = llm.complete(messages)
        if c.error:
            calls.append(_call_record(kind, messages, c, "api_error", c.error, ask.parent_id))
            return Proposal(None, "llm", ask.parent_id, None, tuple(calls), f"LLM call failed: {c.error}")
        got = extract(c.text)
        if got.source is not None:
            calls.append(_call_record(kind, messages, c, "ok", "", ask.parent_id))
            return Proposal(got.source, "llm", ask.parent_id, knobs.current(got.source) or None, tuple(calls))
        calls.append(_call_record(kind, messages, c, "format_error", got.reason, ask.parent_id))
        messages = [*messages, {"role": "assistant", "content": c.text or ""},
                    {"role": "user", "content": prompts.format_retry(got.reason)}]
        kind = "format_retry"
    return Proposal(None, "llm", ask.parent_id, None, tuple(calls), f"no usable code: {calls[-1]['error']}")


class KnobTuning:
    """Tuning one knob-annotated kernel: a tuner strategy over its space, scored by the
    measured milliseconds. Resumable: scores already in the store are known, not re-measured."""

    def __init__(self, base_source: str, base_id: str, strategy: str, rng: random.Random,
                 known: dict[tuple, float | None], seed: bool = False):
        space = knobs.read_space(base_source)
        if space is None:
            raise ValueError("the kernel declares no knobs")
        self.base_source, self.base_id, self.seed = base_source, base_id, seed
        self.tuner = tuner.search(strategy, space, knobs.current(base_source), rng, known)

    def next(self) -> Proposal | None:
        config = self.tuner.next()
        if config is None:
            return None
        source = knobs.instantiate(self.base_source, config)
        if source == self.base_source:  # the kernel as written (a seed's default knobs)
            return Proposal(source, "seed" if self.seed else "tuner", None, dict(config))
        return Proposal(source, "tuner", self.base_id, dict(config))

    def report(self, config: dict[str, Any], verdict: Mapping[str, Any]) -> None:
        # an early-exit median is a partial measurement, but a true one: clearly slower
        self.tuner.report(config, verdict.get("candidate_ms") if verdict.get("status") == "ok" else None)


def known_scores(history: Sequence[dict[str, Any]], base_source: str) -> dict[tuple, float | None]:
    """Scores of this kernel's configurations measured before (any run), by knob values."""
    space = knobs.read_space(base_source)
    out: dict[tuple, float | None] = {}
    for h in history:
        if not h.get("knobs") or space is None or set(h["knobs"]) != set(space.names):
            continue
        if knobs.instantiate(base_source, h["knobs"]) != h["source"]:
            continue  # another kernel with the same knob names
        e = h["evaluation"]
        out[tuner.key(h["knobs"])] = e.get("candidate_ms") if e["status"] == "ok" else None
    return out

