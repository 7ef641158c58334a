"""agent.loop.knobs: reading, enumerating and rewriting a candidate's declared knobs."""
from __future__ import annotations

import ast
import re

import pytest

from agent.loop import knobs

SRC = '''"""A candidate."""
import torch

BLOCK = 64   # rows per task
UNROLL = 2
NAME = "fast"
OTHER = 5
KNOBS = {"BLOCK": [16, 32, 64, 128], "UNROLL": [1, 2, 4], "NAME": ["fast", "safe"]}
KNOB_CONSTRAINTS = ["BLOCK * UNROLL <= 128", "not (NAME == 'safe' and UNROLL > 1)"]


def f():
    BLOCK = 3
    return BLOCK
'''


def test_read_space_and_current():
    space = knobs.read_space(SRC)
    assert space is not None
    assert space.names == ("BLOCK", "UNROLL", "NAME")
    assert space.values("UNROLL") == (1, 2, 4)
    assert knobs.current(SRC) == {"BLOCK": 64, "UNROLL": 2, "NAME": "fast"}


def test_no_knobs():
    assert knobs.read_space("X = 1\n") is None
    assert knobs.current("X = 1\n") == {}
    with pytest.raises(ValueError, match="declares no KNOBS"):
        knobs.instantiate("X = 1\n", {"X": 2})


def test_constraints_filter_configs():
    space = knobs.read_space(SRC)
    configs = list(space.configs())
    # brute force with plain python to cross-check the restricted evaluator
    want = [{"BLOCK": b, "UNROLL": u, "NAME": n} for b in (16, 32, 64, 128) for u in (1, 2, 4)
            for n in ("fast", "safe") if b * u <= 128 and not (n == "safe" and u > 1)]
    assert sorted(map(repr, configs)) == sorted(map(repr, want))
    assert space.size == len(want) < 4 * 3 * 2
    assert all(space.is_valid(c) for c in configs)
    assert not space.is_valid({"BLOCK": 128, "UNROLL": 2, "NAME": "fast"})
    assert not space.is_valid({"BLOCK": 16, "UNROLL": 2, "NAME": "safe"})


def test_instantiate_changes_only_knob_lines():
    out = knobs.instantiate(SRC, {"BLOCK": 32, "UNROLL": 4})
    before, after = SRC.splitlines(), out.splitlines()
    assert len(before) == len(after)
    changed = [(a, b) for a, b in zip(before, after) if a != b]
    assert changed == [("BLOCK = 64   # rows per task", "BLOCK = 32   # rows per task"),
                       ("UNROLL = 2", "UNROLL = 4")]
    assert knobs.current(out) == {"BLOCK": 32, "UNROLL": 4, "NAME": "fast"}
    # the function-local BLOCK is not a module constant and stays
    assert "    BLOCK = 3" in out
    ast.parse(out)


def test_instantiate_same_line_and_unicode():
    src = 'A = 1; B = "é"; C = 3  # ü\nKNOBS = {"A": [1, 2], "B": ["é", "ß"]}\n'
    assert knobs.instantiate(src, {"A": 2, "B": "ß"}).splitlines()[0] == "A = 2; B = 'ß'; C = 3  # ü"


def test_instantiate_multiline_value_and_string():
    src = 'T = (\n    8\n)\nMODE = "a"\nKNOBS = {"T": [4, 8], "MODE": ["a", "b"]}\nEND = 1\n'
    out = knobs.instantiate(src, {"T": 4, "MODE": "b"})
    assert out == 'T = 4\nMODE = \'b\'\nKNOBS = {"T": [4, 8], "MODE": ["a", "b"]}\nEND = 1\n'


@pytest.mark.parametrize("config, message", [
    ({"NOPE": 1}, "unknown knob 'NOPE'"),
    ({"BLOCK": 48}, "BLOCK=48 is not one of"),
    ({"BLOCK": "64"}, "is not one of"),
    ({"UNROLL": True}, "is not one of"),
    ({"BLOCK": 128, "UNROLL": 4}, "violates knob constraint 'BLOCK * UNROLL <= 128'"),
])
def test_instantiate_rejects_bad_configs(config, message):
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        knobs.instantiate(SRC, config)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("src, message", [
    ('KNOBS = {"B": [1, 2]}\n', "no module-level constant B"),
    ('B = 1\nKNOBS = {"B": []}\n', "non-empty list"),
    ('B = 1\nKNOBS = {"B": [1], "B": [2]}\n', "declared twice"),
    ('B = 1\nKNOBS = {"B": [[1], 2]}\n', "must be an int, float, str or bool"),
    ('B = 1\nKNOBS = {"B": [x]}\n', "not a literal"),
    ('B = f()\nKNOBS = {"B": [1]}\n', "constant B is not a literal"),
    ('B = 1\nKNOBS = [("B", [1])]\n', "literal dict"),
    ('B = 1\nKNOBS = {"B": [1]}\nKNOB_CONSTRAINTS = ["C > 1"]\n', "'C', which is not a knob"),
    ('B = 1\nKNOBS = {"B": [1]}\nKNOB_CONSTRAINTS = ["B >"]\n', "does not parse"),
    ('B = 1\nKNOBS = {"B": [1]}\nKNOB_CONSTRAINTS = ["__import__(\'os\')"]\n', "Call, which is not allowed"),
    ('B = 1\nKNOBS = {"B": [1]}\nKNOB_CONSTRAINTS = ["[B] == [1]"]\n', "List, which is not allowed"),
    ('B = 1\nKNOBS = {"B": [1]}\nKNOB_CONSTRAINTS = ["B.real > 0"]\n', "Attribute"),
    ('B = 1\nKNOBS = {"B": [1]}\nKNOB_CONSTRAINTS = ["(lambda: 1)() > 0"]\n', "not allowed"),
    ('B = 1\nKNOBS = {"B": [1]}\nKNOB_CONSTRAINTS = "B > 0"\n', "list of strings"),
])
def test_read_space_validates(src, message):
    with pytest.raises(ValueError, match=message):
        knobs.read_space(src)


def test_constraint_errors_exclude_config():
    src = ('A = 0\nB = 1\nKNOBS = {"A": [0, 1, 2], "B": [1]}\n'
           'KNOB_CONSTRAINTS = ["B / A >= 1", "2 ** 999 > A or True"]\n')
    space = knobs.read_space(src)
    # A == 0 divides by zero; the huge power is refused; neither crashes, both exclude
    assert list(space.configs()) == []
    src2 = src.replace('"2 ** 999 > A or True"', '"A % 2 == 1 or A == 2"')
    # A == 2 passes the second constraint but not the first (1 / 2 < 1)
    assert list(knobs.read_space(src2).configs()) == [{"A": 1, "B": 1}]
    src3 = 'M = "x"\nKNOBS = {"M": ["x", "y"]}\nKNOB_CONSTRAINTS = ["M * 2 == \'xx\'", "M != \'y\'"]\n'
    assert list(knobs.read_space(src3).configs()) == []  # string arithmetic is refused


def test_chained_comparison_and_float_knobs():
    src = 'S = 0.5\nN = 2\nKNOBS = {"S": [0.25, 0.5, 1.0], "N": [1, 2, 3]}\nKNOB_CONSTRAINTS = ["1 <= N * S < 2"]\n'
    space = knobs.read_space(src)
    assert list(space.configs()) == [{"S": 0.5, "N": 2}, {"S": 0.5, "N": 3}, {"S": 1.0, "N": 1}]
    assert knobs.current(knobs.instantiate(src, {"S": 1.0, "N": 1})) == {"S": 1.0, "N": 1}
