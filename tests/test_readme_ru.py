"""README.ru.md keeps up with README.md: every configuration key the English README
documents (a table row starting with `[section] key`, or more keys of that section in the same
first cell) is documented in the Russian one too."""

from __future__ import annotations

import re
from pathlib import Path

from agent.config import Config

ROOT = Path(__file__).resolve().parent.parent
# `[section] key`, anywhere (tables and prose).
_QUALIFIED = re.compile(r"`\[(\w+)\]\s+([a-z_][a-z0-9_]*)")
# A table row's first cell, and the keys in it.
_ROW = re.compile(r"^\|([^|]*)\|")
_KEY = re.compile(r"`(?:\[(\w+)\]\s+)?([a-z_][a-z0-9_]*)`")
# "`[discord]` keys …" before a table, or a table headed "| `[model]` key |": the rows list
# that section's keys unqualified.
_SECTION = re.compile(r"^\|?\s*`\[(\w+)\]`")


def documented_keys(text: str) -> set[tuple[str, str]]:
    """(section, key) of every configuration key the text documents: qualified mentions
    (`[model] name`), and the first cells of key tables (a section's table after
    "`[discord]` keys" or headed "`[model]` key", or rows starting with `[section] key`)."""
    found = {(m.group(1), m.group(2)) for m in _QUALIFIED.finditer(text)}
    section: str | None = None  # of the table being read (or about to be)
    in_table = False
    for line in text.splitlines():
        named = _SECTION.match(line)
        if named:
            section = named.group(1)
            in_table = line.startswith("|")
            continue
        row = _ROW.match(line)
        if row is None:
            if in_table:  # the table ended
                section, in_table = None, False
            continue
        in_table = True
        cell = row.group(1).strip()
        first = _KEY.match(cell)
        if first is None:
            continue
        owner = first.group(1) or section
        if owner is None:
            continue
        for named_section, key in _KEY.findall(cell):
            found.add((named_section or owner, key))
    return found


def test_the_parser_finds_real_keys() -> None:
    keys = documented_keys((ROOT / "README.md").read_text(encoding="utf-8"))
    assert len(keys) > 60
    real = {
        (section, key)
        for section, field in Config.model_fields.items()
        if section != "source"
        for key in getattr(field.annotation, "model_fields", {})
    }
    assert ("model", "name") in keys
    assert ("chat", "language") in keys
    unknown = keys - real
    assert not unknown, f"README.md documents keys the config does not have: {sorted(unknown)}"


def test_every_key_in_readme_is_in_readme_ru() -> None:
    english = documented_keys((ROOT / "README.md").read_text(encoding="utf-8"))
    russian_text = (ROOT / "README.ru.md").read_text(encoding="utf-8")
    missing = english - documented_keys(russian_text)
    assert not missing, f"README.ru.md lacks: {sorted(missing)}"


def test_readme_links_to_readme_ru_and_back() -> None:
    assert "(README.ru.md)" in (ROOT / "README.md").read_text(encoding="utf-8")
    assert "(README.md)" in (ROOT / "README.ru.md").read_text(encoding="utf-8")
