"""Splitting replies at Discord's limit: properties over generated texts, and examples."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.split import split_message, split_parts

WORDS = st.text(alphabet="abcdefgh.,", min_size=1, max_size=30)
LINE = st.one_of(
    st.lists(WORDS, min_size=0, max_size=12).map(" ".join),
    st.sampled_from(["```", "```python", "```js"]),
)
TEXT = st.lists(LINE, min_size=1, max_size=120).map("\n".join)


def fence_lines(chunk: str) -> list[str]:
    return [line for line in chunk.split("\n") if line.strip().startswith("```")]


def non_space(text: str) -> str:
    return "".join(text.split())


@settings(max_examples=200, deadline=None)
@given(TEXT, st.integers(min_value=40, max_value=400))
def test_chunks_fit_keep_the_text_and_balance_every_fence(text: str, limit: int) -> None:
    parts = split_parts(text, limit)
    chunks = [p.render() for p in parts]
    assert chunks == split_message(text, limit)
    for chunk in chunks:
        assert len(chunk) <= limit
        assert chunk.strip()
    # No character is lost or invented: the pieces are the text minus separators at cuts.
    assert non_space("".join(p.piece for p in parts)) == non_space(text)
    # Every chunk but the last leaves no code block open.
    for chunk in chunks[:-1]:
        assert len(fence_lines(chunk)) % 2 == 0, chunk
    # A chunk reopens exactly the block its predecessor had to close.
    for before, after in itertools.pairwise(parts):
        if before.closed:
            assert after.reopen.startswith("```")
        else:
            assert after.reopen == ""


def test_leading_blank_lines_never_make_an_empty_chunk() -> None:
    # Found by the property above: the first cut fell between the blank lines.
    text = "\n\n\na a a a a\na a a a a a a aaa aaa aaaaaa"
    assert split_message(text, 40) == ["a a a a a\na a a a a a a aaa aaa aaaaaa"]


@given(st.integers(min_value=1, max_value=6000))
def test_a_single_enormous_word_is_cut_at_the_limit(size: int) -> None:
    chunks = split_message("x" * size)
    assert all(len(c) <= 2000 for c in chunks)
    assert "".join(chunks) == "x" * size


def test_cuts_prefer_paragraphs_then_lines_then_words() -> None:
    paragraph = "word " * 300  # 1,500 characters
    text = paragraph.strip() + "\n\n" + paragraph.strip() + "\nline two"
    chunks = split_message(text)
    assert chunks[0] == paragraph.strip()
    assert chunks[1] == paragraph.strip() + "\nline two"


def test_a_code_block_is_closed_and_reopened_with_its_language() -> None:
    code = "\n".join(f"print({i})" for i in range(400))
    chunks = split_message(f"Look:\n```python\n{code}\n```\nThat's all.")
    assert len(chunks) >= 3
    assert chunks[0].endswith("\n```")
    assert all(c.startswith("```python\n") for c in chunks[1:])
    assert chunks[-1].endswith("```\nThat's all.")


def test_a_short_text_is_one_chunk() -> None:
    assert split_message("hello") == ["hello"]
    assert split_message("") == []
