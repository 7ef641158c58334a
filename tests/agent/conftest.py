"""Agent fixtures: a real OpenAI-compatible HTTP server on 127.0.0.1, one per test."""
from __future__ import annotations

from typing import Iterator

import pytest

from tests.agent.fake_openai import FakeOpenAI


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    """Started with an empty script: push steps or set `.responder` in the test."""
    with FakeOpenAI() as server:
        yield server
