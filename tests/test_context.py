from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.prompt.context import CUT_MARKER, ContextBuilder, ContextError
from memory.records import Status, StoredMessage
from tests.support.fakes import FakeGenerator


def turn(i: int, text: str, role: str = "user") -> StoredMessage:
    return StoredMessage(
        id=i, channel_key="c:1", role=role, text=text, status=Status.DONE,
        author_id=None, author_name=None, platform_message_id=None, in_reply_to_id=None,
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
    )  # fmt: skip


def builder(n_ctx: int = 200, max_tokens: int = 40) -> ContextBuilder:
    return ContextBuilder(
        FakeGenerator(n_ctx=n_ctx), "system words here", max_tokens=max_tokens, safety_margin=5
    )


def test_layout_is_persona_history_new_message() -> None:
    prompt = builder().build([turn(1, "hi"), turn(2, "hello", "assistant")], "how are you")
    assert [(m.role, m.content) for m in prompt.messages] == [
        ("system", "system words here"),
        ("user", "hi"),
        ("assistant", "hello"),
        ("user", "how are you"),
    ]
    assert prompt.history_ids == (1, 2)


def test_oldest_history_is_dropped_first() -> None:
    history = [turn(i, " ".join(["w"] * 30)) for i in range(10)]
    prompt = builder().build(history, "new")
    assert prompt.tokens <= prompt.budget
    assert prompt.history_ids == tuple(range(10 - len(prompt.history_ids), 10))
    assert 0 < len(prompt.history_ids) < 10


def test_failed_and_empty_replies_are_left_out() -> None:
    failed = replace(turn(2, "half an answer", "assistant"), status=Status.FAILED)
    prompt = builder().build([turn(1, "q"), failed], "again")
    assert prompt.history_ids == (1,)


def test_oversized_message_is_cut_with_a_marker() -> None:
    prompt = builder().build([turn(1, "old")], " ".join(f"w{i}" for i in range(1000)))
    new = prompt.messages[-1].content
    assert prompt.new_message_cut
    assert new.endswith(CUT_MARKER)
    assert new.startswith("w0 w1 w2")
    assert prompt.tokens <= prompt.budget


def test_system_prompt_too_large_is_a_clear_error() -> None:
    tiny = ContextBuilder(FakeGenerator(n_ctx=60), "word " * 100, max_tokens=10, safety_margin=5)
    with pytest.raises(ContextError, match=r"system prompt and summary need \d+ tokens.*n_ctx"):
        tiny.build([], "hi")


@settings(max_examples=200, deadline=None)
@given(
    # Empty user turns are never shown (test_blank_user_turns_are_left_out).
    lengths=st.lists(st.integers(min_value=1, max_value=120), max_size=40),
    new_length=st.integers(min_value=0, max_value=400),
    n_ctx=st.integers(min_value=120, max_value=600),
)
def test_budget_is_never_exceeded_and_essentials_stay(
    lengths: list[int], new_length: int, n_ctx: int
) -> None:
    history = [turn(i, " ".join(["w"] * n)) for i, n in enumerate(lengths)]
    new = " ".join(["n"] * new_length)
    prompt = builder(n_ctx=n_ctx, max_tokens=40).build(history, new)
    assert prompt.tokens <= prompt.budget
    assert prompt.messages[0].content == "system words here"
    assert prompt.messages[-1].role == "user"
    assert prompt.messages[-1].content.startswith(new[:20]) or prompt.new_message_cut
    # The window is a contiguous run of the newest turns.
    ids = prompt.history_ids
    assert ids == tuple(range(len(lengths) - len(ids), len(lengths)))
