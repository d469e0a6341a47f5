"""The core: persist, queue per channel, build the prompt, generate, render, persist.

Messages to one channel are answered strictly in order by that channel's worker. Workers
share the generator through the :class:`Scheduler` (round-robin over channels, at most the
generator's ``concurrency`` replies at once). When a message arrives (see README,
'Scheduling'):

- it is stored first, whatever happens next;
- ``!stop`` bypasses the queue and cancels the channel's reply in progress;
- over a rate limit ([limits] user_*/channel_*) or the channel's queue cap
  ([limits] channel_queue) it is stored as SKIPPED, never answered, and the person gets one
  notice per episode or burst — answering later would pile up exactly the work the limit
  is there to refuse;
- if the same author already has a reply waiting in the channel, the message joins it: one
  reply answers them all, the earlier turns are marked MERGED;
- an ambient message (not addressed to Beseda, in a channel that opted in) is stored as
  context, AMBIENT, and never answered; a message with nothing in it to answer (only
  whitespace or invisible characters, e.g. a mention with only an image) is stored as
  SKIPPED with a short notice.

Every user turn is stored with its author's label (agent/prompt/speakers.py), which the
prompt shows in group chats.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

from agent.events import Inbound, blank, valid_inbound
from agent.generators.base import GenerationStats, Generator, SamplingParams
from agent.i18n import Lang, Text, choose, detect, ours
from agent.i18n import catalog as texts
from agent.ports import ReplyStream, ReplyTarget
from agent.prompt.context import Prompt
from agent.prompt.personas import Place
from agent.prompt.speakers import SpeakerBook, unlabel
from agent.prompt.window import WindowKeeper
from agent.runtime import chat_commands
from agent.runtime.background import Background
from agent.runtime.limits import Buckets, Clock, Verdict
from agent.runtime.scheduler import Scheduler
from memory.db import StorageError
from memory.history import DuplicateMessageError, HistoryStore
from memory.records import Status, StoredMessage
from memory.text import valid_text

log = logging.getLogger(__name__)

# The English wording of the core's notices (for code and tests that name them); what is
# shown comes from the catalog, in the message's language (agent/i18n).
FAILED_NOTICE = texts.FAILED.en
SHUTDOWN_NOTICE = texts.SHUTDOWN.en
EMPTY_NOTICE = texts.EMPTY.en
CUT_NOTICE = texts.CUT.en
BUSY_NOTICE = texts.BUSY.en
RATE_NOTICE = texts.RATE.en
CHANNEL_RATE_NOTICE = texts.CHANNEL_RATE.en
NOTHING_NOTICE = texts.NOTHING.en
STORAGE_NOTICE = texts.STORAGE.en
STOPPED_MARK = texts.STOPPED_MARK.en
STOPPED_NOTICE = texts.STOPPED.en
NOTHING_TO_STOP = texts.NOTHING_TO_STOP.en
# How many recent messages of a channel tell its language when the message itself does not
# ("!help", "2+2").
LANGUAGE_LOOKBACK = 30
_SAID_BY_PEOPLE = frozenset({"user", "assistant", "command"})
# Reply.error of a platform message delivered again: it is stored already, not answered.
DUPLICATE = "duplicate"
# Several turns of one author answered together are shown to the model as one message.
MERGE_SEPARATOR = "\n"


class CoreClosedError(RuntimeError):
    """The core is shutting down and takes no new messages."""


@dataclass(frozen=True, slots=True)
class Reply:
    text: str
    status: Status
    user_message_id: int
    message_id: int | None = None
    stats: GenerationStats | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Limits:
    """The scheduling limits of [limits] (see agent.config.LimitsConfig)."""

    channel_queue: int = 0
    user_burst: int = 0
    user_per_minute: float = 0.0
    channel_burst: int = 0
    channel_per_minute: float = 0.0


@dataclass(frozen=True, slots=True)
class _Turn:
    inbound: Inbound
    text: str
    message_id: int
    # The author's label, as stored with the turn.
    speaker: str | None = None


@dataclass(slots=True)
class _Job:
    turns: list[_Turn]
    target: ReplyTarget
    command: tuple[str, str] | None = None
    started: bool = False
    stop_requested: bool = False
    done: asyncio.Future[Reply] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    @property
    def inbound(self) -> Inbound:
        """The newest turn's event: the reply answers (and on a platform, replies to) it."""
        return self.turns[-1].inbound

    @property
    def user_message_id(self) -> int:
        return self.turns[-1].message_id

    @property
    def text(self) -> str:
        return MERGE_SEPARATOR.join(turn.text for turn in self.turns)


@dataclass(slots=True)
class _Channel:
    # Jobs not started yet; the first may be waiting for a generation slot.
    queue: deque[_Job] = field(default_factory=deque)
    answering: tuple[_Job, asyncio.Task[Reply]] | None = None
    busy_noticed: bool = False


class Core:
    def __init__(
        self,
        history: HistoryStore,
        generator: Generator,
        window: WindowKeeper,
        params: SamplingParams,
        background: Background,
        *,
        max_message_chars: int = 20_000,
        deps: chat_commands.CommandDeps | None = None,
        after_reply: Callable[[Inbound, str], None] | None = None,
        greeting: Callable[[Inbound], Awaitable[str | None]] | None = None,
        limits: Limits | None = None,
        clock: Clock = time.monotonic,
        speakers: SpeakerBook | None = None,
        language: str = "auto",
    ) -> None:
        self._history = history
        # [chat] language: Beseda's own words when neither the persona nor the messages tell.
        self._language_setting = language
        self._speakers = speakers or SpeakerBook(history)
        self._deps = deps or chat_commands.CommandDeps(history)
        # Called with each answered message (e.g. to queue memory extraction).
        self._after_reply = after_reply
        # The persona's greeting, posted before the first answer it gives in a channel.
        self._greeting = greeting
        self._generator = generator
        self.window = window
        self._params = params
        self.background = background
        self._max_chars = max_message_chars
        self.scheduler = Scheduler(generator.concurrency)
        self._limits = limits or Limits()
        lim = self._limits
        self._user_buckets = Buckets(lim.user_burst, lim.user_per_minute, clock)
        self._channel_buckets = Buckets(lim.channel_burst, lim.channel_per_minute, clock)
        self._channels: dict[str, _Channel] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._closed = False

    # -- intake ------------------------------------------------------------------------------

    async def submit(self, inbound: Inbound, target: ReplyTarget) -> asyncio.Future[Reply]:
        """Store the user turn, queue it for its channel, and return the reply's future.

        When this returns, the message is in the database: nothing is lost if the process
        dies afterwards.
        """
        if self._closed:
            raise CoreClosedError("Beseda is shutting down")
        inbound = valid_inbound(inbound)  # what a platform sent may not even be valid text
        text = self.clean_text(inbound.text)
        command = chat_commands.parse(text)
        if inbound.ambient:
            return await self._store_ambient(inbound, text, command)
        if command is not None and command[0] == chat_commands.STOP:
            return await self._stop(inbound, text, target)
        if command is None and blank(text):
            skip: tuple[str, Text | None] | None = ("nothing to answer", texts.NOTHING)
        else:
            skip = self._refusal(inbound, command)
        try:
            speaker = None if command else await self._label(inbound)
            status = Status.SKIPPED if skip else Status.RECEIVED
            stored = await self._store(inbound, text, command, status, speaker)
        except DuplicateMessageError as exc:
            return _taken_already(exc)
        except StorageError as exc:
            # Not stored, so not answered, ever: the person must know, to send it again.
            cause = getattr(exc.__cause__, "orig", None) or exc.__cause__  # no statement
            log.error("cannot store a message in %s: %s (%r)", inbound.channel_key, exc, cause)
            # The database is out of reach: the message alone tells the language.
            lang = choose(None, [_said(text)], self._language_setting)
            await self._tell(inbound, target, texts.STORAGE(lang, reason=exc))
            raise
        if skip:
            log.info("skipped message %d in %s: %s", stored.id, inbound.channel_key, skip[0])
            if skip[1]:
                lang = await self.language(inbound, text)
                await self._notice(inbound, target, stored.id, skip[1](lang))
            return _settled(Reply("", Status.SKIPPED, stored.id, error=skip[0]))
        if len(inbound.text.replace("\x00", "")) > self._max_chars:
            lang = await self.language(inbound, text)
            notice = texts.CUT(lang, limit=self._max_chars)
            await self._notice(inbound, target, stored.id, notice)
        return self._enqueue(_Turn(inbound, text, stored.id, speaker), target, command)

    async def _store_ambient(
        self, inbound: Inbound, text: str, command: tuple[str, str] | None
    ) -> asyncio.Future[Reply]:
        """Context only: stored for later prompts, never answered, no notice, no rate limit
        (it asks nothing of the model). A command is never run from here: adapters send
        commands as addressed messages."""
        shown = command is None and not blank(text)
        try:
            speaker = await self._label(inbound) if shown else None
            status = Status.AMBIENT if shown else Status.SKIPPED
            stored = await self._store(inbound, text, command, status, speaker)
        except DuplicateMessageError as exc:  # a catch-up delivers ambient messages again too
            return _taken_already(exc)
        except StorageError as exc:
            # Nobody asked anything, so nobody is told; the adapter logs the failure.
            log.error("cannot store an ambient message in %s: %s", inbound.channel_key, exc)
            raise
        return _settled(Reply("", stored.status, stored.id))

    async def _store(
        self,
        inbound: Inbound,
        text: str,
        command: tuple[str, str] | None,
        status: Status,
        speaker: str | None,
    ) -> StoredMessage:
        """The person's message as a stored turn (a command's text is never a prompt turn)."""
        return await self._history.append(
            inbound.channel_key,
            "command" if command else "user",
            text,
            status=status,
            author_id=inbound.author_id.replace("\x00", ""),
            author_name=inbound.author_name.replace("\x00", ""),
            platform_message_id=inbound.message_id,
            created_at=inbound.timestamp,
            speaker=speaker,
        )

    async def _label(self, inbound: Inbound) -> str:
        author_id = inbound.author_id.replace("\x00", "")
        return await self._speakers.label(inbound.channel_key, author_id, inbound.author_name)

    def clean_text(self, text: str) -> str:
        """What is stored and answered: valid text (no lone surrogates), no NUL bytes
        (PostgreSQL rejects them), bounded size."""
        text = valid_text(text).replace("\x00", "")
        if len(text) > self._max_chars:
            text = text[: self._max_chars] + f"\n[… cut: longer than {self._max_chars} characters]"
        return text

    async def language(self, inbound: Inbound, text: str | None = None) -> Lang:
        """The language of Beseda's own words in answer to ``inbound`` (agent/i18n): the
        persona's; else the message's words' (``text``: as stored); else the channel's recent
        messages'; else the author's interface language (Inbound.locale); else [chat]
        language."""
        persona: str | None = None
        if self._deps.personas is not None:
            try:
                persona = (await self._deps.personas.choose(Place.of(inbound))).entry.card.language
            except Exception:  # a persona problem is reported where the prompt is built
                log.debug("no persona language for %s", inbound.channel_key, exc_info=True)
        if ours(persona) is not None:
            return choose(persona, [])
        said = _said(inbound.text if text is None else text)
        found = detect(said)
        if found is not None:
            return found
        recent: list[StoredMessage] = []
        with contextlib.suppress(Exception):  # only a hint: never worth a failure
            recent = await self._history.conversation(inbound.channel_key, limit=LANGUAGE_LOOKBACK)
        # Not Beseda's notices: lists of ids and names outweigh their few words.
        for earlier in reversed(recent):
            if earlier.role in _SAID_BY_PEOPLE and (found := detect(_said(earlier.text))):
                return found
        # The conversation's language comes before the person's interface language (many
        # Russian speakers run an English Discord); the latter decides in a new chat
        # (Telegram's /start).
        return ours(inbound.locale) or choose(None, [], self._language_setting)

    def _refusal(
        self, inbound: Inbound, command: tuple[str, str] | None
    ) -> tuple[str, Text | None] | None:
        """(reason, notice or None) when this message is not to be answered, else None."""
        key = inbound.channel_key
        channel = self._channels.get(key)
        joins = command is None and channel is not None and _mergeable(channel, inbound)
        if not inbound.is_admin:
            user = self._user_buckets.check(f"{key}|{inbound.author_id}")
            if user != "ok":
                return "user rate limit", _say(user, texts.RATE)
            where = self._channel_buckets.check(key)
            if where != "ok":
                return "channel rate limit", _say(where, texts.CHANNEL_RATE)
        cap = self._limits.channel_queue
        if cap and not joins and channel is not None and len(channel.queue) >= cap:
            first = not channel.busy_noticed
            channel.busy_noticed = True
            return "channel queue full", texts.BUSY if first else None
        return None

    def _enqueue(
        self, turn: _Turn, target: ReplyTarget, command: tuple[str, str] | None = None
    ) -> asyncio.Future[Reply]:
        key = turn.inbound.channel_key
        channel = self._channels.setdefault(key, _Channel())
        if command is None:
            for job in channel.queue:
                if _joins(job, turn.inbound):
                    job.turns.append(turn)
                    job.target = target
                    return job.done
        job = _Job([turn], target, command)
        channel.queue.append(job)
        self.background.foreground_started()
        if key not in self._workers:
            self._workers[key] = asyncio.create_task(self._work(key), name=f"channel:{key}")
        return job.done

    async def _notice(
        self, inbound: Inbound, target: ReplyTarget, reply_to: int, text: str
    ) -> None:
        """Store and deliver a short notice from Beseda; a platform failure is only logged."""
        await self._history.append(inbound.channel_key, "notice", text, in_reply_to_id=reply_to)
        try:
            stream = await target.open_reply(inbound)
            await stream.finish(text)
        except Exception:
            log.exception("could not deliver a notice in %s", inbound.channel_key)

    async def _tell(self, inbound: Inbound, target: ReplyTarget, text: str) -> None:
        """Deliver an error notice that cannot be stored; a platform failure is only logged."""
        try:
            stream = await target.open_reply(inbound)
            await stream.fail(text)
        except Exception:
            log.exception("could not deliver a notice in %s", inbound.channel_key)

    async def _stop(
        self, inbound: Inbound, text: str, target: ReplyTarget
    ) -> asyncio.Future[Reply]:
        """``!stop``: cancel the channel's reply in progress, ahead of everything queued."""
        try:
            stored = await self._history.append(
                inbound.channel_key, "command", text, author_id=inbound.author_id,
                author_name=inbound.author_name, platform_message_id=inbound.message_id,
                created_at=inbound.timestamp,
            )  # fmt: skip
        except DuplicateMessageError as exc:
            return _taken_already(exc)
        channel = self._channels.get(inbound.channel_key)
        answering = channel.answering if channel is not None else None
        if answering is not None and not answering[1].done():
            job, task = answering
            job.stop_requested = True
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.shield(task)  # the partial reply is stored before we confirm
            said = texts.STOPPED
        else:
            said = texts.NOTHING_TO_STOP
        notice = said(await self.language(inbound, text))
        await self._notice(inbound, target, stored.id, notice)
        return _settled(Reply(notice, Status.DONE, stored.id))

    @property
    def history(self) -> HistoryStore:
        return self._history

    # -- queue state (for metrics) -----------------------------------------------------------

    def queue_depths(self) -> dict[str, int]:
        """Messages waiting per channel (not counting replies being generated)."""
        # Messages, not jobs: a burst merged into one reply still counts each message.
        return {
            key: sum(len(job.turns) for job in c.queue)
            for key, c in self._channels.items()
            if c.queue
        }

    def queue_depth(self) -> int:
        """Messages waiting in all channels."""
        return sum(self.queue_depths().values())

    def generating(self) -> int:
        """Replies being generated now."""
        return self.scheduler.busy

    async def prompt_for(
        self, channel_key: str, text: str, inbound: Inbound | None = None
    ) -> Prompt:
        """The prompt a new message would get now, without storing or generating anything."""
        return await self.window.preview(channel_key, self.clean_text(text), inbound)

    # -- the channel worker ------------------------------------------------------------------

    async def _work(self, key: str) -> None:
        channel = self._channels[key]
        try:
            while channel.queue:
                job = channel.queue[0]
                try:
                    if job.command is not None:
                        channel.queue.popleft()
                        job.started = True
                        reply = await self._command(job, *job.command)
                    else:
                        async with self.scheduler.slot(key):
                            channel.queue.popleft()
                            job.started = True
                            reply = await self._answer_task(channel, job)
                except asyncio.CancelledError:
                    _settle(job, Reply("", Status.CANCELLED, job.user_message_id))
                    raise
                except Exception as exc:  # e.g. the database went away: keep serving
                    log.exception("cannot answer message %d in %s", job.user_message_id, key)
                    reply = Reply("", Status.FAILED, job.user_message_id, error=str(exc))
                finally:
                    self.background.foreground_finished()
                _settle(job, reply)
                if not channel.queue:
                    channel.busy_noticed = False  # the burst is over
        finally:
            # No await between the emptiness check and this: a concurrent submit either
            # queued before (and was served) or will find no worker and start a new one.
            del self._workers[key]
            if not channel.queue:
                del self._channels[key]
            else:  # cancelled with jobs left: they stay RECEIVED in the database
                while channel.queue:
                    job = channel.queue.popleft()
                    if not job.started:
                        self.background.foreground_finished()
                    _settle(job, Reply("", Status.CANCELLED, job.user_message_id))
                del self._channels[key]

    async def _answer_task(self, channel: _Channel, job: _Job) -> Reply:
        """Answer in a task of its own, so ``!stop`` can cancel it without the worker."""
        task = asyncio.create_task(self._answer(job), name=f"reply:{job.user_message_id}")
        channel.answering = (job, task)
        try:
            return await task
        finally:
            channel.answering = None

    async def _answer(self, job: _Job) -> Reply:
        inbound = job.inbound
        lang = await self.language(inbound, job.text)
        try:
            await self._greet(job)
        except Exception:  # a greeting that cannot be posted must not cost the answer
            log.exception("could not post the greeting in %s", inbound.channel_key)
        earlier = [turn.message_id for turn in job.turns[:-1]]
        for message_id in earlier:
            await self._history.update(message_id, status=Status.MERGED)
        # The reply's row is written while the prompt is assembled (retrieval mostly waits
        # on the vector store meanwhile); generation starts only once both are done.
        row = asyncio.create_task(
            self._history.append(
                inbound.channel_key, "assistant", "", status=Status.STREAMING,
                in_reply_to_id=job.user_message_id,
            ),
            name=f"reply-row:{job.user_message_id}",
        )  # fmt: skip
        parts: list[str] = []
        stats: GenerationStats | None = None
        stream: ReplyStream | None = None
        try:
            stream = await job.target.open_reply(inbound)
            # The prompt's history ends before the first of the merged turns.
            first = job.turns[0].message_id
            prompt = await self.window.prepare(
                inbound.channel_key, first, job.text, inbound, job.turns[-1].speaker
            )
            assistant = await asyncio.shield(row)  # !stop must not cancel the write
            params = replace(prompt.params or self._params, conversation=inbound.channel_key)
            tokens = self._generator.stream(prompt.messages, params)
            stats = tokens.stats
            async for piece in tokens:
                parts.append(piece)
                await stream.push(piece)
        except asyncio.CancelledError:
            partial = "".join(parts).strip()
            stored = await _stored_row(row)
            if stored is not None:
                await _shielded(
                    self._history.update(stored.id, text=partial, status=Status.CANCELLED)
                )
            if not job.stop_requested:
                if stream is not None:
                    await _shielded(stream.fail(texts.SHUTDOWN(lang)))
                raise
            log.info("stopped the reply to %d in %s", job.user_message_id, inbound.channel_key)
            await _show_stopped(stream, partial, texts.STOPPED_MARK(lang))
            stored_id = stored.id if stored is not None else None
            return Reply(partial, Status.CANCELLED, job.user_message_id, stored_id, stats)
        except Exception as exc:
            log.exception("reply failed in %s", inbound.channel_key)
            reason = str(exc) or type(exc).__name__
            partial = "".join(parts).strip()
            stored = await _stored_row(row)
            if stored is not None:
                await self._history.update(stored.id, text=partial, status=Status.FAILED)
            if stream is not None:
                with contextlib.suppress(Exception):
                    await stream.fail(texts.FAILED(lang, reason=reason))
            stored_id = stored.id if stored is not None else None
            return Reply(partial, Status.FAILED, job.user_message_id, stored_id, stats, reason)

        text = unlabel("".join(parts).strip(), prompt.speakers)
        return await self._complete(job, assistant.id, stream, text, stats, lang=lang)

    async def _complete(
        self,
        job: _Job,
        assistant_id: int,
        stream: ReplyStream,
        text: str,
        stats: GenerationStats | None,
        *,
        lang: Lang = "en",
    ) -> Reply:
        """Store the generated reply as done, then deliver it whole."""
        inbound = job.inbound
        if text and self._deps.retriever is not None:  # name the documents it drew on
            text = self._deps.retriever.annotate(inbound.channel_key, job.text, text, lang)
        if not text:
            await self._history.update(assistant_id, status=Status.FAILED)
            with contextlib.suppress(Exception):
                await stream.fail(texts.EMPTY(lang))
            return Reply("", Status.FAILED, job.user_message_id, assistant_id, stats, "empty")
        try:
            await self._history.update(assistant_id, text=text, status=Status.DONE)
        except Exception as exc:
            # Not shown as answered when it is not stored as answered: recovery would
            # answer the message again after a restart.
            reason = texts.REPLY_NOT_STORED(lang)
            if isinstance(exc, StorageError):  # say why, when it is a known condition
                reason = f"{reason}: {exc}"
            with contextlib.suppress(Exception):
                await stream.fail(texts.FAILED(lang, reason=reason))
            raise
        try:
            await stream.finish(text)
        except Exception:  # stored as generated; the platform refused it
            log.exception("could not deliver the reply in %s", inbound.channel_key)
        if self._after_reply is not None:
            self._after_reply(inbound, job.text)
        return Reply(text, Status.DONE, job.user_message_id, assistant_id, stats)

    async def _greet(self, job: _Job) -> None:
        """Post the persona's greeting (stored as a notice: the model does not see it, so
        strict templates keep user/assistant alternating)."""
        if self._greeting is None:
            return
        text = await self._greeting(job.inbound)
        if not text:
            return
        await self._history.append(
            job.inbound.channel_key, "notice", text, in_reply_to_id=job.user_message_id
        )
        greeting = await job.target.open_reply(job.inbound)
        await greeting.finish(text)

    async def _command(self, job: _Job, name: str, args: str) -> Reply:
        inbound = job.inbound
        invocation = chat_commands.Invocation(
            name, args, inbound.channel_key, job.user_message_id,
            author_id=inbound.author_id, author_name=inbound.author_name,
            is_admin=inbound.is_admin, server_id=inbound.server_id,
            parent_key=inbound.parent_key,
            language=await self.language(inbound, job.text),
        )  # fmt: skip
        text = await chat_commands.run(invocation, self._deps)
        notice = await self._history.append(
            job.inbound.channel_key, "notice", text, in_reply_to_id=job.user_message_id
        )
        stream = await job.target.open_reply(job.inbound)
        await stream.finish(text)
        return Reply(text, Status.DONE, job.user_message_id, notice.id)

    # -- recovery (see agent/runtime/recovery.py) ------------------------------------------

    def resume(
        self, inbound: Inbound, message_id: int, target: ReplyTarget, speaker: str | None = None
    ) -> asyncio.Future[Reply]:
        """Queue an already stored user turn (found unanswered after a restart)."""
        if self._closed:
            raise CoreClosedError("Beseda is shutting down")
        return self._enqueue(_Turn(inbound, inbound.text, message_id, speaker), target)

    async def close(self, grace: float) -> None:
        """Take no new messages; let in-flight replies finish for ``grace`` s, then cancel."""
        self._closed = True
        await self.background.close()
        workers = list(self._workers.values())
        if not workers:
            return
        _done, pending = await asyncio.wait(workers, timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("cancelled %d unfinished replies at shutdown", len(pending))
            await asyncio.gather(*pending, return_exceptions=True)


def _joins(job: _Job, inbound: Inbound) -> bool:
    """A new message joins a waiting reply to the same author (not a command, not started)."""
    first = job.turns[0].inbound
    return (
        job.command is None
        and not job.started
        and first.author_id == inbound.author_id
        and first.channel_key == inbound.channel_key
    )


def _mergeable(channel: _Channel, inbound: Inbound) -> bool:
    return any(_joins(job, inbound) for job in channel.queue)


def _say(verdict: Verdict, notice: Text) -> Text | None:
    return notice if verdict == "notice" else None


def _said(text: str) -> str:
    """What a message says in its own words: a command's text argument, not its (English)
    name nor a persona's name."""
    command = chat_commands.parse(text)
    if command is None:
        return text
    name, args = command
    return args if chat_commands.COMMANDS[name].in_words else ""


async def _show_stopped(stream: ReplyStream | None, partial: str, mark: str) -> None:
    """Leave what was written, marked as stopped (``!stop``)."""
    if stream is None:
        return
    with contextlib.suppress(Exception):
        if partial:
            await stream.finish(f"{partial} {mark}")
        else:
            await stream.fail(mark)


def _taken_already(duplicate: DuplicateMessageError) -> asyncio.Future[Reply]:
    """A platform message delivered again (a catch-up after a reconnect, a redelivery):
    it was stored, hence handled, before; never answered twice."""
    first = duplicate.existing
    log.info(
        "ignored message %s in %s: taken in before (stored as %d)",
        first.platform_message_id, first.channel_key, first.id,
    )  # fmt: skip
    return _settled(Reply("", Status.SKIPPED, first.id, error=DUPLICATE))


def _settled(reply: Reply) -> asyncio.Future[Reply]:
    done: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
    done.set_result(reply)
    return done


def _settle(job: _Job, reply: Reply) -> None:
    if not job.done.done():
        job.done.set_result(reply)


async def _stored_row(row: asyncio.Task[StoredMessage]) -> StoredMessage | None:
    """The reply's row once its write has finished, or None if the write failed (even
    when the task running this is being cancelled)."""
    with contextlib.suppress(Exception):
        return await asyncio.shield(row)
    return None


async def _shielded(awaitable: object) -> None:
    """Finish a clean-up step even though the task running it is being cancelled."""
    with contextlib.suppress(Exception):
        await asyncio.shield(awaitable)  # type: ignore[arg-type]
