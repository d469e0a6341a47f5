"""Crash safety: after a crash, unanswered messages are answered once or marked skipped."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.app import App
from agent.config import load_config
from agent.ports import ReplyTarget
from agent.runtime.recovery import find_pending, resume
from memory.db import Database
from memory.history import SqlHistoryStore
from memory.records import ChannelState, Status, StoredMessage
from tests.conftest import write_config
from tests.support import discord_fake as fk
from tests.support.core import make_core
from tests.support.fakes import FakeGenerator, Probe, RecordingAdapter
from tests.test_discord import StartBot, fake, start_bot  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parent.parent
AN_HOUR = timedelta(hours=1)


class Reopening(RecordingAdapter):
    """A platform that can answer stored messages of its own platform, except ``gone`` ones."""

    def __init__(self, name: str, gone: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self._name = name
        self._gone = gone
        self.reopened: list[str | None] = []

    @property
    def name(self) -> str:
        return self._name

    async def reopen(self, channel_key: str, platform_message_id: str | None) -> ReplyTarget | None:
        self.reopened.append(platform_message_id)
        return None if platform_message_id in self._gone else self


async def user_turn(
    history: SqlHistoryStore, text: str, *, channel: str = "chat:1", age: timedelta = AN_HOUR / 6,
    author: str = "alice",
) -> StoredMessage:  # fmt: skip
    return await history.append(
        channel, "user", text, status=Status.RECEIVED, author_id=author, author_name=author,
        platform_message_id=f"p-{text}", created_at=datetime.now(UTC) - age,
    )  # fmt: skip


async def statuses(history: SqlHistoryStore, channel: str = "chat:1") -> list[tuple[str, str, str]]:
    return [(m.role, m.text, m.status) for m in await history.conversation(channel)]


async def test_restart_answers_recent_messages_once_and_skips_the_rest(
    history: SqlHistoryStore,
) -> None:
    # What a crash leaves behind:
    interrupted = await user_turn(history, "cut off")
    await history.append(
        "chat:1", "assistant", "half a", status=Status.STREAMING, in_reply_to_id=interrupted.id
    )
    failed = await user_turn(history, "failed before")
    await history.append("chat:1", "assistant", "", status=Status.FAILED, in_reply_to_id=failed.id)
    await user_turn(history, "never started", author="bob")  # bob: not merged with alice's
    await user_turn(history, "too old", age=2 * AN_HOUR)
    await user_turn(history, "message gone")
    await user_turn(history, "elsewhere", channel="other:1")  # no adapter for "other"
    generator = FakeGenerator()
    core = make_core(history, generator, summaries=False)
    chat = Reopening("chat", gone=frozenset({"p-message gone"}))

    pending = await find_pending(history, AN_HOUR)
    assert (pending.interrupted, pending.expired) == (1, 1)
    replies = await resume(core, pending, [chat])
    done = [await r for r in replies]
    assert [r.text for r in done] == ["echo: cut off", "echo: never started"]
    assert [r.inbound.message_id for r in chat.replies] == ["p-cut off", "p-never started"]
    assert await statuses(history) == [
        ("user", "cut off", Status.RECEIVED),
        ("assistant", "half a", Status.INTERRUPTED),
        ("assistant", "echo: cut off", Status.DONE),
        ("user", "failed before", Status.RECEIVED),  # the person saw the failure: left alone
        ("assistant", "", Status.FAILED),
        ("user", "never started", Status.RECEIVED),
        ("assistant", "echo: never started", Status.DONE),
        ("user", "too old", Status.SKIPPED),
        ("user", "message gone", Status.SKIPPED),
    ]
    assert await statuses(history, "other:1") == [("user", "elsewhere", Status.SKIPPED)]

    # A second restart finds nothing left to do.
    again = await find_pending(history, AN_HOUR)
    assert (again.messages, again.interrupted, again.expired) == ((), 0, 0)
    await core.close(1)


async def test_recovered_messages_of_one_author_are_answered_together(
    history: SqlHistoryStore,
) -> None:
    for text in ("one", "two"):
        await user_turn(history, text)
    generator = FakeGenerator()
    core = make_core(history, generator, summaries=False)
    pending = await find_pending(history, AN_HOUR)
    replies = [await r for r in await resume(core, pending, [Reopening("chat")])]
    assert [r.text for r in replies] == ["echo: one\ntwo"] * 2
    assert len(generator.calls) == 1
    assert await find_pending(history, AN_HOUR) == type(pending)((), 0, 0)
    await core.close(1)


def _driver(data: Path, mode: str, stdin: int | None) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ANONYMIZED_TELEMETRY": "False"}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.recovery_driver", str(data), mode],
        cwd=ROOT, env=env, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


async def _history_rows(data: Path) -> list[tuple[str, str, str]]:
    db = Database(f"sqlite+aiosqlite:///{data / 'beseda.db'}")
    try:
        return await statuses(SqlHistoryStore(db), "console:local")
    finally:
        await db.close()


async def test_sigkill_mid_generation_then_restart_answers_exactly_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    crashing = _driver(data, "stall", subprocess.PIPE)
    assert crashing.stdin is not None
    assert crashing.stderr is not None
    crashing.stdin.write("hello after a crash\n")
    crashing.stdin.flush()
    # The generator says STALLED once it has written its first word; then kill -9.
    line = await asyncio.wait_for(asyncio.to_thread(crashing.stderr.readline), 60)
    assert line.strip() == "STALLED"
    crashing.send_signal(signal.SIGKILL)
    crashing.communicate(timeout=30)
    assert crashing.returncode == -signal.SIGKILL
    assert await _history_rows(data) == [
        ("user", "hello after a crash", Status.RECEIVED),
        ("assistant", "", Status.STREAMING),  # the crash left it streaming
    ]

    restarted = _driver(data, "answer", subprocess.DEVNULL)
    out, err = await asyncio.to_thread(restarted.communicate, timeout=60)
    assert restarted.returncode == 0, err
    assert out.strip() == "answer to: hello after a crash"
    expected = [
        ("user", "hello after a crash", Status.RECEIVED),
        ("assistant", "", Status.INTERRUPTED),
        ("assistant", "answer to: hello after a crash", Status.DONE),
    ]
    assert await _history_rows(data) == expected

    # Restarting again answers nothing twice.
    third = _driver(data, "answer", subprocess.DEVNULL)
    out, err = await asyncio.to_thread(third.communicate, timeout=60)
    assert third.returncode == 0, err
    assert out.strip() == ""
    assert await _history_rows(data) == expected


async def test_discord_reopens_a_stored_message_and_replies_to_it(
    start_bot: StartBot,  # noqa: F811 (the fixture imported above)
    fake: fk.DiscordFake,  # noqa: F811
) -> None:
    bot = await start_bot()
    # A message the bot had stored when it crashed (not addressed to it now: no answer yet).
    asked = await fake.message_create("what was the question?")
    history = bot.core.history
    key = f"discord:{fk.CHANNEL_ID}"
    for platform_id in (str(asked), "123456789", f"interaction:{asked}"):
        await history.append(
            key, "user", f"pending {platform_id}", status=Status.RECEIVED, author_id="111",
            author_name="alice", platform_message_id=platform_id,
        )  # fmt: skip
    pending = await find_pending(history, AN_HOUR)
    replies = [await r for r in await resume(bot.core, pending, [bot.adapter])]
    assert [r.text for r in replies] == [f"echo: pending {asked}"]
    [post] = fake.posted()
    assert int(post.body["message_reference"]["message_id"]) == asked
    # A deleted message and an expired slash command cannot be answered: marked skipped.
    rows = {m.text: m.status for m in await history.conversation(key)}
    assert rows["pending 123456789"] is Status.SKIPPED
    assert rows[f"pending interaction:{asked}"] is Status.SKIPPED


async def restart_and_probe(
    path: Path, monkeypatch: pytest.MonkeyPatch, *, warm_fails: bool
) -> tuple[ChannelState, list[str]]:
    """Serve a probe on a freshly started App; what it read and which states were queried."""
    async with App.open(load_config(path, environ={}), FakeGenerator()) as app:
        history = app.core.history
        assert isinstance(history, SqlHistoryStore)
        queried: list[str] = []
        read_state = history._read_state

        async def counted(key: str) -> ChannelState | None:
            queried.append(key)
            return await read_state(key)

        async def fail(limit: int = 0) -> int:
            raise OSError("disk went away")

        monkeypatch.setattr(history, "_read_state", counted)
        if warm_fails:
            monkeypatch.setattr(history, "warm", fail)
        read: list[ChannelState] = []

        async def first_message() -> None:
            read.append(await history.channel_state("chat:1"))

        await app.serve([Probe(first_message)])
    return read[0], queried


async def test_a_restart_reads_channel_states_ahead_and_serves_if_it_cannot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_config(
        tmp_path / "config.toml", retrieval={"enabled": False}, context={"date": "off"}
    )
    async with App.open(load_config(path, environ={}), FakeGenerator()) as first:
        stored = await first.core.history.append("chat:1", "user", "hello")
        await first.core.history.move_window("chat:1", stored.id, epoch=0)
    caplog.set_level(logging.INFO, logger="agent.app")

    read, queried = await restart_and_probe(path, monkeypatch, warm_fails=False)
    assert (read, queried) == (ChannelState(window_start_id=stored.id), [])
    assert "read ahead the state of 1 channels" in caplog.text
    caplog.clear()

    read, queried = await restart_and_probe(path, monkeypatch, warm_fails=True)
    assert (read, queried) == (ChannelState(window_start_id=stored.id), ["chat:1"])
    assert "could not read channel states ahead" in caplog.text


async def test_ambient_messages_are_never_answered_not_even_after_sigkill(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    crashing = _driver(data, "stall", subprocess.PIPE)
    assert crashing.stdin is not None
    assert crashing.stderr is not None
    # Two messages Bob wrote without addressing the bot (a "~ " line: see the driver), then
    # a question to it; the process dies while answering that.
    crashing.stdin.write("~ lunch at noon?\n~ the usual place\nwhen is lunch?\n")
    crashing.stdin.flush()
    line = await asyncio.wait_for(asyncio.to_thread(crashing.stderr.readline), 60)
    assert line.strip() == "STALLED"
    crashing.send_signal(signal.SIGKILL)
    crashing.communicate(timeout=30)
    asides = [
        ("user", "lunch at noon?", Status.AMBIENT),
        ("user", "the usual place", Status.AMBIENT),
    ]
    assert await _history_rows(data) == [
        *asides,
        ("user", "when is lunch?", Status.RECEIVED),
        ("assistant", "", Status.STREAMING),
    ]
    # The restart answers the question, once, seeing the asides with their author...
    restarted = _driver(data, "recall", subprocess.DEVNULL)
    out, err = await asyncio.to_thread(restarted.communicate, timeout=60)
    assert restarted.returncode == 0, err
    recalled = "saw: Bob: lunch at noon? | Bob: the usual place | you: when is lunch?"
    assert out.strip() == recalled
    # ...and never the asides themselves, then or at the next start.
    third = _driver(data, "recall", subprocess.DEVNULL)
    out, err = await asyncio.to_thread(third.communicate, timeout=60)
    assert third.returncode == 0, err
    assert out.strip() == ""
    rows = await _history_rows(data)
    assert rows[:2] == asides
    assert [r for r in rows if r[2] == Status.DONE] == [("assistant", recalled, Status.DONE)]
