from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from memory.db import Database
from memory.history import SqlHistoryStore

# postgres_server: the session-wide PostgreSQL server, started only by tests that need it.
from tests.support.postgres import SQLITE_KINDS, open_database, postgres_server  # noqa: F401

os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")


@pytest.fixture(params=SQLITE_KINDS)
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """Tests of the core run against both SQLite kinds; the HistoryStore contract tests
    (tests/test_history.py) add PostgreSQL."""
    async with open_database(request.param, tmp_path, request) as db:
        yield db


@pytest.fixture
async def history(database: Database) -> SqlHistoryStore:
    return SqlHistoryStore(database)


def write_config(path: Path, **sections: dict[str, object]) -> Path:
    """A config file for tests: deterministic and small, with its own data folder.

    Keyword arguments are TOML tables merged over the defaults: ``model={"n_ctx": 2048}``.
    """
    tables: dict[str, dict[str, object]] = {
        "storage": {"data_dir": (path.parent / "data").as_posix()},
        "model": {"n_ctx": 1024, "temperature": 0.0, "max_tokens": 48, "seed": 7, "n_threads": 2},
    }
    for name, values in sections.items():
        tables.setdefault(name, {}).update(values)
    lines = []
    for name, values in tables.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)
