"""Per-channel history window: which turns are in the prompt, eviction, rolling summaries.

The window's start is stored with the channel and only moves forward, in blocks. Summaries
are made by background jobs; a summary lands together with the eviction of the turns it
covers, so the prompt prefix changes once per block, not once per turn.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Literal, Protocol
from zoneinfo import ZoneInfo

from agent.events import Inbound
from agent.generators.base import Generator
from agent.prompt.context import ContextBuilder, Prompt, PromptPersona, anchor
from agent.prompt.jobs import BackgroundJobs
from agent.prompt.speakers import clean_name
from agent.prompt.summarizer import summarize
from memory.history import HistoryStore
from memory.records import ChannelState, Status, StoredMessage, Summary

log = logging.getLogger(__name__)

# A source of volatile prompt material (date, memories, documents) for one message.
VolatileSource = Callable[[str, str], Awaitable[str | None]]
Clock = Callable[[], datetime]
SpeakerNames = Literal["auto", "always", "never"]


class PersonaSource(Protocol):
    async def prompt_persona(self, channel_key: str, inbound: Inbound | None) -> PromptPersona:
        """The channel's persona, rendered for the author of ``inbound`` (if known)."""
        ...


def minute_date_source(clock: Clock, timezone: str) -> VolatileSource:
    """The date and time to the minute, for the volatile block ([context] date = "minute")."""

    async def current_date(_channel_key: str, _text: str) -> str:
        return f"(Current date and time: {clock():%Y-%m-%d %H:%M} {timezone})"

    return current_date


def zone_clock(timezone: str) -> Clock:
    zone = ZoneInfo(timezone)
    return lambda: datetime.now(zone)


class WindowKeeper:
    def __init__(
        self,
        history: HistoryStore,
        builder: ContextBuilder,
        generator: Generator,
        background: BackgroundJobs,
        *,
        history_limit: int,
        summaries: bool,
        summary_max_tokens: int,
        assistant_name: str,
        volatile: Sequence[VolatileSource] = (),
        today: Clock | None = None,
        personas: PersonaSource | None = None,
        speaker_names: SpeakerNames = "auto",
    ) -> None:
        self._history = history
        self._builder = builder
        self._generator = generator
        self._background = background
        self._history_limit = history_limit
        self._summaries = summaries
        self._summary_max_tokens = summary_max_tokens
        self._assistant_name = assistant_name
        self._volatile = list(volatile)
        # With a clock, the system prompt says today's date (it changes once a day).
        self._today = today
        # Without personas every channel gets the builder's own system prompt.
        self._personas = personas
        self._names: dict[str, str] = {}
        self._speaker_names = speaker_names
        # The furthest anchor a queued or running summary job will cover, per channel.
        self._summarizing: dict[str, int] = {}

    def speaker(self, channel_key: str) -> str | None:
        """The name of the persona whose prompt was last prepared for the channel."""
        return self._names.get(channel_key)

    def add_volatile(self, source: VolatileSource) -> None:
        """The hook for retrieved memories and documents (after the history, before the
        new message)."""
        self._volatile.append(source)

    async def preview(
        self,
        channel_key: str,
        text: str,
        inbound: Inbound | None = None,
        *,
        before_id: int | None = None,
    ) -> Prompt:
        """The prompt ``text`` would get now (as the message ``before_id``, when given: from
        the turns before it); changes nothing."""
        speaker = clean_name(inbound.author_name) if inbound is not None else None
        return (await self._plan(channel_key, before_id, text, inbound, speaker))[0]

    async def prepare(
        self,
        channel_key: str,
        message_id: int,
        text: str,
        inbound: Inbound | None = None,
        speaker: str | None = None,
    ) -> Prompt:
        """The prompt for stored user turn ``message_id`` (whose author's label is
        ``speaker``); evicts and schedules summaries."""
        prompt, state, summary = await self._plan(channel_key, message_id, text, inbound, speaker)
        if prompt.names and not state.speaker_names and self._speaker_names == "auto":
            # A second person spoke: names stay on from now on, so the prefix changes once.
            await self._history.show_speaker_names(channel_key)
            log.info("speaker names on in %s", channel_key)
        if prompt.ambient_start is not None:
            await self._history.move_ambient_start(channel_key, prompt.ambient_start)
            log.info("ambient context of %s starts at %d", channel_key, prompt.ambient_start)
        epoch = state.epoch
        shown_id = summary.id if summary is not None and summary != state.summary else None
        if prompt.evicted_to is not None:
            await self._history.move_window(
                channel_key, prompt.evicted_to + 1, epoch=epoch, summary_id=shown_id
            )
            log.info("window of %s evicted up to message %d", channel_key, prompt.evicted_to)
            self._schedule(channel_key, state, prompt.evicted_to)
        elif prompt.window_start_id is not None and (
            state.window_start_id is None or shown_id is not None
        ):
            await self._history.move_window(
                channel_key, prompt.window_start_id, epoch=epoch, summary_id=shown_id
            )
        elif shown_id is not None and state.window_start_id is not None:
            await self._history.move_window(
                channel_key, state.window_start_id, epoch=epoch, summary_id=shown_id
            )
        ready = state.latest_summary
        if prompt.summarize_to is not None and (
            ready is None or ready.last_message_id < prompt.summarize_to
        ):
            self._schedule(channel_key, state, prompt.summarize_to)
        return prompt

    async def _plan(
        self,
        channel_key: str,
        before_id: int | None,
        text: str,
        inbound: Inbound | None,
        speaker: str | None,
    ) -> tuple[Prompt, ChannelState, Summary | None]:
        """Build the prompt; returns it with the state read and the summary it shows.

        A summary made ahead of time waits until the window overflows, then it is shown and
        the turns it covers leave the window in the same step: one prefix change per block.
        """
        state, turns = await self._window(channel_key, before_id)
        names = self._names_on(state, turns, inbound)
        persona = None
        if self._personas is not None:
            # Before the volatile sources: the lorebook reads the persona chosen here.
            persona = await self._personas.prompt_persona(channel_key, inbound)
            self._names[channel_key] = persona.name
        volatile = await self._volatile_for(channel_key, text)
        today = f"{self._today():%Y-%m-%d}" if self._today is not None else None
        shown = state.summary
        ready = state.latest_summary
        start = state.window_start_id
        if ready is not None and ready != shown and start is not None:
            if ready.last_message_id < start:
                shown = ready  # made after its turns were evicted: show it now
                ready = None
        else:
            ready = None

        def build(window: Sequence[StoredMessage], summary: Summary | None) -> Prompt:
            return self._builder.build(
                window,
                text,
                state=replace(state, summary=summary),
                volatile=volatile,
                today=today,
                persona=persona,
                speaker=speaker,
                names=names,
            )

        prompt = build(turns, shown)
        if prompt.evicted_to is not None and ready is not None:
            rest = [t for t in turns if anchor(t) > ready.last_message_id]
            prompt = build(rest, ready)
            if prompt.evicted_to is None:
                # Evicted exactly up to what the ready summary covers.
                prompt = replace(prompt, evicted_to=ready.last_message_id)
            shown = ready
        return prompt, state, shown

    def _names_on(
        self, state: ChannelState, turns: Sequence[StoredMessage], inbound: Inbound | None
    ) -> bool:
        """Speaker names in this prompt ([chat] speaker_names): "auto" shows them once two
        people have spoken in the window, and from then on."""
        if self._speaker_names != "auto":
            return self._speaker_names == "always"
        if state.speaker_names:
            return True
        people = {
            t.author_id
            for t in turns
            if t.role == "user" and t.author_id and self._builder.visible(t)
        }
        if inbound is not None and inbound.author_id:
            people.add(inbound.author_id)
        return len(people) > 1

    async def _window(
        self, channel_key: str, before_id: int | None
    ) -> tuple[ChannelState, list[StoredMessage]]:
        state = await self._history.channel_state(channel_key)
        if state.window_start_id is None:
            turns = await self._history.conversation(
                channel_key, before_id=before_id, limit=self._history_limit
            )
        else:
            # The window is bounded by the token budget (it is evicted in blocks), so it is
            # read whole: a row limit here would slide the window one message per turn.
            turns = await self._history.conversation(
                channel_key, before_id=before_id, since_id=state.window_start_id, limit=None
            )
        return state, turns

    async def _volatile_for(self, channel_key: str, text: str) -> list[str]:
        parts = []
        for source in self._volatile:
            part = await source(channel_key, text)
            if part:
                parts.append(part)
        return parts

    def _schedule(self, channel_key: str, state: ChannelState, up_to: int) -> None:
        if not self._summaries or self._summarizing.get(channel_key, -1) >= up_to:
            return
        self._summarizing[channel_key] = up_to
        start = state.window_start_id or 0

        async def job() -> None:
            try:
                await self._summarize(channel_key, start, up_to, state.epoch)
            finally:
                if self._summarizing.get(channel_key) == up_to:
                    del self._summarizing[channel_key]

        self._background.submit(f"summary:{channel_key}", job)

    async def _summarize(self, channel_key: str, start: int, up_to: int, epoch: int) -> None:
        state = await self._history.channel_state(channel_key)
        if state.epoch != epoch:
            return  # reset meanwhile: this history is no longer the conversation
        previous = state.latest_summary
        if previous is not None and previous.last_message_id >= up_to:
            return
        since = previous.last_message_id + 1 if previous is not None else start
        turns = await self._history.conversation(
            channel_key, since_id=since, before_id=up_to + 1, limit=self._history_limit
        )
        # Ambient messages stay out of summaries: a summary cannot be edited, and !forgetme
        # promises that the model no longer sees a person's ambient messages.
        turns = [
            t
            for t in turns
            if t.role in {"user", "assistant"} and t.text and t.status is not Status.AMBIENT
        ]
        if not turns:
            return
        async with self._background.preemptible():
            text = await summarize(
                self._generator,
                previous.text if previous is not None else None,
                turns,
                assistant_name=self._names.get(channel_key, self._assistant_name),
                # A small context needs room for the turns being summarised, too.
                max_tokens=min(self._summary_max_tokens, self._generator.n_ctx // 4),
            )
        if not text:
            log.warning("the model returned an empty summary for %s; will retry", channel_key)
            return
        first = previous.first_message_id if previous is not None else anchor(turns[0])
        stored = await self._history.add_summary(channel_key, text, first, up_to, epoch=epoch)
        if stored is not None:
            log.info("summary of %s now covers %d..%d", channel_key, first, up_to)
