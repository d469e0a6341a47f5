"""A card as prompt text: the system message and the lorebook entries a message triggers.

The system text depends only on the card and the user's name, so it is byte-identical from
turn to turn and llama.cpp keeps reusing its cached prefix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from personas.card import Lorebook, LoreEntry, PersonaCard, render_macros

# The headings the card's fields get, in the card's language (English otherwise).
LABELS = {
    "en": {
        "lore": "Background that may be relevant:",
        "examples": "Examples of how {{char}} talks:",
        "personality": "{{char}}'s personality:",
        "scenario": "Scenario:",
        "default": "You are {{char}}.",
    },
    "ru": {
        "lore": "Сведения, которые могут пригодиться:",
        "examples": "Примеры того, как говорит {{char}}:",
        "personality": "Характер {{char}}:",
        "scenario": "Обстановка:",
        "default": "Ты {{char}}.",
    },
}


def labels(card: PersonaCard) -> dict[str, str]:
    return LABELS.get(card.language.split("-")[0].lower(), LABELS["en"])


def system_text(card: PersonaCard, user: str) -> str:
    """The card's fields as one system message (some templates allow only one)."""
    label = labels(card)
    parts = [card.system_prompt or label["default"]]
    if card.description:
        parts.append(card.description)
    if card.personality:
        parts.append(f"{label['personality']} {card.personality}")
    if card.scenario:
        parts.append(f"{label['scenario']} {card.scenario}")
    if card.examples:
        parts.append("\n\n".join([label["examples"], *card.examples]))
    text = "\n\n".join(part.strip() for part in parts if part.strip())
    return render_macros(text, char=card.name, user=user)


def field_sizes(card: PersonaCard, count: Callable[[str], int]) -> list[tuple[str, int]]:
    """Token counts of the card's prompt fields, largest first (to name the culprit)."""
    sizes = [
        ("system_prompt", count(card.system_prompt)),
        ("description", count(card.description)),
        ("personality", count(card.personality)),
        ("scenario", count(card.scenario)),
        ("examples", count("\n\n".join(card.examples))),
        ("post_history_instructions", count(card.post_history_instructions)),
    ]
    return sorted((s for s in sizes if s[1]), key=lambda s: -s[1])


def triggered(book: Lorebook, recent: Iterable[str]) -> list[LoreEntry]:
    """Enabled entries that are constant or whose keys occur in the recent texts."""
    texts = list(recent)
    found = []
    for entry in book.entries:
        if not entry.enabled:
            continue
        pattern = entry.matcher()
        if entry.constant or (pattern is not None and any(pattern.search(t) for t in texts)):
            found.append(entry)
    return found


def within_budget(
    entries: Sequence[LoreEntry], budget: int, count: Callable[[str], int]
) -> list[LoreEntry]:
    """Higher priority first while the budget lasts; then in insertion order."""
    kept: list[LoreEntry] = []
    used = 0
    for entry in sorted(entries, key=lambda e: (-e.priority, e.order)):
        cost = count(entry.content)
        if used + cost <= budget:
            kept.append(entry)
            used += cost
    return sorted(kept, key=lambda e: e.order)


def lore_text(entries: Sequence[LoreEntry], card: PersonaCard, user: str) -> str:
    if not entries:
        return ""
    body = "\n".join(e.content.strip() for e in entries)
    return render_macros(f"{labels(card)['lore']}\n{body}", char=card.name, user=user)
