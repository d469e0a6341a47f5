"""Fixtures of the Matrix tests: one Synapse per session, people, and bots with a real core."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from adapters.matrix import MatrixAdapter
from adapters.matrix_session import Secrets
from agent.app import build_core
from agent.config import ChatConfig, Config, ContextConfig, MatrixConfig, ModelConfig, PersonaConfig
from agent.generators.base import ChatMessage
from memory.db import Database
from memory.history import SqlHistoryStore
from tests.matrix.peers import PASSWORD, WAIT, Bot, Human, StartBot, new_user
from tests.matrix.synapse import Synapse
from tests.support.fakes import FakeGenerator, SteppingClock


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that needs the homeserver starts a subprocess: it is ``slow``."""
    for item in items:
        if "synapse" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def synapse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Synapse]:
    server = Synapse(tmp_path_factory.mktemp("synapse"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'history.db'}")
    await database.migrate()
    yield database
    await database.close()


@pytest.fixture
async def humans(
    synapse: Synapse, tmp_path: Path
) -> AsyncIterator[Callable[..., Awaitable[Human]]]:
    started: list[Human] = []

    async def make(name: str = "alice") -> Human:
        human = Human(synapse, new_user(synapse, name), tmp_path / f"human-{len(started)}")
        await human.start()
        started.append(human)
        return human

    yield make
    for human in started:
        await human.stop()


@pytest.fixture
async def start_bot(synapse: Synapse, db: Database, tmp_path: Path) -> AsyncIterator[StartBot]:
    running: list[Bot] = []
    bot_user = new_user(synapse, "beseda")

    async def start(
        answer: Callable[[Sequence[ChatMessage]], str] | None = None,
        clock: Callable[[], float] | None = None,
        store: Path | None = None,
        **options: Any,
    ) -> Bot:
        generator = FakeGenerator(answer)
        config = Config(
            model=ModelConfig(max_tokens=64, temperature=0),
            persona=PersonaConfig(system_prompt="You are a test."),
            chat=ChatConfig(safety_margin_tokens=8),
            context=ContextConfig(date="off"),
        )
        core = build_core(config, SqlHistoryStore(db), generator)
        options.setdefault("reconnect_max_seconds", 1.0)
        adapter = MatrixAdapter(
            MatrixConfig(homeserver=synapse.url, **{"user_id": bot_user, **options}),
            Secrets(password=PASSWORD),
            store or tmp_path / "bot-store",
            clock=clock or SteppingClock(0.0),
        )
        task = asyncio.create_task(adapter.run(core.submit))
        bot = Bot(adapter, core, generator, task)
        running.append(bot)
        # The first sync is done: the bot is listening.
        await asyncio.wait_for(adapter.synced.wait(), WAIT)
        return bot

    yield start
    for bot in running:
        if not bot.task.done():
            await bot.stop()
