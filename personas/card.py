"""The persona card: one TOML file (or one ``[personas.cards.NAME]`` table) per character.

A card is plain data; everything that depends on the running agent (who is talking, which
channel) is resolved at prompt time. Errors always name the file and the field, because the
person fixing them edits a text file.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class CardError(Exception):
    """A card that cannot be used; the message names the file (or config key) and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Sampler(_Strict):
    """The persona's sampler preset; an unset value keeps the one from ``[model]``."""

    temperature: float | None = Field(default=None, ge=0.0, le=5.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repeat_penalty: float | None = Field(default=None, ge=0.0)
    max_tokens: int | None = Field(default=None, ge=1)


class LoreEntry(_Strict):
    """World info shown only while one of its keys appears in the recent messages."""

    keys: tuple[str, ...] = ()
    content: str = Field(min_length=1)
    # Keys are regular expressions (Python syntax) instead of plain words.
    regex: bool = False
    case_sensitive: bool = False
    # Shown always, keys or not.
    constant: bool = False
    enabled: bool = True
    # Position among the entries shown: lower first.
    order: int = 100
    # When the token budget cannot hold every triggered entry, higher priority is kept.
    priority: int = 0
    comment: str = ""

    def matcher(self) -> re.Pattern[str] | None:
        """One pattern for all keys (None: no keys). Plain keys match whole words."""
        if not self.keys:
            return None
        flags = 0 if self.case_sensitive else re.IGNORECASE
        parts = self.keys if self.regex else [rf"(?<!\w){re.escape(k)}(?!\w)" for k in self.keys]
        return re.compile("|".join(f"(?:{p})" for p in parts), flags)


class Lorebook(_Strict):
    # Tokens all shown entries may take together (the model's tokenizer).
    token_budget: int = Field(default=512, ge=1)
    # How many recent messages (the new one included) are searched for keys.
    scan_depth: int = Field(default=4, ge=1, le=100)
    entries: tuple[LoreEntry, ...] = ()


class PersonaCard(_Strict):
    # The character's name: {{char}} in every text field.
    name: str = Field(min_length=1)
    description: str = ""
    personality: str = ""
    scenario: str = ""
    # Posted when the persona is first used in a channel ([personas] greeting = true).
    greeting: str = ""
    alternate_greetings: tuple[str, ...] = ()
    # Example exchanges, e.g. "{{user}}: Hi!\n{{char}}: Hello!"; shown in the system prompt.
    examples: tuple[str, ...] = ()
    # Opens the system prompt; empty: "You are {{char}}."
    system_prompt: str = ""
    # Placed right before the new message, after the history (small models heed it most).
    post_history_instructions: str = ""
    # BCP 47 code of the persona's language ("ru", "en"), shown in lists.
    language: str = ""
    sampler: Sampler = Sampler()
    # The model this card was written for. Beseda runs one model per process, so it is NOT
    # switched per persona: a differing value is reported at start-up (see README).
    model: str = ""
    lorebook: Lorebook | None = None


def parse_card(data: dict[str, Any], origin: str) -> PersonaCard:
    """Validate card data; ``origin`` (a file, or a config key) starts every error."""
    try:
        return PersonaCard.model_validate(data)
    except ValidationError as exc:
        raise CardError(describe(origin, exc)) from None


def load_card(path: Path) -> PersonaCard:
    """Read a TOML card. Raises :class:`CardError` naming the file and the field."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise CardError(f"{path}: not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CardError(f"{path}: cannot read the card: {exc}") from None
    return parse_card(data, str(path))


def dump_card(card: PersonaCard) -> str:
    """The card as TOML, without the fields left at their defaults."""
    data = card.model_dump(mode="json", exclude_defaults=True)
    lorebook = data.get("lorebook")
    if card.lorebook is not None and lorebook is None:
        data["lorebook"] = {}
    return tomli_w.dumps(data, multiline_strings=True)


def describe(origin: str, exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        if error["type"] == "extra_forbidden":
            what = "unknown field"
        elif error["type"] == "missing":
            what = "required field is missing"
        else:
            what = f"{error['msg'].lower()}, got {error['input']!r}"
        problems.append(f"{key}: {what}")
    return f"{origin}: " + "; ".join(problems)


_MACRO = re.compile(r"\{\{\s*(char|user)\s*\}\}|<(BOT|USER)>", re.IGNORECASE)


def render_macros(text: str, *, char: str, user: str) -> str:
    """Resolve ``{{char}}`` and ``{{user}}`` (and the old ``<BOT>``, ``<USER>``)."""

    def value(match: re.Match[str]) -> str:
        which = (match.group(1) or match.group(2)).lower()
        return char if which in {"char", "bot"} else user

    return _MACRO.sub(value, text)
