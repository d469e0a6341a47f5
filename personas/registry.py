"""Every persona Beseda knows: built-in cards, the user's folder, and config.toml.

A broken card file is skipped (and remembered with its error, for the log and for
``persona list``); the others still load. Later sources override earlier ones with the same
name: built-in < user folder < config.toml.

People name a persona by its id (the file's stem) or by its card's display name, in any
case: :meth:`Registry.find` compares with Unicode case folding, so "Беседа" finds a card
named "беседа".
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from personas.card import CardError, PersonaCard, load_card

log = logging.getLogger(__name__)

BUILTIN_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True, slots=True)
class Entry:
    # What `!persona NAME` and the config use: the file's stem or the config table's key.
    id: str
    card: PersonaCard
    # Where it came from, for messages: a file path or a config key.
    source: str


@dataclass(slots=True)
class Registry:
    entries: dict[str, Entry] = field(default_factory=dict)
    # Cards that could not be loaded: name -> the error (file and field).
    skipped: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(
        cls,
        folders: Iterable[Path] = (BUILTIN_DIR,),
        inline: Mapping[str, PersonaCard] | None = None,
    ) -> Registry:
        registry = cls()
        for folder in folders:
            registry.add_folder(folder)
        for name, card in (inline or {}).items():
            registry.add(Entry(name, card, f"config: personas.cards.{name}"))
        return registry

    def add_folder(self, folder: Path) -> None:
        if not folder.is_dir():
            return
        for path in sorted(folder.glob("*.toml")):
            try:
                card = load_card(path)
            except CardError as exc:
                self.skipped[path.stem] = str(exc)
                log.error("persona card skipped: %s", exc)
                continue
            self.add(Entry(path.stem, card, str(path)))

    def add(self, entry: Entry) -> None:
        previous = self.entries.get(entry.id)
        if previous is not None:
            log.info("persona %r from %s replaces %s", entry.id, entry.source, previous.source)
        self.skipped.pop(entry.id, None)
        self.entries[entry.id] = entry

    def drop(self, name: str, reason: str) -> None:
        """Take a loaded card out (e.g. too large for the context) and say why."""
        self.entries.pop(name, None)
        self.skipped[name] = reason
        log.error("persona card skipped: %s", reason)

    def get(self, name: str) -> Entry | None:
        """The entry with exactly this id (ids stored in the database)."""
        return self.entries.get(name)

    def find(self, name: str) -> list[Entry]:
        """The entries ``name`` designates: the one with exactly that id; else those whose
        id, else those whose card name, equals it under case folding. Several when the
        name is ambiguous."""
        exact = self.entries.get(name)
        if exact is not None:
            return [exact]
        key = fold(name)
        by_id = [e for i, e in self.entries.items() if fold(i) == key]
        if by_id:
            return by_id
        return [e for e in self.entries.values() if fold(e.card.name) == key]

    def resolve(self, name: str) -> Entry | None:
        """The one entry ``name`` designates, or None (unknown or ambiguous)."""
        found = self.find(name)
        return found[0] if len(found) == 1 else None

    def names(self) -> list[str]:
        return sorted(self.entries)

    def unknown(self, name: str) -> str:
        """The message for a name that :meth:`resolve` does not find."""
        found = self.find(name)
        if len(found) > 1:
            candidates = ", ".join(f"{e.id} ({e.card.name})" for e in found)
            return f"persona name {name!r} is ambiguous: {candidates}; use one of the ids"
        skipped = [k for k in self.skipped if k == name or fold(k) == fold(name)]
        if skipped:
            return f"persona {skipped[0]!r} was skipped: {self.skipped[skipped[0]]}"
        return f"unknown persona {name!r} (known: {', '.join(self.names()) or 'none'})"


def fold(name: str) -> str:
    """A persona name for comparison: Unicode case folding, NFC, outer spaces dropped."""
    return unicodedata.normalize("NFC", name.strip()).casefold()
