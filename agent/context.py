"""Assembles the prompt for one reply within the model's token budget.

Layout, most stable first so llama.cpp can reuse the cached prefix: persona system prompt,
then the history window, then the new message. The persona and the new message are never
dropped; history is dropped oldest first when the budget is short.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from agent.generators.base import ChatMessage, Generator, GeneratorError
from memory.history import Status, StoredMessage

CUT_MARKER = "\n[… cut: the message was too long for the context window]"


class ContextError(GeneratorError):
    """The prompt cannot fit even without history (the message names what to change)."""


@dataclass(frozen=True, slots=True)
class Prompt:
    messages: tuple[ChatMessage, ...]
    # Stored message ids in the history window, oldest first.
    history_ids: tuple[int, ...]
    tokens: int
    budget: int
    new_message_cut: bool


class ContextBuilder:
    def __init__(
        self,
        generator: Generator,
        system_prompt: str,
        *,
        max_tokens: int,
        safety_margin: int,
    ) -> None:
        self._generator = generator
        self._system = ChatMessage("system", system_prompt)
        self._max_tokens = max_tokens
        self._margin = safety_margin

    @property
    def budget(self) -> int:
        """Prompt tokens allowed: the context size minus the reply and a safety margin."""
        return self._generator.n_ctx - self._max_tokens - self._margin

    def build(self, history: Sequence[StoredMessage], new_text: str) -> Prompt:
        gen = self._generator
        budget = self.budget
        base = gen.count_prompt_tokens([self._system, ChatMessage("user", "")])
        if base >= budget:
            raise ContextError(
                f"the persona's system prompt needs {base} tokens but only {budget} are "
                "available: shorten it, lower [model] max_tokens or raise [model] n_ctx"
            )
        new_text, cut = self._fit_text(new_text, budget - base)
        new_message = ChatMessage("user", new_text)

        turns = [m for m in history if _usable(m)]
        used = gen.count_prompt_tokens([self._system, new_message])
        overhead = max(0, base - gen.count_prompt_tokens([self._system]))
        start = len(turns)
        # Newest first; per-turn estimates keep this linear, the exact check below corrects.
        while start > 0:
            cost = gen.count_tokens(turns[start - 1].text) + overhead
            if used + cost > budget:
                break
            used += cost
            start -= 1
        window = turns[start:]
        while True:
            messages = (self._system, *(_as_chat(m) for m in window), new_message)
            tokens = gen.count_prompt_tokens(messages)
            if tokens <= budget or not window:
                break
            window = window[1:]
        return Prompt(
            messages=messages,
            history_ids=tuple(m.id for m in window),
            tokens=tokens,
            budget=budget,
            new_message_cut=cut,
        )

    def _fit_text(self, text: str, available: int) -> tuple[str, bool]:
        """Cut ``text`` (with a visible marker) to at most ``available`` tokens."""
        count = self._generator.count_tokens
        if count(text) <= available:
            return text, False
        room = available - count(CUT_MARKER)
        low, high = 0, len(text)
        # Binary search on characters: tokenisation is not additive across a cut.
        while low < high:
            middle = (low + high + 1) // 2
            if count(text[:middle]) <= room:
                low = middle
            else:
                high = middle - 1
        return text[:low] + CUT_MARKER, True


def _usable(message: StoredMessage) -> bool:
    if message.role == "user":
        return True
    return message.role == "assistant" and message.status is Status.DONE and bool(message.text)


def _as_chat(message: StoredMessage) -> ChatMessage:
    return ChatMessage("assistant" if message.role == "assistant" else "user", message.text)
