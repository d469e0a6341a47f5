"""The core: persist, queue per channel, build the prompt, generate, render, persist.

Messages to one channel are answered strictly in order by that channel's worker; different
channels proceed independently (the generator serialises access to the model itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from adapters.base import ReplyStream, ReplyTarget
from agent import commands
from agent.background import Background
from agent.context import Prompt
from agent.events import Inbound
from agent.generators.base import GenerationStats, Generator, SamplingParams
from agent.window import WindowKeeper
from memory.history import HistoryStore, Status

log = logging.getLogger(__name__)

FAILED_NOTICE = "Sorry, I could not answer that: {reason}"
SHUTDOWN_NOTICE = "(stopped: Beseda is shutting down)"
EMPTY_NOTICE = "Sorry, the model returned an empty reply."


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


@dataclass(slots=True)
class _Job:
    inbound: Inbound
    text: str
    user_message_id: int
    target: ReplyTarget
    command: tuple[str, str] | None = None
    done: asyncio.Future[Reply] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


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
        tools: commands.Tools | None = None,
        after_reply: Callable[[Inbound, str], None] | None = None,
        greeting: Callable[[Inbound], Awaitable[str | None]] | None = None,
    ) -> None:
        self._history = history
        self._tools = tools or commands.Tools(history)
        # Called with each answered message (e.g. to queue memory extraction).
        self._after_reply = after_reply
        # The persona's greeting, posted before the first answer it gives in a channel.
        self._greeting = greeting
        self._generator = generator
        self.window = window
        self._params = params
        self.background = background
        self._max_chars = max_message_chars
        self._queues: dict[str, asyncio.Queue[_Job]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._closed = False

    async def submit(self, inbound: Inbound, target: ReplyTarget) -> asyncio.Future[Reply]:
        """Store the user turn, queue it for its channel, and return the reply's future.

        When this returns, the message is in the database: nothing is lost if the process
        dies afterwards.
        """
        if self._closed:
            raise CoreClosedError("Beseda is shutting down")
        text = self.clean_text(inbound.text)
        command = commands.parse(text)
        stored = await self._history.append(
            inbound.channel_key,
            "command" if command else "user",
            text,
            status=Status.RECEIVED,
            author_id=inbound.author_id,
            author_name=inbound.author_name,
            platform_message_id=inbound.message_id,
            created_at=inbound.timestamp,
        )
        job = _Job(inbound, text, stored.id, target, command)
        self.background.foreground_started()
        key = inbound.channel_key
        self._queues.setdefault(key, asyncio.Queue()).put_nowait(job)
        if key not in self._workers:
            self._workers[key] = asyncio.create_task(self._work(key), name=f"channel:{key}")
        return job.done

    def clean_text(self, text: str) -> str:
        """What is stored and answered: no NUL bytes (PostgreSQL rejects them), bounded size."""
        text = text.replace("\x00", "")
        if len(text) > self._max_chars:
            text = text[: self._max_chars] + f"\n[… cut: longer than {self._max_chars} characters]"
        return text

    async def prompt_for(
        self, channel_key: str, text: str, inbound: Inbound | None = None
    ) -> Prompt:
        """The prompt a new message would get now, without storing or generating anything."""
        return await self.window.preview(channel_key, self.clean_text(text), inbound)

    async def _work(self, key: str) -> None:
        queue = self._queues[key]
        try:
            while not queue.empty():
                job = queue.get_nowait()
                try:
                    if job.command is not None:
                        reply = await self._command(job, *job.command)
                    else:
                        reply = await self._answer(job)
                except asyncio.CancelledError:
                    _settle(job, Reply("", Status.CANCELLED, job.user_message_id))
                    raise
                except Exception as exc:  # e.g. the database went away: keep serving
                    log.exception("cannot answer message %d in %s", job.user_message_id, key)
                    reply = Reply("", Status.FAILED, job.user_message_id, error=str(exc))
                finally:
                    self.background.foreground_finished()
                _settle(job, reply)
        finally:
            # No await between the emptiness check and this: a concurrent submit either
            # queued before (and was served) or will find no worker and start a new one.
            del self._workers[key]
            if queue.empty():
                del self._queues[key]
            else:  # cancelled with jobs left: they stay RECEIVED in the database
                while not queue.empty():
                    job = queue.get_nowait()
                    self.background.foreground_finished()
                    _settle(job, Reply("", Status.CANCELLED, job.user_message_id))

    async def _answer(self, job: _Job) -> Reply:
        inbound = job.inbound
        try:
            await self._greet(job)
        except Exception:  # a greeting that cannot be posted must not cost the answer
            log.exception("could not post the greeting in %s", inbound.channel_key)
        assistant = await self._history.append(
            inbound.channel_key, "assistant", "", status=Status.STREAMING,
            in_reply_to_id=job.user_message_id,
        )  # fmt: skip
        parts: list[str] = []
        stats: GenerationStats | None = None
        stream: ReplyStream | None = None
        try:
            stream = await job.target.open_reply(inbound)
            prompt = await self.window.prepare(
                inbound.channel_key, job.user_message_id, job.text, inbound
            )
            tokens = self._generator.stream(prompt.messages, prompt.params or self._params)
            stats = tokens.stats
            async for piece in tokens:
                parts.append(piece)
                await stream.push(piece)
        except asyncio.CancelledError:
            partial = "".join(parts).strip()
            await _shielded(
                self._history.update(assistant.id, text=partial, status=Status.CANCELLED)
            )
            if stream is not None:
                await _shielded(stream.fail(SHUTDOWN_NOTICE))
            raise
        except Exception as exc:
            log.exception("reply failed in %s", inbound.channel_key)
            reason = str(exc) or type(exc).__name__
            partial = "".join(parts).strip()
            await self._history.update(assistant.id, text=partial, status=Status.FAILED)
            if stream is not None:
                with contextlib.suppress(Exception):
                    await stream.fail(FAILED_NOTICE.format(reason=reason))
            return Reply(partial, Status.FAILED, job.user_message_id, assistant.id, stats, reason)

        text = "".join(parts).strip()
        if text and self._tools.retriever is not None:  # name the documents it drew on
            text = self._tools.retriever.annotate(inbound.channel_key, job.text, text)
        if not text:
            await self._history.update(assistant.id, status=Status.FAILED)
            with contextlib.suppress(Exception):
                await stream.fail(EMPTY_NOTICE)
            return Reply("", Status.FAILED, job.user_message_id, assistant.id, stats, "empty")
        await self._history.update(assistant.id, text=text, status=Status.DONE)
        try:
            await stream.finish(text)
        except Exception:  # stored as generated; the platform refused it
            log.exception("could not deliver the reply in %s", inbound.channel_key)
        if self._after_reply is not None:
            self._after_reply(inbound, job.text)
        return Reply(text, Status.DONE, job.user_message_id, assistant.id, stats)

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
        invocation = commands.Invocation(
            name, args, inbound.channel_key, job.user_message_id,
            author_id=inbound.author_id, author_name=inbound.author_name,
            is_admin=inbound.is_admin, server_id=inbound.server_id,
            parent_key=inbound.parent_key,
        )  # fmt: skip
        text = await commands.run(invocation, self._tools)
        notice = await self._history.append(
            job.inbound.channel_key, "notice", text, in_reply_to_id=job.user_message_id
        )
        stream = await job.target.open_reply(job.inbound)
        await stream.finish(text)
        return Reply(text, Status.DONE, job.user_message_id, notice.id)

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


def _settle(job: _Job, reply: Reply) -> None:
    if not job.done.done():
        job.done.set_result(reply)


async def _shielded(awaitable: object) -> None:
    """Finish a clean-up step even though the task running it is being cancelled."""
    with contextlib.suppress(Exception):
        await asyncio.shield(awaitable)  # type: ignore[arg-type]
