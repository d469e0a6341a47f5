"""The adapter kit's edited reply (adapters/streaming.py) over a scripted surface.

The platforms' own tests drive it through their fakes; these pin what no fake shows easily:
retry_after holds the next edit back, a fatal error is not retried, drafts preview the last
part while earlier parts are posted.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from adapters.streaming import EditedReply, Failure, Kind
from tests.support.fakes import SteppingClock


class Refused(Exception):
    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.kind.value)
        self.failure = failure


@dataclass
class ScriptedSurface:
    """Records what would be shown; raises the scripted failures in order."""

    failures: list[Failure] = field(default_factory=list)
    calls: list[tuple[str, int, str]] = field(default_factory=list)
    drafting: bool = False
    typed: bool = False

    @property
    def label(self) -> str:
        return "test:1"

    def _maybe_fail(self) -> None:
        if self.failures:
            raise Refused(self.failures.pop(0))

    async def post(self, text: str, index: int) -> int:
        self._maybe_fail()
        self.calls.append(("post", index, text))
        return index

    async def edit(self, handle: int, text: str, index: int) -> None:
        self._maybe_fail()
        self.calls.append(("edit", index, text))

    async def delete(self, handle: int) -> None:
        self.calls.append(("delete", handle, ""))

    async def typing(self, until: asyncio.Event) -> None:
        self.typed = True
        await until.wait()

    def classify(self, error: Exception) -> Failure | None:
        return error.failure if isinstance(error, Refused) else None


class Drafting(ScriptedSurface):
    async def draft(self, text: str, index: int) -> None:
        self._maybe_fail()
        self.calls.append(("draft", index, text))


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def reply(surface: ScriptedSurface, sleeps: Sleeps, **options: object) -> EditedReply[int]:
    return EditedReply(
        surface,
        clock=SteppingClock(1.0),
        sleep=sleeps,
        edit_interval=1.0,
        **options,  # type: ignore[arg-type]
    )


async def test_retry_after_holds_back_the_next_edit_and_the_final_text_waits_it_out() -> None:
    surface, sleeps = ScriptedSurface(), Sleeps()
    stream = reply(surface, sleeps)
    await stream.push("one")
    surface.failures = [Failure(Kind.RETRY, retry_after=5.0)]
    await stream.push(" two")  # refused: nothing for the next 5 s (each push is 1 s later)
    for word in [" three", " four", " five", " six"]:
        await stream.push(word)
    assert [c[0] for c in surface.calls] == ["post"]
    await stream.push(" seven")  # the clock has passed the hold
    assert surface.calls[-1] == ("edit", 0, "one two three four five six seven")
    surface.failures = [Failure(Kind.RETRY, retry_after=7.0), Failure(Kind.RETRY)]
    await stream.finish("the whole text")
    assert sleeps.delays == [7.0, 2.0]  # the platform's wait, then the backoff
    assert surface.calls[-1] == ("edit", 0, "the whole text")
    assert surface.typed


async def test_a_fatal_error_on_the_final_text_is_raised_at_once() -> None:
    surface, sleeps = ScriptedSurface(failures=[Failure(Kind.FATAL)]), Sleeps()
    stream = reply(surface, sleeps)
    with pytest.raises(Refused):
        await stream.finish("never shown")
    assert sleeps.delays == []


async def test_an_error_the_platform_does_not_know_is_not_swallowed() -> None:
    class Broken(ScriptedSurface):
        async def post(self, text: str, index: int) -> int:
            raise KeyError("a bug")

    stream = reply(Broken(), Sleeps())
    with pytest.raises(KeyError):
        await stream.push("text")
    await stream.finish("")


async def test_forbidden_stops_the_reply_quietly() -> None:
    surface = ScriptedSurface(failures=[Failure(Kind.FORBIDDEN, code="403")])
    stream = reply(surface, Sleeps())
    await stream.push("hello")
    await stream.finish("hello there")
    await stream.fail("and this")
    assert surface.calls == []


async def test_drafts_preview_the_last_part_and_post_the_parts_before_it() -> None:
    surface, sleeps = Drafting(drafting=True), Sleeps()
    stream = reply(surface, sleeps, limit=20)
    await stream.push("alpha beta")
    assert surface.calls == [("draft", 0, "alpha beta")]
    await stream.push(" gamma delta epsilon")  # 30 characters: the first part is complete
    assert surface.calls[1:] == [("post", 0, "alpha beta gamma"), ("draft", 1, "delta epsilon")]
    await stream.finish("alpha beta gamma delta epsilon")
    assert surface.calls[-1] == ("post", 1, "delta epsilon")
    assert stream.handles == [0, 1]


async def test_on_done_runs_once_after_finish_or_fail() -> None:
    done: list[str] = []

    async def on_done() -> None:
        done.append("done")

    stream = reply(ScriptedSurface(), Sleeps(), on_done=on_done)
    await stream.finish("text")
    await stream.fail("late")
    assert done == ["done"]
