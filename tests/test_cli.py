"""The command line end to end, in subprocesses, on the real bundled model."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import write_config

pytestmark = [pytest.mark.model, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
# A failsafe against a hung child, never a performance assertion.
HANG = 120


def beseda(
    config: Path, *args: str, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "agent", "--config", str(config), *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=HANG,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        check=False,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path / "beseda.toml")


def stored_rows(config: Path) -> list[tuple[str, str, str, str]]:
    with sqlite3.connect(config.parent / "data" / "beseda.db") as db:
        return db.execute(
            "SELECT c.key, m.role, m.status, m.text FROM messages m "
            "JOIN channels c ON c.id = m.channel_id ORDER BY m.id"
        ).fetchall()


def test_piped_question_is_answered(config: Path) -> None:
    result = beseda(config, stdin="What is 2+2?\n")
    assert "4" in result.stdout
    assert "Traceback" not in result.stderr
    assert [row[:3] for row in stored_rows(config)] == [
        ("console:local", "user", "received"),
        ("console:local", "assistant", "done"),
    ]


def test_each_piped_line_is_a_message(config: Path) -> None:
    result = beseda(config, "run", stdin="Hello!\n\nWhat is 2+2?\n")
    assert len([line for line in result.stdout.splitlines() if line.strip()]) >= 2
    roles = [row[1] for row in stored_rows(config)]
    assert roles == ["user", "assistant", "user", "assistant"]


def test_chat_remembers_the_channel_across_runs(config: Path) -> None:
    first = beseda(config, "chat", "My name is Ada. Say hello.")
    assert first.stdout.strip()
    inspected = beseda(config, "prompt", "What is my name?")
    rendered = inspected.stdout
    system = rendered.index("You are Beseda")
    earlier = rendered.index("My name is Ada. Say hello.")
    answer = rendered.index(first.stdout.strip())
    new = rendered.index("What is my name?")
    assert system < earlier < answer < new
    # The inspector stores nothing.
    assert len(stored_rows(config)) == 2
    second = beseda(config, "chat", "What is my name?")
    assert second.stdout.strip()
    assert len(stored_rows(config)) == 4


def test_an_undecodable_argument_is_answered_not_a_traceback(config: Path) -> None:
    """Bytes that are not UTF-8 reach Python as lone surrogates (surrogateescape): the
    SQLite driver refused them with a UnicodeEncodeError traceback."""
    result = subprocess.run(
        [sys.executable, "-m", "agent", "--config", str(config), "chat", b"abc\xed\xa0\x80def"],
        capture_output=True,
        cwd=ROOT,
        timeout=HANG,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode("utf-8", "replace")
    assert b"Traceback" not in result.stderr
    assert result.stdout.strip()
    user = stored_rows(config)[0]
    assert (user[1], user[3]) == ("user", "abc\ufffd\ufffd\ufffddef")


def test_same_question_in_fresh_channels_gives_the_same_reply(config: Path) -> None:
    one = beseda(config, "chat", "--channel", "a", "Name a colour.")
    two = beseda(config, "chat", "--channel", "b", "Name a colour.")
    assert one.stdout.strip()
    assert one.stdout == two.stdout
    keys = {row[0] for row in stored_rows(config)}
    assert keys == {"console:a", "console:b"}


def test_prompt_json_shows_the_layout(config: Path) -> None:
    beseda(config, "chat", "--channel", "discord:42", "Hi there")
    result = beseda(config, "prompt", "--channel", "discord:42", "--json", "Next question")
    data = json.loads(result.stdout)
    assert data["channel"] == "discord:42"
    roles = [m["role"] for m in data["messages"]]
    assert roles == ["system", "user", "assistant", "user"]
    assert data["messages"][1]["content"] == "Hi there"
    # Today's date (no time: it changes once a day) ends the system prompt.
    assert re.search(r"\nToday is \d{4}-\d\d-\d\d\.$", data["messages"][0]["content"])
    assert data["messages"][-1]["content"] == "Next question"
    assert data["tokens"] <= data["budget"] < data["n_ctx"]
    assert data["rendered"].startswith("<|im_start|>system\n")
    # What the engine would take from the channel's sequence, which still holds the last
    # prompt and its reply: everything but the new turn.
    reuse = data["reuse"]
    assert reuse["after_message"] == 1
    assert reuse["prefix_tokens"] + reuse["shifted_tokens"] > data["tokens"] * 0.8
    assert (
        reuse["prefix_tokens"] + reuse["shifted_tokens"] + reuse["evaluated_tokens"]
        == (data["tokens"])
    )
    assert 0 < reuse["evaluated_tokens"] < 20
    fresh = beseda(config, "prompt", "--channel", "discord:43", "--json", "Next question")
    assert json.loads(fresh.stdout)["reuse"] is None  # nothing answered there yet


def test_chat_stats_prints_token_counters(config: Path) -> None:
    result = beseda(config, "chat", "--stats", "Hi")
    assert result.stdout.strip()
    counters = dict(item.split("=") for item in result.stderr.split())
    assert int(counters["prompt_tokens"]) > 10
    reused = int(counters["cached_tokens"]) + int(counters["shifted_tokens"])
    assert int(counters["evaluated_tokens"]) + reused == int(counters["prompt_tokens"])


def test_doctor_reports_what_is_configured(config: Path) -> None:
    result = beseda(config, "doctor")
    assert "SmolLM2-135M-Instruct.Q4_1.gguf (bundled" in result.stdout
    assert "chat template in GGUF" in result.stdout
    assert result.stdout.rstrip().endswith("all checks passed")


def test_doctor_fails_on_a_missing_model(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.toml", model={"path": "nowhere.gguf"})
    result = beseda(config, "doctor", check=False)
    assert result.returncode == 1
    assert "[model] path: file not found" in result.stdout


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("[model]\nn_ctx = 'many'\n", "model.n_ctx: input should be a valid integer"),
        ("[modell]\n", "modell: unknown key"),
        ("[model\n", "not valid TOML"),
    ],
)
def test_broken_config_is_one_clear_line(tmp_path: Path, body: str, expected: str) -> None:
    config = tmp_path / "broken.toml"
    config.write_text(body, encoding="utf-8")
    result = beseda(config, "chat", "hi", check=False)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert expected in result.stderr
    assert str(config) in result.stderr


def test_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.toml", model={"path": "nowhere.gguf"})
    result = beseda(config, "chat", "hi", check=False)
    assert result.returncode == 1
    assert result.stderr.strip().endswith("nowhere.gguf")
    assert "[model] path: file not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_sigterm_stops_the_agent_cleanly(config: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "--config", str(config), "run"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    proc.stdin.write("Hello!\n")
    proc.stdin.flush()
    first_line = proc.stdout.readline()  # the reply; stdin stays open
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=HANG)
    assert first_line.strip()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert [row[1:3] for row in stored_rows(config)] == [
        ("user", "received"),
        ("assistant", "done"),
    ]


def test_interactive_console_in_a_terminal(config: Path) -> None:
    """stdin is a real pseudo-terminal: prompts, streamed answer, /quit."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "--config", str(config)],
        stdin=slave,
        stdout=slave,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "TERM": "dumb"},
    )
    os.close(slave)
    screen = b""

    def read_until(marker: bytes, start: int) -> int:
        """Read the terminal until ``marker`` shows after ``start``; return where it ends."""
        nonlocal screen
        while (found := screen.find(marker, start)) < 0:
            ready, _, _ = select.select([master], [], [], HANG)
            assert ready, f"no {marker!r} on screen: {screen!r}"
            screen += os.read(master, 4096)
        return found + len(marker)

    try:
        position = read_until(b"you> ", 0)
        os.write(master, b"What is 2+2?\n")
        answer_start = read_until(b"Beseda> ", position)
        # The next prompt comes only after the whole answer.
        answer_end = read_until(b"you> ", answer_start) - len(b"you> ")
        os.write(master, b"/quit\n")
        assert proc.wait(timeout=HANG) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    assert b"4" in screen[answer_start:answer_end]
    assert proc.stderr is not None
    assert "Traceback" not in proc.stderr.read().decode()


def test_one_shot_chats_produce_a_rolling_summary(tmp_path: Path) -> None:
    """A small window on the real model: the summary is made before `chat` exits."""
    # 256: llama.cpp pads n_ctx up to a multiple of 256.
    config = write_config(
        tmp_path / "c.toml", model={"n_ctx": 256, "max_tokens": 24}, context={"date": "off"}
    )
    questions = [
        "My name is Ada and I live in Kazan.",
        "I have a cat called Pushok.",
        "What is the capital of France?",
        "Name a colour.",
        "Name a fruit.",
        "Name an animal.",
    ]
    for question in questions:
        beseda(config, "chat", question)
        with sqlite3.connect(config.parent / "data" / "beseda.db") as db:
            made = db.execute("SELECT count(*) FROM summaries").fetchone()[0]
        if made:
            break
    assert made, "no summary after a conversation longer than the window"
    shown = beseda(config, "chat", "!summary")
    with sqlite3.connect(config.parent / "data" / "beseda.db") as db:
        text, first, last = db.execute(
            "SELECT text, first_message_id, last_message_id FROM summaries ORDER BY id DESC"
        ).fetchone()
    assert text.strip()
    assert first <= last
    # Shown once its turns have left the window: either way the command answers.
    assert shown.stdout.startswith(("Summary of the earlier conversation:", "No summary yet"))
