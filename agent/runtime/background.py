"""Background work (summaries, memory extraction) that never delays a reply.

Jobs run one at a time, and only while no foreground reply is queued or in progress. A reply
that arrives while a job is generating (inside :meth:`Background.preemptible`) cancels that
job at the next token; the job is put back at the front of the queue and runs again once the
replies are done. Database work outside that section is never interrupted: it is short, and
cancelling a query midway would throw its connection away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

from agent.prompt.jobs import Job

log = logging.getLogger(__name__)


class PreemptedError(Exception):
    """A job reached its generation while replies were waiting; it runs again later."""


@dataclass(frozen=True, slots=True)
class _Entry:
    name: str
    job: Job


class Background:
    def __init__(self) -> None:
        self._jobs: deque[_Entry] = deque()
        self._foreground = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._wakeup = asyncio.Event()
        self._current: asyncio.Task[None] | None = None
        self._preempted = False
        self._in_generation = False
        self._runner: asyncio.Task[None] | None = None
        self._quiet = asyncio.Event()  # set when no job is queued or running
        self._quiet.set()

    def submit(self, name: str, job: Job) -> None:
        self._jobs.append(_Entry(name, job))
        self._quiet.clear()
        self._wakeup.set()
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run(), name="background")

    def foreground_started(self) -> None:
        self._foreground += 1
        self._idle.clear()
        if self._in_generation and self._current is not None and not self._current.done():
            self._preempted = True
            self._current.cancel()

    def foreground_finished(self) -> None:
        self._foreground -= 1
        if self._foreground == 0:
            self._idle.set()

    @contextlib.asynccontextmanager
    async def preemptible(self) -> AsyncIterator[None]:
        """The part of a job (its generation) that a foreground reply may interrupt."""
        if self._foreground:
            raise PreemptedError
        self._in_generation = True
        try:
            yield
        finally:
            self._in_generation = False

    async def wait_quiet(self) -> None:
        """Until every queued job has run (for benchmarks, tests and shutdown)."""
        await self._quiet.wait()

    async def _run(self) -> None:
        while True:
            if not self._jobs:
                self._quiet.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._idle.wait()
            entry = self._jobs.popleft()
            self._preempted = False
            self._current = asyncio.create_task(entry.job(), name=f"background:{entry.name}")
            try:
                await self._current
            except asyncio.CancelledError:
                if not self._preempted:
                    raise  # the runner itself is being cancelled: shutdown
                log.debug("background job %s yielded to a reply; it will run again", entry.name)
                self._jobs.appendleft(entry)
            except PreemptedError:
                self._jobs.appendleft(entry)
            except Exception:
                log.exception("background job %s failed", entry.name)
            finally:
                self._current = None

    async def close(self) -> None:
        self._jobs.clear()
        for task in (self._current, self._runner):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._quiet.set()
