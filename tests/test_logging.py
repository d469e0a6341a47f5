"""Structured logs: one line per event, no message text at INFO or above, no secret at all."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import text

from adapters.registry import configured_adapters
from agent.app import App
from agent.config import load_config
from agent.ops.logs import REDACTED, StructuredFormatter, configured_secrets, setup_logging
from tests.conftest import write_config
from tests.support import discord_fake as fk
from tests.support.fakes import FakeGenerator
from tests.test_discord import fake

__all__ = ["fake"]  # the loopback Discord fixture this module uses

MENTION = f"<@{fk.BOT_ID}>"
API_KEY = "sk-test-0123456789abcdef"
LOGFMT_PAIR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def parse_logfmt(line: str) -> dict[str, str]:
    return {
        key: json.loads(value) if value.startswith('"') else value
        for key, value in LOGFMT_PAIR.findall(line)
    }


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def record(msg: str, *args: object, **extra: Any) -> logging.LogRecord:
    rec = logging.LogRecord("agent.test", logging.INFO, __file__, 1, msg, args, None)
    rec.__dict__.update(extra)
    return rec


def test_a_logfmt_event_is_one_line_of_keys_even_with_a_traceback() -> None:
    formatter = StructuredFormatter("logfmt")
    try:
        raise ValueError("first line\nsecond line")
    except ValueError:
        rec = record("reply failed in %s", "discord:1", channel="discord:1", message_id=7)
        rec.exc_info = sys.exc_info()
    line = formatter.format(rec)
    assert "\n" not in line
    fields = parse_logfmt(line)
    assert fields["level"] == "info"
    assert fields["logger"] == "agent.test"
    assert fields["msg"] == "reply failed in discord:1"
    assert (fields["channel"], fields["message_id"]) == ("discord:1", "7")
    assert "ValueError: first line\nsecond line" in fields["exc"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", fields["time"])


def test_a_json_event_is_one_object_per_line() -> None:
    line = StructuredFormatter("json").format(
        record('quotes " and = signs', channel="matrix:!a:b", count=3, ok=True)
    )
    assert "\n" not in line
    event = json.loads(line)
    assert event["msg"] == 'quotes " and = signs'
    assert (event["channel"], event["count"], event["ok"]) == ("matrix:!a:b", 3, True)


def test_secrets_are_masked_in_every_part_of_an_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("DISCORD_TOKEN=token-from-dotenv-file\n", encoding="utf-8")
    path = write_config(
        tmp_path / "config.toml",
        storage={"database_url": "postgresql+asyncpg://beseda:db-password-42@db/beseda"},
    )
    config = load_config(path, environ={"BESEDA_MODEL__API_KEY": API_KEY})
    secrets = configured_secrets(config)
    assert {API_KEY, "token-from-dotenv-file", "db-password-42"} <= set(secrets)
    for style in ("logfmt", "json"):
        formatter = StructuredFormatter(style, secrets)
        try:
            raise RuntimeError(f"401 for key {API_KEY}")
        except RuntimeError:
            rec = record("token %s", "token-from-dotenv-file", url="db-password-42@db")
            rec.exc_info = sys.exc_info()
        line = formatter.format(rec)
        for secret in (API_KEY, "token-from-dotenv-file", "db-password-42"):
            assert secret not in line
        assert line.count(REDACTED) == 3


async def test_a_conversation_logs_events_but_no_message_text_or_secret(
    fake: fk.DiscordFake,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    restore_logging: None,
) -> None:
    """Discord (the real discord.py client against the loopback gateway) through the app,
    logging at DEBUG: a normal reply, a generation failure, a database failure."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DISCORD_TOKEN", fk.TOKEN)
    path = write_config(
        tmp_path / "config.toml",
        retrieval={"enabled": False},
        context={"date": "off", "summaries": False},
        logging={"level": "DEBUG"},
        metrics={"enabled": True, "port": 0},
    )
    config = load_config(path, environ={"BESEDA_MODEL__API_KEY": API_KEY})
    stream = io.StringIO()
    setup_logging(config, stream)

    generator = FakeGenerator()
    async with App.open(config, generator=generator) as app:
        # A database failure while storing the finished reply: the statement's parameters
        # (the reply's text) must not reach the logged exception.
        async with app.db.engine.begin() as conn:
            await conn.execute(
                text(
                    "CREATE TRIGGER refuse BEFORE UPDATE ON messages WHEN NEW.text LIKE "
                    "'%poisoned%' BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
                )
            )
        [adapter] = configured_adapters(app.config, lambda: pytest.fail("console"))

        async def failed_replies(count: int) -> None:
            # Polled: the fake's wait_for only wakes up when Discord traffic arrives.
            failed = app.metrics.messages_out.labels("discord", "failed")
            for _ in range(1000):
                if failed._value.get() >= count:
                    return
                await asyncio.sleep(0.01)
            pytest.fail(f"fewer than {count} failed replies")

        serving = asyncio.create_task(app.serve([adapter]))
        said = ["what is the capital of Narnia", "poisoned question about tea"]
        try:
            await fake.wait_ready()
            await fake.message_create(f"{MENTION} {said[0]}", mentions=[fake.bot])
            await fake.wait_for(lambda: fake.contents() == [f"echo: {said[0]}"])
            await fake.message_create(f"{MENTION} {said[1]}", mentions=[fake.bot])
            await failed_replies(1)
            generator.fail_with = RuntimeError("the model fell over")
            said.append("secret plans for Tuesday")
            await fake.message_create(f"{MENTION} {said[2]}", mentions=[fake.bot])
            await failed_replies(2)
            assert app.ops is not None
            async with aiohttp.ClientSession() as http, http.get(app.ops.url + "/healthz") as r:
                running = {"state": "running", "connected": True, "restarts": 0}
                assert (r.status, (await r.json())["adapters"]) == (200, {"discord": running})
        finally:
            await adapter.stop()
            await asyncio.wait_for(serving, 20)

    lines = stream.getvalue().splitlines()
    events = [parse_logfmt(line) for line in lines]
    assert all({"time", "level", "logger", "msg"} <= event.keys() for event in events)
    # The run did log: debug detail (which may quote messages) and the events themselves.
    assert any(e["level"] == "debug" and e["logger"].startswith("discord") for e in events)
    received = [e for e in events if e["msg"] == "message received"]
    assert len(received) == 3
    assert {e["channel"] for e in received} == {f"discord:{fk.CHANNEL_ID}"}
    assert any(e["msg"] == "reply finished" and e["status"] == "done" for e in events)
    failed = [e for e in events if e["msg"] == "reply failed"]
    assert {e["error_kind"] for e in failed} == {"internal", "generation"}
    assert any("disk on fire" in e.get("exc", "") for e in events if e["level"] == "error")

    for line, event in zip(lines, events, strict=True):
        for secret in (fk.TOKEN, API_KEY):
            assert secret not in line
        if event["level"] != "debug":
            for words in said:
                assert words not in line, f"message text at {event['level']}: {line}"


def test_setup_logging_routes_every_logger_to_one_json_line_per_event(
    tmp_path: Path, restore_logging: None
) -> None:
    path = write_config(tmp_path / "config.toml", logging={"level": "INFO", "format": "json"})
    stream = io.StringIO()
    setup_logging(load_config(path, environ={}), stream)
    logging.getLogger("agent.runtime.core").info(
        "reply", extra={"channel": "c:1", "reply_id": None}
    )
    logging.getLogger("discord.gateway").info("connected\nto the gateway")
    logging.getLogger("agent.runtime.core").debug("not shown at INFO")
    logging.getLogger("alembic.runtime.migration").info("migration noise")
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(e["logger"], e["msg"]) for e in events] == [
        ("agent.runtime.core", "reply"),
        ("discord.gateway", "connected\nto the gateway"),
    ]
    assert events[0]["channel"] == "c:1"
    assert "reply_id" not in events[0]  # None fields are left out
