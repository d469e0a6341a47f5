"""SillyTavern character cards (V1, V2, V3; JSON, or PNG with a ``chara``/``ccv3`` text chunk).

The PNG holds base64-encoded JSON in a tEXt chunk: ``ccv3`` (V3) wins over ``chara`` (V2,
which V3 writers keep for old readers). The character book becomes the card's lorebook.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from personas.card import CardError, LoreEntry, PersonaCard, parse_card

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# An ST key written as /pattern/flags is a regular expression.
_REGEX_KEY = re.compile(r"^/(.+)/([a-z]*)$", re.DOTALL)


def read_card_data(path: Path) -> dict[str, Any]:
    """The card's JSON object from a .json or .png file."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CardError(f"{path}: cannot read the card: {exc}") from None
    if raw.startswith(PNG_SIGNATURE):
        return _from_png(path)
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CardError(f"{path}: not a PNG and not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CardError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _from_png(path: Path) -> dict[str, Any]:
    try:
        with Image.open(path) as image:
            image.load()  # text chunks after the image data are read only now
            chunks = dict(getattr(image, "text", {}))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise CardError(f"{path}: malformed PNG: {exc}") from None
    for keyword in ("ccv3", "chara"):
        if keyword in chunks:
            try:
                decoded = base64.b64decode(chunks[keyword], validate=True)
                data = json.loads(decoded.decode("utf-8"))
            except (binascii.Error, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise CardError(
                    f"{path}: text chunk {keyword!r}: not base64-encoded JSON: {exc}"
                ) from None
            if not isinstance(data, dict):
                raise CardError(f"{path}: text chunk {keyword!r}: expected a JSON object")
            return data
    raise CardError(f"{path}: no character card in this PNG (no 'ccv3' or 'chara' text chunk)")


def convert(data: dict[str, Any], origin: str) -> PersonaCard:
    """A SillyTavern card object (any version) as a persona card."""
    spec = data.get("spec")
    if spec in {"chara_card_v2", "chara_card_v3"}:
        fields = data.get("data")
        where = "data."
        if not isinstance(fields, dict):
            raise CardError(f"{origin}: data: expected an object for spec {spec!r}")
    elif spec is None:
        fields, where = data, ""  # V1: the fields at the top level
    else:
        raise CardError(f"{origin}: spec: unknown card spec {spec!r}")

    def text(key: str) -> str:
        value = fields.get(key) or ""
        if not isinstance(value, str):
            raise CardError(f"{origin}: {where}{key}: expected text, got {value!r}")
        return value.replace("\r\n", "\n")

    card: dict[str, Any] = {
        "name": text("name").strip(),
        "description": text("description"),
        "personality": text("personality"),
        "scenario": text("scenario"),
        "greeting": text("first_mes"),
        "alternate_greetings": fields.get("alternate_greetings") or [],
        "examples": split_examples(text("mes_example")),
        # {{original}} means "SillyTavern's default prompt", which Beseda does not have.
        "system_prompt": text("system_prompt").replace("{{original}}", "").strip(),
        "post_history_instructions": text("post_history_instructions")
        .replace("{{original}}", "")
        .strip(),
    }
    if not card["name"]:
        raise CardError(f"{origin}: {where}name: required field is missing")
    book = fields.get("character_book")
    if book:
        card["lorebook"] = _lorebook(book, origin, f"{where}character_book")
    return parse_card(card, origin)


def split_examples(text: str) -> list[str]:
    """``<START>``-separated example dialogues as a list."""
    parts = re.split(r"<START>", text, flags=re.IGNORECASE)
    return [p.strip() for p in parts if p.strip()]


def _lorebook(book: Any, origin: str, where: str) -> dict[str, Any]:
    if not isinstance(book, dict):
        raise CardError(f"{origin}: {where}: expected an object")
    entries = []
    for n, entry in enumerate(book.get("entries") or []):
        if not isinstance(entry, dict):
            raise CardError(f"{origin}: {where}.entries.{n}: expected an object")
        if not str(entry.get("content") or "").strip():
            continue  # an empty entry shows nothing
        keys = [str(k) for k in entry.get("keys") or [] if str(k).strip()]
        regex = bool(entry.get("use_regex"))
        if not regex and keys and all(_REGEX_KEY.match(k) for k in keys):
            regex = True
            keys = [_pattern(k) for k in keys]
        try:
            converted = LoreEntry(
                keys=tuple(keys),
                content=str(entry["content"]),
                regex=regex,
                case_sensitive=bool(entry.get("case_sensitive")),
                constant=bool(entry.get("constant")),
                enabled=entry.get("enabled", True) is not False,
                order=int(entry.get("insertion_order") or 100),
                priority=int(entry.get("priority") or 0),
                comment=str(entry.get("comment") or entry.get("name") or ""),
            )
        except (ValueError, TypeError) as exc:
            raise CardError(f"{origin}: {where}.entries.{n}: {exc}") from None
        entries.append(converted.model_dump(exclude_defaults=True))
    result: dict[str, Any] = {"entries": entries}
    if isinstance(book.get("token_budget"), int) and book["token_budget"] > 0:
        result["token_budget"] = book["token_budget"]
    if isinstance(book.get("scan_depth"), int) and 0 < book["scan_depth"] <= 100:
        result["scan_depth"] = book["scan_depth"]
    return result


def _pattern(key: str) -> str:
    match = _REGEX_KEY.match(key)
    assert match is not None
    pattern, flags = match.groups()
    return f"(?i:{pattern})" if "i" in flags else pattern


def import_card(path: Path) -> PersonaCard:
    """Read and convert a SillyTavern card file."""
    return convert(read_card_data(path), str(path))


def slug(name: str) -> str:
    """A file and command name for a card: ``"Captain Hook"`` -> ``"captain-hook"``."""
    return re.sub(r"[^\w]+", "-", name.lower()).strip("-_") or "persona"
