"""The console's rendering of a streamed reply."""

from __future__ import annotations

import io

from adapters.console import ConsoleReply


async def test_finish_shows_what_the_stream_did_not() -> None:
    out, err = io.StringIO(), io.StringIO()
    reply = ConsoleReply(out, err, "Beseda> ")
    for piece in [" It was ", "Miriam ", "Okafor. "]:
        await reply.push(piece)
    await reply.finish("It was Miriam Okafor.\n\nSources: [1] zorbel.md")
    assert out.getvalue() == "Beseda> It was Miriam Okafor. \n\nSources: [1] zorbel.md\n"


async def test_finish_after_a_complete_stream_adds_only_the_newline() -> None:
    out = io.StringIO()
    reply = ConsoleReply(out, io.StringIO(), "")
    await reply.push("Hello ")
    await reply.push("there ")
    await reply.finish("Hello there")
    assert out.getvalue() == "Hello there \n"


async def test_a_final_text_unlike_the_stream_is_shown_whole_below_it() -> None:
    out = io.StringIO()
    reply = ConsoleReply(out, io.StringIO(), "")
    await reply.push("draft")
    await reply.finish("Final answer")
    assert out.getvalue() == "draft\nFinal answer\n"


async def test_nothing_streamed_shows_the_whole_text() -> None:
    out = io.StringIO()
    reply = ConsoleReply(out, io.StringIO(), "B> ")
    await reply.finish("Whole")
    assert out.getvalue() == "B> Whole\n"


async def test_a_final_text_without_a_copied_name_adds_only_the_newline() -> None:
    out = io.StringIO()
    reply = ConsoleReply(out, io.StringIO(), "")
    for piece in ("Carol: ", "it is ", "red"):
        await reply.push(piece)
    await reply.finish("it is red")  # the core took "Carol:" off (see speakers.unlabel)
    assert out.getvalue() == "Carol: it is red\n"
