"""The probe's answers held to their shapes (evaluator/messages.py), and a worker whose probe was
tampered with into answering out of shape."""
from __future__ import annotations

import pytest

from evaluator.messages import ANSWERS, MalformedReply, checked, checked_timed
from tests.data.candidates import slow

GOOD_WENT = {"claims_ms": [0.5, 1], "synced_ms": [0.5, 1.0], "loop_ms": 2.0,
             "checksums": [[[1.0, -2.0, 64, "float32"]], [[0.0, 0.0, 0, "float32"]]]}
GOOD_OUTPUTS = {"tree": {"t": 0}, "n_outputs": 1,
                "report": {"aten_ops": ["aten::empty_like"], "kernel_calls": 1, "python_threads_added": 0,
                           "native_threads_added": 0, "guard_violations": [], "aliases": [], "plain": [True],
                           "gpu_kernel_us": {"k": 3}}}


def test_answers_of_the_right_shape_pass_as_they_are():
    for request, meta in (("go", GOOD_WENT), ("run", GOOD_OUTPUTS), ("run_seeded", {**GOOD_OUTPUTS, "report": {}}),
                          ("load", {"device": {}, "seccomp": "on"}), ("load", {}), ("stage", {"bytes_per_call": 0}),
                          ("sums", {"checksums": []}), ("init", {}), ("last", {"tree": {"scalar": None}})):
        reply = (ANSWERS[request][0], meta, [])
        assert checked(request, reply) is reply
    assert checked_timed("go", ("went", GOOD_WENT, [], 1.5))[3] == 1.5
    # keys a shape does not name are let through (a newer probe may say more)
    assert checked("stage", ("staged", {"bytes_per_call": 4, "note": "x"}, []))


@pytest.mark.parametrize("request_kind, kind, meta, said", [
    ("go", "outputs", GOOD_WENT, "'outputs' answered 'go'"),
    ("go", "went", {k: v for k, v in GOOD_WENT.items() if k != "claims_ms"}, "went lacks claims_ms"),
    ("go", "went", {**GOOD_WENT, "claims_ms": 0.5}, "went.claims_ms is float"),
    ("go", "went", {**GOOD_WENT, "claims_ms": [0.5, "fast"]}, "went.claims_ms[1] is str"),
    ("go", "went", {**GOOD_WENT, "checksums": [[[1.0, None, 64, "float32"]]]}, "went.checksums[0][0][1]"),
    ("run", "outputs", {**GOOD_OUTPUTS, "report": {"kernel_calls": "many"}}, "outputs.report.kernel_calls is str"),
    ("run", "outputs", {**GOOD_OUTPUTS, "report": {"kernel_calls": True}}, "outputs.report.kernel_calls is bool"),
    ("run", "outputs", {**GOOD_OUTPUTS, "report": {"aten_ops": "aten::mm"}}, "not a list"),
    ("run", "outputs", {**GOOD_OUTPUTS, "report": {"gpu_kernel_us": {"k": "1"}}}, "gpu_kernel_us.k is str"),
    ("run", "outputs", {**GOOD_OUTPUTS, "report": []}, "outputs.report is list"),
    ("stage", "staged", {"bytes_per_call": 1.5}, "staged.bytes_per_call is float"),
    ("load", "loaded", {"seccomp": 1}, "loaded.seccomp is int"),
])
def test_answers_out_of_shape_are_refused(request_kind, kind, meta, said):
    with pytest.raises(MalformedReply) as e:
        checked(request_kind, (kind, meta, []))
    assert str(e.value).startswith("malformed_reply: ") and said in str(e.value), str(e.value)


def test_the_probes_own_answers_have_their_shapes(loose_evaluator, small_task):
    # every answer of a whole evaluation goes through `checked`: an honest candidate is judged
    v = loose_evaluator.evaluate(small_task, slow())
    assert v.status.value == "ok", (v.status, v.reason)


# stands in for native code that rewrote the probe's report: a kernel count that is not a count
FORGED_REPORT = '''import sys
_probe = sys.modules["evaluator.jail.probe"]
_real = _probe.Probe._run
def _fake(self, args, checks):
    kind, out, t = _real(self, args, checks)
    if checks:
        out["report"]["kernel_calls"] = "plenty"
    return kind, out, t
_probe.Probe._run = _fake
'''


def test_a_tampered_probe_is_rejected_for_its_answer(loose_evaluator, small_task):
    v = loose_evaluator.evaluate(small_task, slow(prelude=FORGED_REPORT))
    assert v.status.value == "rejected", (v.status, v.reason)
    assert v.reason == "malformed_reply: outputs.report.kernel_calls is str 'plenty', not int"
