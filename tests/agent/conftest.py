"""Agent fixtures: a real OpenAI-compatible HTTP server on 127.0.0.1, one per test; a store of
real evaluations to review (tests/agent/review_data.py), one per test module."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from store import Store
from tests.agent.fake_openai import FakeOpenAI
from tests.agent.review_data import review_store


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    """Started with an empty script: push steps or set `.responder` in the test."""
    with FakeOpenAI() as server:
        yield server


@pytest.fixture(scope="module")
def db(evaluator, tmp_path_factory) -> Path:
    """The review store's SQLite file."""
    return review_store(evaluator, tmp_path_factory)


@pytest.fixture(scope="module")
def store(db: Path) -> Iterator[Store]:
    with Store.open(str(db), db) as st:
        yield st
