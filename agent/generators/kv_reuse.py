"""Which of a sequence's cached tokens a new prompt can keep: the common prefix, then runs
that moved (chunk reuse by KV shifting, as llama.cpp's server does with ``--cache-reuse``).

Beseda's prompt puts the volatile block (retrieved chunks, memories, lore) before the new
message. On the next turn that block is gone and the previous exchange sits where it was, so
the cached exchange can be shifted into its new position instead of evaluated again.

With ``across_gaps``, a cached run may also follow new tokens: after an eviction the new
summary sits before the history that stays, and that history is still in the cache. llama.cpp
appends to a sequence only at its end, so the engine parks such a run in a sequence of its own
and moves it back once the new tokens before it are evaluated (engine.py). Without it, reuse
stops at the first prompt token that no cached run covers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt


def common_prefix(
    a: Sequence[int] | npt.NDArray[np.intc], b: Sequence[int] | npt.NDArray[np.intc]
) -> int:
    a, b = np.asarray(a, dtype=np.intc), np.asarray(b, dtype=np.intc)
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if len(differ) else n


@dataclass(frozen=True, slots=True)
class Chunk:
    """``length`` cached tokens at ``source`` that the prompt has at ``target`` (< source)."""

    source: int
    target: int
    length: int

    @property
    def delta(self) -> int:
        return self.target - self.source


@dataclass(frozen=True, slots=True)
class ReusePlan:
    prefix: int
    chunks: tuple[Chunk, ...] = field(default=())

    @property
    def shifted(self) -> int:
        return sum(chunk.length for chunk in self.chunks)

    @property
    def end(self) -> int:
        """Where the last reused token of the prompt ends."""
        return self.chunks[-1].target + self.chunks[-1].length if self.chunks else self.prefix

    @property
    def contiguous(self) -> int:
        """How many prompt tokens from the start are reused with no new token among them."""
        end = self.prefix
        for chunk in self.chunks:
            if chunk.target != end:
                break
            end += chunk.length
        return end

    @property
    def reused(self) -> int:
        """Prompt tokens served from the cache: the prefix and the shifted runs after it."""
        return self.prefix + self.shifted

    def capped(self, limit: int) -> ReusePlan:
        """The plan keeping at most ``limit`` prompt tokens (the last prompt token is always
        evaluated again, for its logits)."""
        if self.end <= limit:
            return self
        if self.prefix >= limit:
            return ReusePlan(limit)
        chunks: list[Chunk] = []
        for chunk in self.chunks:
            room = limit - chunk.target
            if room <= 0:
                break
            chunks.append(Chunk(chunk.source, chunk.target, min(chunk.length, room)))
        return ReusePlan(self.prefix, tuple(chunks))


def plan_reuse(
    cached: Sequence[int] | npt.NDArray[np.intc],
    prompt: Sequence[int] | npt.NDArray[np.intc],
    min_run: int,
    *,
    across_gaps: bool = False,
) -> ReusePlan:
    """The common prefix, then (when ``min_run`` > 0) the longest cached runs of at least
    ``min_run`` tokens that continue the prompt where the reuse so far stopped, in order.
    With ``across_gaps``, prompt tokens that no run covers are skipped (to be evaluated)
    and the search goes on after them; cached runs are still used in their cached order."""
    held = np.asarray(cached, dtype=np.intc)
    new = np.asarray(prompt, dtype=np.intc)
    prefix = common_prefix(held, new)
    if min_run <= 0 or prefix >= len(new) or prefix >= len(held):
        return ReusePlan(prefix)
    key = min_run  # a run is found through its first min_run tokens
    starts: dict[bytes, list[int]] = {}
    raw = held.tobytes()
    width = held.itemsize
    for i in range(prefix, len(held) - key + 1):
        starts.setdefault(raw[i * width : (i + key) * width], []).append(i)
    chunks: list[Chunk] = []
    head_c, head_p = prefix, prefix
    prompt_raw = new.tobytes()
    while head_p + key <= len(new):
        found = starts.get(prompt_raw[head_p * width : (head_p + key) * width], [])
        best_at, best_len = -1, 0
        for at in found:
            if at < head_c:
                continue
            length = common_prefix(held[at:], new[head_p:])
            if length > best_len:
                best_at, best_len = at, length
        if best_len < min_run:
            if not across_gaps:
                break
            head_p += 1
            continue
        chunks.append(Chunk(best_at, head_p, best_len))
        head_c, head_p = best_at + best_len, head_p + best_len
    return ReusePlan(prefix, tuple(chunks))
