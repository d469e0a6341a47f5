"""Fixtures of the remote generator's tests: the scripted server, the recorded sleep, and a
generator pointed at the server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from agent.generators.openai_compat import OpenAICompatGenerator
from tests.openai.helpers import RecordingSleep, remote_config
from tests.support.openai_peer import FakeOpenAIServer


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAIServer]:
    server = FakeOpenAIServer()
    await server.start()
    yield server
    await server.close()


@pytest.fixture
def sleep() -> RecordingSleep:
    return RecordingSleep()


@pytest.fixture
async def remote(fake: FakeOpenAIServer, sleep: RecordingSleep) -> AsyncIterator[Any]:
    generator = OpenAICompatGenerator(remote_config(fake.url), sleep=sleep)
    yield generator
    await generator.aclose()
