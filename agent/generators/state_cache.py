"""A bounded, least-recently-used cache of llama.cpp sequence states in RAM.

Several channels share the engine's few sequences. When a prompt needs a sequence and none
holds anything it continues, the least recently used sequence is saved here first, and a
saved state that shares a longer prefix with the new prompt is loaded instead of evaluating
it again. Keyed by the token sequence, so it serves channels, summaries and anything else
alike. (bench/legacy_engine.py keeps whole-context states here the same way.)
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.generators.kv_reuse import common_prefix

__all__ = ["CachedState", "StateCache", "common_prefix"]


@dataclass(frozen=True, slots=True)
class CachedState:
    tokens: npt.NDArray[np.intc]
    state: Any
    size: int
    conversation: str | None = None  # as SamplingParams.conversation


class StateCache:
    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[int, CachedState] = OrderedDict()
        self._next_key = 0
        self.used_bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def put(
        self,
        tokens: Sequence[int] | npt.NDArray[np.intc],
        state: Any,
        size: int,
        conversation: str | None = None,
    ) -> bool:
        """Keep ``state``; the least recently used states go when over budget.

        Returns False (keeping nothing) for a state larger than the whole budget.
        """
        if size > self.budget_bytes:
            return False
        array = np.asarray(tokens, dtype=np.intc)
        # A state whose tokens start the new one adds nothing: it would never be preferred.
        for key, entry in list(self._entries.items()):
            if common_prefix(entry.tokens, array) == len(entry.tokens):
                self._drop(key)
        self._entries[self._next_key] = CachedState(array, state, size, conversation)
        self._next_key += 1
        self.used_bytes += size
        while self.used_bytes > self.budget_bytes:
            self._drop(next(iter(self._entries)))
        return True

    def best(
        self,
        tokens: Sequence[int],
        better_than: int,
        reuse: Callable[[CachedState], int] | None = None,
    ) -> tuple[CachedState, int] | None:
        """The state sharing the most with ``tokens`` (by default the longest common prefix;
        ``reuse`` may count more, such as runs that moved), if that is more than
        ``better_than`` tokens. It stays cached (marked recently used): loading a state into
        the context does not use it up, and another channel may share this prefix later."""
        array = np.asarray(tokens, dtype=np.intc)
        best_key, best_prefix = None, better_than
        for key, entry in self._entries.items():
            prefix = reuse(entry) if reuse else common_prefix(entry.tokens, array)
            if prefix > best_prefix:
                best_key, best_prefix = key, prefix
        if best_key is None:
            return None
        self._entries.move_to_end(best_key)
        return self._entries[best_key], best_prefix

    def _drop(self, key: int) -> None:
        entry = self._entries.pop(key)
        self.used_bytes -= entry.size
