"""Adapters run supervised: one that raises is logged and restarted, the others never notice.

Each adapter's ``run`` is awaited in a task of its own. When it raises, the error is logged
with the adapter's name and ``run`` is called again after a capped exponential back-off
(1 s, 2 s, 4 s, … up to 60 s; a run that lasted a minute starts the count afresh). Only a
permanent error ends an adapter for good: ``run`` raises :class:`PermanentAdapterError` or a
configuration error, or returns having set ``failure`` (a rejected token, a missing intent).
An adapter whose ``run`` returns otherwise has finished (its input ended, or it was stopped).

The states and restart counts are what /healthz and /metrics show (agent/ops/).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from agent.config import ConfigError
from agent.events import Inbound
from agent.ports import PermanentAdapterError, PlatformAdapter, ReplyTarget

log = logging.getLogger(__name__)

Submit = Callable[[Inbound, ReplyTarget], Awaitable[object]]


class AdapterState(StrEnum):
    RUNNING = "running"
    # Its run raised; waiting for the back-off before running it again.
    RESTARTING = "restarting"
    # Its run returned: stopped, or its input ended (a pipe to the console).
    STOPPED = "stopped"
    # Stopped for good by a permanent error (``error`` says which).
    FAILED = "failed"


ADAPTER_STATES = tuple(str(state) for state in AdapterState)


@dataclass(frozen=True, slots=True)
class Backoff:
    first: float = 1.0
    cap: float = 60.0
    # A run that lasted this long was healthy: the next failure waits ``first`` again.
    healthy_after: float = 60.0

    def delay(self, failures: int) -> float:
        return float(min(self.cap, self.first * 2 ** min(failures - 1, 30)))


@dataclass(slots=True)
class Supervised:
    adapter: PlatformAdapter
    state: AdapterState = AdapterState.RUNNING
    restarts: int = 0
    # The last error (type and message), or why it stopped for good.
    error: str | None = None
    failures: int = field(default=0, repr=False)  # in a row, for the back-off

    @property
    def name(self) -> str:
        return self.adapter.name


OnChange = Callable[[Supervised], None]


class Supervisor:
    def __init__(
        self,
        adapters: Sequence[PlatformAdapter],
        submit_for: Callable[[PlatformAdapter], Submit],
        *,
        backoff: Backoff | None = None,
        on_change: OnChange | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.adapters = [Supervised(adapter) for adapter in adapters]
        self._submit_for = submit_for
        self._backoff = backoff or Backoff()
        self._on_change = on_change or (lambda _s: None)
        self._clock = clock
        self._stopping = asyncio.Event()
        for entry in self.adapters:
            self._on_change(entry)

    def state(self, adapter: object) -> Supervised | None:
        return next((s for s in self.adapters if s.adapter is adapter), None)

    def failures(self) -> list[str]:
        """Why each adapter that stopped for good did so."""
        failed = [s for s in self.adapters if s.state is AdapterState.FAILED]
        return [s.error or f"{s.name} failed" for s in failed]

    async def run(self, entry: Supervised) -> None:
        """Run one adapter until it ends for good (or the supervisor stops)."""
        submit = self._submit_for(entry.adapter)
        while not self._stopping.is_set():
            started = self._clock()
            self._set(entry, AdapterState.RUNNING)
            try:
                await entry.adapter.run(submit)
            except asyncio.CancelledError:
                raise
            except (PermanentAdapterError, ConfigError) as exc:
                entry.error = f"{entry.name}: {exc}"
                log.error("%s stopped for good: %s", entry.name, exc)  # a known cause
                self._set(entry, AdapterState.FAILED)
                return
            except Exception as exc:
                if self._stopping.is_set():  # failed while stopping: nothing to restart
                    log.warning("%s failed while stopping", entry.name, exc_info=True)
                    self._set(entry, AdapterState.STOPPED)
                    return
                healthy = self._clock() - started >= self._backoff.healthy_after
                entry.failures = 1 if healthy else entry.failures + 1
                entry.error = f"{type(exc).__name__}: {exc}"
                delay = self._backoff.delay(entry.failures)
                log.exception("%s failed; restarting it in %.1f s", entry.name, delay)
                self._set(entry, AdapterState.RESTARTING)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                if not self._stopping.is_set():
                    entry.restarts += 1
                    log.warning("restarting %s (restart %d)", entry.name, entry.restarts)
                continue
            failure = getattr(entry.adapter, "failure", None)
            if failure:  # the adapter met a fatal platform error and said so
                entry.error = str(failure)
                self._set(entry, AdapterState.FAILED)
            else:
                self._set(entry, AdapterState.STOPPED)
            return
        self._set(entry, AdapterState.STOPPED)  # stopped before (re)starting

    async def stop(self) -> None:
        """No more restarts; stop every adapter's intake."""
        self._stopping.set()
        for entry in self.adapters:
            try:
                await entry.adapter.stop()
            except Exception:  # one adapter failing to stop must not keep the others going
                log.exception("could not stop %s", entry.name)

    def _set(self, entry: Supervised, state: AdapterState) -> None:
        entry.state = state
        self._on_change(entry)
