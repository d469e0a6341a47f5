"""Beseda's own words in the conversation's language: English and Russian.

Every sentence Beseda writes itself (notices, command answers, help, the sources line,
slash-command descriptions) is a :class:`Text` (or a :class:`Plural`) in
:mod:`agent.i18n.catalog`, with both languages side by side. The language of each message is
chosen by :func:`choose`: the persona's language when it has one of ours, else the language
the message is written in, else (a bare command, "2+2") the language of the channel's recent
messages, else ``[chat] language`` ("auto": English).

Why a typed catalog and not gettext: see README, "Languages". In short: about seventy
strings in two languages, written by the developers in the same commit as the code, looked
up by a name mypy checks (a typo in a gettext msgid silently shows English, the very leak
this is for), no compile step and no binary ``.mo`` files in the package; the one thing
gettext adds, plural rules, is three lines for Russian (:func:`plural_form`).
"""

from __future__ import annotations

import string
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Lang = Literal["en", "ru"]
LANGUAGES: tuple[Lang, ...] = ("en", "ru")
DEFAULT: Lang = "en"
# [chat] language: "auto" leaves the choice to the persona and the message (else English).
Setting = Literal["auto", "en", "ru"]


@dataclass(frozen=True, slots=True)
class Text:
    """One sentence in both languages; ``{name}`` placeholders are filled by ``str.format``."""

    en: str
    ru: str

    def __call__(self, lang: Lang, /, **values: object) -> str:
        return self.of(lang).format(**values)

    def of(self, lang: Lang) -> str:
        """The template itself, placeholders unfilled."""
        return self.ru if lang == "ru" else self.en

    def variants(self) -> dict[Lang, tuple[str, ...]]:
        return {"en": (self.en,), "ru": (self.ru,)}


@dataclass(frozen=True, slots=True)
class Plural:
    """A sentence about ``{count}`` things: English one/other, Russian one/few/many."""

    en: tuple[str, str]
    ru: tuple[str, str, str]

    def __call__(self, lang: Lang, /, count: int, **values: object) -> str:
        forms: tuple[str, ...] = self.ru if lang == "ru" else self.en
        return forms[plural_form(lang, count)].format(count=count, **values)

    def variants(self) -> dict[Lang, tuple[str, ...]]:
        return {"en": self.en, "ru": self.ru}


def plural_form(lang: Lang, count: int) -> int:
    """The index of the plural form (CLDR rules for integers): 1 сообщение, 2 сообщения,
    5 сообщений, 11 сообщений, 21 сообщение."""
    n = abs(count)
    if lang != "ru":
        return 0 if n == 1 else 1
    if n % 10 == 1 and n % 100 != 11:
        return 0
    if 2 <= n % 10 <= 4 and not 12 <= n % 100 <= 14:
        return 1
    return 2


def placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def detect(text: str) -> Lang | None:
    """``"ru"`` when Cyrillic letters outnumber Latin ones, ``"en"`` when Latin ones do, None
    when neither does (no letters at all, "2+2", an emoji, an even mix)."""
    cyrillic = latin = 0
    for char in text:
        low = char.lower()
        if "а" <= low <= "я" or low == "ё":
            cyrillic += 1
        elif "a" <= low <= "z":
            latin += 1
    if cyrillic > latin:
        return "ru"
    if latin > cyrillic:
        return "en"
    return None


def ours(code: str | None) -> Lang | None:
    """A BCP 47 code ("ru", "ru-RU", "EN_us") as one of our languages, or None."""
    primary = (code or "").replace("_", "-").split("-", 1)[0].strip().lower()
    return primary if primary in LANGUAGES else None


def choose(
    persona: str | None,
    texts: Iterable[str],
    setting: str = "auto",
) -> Lang:
    """The language of Beseda's own words for one message.

    ``persona``: the answering persona's language code, if any; ``texts``: what to detect the
    language from, most telling first (the message, then recent messages of the channel): the
    first one with a clear language decides; ``setting``: ``[chat] language``.
    """
    chosen = ours(persona)
    if chosen is not None:
        return chosen
    for text in texts:
        found = detect(text)
        if found is not None:
            return found
    return ours(setting) or DEFAULT
