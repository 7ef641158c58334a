"""Seeded inputs stay the same when evaluations draw them from several threads at once."""
from __future__ import annotations

import threading

import torch

from evaluator.inputs import make_inputs
from tasks.spec import load_task
from tests.conftest import CPU_SUITE


def test_concurrent_draws_get_their_own_shapes_and_values():
    module = load_task(CPU_SUITE / "softmax.py").load_module()
    variant = {"batch_size": 33, "dim": 77}
    want = {None: make_inputs(module, 7)[0], "v": make_inputs(module, 7, variant)[0]}
    bad: list[str] = []

    def draw(which: str | None) -> None:
        for _ in range(150):
            (x,) = make_inputs(module, 7, variant if which else None)
            if x.shape != want[which].shape or not torch.equal(x, want[which]):
                bad.append(f"{which}: {tuple(x.shape)}")

    threads = [threading.Thread(target=draw, args=(w,)) for w in (None, "v", None, "v")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not bad, bad[:5]
