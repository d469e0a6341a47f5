"""What prompt-side work (summaries, memory extraction) needs from the background queue.

The queue itself is the runtime's (agent/runtime/background.py); this layer only names the
two calls it makes, so imports keep running one way.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

Job = Callable[[], Coroutine[Any, Any, None]]


class BackgroundJobs(Protocol):
    def submit(self, name: str, job: Job) -> None:
        """Run ``job`` when no reply is waiting (one job at a time)."""
        ...

    def preemptible(self) -> AbstractAsyncContextManager[None]:
        """The part of a job (its generation) that a reply may interrupt and restart."""
        ...
