"""Which persona speaks where, and what it adds to the prompt (see README, 'Personas').

Precedence for a message, most specific first: the channel's `!persona` choice (stored in the
database), ``[personas] channels`` for the channel; for a thread without its own assignment
the same two for its parent channel; ``[personas] servers``; ``[personas] platforms``; the
default persona.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from agent.config import Config, PersonaConfig
from agent.events import Inbound
from agent.generators.base import ChatMessage, Generator, SamplingParams
from agent.i18n import catalog as texts
from agent.prompt.context import PromptPersona, normal, window_texts
from agent.prompt.speakers import clean_name
from memory.history import HistoryStore
from personas.card import PersonaCard, render_macros
from personas.prompt import field_sizes, lore_text, system_text, triggered, within_budget
from personas.registry import BUILTIN_DIR, Entry, Registry
from personas.sillytavern import slug

log = logging.getLogger(__name__)

# The name in macros when the author is unknown (the prompt inspector).
ANONYMOUS = "User"
# How far back the lorebook reads the history to see which entries a turn quotes already.
WINDOW_LOOKBACK = 50
# `!persona reset`: back to what config.toml assigns.
RESET = "reset"


class PersonaError(Exception):
    """The persona setup cannot work (the message names the file or config key)."""


@dataclass(frozen=True, slots=True)
class Place:
    """Where a message was written, as far as persona assignment cares."""

    channel_key: str
    server_id: str | None = None
    parent_key: str | None = None

    @property
    def platform(self) -> str:
        return self.channel_key.split(":", 1)[0]

    @classmethod
    def of(cls, inbound: Inbound) -> Place:
        return cls(inbound.channel_key, inbound.server_id, inbound.parent_key)


@dataclass(frozen=True, slots=True)
class Choice:
    entry: Entry
    # Why this persona, for `!persona`: chosen with !persona for the channel ("chosen") or
    # its parent ("chosen-parent"), by config.toml ("config", key: "[personas] channels.…"),
    # or the default persona ("default").
    rule: Literal["chosen", "chosen-parent", "config", "default"]
    key: str = ""

    @property
    def reason(self) -> str:
        """Why, in English (the catalog's words, for logs and tests)."""
        if self.rule == "chosen":
            return texts.WHY_CHOSEN_HERE.en
        if self.rule == "chosen-parent":
            return texts.WHY_CHOSEN_PARENT.en
        if self.rule == "config":
            return texts.WHY_CONFIGURED("en", key=self.key)
        return texts.WHY_DEFAULT.en


def section_persona_id(section: PersonaConfig) -> str:
    return slug(section.name)


def load_registry(config: Config) -> Registry:
    """Built-in cards, the user's folder, config.toml's cards and the [persona] section."""
    folder = config.resolve_path(config.personas.folder)
    folders = [BUILTIN_DIR] if folder.resolve() == BUILTIN_DIR else [BUILTIN_DIR, folder]
    registry = Registry.load(folders, config.personas.cards)
    section = config.persona
    key = section_persona_id(section)
    if key not in config.personas.cards:
        card = PersonaCard(name=section.name, system_prompt=section.system_prompt)
        registry.add(Entry(key, card, f"{config.source}: [persona]"))
    return registry


def user_folder(config: Config) -> Path:
    return config.resolve_path(config.personas.folder)


class Personas:
    """The persona service: assignment, run-time choice, prompt parts, greetings."""

    def __init__(
        self,
        config: Config,
        registry: Registry,
        history: HistoryStore,
        generator: Generator,
    ) -> None:
        self._config = config.personas
        self._source = config.source
        self._model = config.model
        self._margin = config.chat.safety_margin_tokens
        self.registry = registry
        self._history = history
        self._generator = generator
        self.default_id = config.personas.default or section_persona_id(config.persona)
        # The latest place (server, thread parent) seen per channel, for callers that only
        # have a channel key.
        self._places: dict[str, Place] = {}
        # The card (and user name) each channel's current prompt was built with: the
        # lorebook, a volatile source, gets only the channel key.
        self._active: dict[str, tuple[PersonaCard, str]] = {}
        self._check()

    def _check(self) -> None:
        """Fail on config names that do not exist; drop cards too large for the context."""
        for key, entry in list(self.registry.entries.items()):
            problem = self._too_large(entry)
            if problem:
                self.registry.drop(key, problem)
            elif entry.card.model and entry.card.model != self._model_name():
                log.warning(
                    "%s: model = %r is not honoured: Beseda runs one model per process "
                    "(%s); persona %r answers with it",
                    entry.source, entry.card.model, self._model_name() or "the bundled one", key,
                )  # fmt: skip
        where = f"{self._source}: [personas]"
        named = [("default", self.default_id)]
        for table in ("platforms", "servers", "channels"):
            named += [(f"{table}.{k}", v) for k, v in getattr(self._config, table).items()]
        for key, name in named:
            found = self.registry.resolve(name)
            if found is not None:
                if key == "default":
                    self.default_id = found.id
                continue
            if self.registry.find(name):  # several cards answer to it
                raise PersonaError(f"{where} {key}: {self.registry.unknown(name)}")
            if name in self.registry.skipped and key != "default":
                # The card file is broken: the rest of the agent still starts.
                log.error(
                    "%s %s: persona %r was skipped (see above); the next rule applies",
                    where, key, name,
                )  # fmt: skip
                continue
            raise PersonaError(f"{where} {key}: {self.registry.unknown(name)}")

    def _model_name(self) -> str:
        return self._model.model or self._model.path or self._model.hf_repo

    def _too_large(self, entry: Entry) -> str | None:
        persona = self._render(entry, ANONYMOUS)
        assert persona.params is not None
        budget = self._generator.n_ctx - persona.params.max_tokens - self._margin
        system = persona.system_prompt + "\n" + persona.post_history
        need = self._generator.count_prompt_tokens(
            [ChatMessage("system", system), ChatMessage("user", "")]
        )
        if need < budget:
            return None
        sizes = field_sizes(entry.card, self._generator.count_tokens)
        culprit = ", ".join(f"{name} ({tokens} tokens)" for name, tokens in sizes[:2])
        return (
            f"{entry.source}: the card needs {need} prompt tokens but the context allows "
            f"{budget} ([model] n_ctx {self._generator.n_ctx} minus the reply's max_tokens "
            f"{persona.params.max_tokens}): "
            f"shorten {culprit or 'the card'}"
        )

    # -- choosing --------------------------------------------------------------------------

    async def choose(self, place: Place) -> Choice:
        here = await self._assigned(place.channel_key, "chosen")
        if here is None and place.parent_key:
            here = await self._assigned(place.parent_key, "chosen-parent")
        if here is not None:
            return here
        if place.server_id is not None:
            server = f"{place.platform}:{place.server_id}"
            found = self._configured(self._config.servers.get(server), f"servers.{server}")
            if found is not None:
                return found
        found = self._configured(
            self._config.platforms.get(place.platform), f"platforms.{place.platform}"
        )
        if found is not None:
            return found
        default = self.registry.get(self.default_id)
        if default is None:  # dropped since start-up checks
            raise PersonaError(self.registry.unknown(self.default_id))
        return Choice(default, "default")

    async def _assigned(
        self, channel_key: str, rule: Literal["chosen", "chosen-parent"]
    ) -> Choice | None:
        stored = (await self._history.channel_state(channel_key)).persona
        if stored is not None:
            entry = self.registry.get(stored)
            if entry is not None:
                return Choice(entry, rule)
            log.warning(
                "%s: stored persona %r is gone; using the configured one", channel_key, stored
            )
        return self._configured(self._config.channels.get(channel_key), f"channels.{channel_key}")

    def _configured(self, name: str | None, key: str) -> Choice | None:
        # config.toml may name a card by its id or its display name, in any case.
        entry = self.registry.resolve(name) if name else None
        return Choice(entry, "config", f"[personas] {key}") if entry is not None else None

    def place(self, channel_key: str, inbound: Inbound | None = None) -> Place:
        if inbound is not None and inbound.channel_key == channel_key:
            self._places[channel_key] = Place.of(inbound)
        return self._places.get(channel_key) or Place(channel_key)

    async def switch(self, place: Place, name: str) -> Entry | None:
        """Store the persona ``name`` designates (its id or card name, in any case) as the
        channel's (RESET: back to config.toml's); None if it is unknown or ambiguous."""
        if name.casefold() == RESET:
            await self._history.set_persona(place.channel_key, None)
            return (await self.choose(place)).entry
        entry = self.registry.resolve(name)
        if entry is not None:
            await self._history.set_persona(place.channel_key, entry.id)
        return entry

    # -- the prompt ------------------------------------------------------------------------

    async def prompt_persona(self, channel_key: str, inbound: Inbound | None) -> PromptPersona:
        """The WindowKeeper's PersonaSource."""
        choice = await self.choose(self.place(channel_key, inbound))
        # {{user}}: the person being answered, named as their turns are (a display name is
        # platform text: it must not smuggle a role marker into the system prompt).
        user = (clean_name(inbound.author_name) if inbound is not None else "") or ANONYMOUS
        self._active[channel_key] = (choice.entry.card, user)
        return self._render(choice.entry, user)

    def _render(self, entry: Entry, user: str) -> PromptPersona:
        card = entry.card
        preset = card.sampler.model_dump(exclude_none=True)
        params = replace(SamplingParams.from_config(self._model), **preset)
        return PromptPersona(
            key=entry.id,
            name=card.name,
            system_prompt=system_text(card, user),
            post_history=render_macros(card.post_history_instructions, char=card.name, user=user),
            max_tokens=card.sampler.max_tokens,
            params=params,
        )

    async def lore(self, channel_key: str, text: str) -> str | None:
        """The lorebook entries recent messages trigger (a VolatileSource)."""
        active = self._active.get(channel_key)
        if active is None or active[0].lorebook is None:
            return None
        card, user = active
        book = card.lorebook
        assert book is not None
        # Two more rows: the new message and its reply in progress are stored already. At
        # least WINDOW_LOOKBACK rows: an entry a turn in the window quotes is not inserted.
        rows = await self._history.conversation(
            channel_key, limit=max(book.scan_depth + 2, WINDOW_LOOKBACK)
        )
        recent = rows[-(book.scan_depth + 2) :]
        texts = [m.text for m in recent if m.role in {"user", "assistant"} and m.text]
        if texts and texts[-1] == text:
            texts.pop()  # the new message, already stored when a reply is prepared
        earlier = book.scan_depth - 1
        texts = [*(texts[-earlier:] if earlier else []), text]

        def shown_tokens(content: str) -> int:  # counted as it will read, macros replaced
            return self._generator.count_tokens(render_macros(content, char=card.name, user=user))

        start = (await self._history.channel_state(channel_key)).window_start_id or 0
        seen = window_texts(rows, start)
        fresh = [
            entry
            for entry in triggered(book, texts)
            if normal(render_macros(entry.content, char=card.name, user=user)) not in seen
        ]
        entries = within_budget(fresh, book.token_budget, shown_tokens)
        return lore_text(entries, card, user) or None

    async def greeting(self, inbound: Inbound) -> str | None:
        """The greeting to post before answering, once per persona and channel."""
        if not self._config.greeting:
            return None
        choice = await self.choose(self.place(inbound.channel_key, inbound))
        card = choice.entry.card
        if not card.greeting.strip():
            return None
        if not await self._history.mark_greeted(inbound.channel_key, choice.entry.id):
            return None
        user = inbound.author_name or ANONYMOUS
        return render_macros(card.greeting.strip(), char=card.name, user=user)
