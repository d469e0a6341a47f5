"""``python -m agent persona {import,list,show}``: manage persona cards from a shell."""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from agent.config import Config
from agent.prompt.personas import load_registry, section_persona_id, user_folder
from memory.text import valid_json
from personas.card import CardError, dump_card
from personas.prompt import system_text
from personas.sillytavern import convert, read_card_data, slug


def run_persona(
    config: Config,
    action: str,
    out: TextIO,
    *,
    file: str | None = None,
    name: str | None = None,
    force: bool = False,
) -> int:
    if action == "import":
        assert file is not None
        return _import(config, Path(file), name, out, force=force)
    if action == "show":
        assert name is not None
        return _show(config, name, out)
    return _list(config, out)


def _import(config: Config, path: Path, name: str | None, out: TextIO, *, force: bool) -> int:
    """Convert a SillyTavern card (JSON or PNG) to TOML in the user's persona folder."""
    # CardError: reported by the caller with the file and field. A card is JSON, which may
    # carry lone surrogates ("\ud800"): they become U+FFFD (memory/text.py).
    card = convert(valid_json(read_card_data(path)), str(path))
    target_dir = user_folder(config)
    target = target_dir / f"{slug(name or card.name)}.toml"
    if target.exists() and not force:
        raise CardError(f"{target}: already exists (pass --force to overwrite, or --name NEW)")
    target_dir.mkdir(parents=True, exist_ok=True)
    target.write_text(dump_card(card), encoding="utf-8")
    entries = len(card.lorebook.entries) if card.lorebook is not None else 0
    out.write(
        f"{target}: persona {target.stem!r} ({card.name}), {entries} lorebook entries; "
        f"use it with `!persona {target.stem}` or [personas] in config.toml\n"
    )
    return 0


def _list(config: Config, out: TextIO) -> int:
    registry = load_registry(config)
    default = config.personas.default or section_persona_id(config.persona)
    for key in registry.names():
        entry = registry.entries[key]
        card = entry.card
        mark = "*" if key == default else " "
        language = f" [{card.language}]" if card.language else ""
        lore = f", lorebook of {len(card.lorebook.entries)}" if card.lorebook else ""
        out.write(f"{mark} {key}: {card.name}{language}{lore}\n    {entry.source}\n")
    for key, problem in sorted(registry.skipped.items()):
        out.write(f"! {key}: skipped: {problem}\n")
    out.write("(* = the default persona)\n")
    return 1 if registry.skipped else 0


def _show(config: Config, name: str, out: TextIO) -> int:
    registry = load_registry(config)
    entry = registry.resolve(name)
    if entry is None:
        raise CardError(registry.unknown(name))
    out.write(f"# {entry.id}: {entry.source}\n")
    out.write(dump_card(entry.card))
    out.write("\n# The system prompt it gives (for a user called User):\n")
    for line in system_text(entry.card, "User").splitlines():
        out.write(f"# {line}\n" if line else "#\n")
    return 0
