"""Persona cards: the TOML format, macros, the registry, lorebook selection, bad cards."""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path

import pytest

from agent.config import ConfigError, load_config
from personas.card import (
    CardError,
    Lorebook,
    LoreEntry,
    PersonaCard,
    Sampler,
    dump_card,
    load_card,
    render_macros,
)
from personas.prompt import lore_text, system_text, triggered, within_budget
from personas.registry import BUILTIN_DIR, Registry

FULL_CARD = PersonaCard(
    name="Captain Hook",
    description="{{char}} is a pirate who hates crocodiles.",
    personality="grumpy, theatrical",
    scenario="{{user}} visits {{char}}'s ship.",
    greeting="Ahoy, {{user}}!",
    alternate_greetings=("Who goes there?", "Welcome aboard."),
    examples=("{{user}}: Hello\n{{char}}: Arr.", "{{user}}: Tick tock\n{{char}}: NO!"),
    system_prompt="You are {{char}}. Stay in character.",
    post_history_instructions="Answer in two sentences at most.",
    language="en",
    sampler=Sampler(
        temperature=0.9, top_p=0.8, top_k=20, min_p=0.1, repeat_penalty=1.2, max_tokens=100
    ),
    model="some-13b",
    lorebook=Lorebook(
        token_budget=50,
        scan_depth=3,
        entries=(
            LoreEntry(keys=("crocodile", "croc"), content="The crocodile swallowed a clock."),
            LoreEntry(keys=(r"never\s*land",), regex=True, content="Neverland is an island."),
        ),
    ),
)


def test_toml_card_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "hook.toml"
    path.write_text(dump_card(FULL_CARD), encoding="utf-8")
    assert load_card(path) == FULL_CARD
    # Defaults are left out, so a written card stays short and readable.
    minimal = dump_card(PersonaCard(name="Min"))
    assert tomllib.loads(minimal) == {"name": "Min"}


def test_macros_resolve_char_and_user_case_insensitively() -> None:
    text = "{{char}} greets {{ user }}; {{Char}} and <USER> and <BOT>."
    assert render_macros(text, char="Hook", user="Wendy") == (
        "Hook greets Wendy; Hook and Wendy and Hook."
    )


def test_system_text_is_one_stable_message_with_macros_resolved() -> None:
    first = system_text(FULL_CARD, "Wendy")
    assert first == system_text(FULL_CARD, "Wendy")  # byte-stable between turns
    assert first.startswith("You are Captain Hook. Stay in character.")
    assert "Captain Hook is a pirate" in first
    assert "Scenario: Wendy visits Captain Hook's ship." in first
    assert "Wendy: Tick tock\nCaptain Hook: NO!" in first
    assert "{{" not in first
    # The post-history instructions are not part of it (they go after the history).
    assert "two sentences" not in first


def test_minimal_card_keeps_the_plain_system_prompt() -> None:
    card = PersonaCard(name="Beseda", system_prompt="You are a test.")
    assert system_text(card, "alice") == "You are a test."


def test_builtin_personas_load() -> None:
    registry = Registry.load([BUILTIN_DIR])
    assert registry.skipped == {}
    english, russian = registry.get("beseda-en"), registry.get("beseda-ru")
    assert english is not None
    assert russian is not None
    assert (english.card.language, russian.card.language) == ("en", "ru")
    assert "Always answer in English" in system_text(english.card, "Bob")
    ru = system_text(russian.card, "Боб")
    assert "Всегда отвечай по-русски" in ru
    assert "Примеры того, как говорит Беседа" in ru


def test_lorebook_entries_trigger_on_recent_messages() -> None:
    book = FULL_CARD.lorebook
    assert book is not None
    hits = triggered(book, ["I saw a CROC today"])
    assert [e.content for e in hits] == ["The crocodile swallowed a clock."]
    # Plain keys match whole words only; regex keys are regular expressions.
    assert triggered(book, ["crocodiles"]) == []
    assert [e.content for e in triggered(book, ["off to Never  Land"])] == [
        "Neverland is an island."
    ]
    assert triggered(book, ["nothing relevant"]) == []


def test_constant_disabled_and_case_sensitive_entries() -> None:
    book = Lorebook(
        entries=(
            LoreEntry(content="always", constant=True),
            LoreEntry(keys=("x",), content="off", enabled=False),
            LoreEntry(keys=("Rome",), case_sensitive=True, content="city"),
        )
    )
    assert [e.content for e in triggered(book, ["x rome"])] == ["always"]
    assert [e.content for e in triggered(book, ["Rome"])] == ["always", "city"]


def test_lorebook_budget_keeps_priority_then_insertion_order() -> None:
    def words(text: str) -> int:
        return len(text.split())

    entries = [
        LoreEntry(keys=("a",), content="one two three", order=30, priority=1),
        LoreEntry(keys=("a",), content="four five", order=10),
        LoreEntry(keys=("a",), content="six seven eight nine", order=20, priority=5),
    ]
    kept = within_budget(entries, 7, words)
    # Priority 5 (4 tokens) and priority 1 (3 tokens) fill the budget; shown by order.
    assert [e.content for e in kept] == ["six seven eight nine", "one two three"]
    assert sum(words(e.content) for e in kept) <= 7
    assert within_budget(entries, 1, words) == []
    text = lore_text(kept, FULL_CARD, "Wendy")
    assert text.splitlines()[1:] == ["six seven eight nine", "one two three"]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('name = "X"\nsampler = { temperature = 9 }', "sampler.temperature: input should be"),
        ('name = "X"\nmood = "odd"', "mood: unknown field"),
        ('description = "no name"', "name: required field is missing"),
        ('name = "X"\n[[lorebook.entries]]\nkeys = ["k"]', "lorebook.entries.0.content: required"),
        ('name = "X', "not valid TOML"),
    ],
)
def test_malformed_toml_card_names_file_and_field(tmp_path: Path, body: str, expected: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(CardError) as caught:
        load_card(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert expected in message


def test_a_broken_card_is_skipped_and_the_others_load(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "good.toml").write_text('name = "Good"\n', encoding="utf-8")
    (tmp_path / "broken.toml").write_text('name = "B"\ntop_p = 2\n', encoding="utf-8")
    with caplog.at_level(logging.ERROR):
        registry = Registry.load([BUILTIN_DIR, tmp_path])
    assert {"good", "beseda-en", "beseda-ru"} <= set(registry.names())
    assert "broken" not in registry.names()
    assert "broken.toml: top_p: unknown field" in registry.skipped["broken"]
    assert "broken.toml" in caplog.text
    assert "was skipped" in registry.unknown("broken")


def test_inline_card_errors_name_the_config_key(tmp_path: Path) -> None:
    path = tmp_path / "beseda.toml"
    path.write_text(
        '[personas.cards.pirate]\nname = "Pirate"\n[personas.cards.pirate.sampler]\ntop_k = -1\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match=r"personas\.cards\.pirate\.sampler\.top_k"):
        load_config(path, environ={})
