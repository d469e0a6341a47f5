"""App.open owns what it opens: everything is closed on the way out, in reverse order, also
when opening fails halfway or the body raises."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.app import App
from agent.config import load_config
from agent.prompt.personas import PersonaError
from agent.runtime.core import Core, CoreClosedError
from memory.db import Database
from tests.conftest import write_config
from tests.support.fakes import FakeGenerator, RecordingAdapter, inbound


class ClosingGenerator(FakeGenerator):
    def __init__(self, closed: list[str]) -> None:
        super().__init__()
        self._closed = closed

    async def aclose(self) -> None:
        self._closed.append("model")
        await super().aclose()


@pytest.fixture
def closed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What was closed, in order."""
    order: list[str] = []
    close_db, close_core = Database.close, Core.close

    async def db(self: Database) -> None:
        order.append("database")
        await close_db(self)

    async def core(self: Core, grace: float) -> None:
        order.append("core")
        await close_core(self, grace)

    monkeypatch.setattr(Database, "close", db)
    monkeypatch.setattr(Core, "close", core)
    return order


async def test_a_failure_after_the_model_is_loaded_closes_the_model_and_the_database(
    tmp_path: Path, closed: list[str]
) -> None:
    # The core is wired last; an unknown persona makes that step fail.
    path = write_config(
        tmp_path / "c.toml", retrieval={"enabled": False}, personas={"default": "gone"}
    )
    with pytest.raises(PersonaError, match="unknown persona 'gone'"):
        async with App.open(load_config(path, environ={}), ClosingGenerator(closed)):
            pytest.fail("opened despite the unknown persona")
    assert closed == ["model", "database"]


async def test_leaving_closes_the_core_then_the_model_then_the_database(
    tmp_path: Path, closed: list[str]
) -> None:
    path = write_config(tmp_path / "c.toml", retrieval={"enabled": False})
    cores: list[Core] = []

    async def fail_inside() -> None:
        async with App.open(load_config(path, environ={}), ClosingGenerator(closed)) as app:
            cores.append(app.core)
            raise RuntimeError("the body failed")

    with pytest.raises(RuntimeError, match="the body failed"):
        await fail_inside()
    [core] = cores
    assert closed == ["core", "model", "database"]
    with pytest.raises(CoreClosedError):
        await core.submit(inbound("hello"), RecordingAdapter())
