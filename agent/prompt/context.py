"""Assembles the prompt for one reply within the model's token budget.

The layout runs from most stable to most volatile, so llama.cpp can reuse the prompt it
evaluated last time as a cached prefix:

1. the channel's persona (a rendered card, see personas/) and today's date, 2. rolling
summary of evicted history (inside the system message: some chat templates allow only one),
3. the history window, 4. the volatile block (the persona's post-history instructions,
lorebook entries, retrieved memories and documents), 5. the new message (4 and 5 form the
last user turn).

The window only changes by appending, until it overflows: then a large block of the oldest
turns is evicted at once, never one message per turn. Summarising the next block starts in
the background before that, so the summary and the eviction usually land together and the
prefix changes once per block.

In a group chat each user turn names its author (``Alice: text``, see speakers.py). Ambient
turns (messages not addressed to Beseda, in channels that opted in) are bounded to
``ambient_max_turns`` and ``ambient_share`` of the budget in a way that keeps the prefix
stable (see ambient.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from agent.events import blank
from agent.generators.base import ChatMessage, Generator, GeneratorError, SamplingParams
from agent.prompt import ambient
from agent.prompt.speakers import label_of, named
from memory.records import ChannelState, Status, StoredMessage

CUT_MARKER = "\n[… cut: the message was too long for the context window]"
SUMMARY_HEADING = "Summary of the earlier conversation:"


class ContextError(GeneratorError):
    """The prompt cannot fit even without history (the message names what to change)."""


@dataclass(frozen=True, slots=True)
class PromptPersona:
    """The persona of one channel as the builder needs it (rendered, macros resolved)."""

    # The persona's id (`!persona ID`) and its character name ({{char}}).
    key: str
    name: str
    # Must be byte-identical between turns, or llama.cpp's cached prefix is lost.
    system_prompt: str
    # After the history, right before the new message (in the last user turn).
    post_history: str = ""
    # The persona's reply length (None: the builder's); the token budget depends on it.
    max_tokens: int | None = None
    # The persona's sampler preset, carried on to the Prompt (None: the core's default).
    params: SamplingParams | None = None


@dataclass(frozen=True, slots=True)
class Prompt:
    messages: tuple[ChatMessage, ...]
    # Stored message ids in the history window, oldest first.
    history_ids: tuple[int, ...]
    tokens: int
    budget: int
    new_message_cut: bool
    # The window start this prompt was built with (an anchor; None when the window is empty).
    window_start_id: int | None = None
    # Set when turns had to leave the window for this prompt: the last evicted anchor.
    evicted_to: int | None = None
    # Set when the oldest block should be summarised now: the block's last anchor.
    summarize_to: int | None = None
    # The persona the prompt was built for, and its sampler preset (None: the default).
    persona: str | None = None
    params: SamplingParams | None = None
    # User turns carry their authors' names.
    names: bool = False
    # Set when ambient turns overflowed their share: the channel's new ambient start.
    ambient_start: int | None = None
    # With names: the names the prompt shows (people, and the persona's own), which a reply
    # must not start with (see speakers.unlabel).
    speakers: tuple[str, ...] = ()


def anchor(message: StoredMessage) -> int:
    """Conversation position: a reply sits with the turn it answers."""
    return message.in_reply_to_id if message.in_reply_to_id is not None else message.id


def normal(text: str) -> str:
    """``text`` with spacing and case evened out, to tell whether a turn quotes it."""
    return " ".join(text.split()).casefold()


def window_texts(turns: Sequence[StoredMessage], window_start: int) -> str:
    """The texts of ``turns`` that the window still shows, normalised and joined: volatile
    material one of them quotes already (a chunk, a memory, a lore entry) is not inserted
    again. Commands and notices never reach the prompt, so they show nothing."""
    return " \n ".join(normal(t.text) for t in turns if _usable(t) and anchor(t) >= window_start)


class ContextBuilder:
    def __init__(
        self,
        generator: Generator,
        system_prompt: str,
        *,
        max_tokens: int,
        safety_margin: int,
        evict_fraction: float = 0.67,
        summarize_at: float = 0.75,
        ambient_max_turns: int = 20,
        ambient_share: float = 0.25,
    ) -> None:
        self._generator = generator
        self._system_prompt = system_prompt
        self._max_tokens = max_tokens
        self._margin = safety_margin
        self._evict_fraction = evict_fraction
        self._summarize_at = summarize_at
        self._ambient_max_turns = ambient_max_turns
        self._ambient_share = ambient_share
        # Token counts of stored turns by (id, named): a turn's text never changes once it
        # is done, and its label is stored with it.
        self._turn_tokens: dict[tuple[int, bool], int] = {}

    @property
    def shows_ambient(self) -> bool:
        return self._ambient_max_turns > 0 and self._ambient_share > 0

    def visible(self, message: StoredMessage) -> bool:
        """Whether a stored turn can appear in a prompt at all."""
        if message.status is Status.AMBIENT and not self.shows_ambient:
            return False
        return _usable(message)

    @property
    def budget(self) -> int:
        """Prompt tokens allowed: the context size minus the reply and a safety margin."""
        return self.budget_for(None)

    def budget_for(self, persona: PromptPersona | None) -> int:
        """The budget when replies are as long as ``persona`` allows."""
        max_tokens = self._max_tokens
        if persona is not None and persona.max_tokens is not None:
            max_tokens = persona.max_tokens
        return self._generator.n_ctx - max_tokens - self._margin

    def system_message(
        self,
        state: ChannelState,
        today: str | None = None,
        persona: PromptPersona | None = None,
    ) -> ChatMessage:
        text = self._system_prompt if persona is None else persona.system_prompt
        if today:
            text = f"{text}\nToday is {today}."
        if state.summary is not None and state.summary.text:
            text = f"{text}\n\n{SUMMARY_HEADING}\n{state.summary.text}"
        return ChatMessage("system", text)

    def build(
        self,
        history: Sequence[StoredMessage],
        new_text: str,
        *,
        state: ChannelState | None = None,
        volatile: Sequence[str] = (),
        today: str | None = None,
        persona: PromptPersona | None = None,
        speaker: str | None = None,
        names: bool = False,
    ) -> Prompt:
        """The prompt for ``new_text`` given the window's turns (oldest first).

        ``persona`` replaces the system prompt given at construction (per channel). With
        ``names``, every user turn is shown with its author's label, the new message with
        ``speaker``.
        """
        state = state or ChannelState()
        gen = self._generator
        budget = self.budget_for(persona)
        system = self.system_message(state, today, persona)
        if persona is not None and persona.post_history:
            volatile = (persona.post_history, *volatile)
        base = gen.count_prompt_tokens([system, ChatMessage("user", "")])
        if base >= budget:
            raise ContextError(
                f"the system prompt and summary need {base} tokens but only {budget} are "
                "available: shorten the persona, lower [model] max_tokens or raise [model] n_ctx"
            )
        if names:
            new_text = named(speaker, new_text)
        new_message, cut = self._new_message(system, base, budget, new_text, volatile)
        fixed = gen.count_prompt_tokens([system, new_message])
        turns, ambient_start = self._with_ambient(history, state, names, budget)
        history_budget = budget - fixed
        costs = [self._cost(m, names) for m in turns]

        block = self._evict_fraction * history_budget
        evicted_to = None
        overflow = sum(costs) - history_budget
        if overflow > 0:
            count = _oldest_exchanges(turns, costs, max(overflow, block))
            evicted_to = anchor(turns[count - 1])
            turns, costs = turns[count:], costs[count:]
        while True:
            messages = (system, *(_as_chat(m, names) for m in turns), new_message)
            tokens = gen.count_prompt_tokens(messages)
            if tokens <= budget or not turns:
                break
            # The per-turn estimates were a little short: drop one more exchange.
            count = _oldest_exchanges(turns, costs, 1)
            evicted_to = anchor(turns[count - 1])
            turns, costs = turns[count:], costs[count:]

        summarize_to = None
        if turns and sum(costs) > self._summarize_at * history_budget:
            # The block the next overflow will evict: summarise it ahead of time.
            count = _oldest_exchanges(turns, costs, block)
            summarize_to = anchor(turns[count - 1])
        return Prompt(
            messages=messages,
            history_ids=tuple(m.id for m in turns),
            tokens=tokens,
            budget=budget,
            new_message_cut=cut,
            window_start_id=anchor(turns[0]) if turns else None,
            evicted_to=evicted_to,
            summarize_to=summarize_to,
            persona=persona.key if persona is not None else None,
            params=persona.params if persona is not None else None,
            names=names,
            ambient_start=ambient_start,
            speakers=_speakers(turns, speaker, persona) if names else (),
        )

    def _new_message(
        self, system: ChatMessage, base: int, budget: int, text: str, volatile: Sequence[str]
    ) -> tuple[ChatMessage, bool]:
        block = "\n".join(part for part in volatile if part)
        if block:
            with_block = ChatMessage("user", f"{block}\n\n{text}")
            if self._generator.count_prompt_tokens([system, with_block]) <= budget:
                return with_block, False
        # No room for the volatile block: the person's own words come first.
        fitted, cut = self._fit_text(text, budget - base)
        return ChatMessage("user", fitted), cut

    def _cost(self, message: StoredMessage, names: bool) -> int:
        key = (message.id, names)
        cached = self._turn_tokens.get(key)
        if cached is None:
            # The template's tokens per turn (role markers) are estimated as 4.
            cached = self._generator.count_tokens(_as_chat(message, names).content) + 4
            if len(self._turn_tokens) > 100_000:
                self._turn_tokens.clear()
            self._turn_tokens[key] = cached
        return cached

    def _with_ambient(
        self, history: Sequence[StoredMessage], state: ChannelState, names: bool, budget: int
    ) -> tuple[list[StoredMessage], int | None]:
        """The usable turns with ambient ones bounded (see ambient.py), and the channel's
        new ambient start when they overflowed."""
        most, cap = self._ambient_max_turns, int(self._ambient_share * budget)
        start = state.ambient_start_id
        turns = [m for m in history if _usable(m) and ambient.shown(m, start)]

        def cost(message: StoredMessage) -> int:
            return self._cost(message, names)

        turns = ambient.bound_runs(turns, cost, most, cap)
        moved = ambient.next_start(turns, cost, most, cap, keep=1 - self._evict_fraction)
        if moved is not None:
            turns = [m for m in turns if ambient.shown(m, moved)]
        return turns, moved

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


def _oldest_exchanges(turns: Sequence[StoredMessage], costs: Sequence[int], at_least: float) -> int:
    """How many of the oldest turns make up ``at_least`` tokens, in whole exchanges."""
    dropped = 0
    count = 0
    while count < len(turns) and (dropped < at_least or _same_exchange(turns, count)):
        dropped += costs[count]
        count += 1
    return count


def _speakers(
    turns: Sequence[StoredMessage], speaker: str | None, persona: PromptPersona | None
) -> tuple[str, ...]:
    labels = [label_of(m) for m in turns if m.role == "user"]
    labels += [speaker, persona.name if persona is not None else None]
    return tuple(dict.fromkeys(label for label in labels if label))


def _same_exchange(turns: Sequence[StoredMessage], index: int) -> bool:
    return 0 < index < len(turns) and anchor(turns[index]) == anchor(turns[index - 1])


def _usable(message: StoredMessage) -> bool:
    if message.role == "user":
        # Withdrawn ambient turns and messages with nothing in them are not shown.
        return message.status is not Status.FORGOTTEN and not blank(message.text)
    return message.role == "assistant" and message.status is Status.DONE and bool(message.text)


def _as_chat(message: StoredMessage, names: bool) -> ChatMessage:
    if message.role == "assistant":
        return ChatMessage("assistant", message.text)
    return ChatMessage("user", named(label_of(message), message.text) if names else message.text)
