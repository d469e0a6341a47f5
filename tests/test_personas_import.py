"""SillyTavern card import: V2 JSON, V2 and V3 PNG (written here with Pillow), bad files."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from agent.cli import main
from personas.card import CardError, load_card
from personas.sillytavern import import_card

V2_DATA: dict[str, Any] = {
    "name": "Seraphina",
    "description": "{{char}} is a guardian of the forest.",
    "personality": "kind, protective",
    "scenario": "{{user}} wakes up in {{char}}'s glade.",
    "first_mes": "*She smiles.* You are awake, {{user}}.",
    "mes_example": (
        "<START>\n{{user}}: Where am I?\n{{char}}: Safe.\n<START>\n{{user}}: Hi\n{{char}}: Hello."
    ),
    "alternate_greetings": ["Welcome back."],
    "system_prompt": "{{original}} Write as {{char}}.",
    "post_history_instructions": "Stay gentle.",
    "tags": ["fantasy"],
    "creator": "someone",
    "character_version": "1",
    "extensions": {},
    "character_book": {
        "name": "Forest lore",
        "token_budget": 300,
        "scan_depth": 5,
        "entries": [
            {
                "keys": ["glade"],
                "content": "The glade is hidden by magic.",
                "insertion_order": 5,
                "enabled": True,
                "extensions": {},
            },
            {
                "keys": ["/wol(f|ves)/i"],
                "case_sensitive": True,
                "content": "Shadow wolves roam at night.",
                "insertion_order": 7,
                "enabled": True,
                "priority": 3,
                "extensions": {},
            },
            {"keys": ["empty"], "content": "", "insertion_order": 1, "enabled": True},
        ],
    },
}


def v2(data: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"spec": "chara_card_v2", "spec_version": "2.0", "data": data or V2_DATA}


def v3(name: str) -> dict[str, Any]:
    data = {**V2_DATA, "name": name, "group_only_greetings": [], "assets": []}
    return {"spec": "chara_card_v3", "spec_version": "3.0", "data": data}


def encoded(card: dict[str, Any]) -> str:
    return base64.b64encode(json.dumps(card).encode("utf-8")).decode("ascii")


def write_png(path: Path, **chunks: str) -> Path:
    info = PngInfo()
    for keyword, text in chunks.items():
        info.add_text(keyword, text)
    Image.new("RGB", (4, 4), "green").save(path, pnginfo=info)
    return path


def check_seraphina(card_name: str, path: Path) -> None:
    card = import_card(path)
    assert card.name == card_name
    assert card.greeting == "*She smiles.* You are awake, {{user}}."
    assert card.examples == (
        "{{user}}: Where am I?\n{{char}}: Safe.",
        "{{user}}: Hi\n{{char}}: Hello.",
    )
    assert card.system_prompt == "Write as {{char}}."  # {{original}} has no meaning here
    assert card.post_history_instructions == "Stay gentle."
    assert card.alternate_greetings == ("Welcome back.",)
    book = card.lorebook
    assert book is not None
    assert (book.token_budget, book.scan_depth) == (300, 5)
    # The empty entry is dropped; /…/i keys become a case-insensitive regex.
    glade, wolves = book.entries
    assert (glade.keys, glade.content, glade.order, glade.regex) == (
        ("glade",), "The glade is hidden by magic.", 5, False,
    )  # fmt: skip
    assert wolves.regex
    assert wolves.priority == 3
    assert wolves.matcher() is not None
    assert wolves.matcher().search("WOLVES")  # type: ignore[union-attr]


def test_v2_json_card(tmp_path: Path) -> None:
    path = tmp_path / "seraphina.json"
    path.write_text(json.dumps(v2()), encoding="utf-8")
    check_seraphina("Seraphina", path)


def test_v2_png_card(tmp_path: Path) -> None:
    check_seraphina("Seraphina", write_png(tmp_path / "s.png", chara=encoded(v2())))


def test_v3_png_card_wins_over_its_v2_copy(tmp_path: Path) -> None:
    path = write_png(tmp_path / "s3.png", chara=encoded(v2()), ccv3=encoded(v3("Seraphina V3")))
    check_seraphina("Seraphina V3", path)


def test_v1_json_card(tmp_path: Path) -> None:
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"name": "Old", "first_mes": "Hi", "mes_example": ""}), "utf-8")
    card = import_card(path)
    assert (card.name, card.greeting, card.lorebook) == ("Old", "Hi", None)


def json_file(data: object) -> Callable[[Path], object]:
    return lambda path: path.write_text(json.dumps(data), "utf-8")


MALFORMED: list[tuple[Callable[[Path], object], str]] = [
    (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\ngarbage"), "malformed PNG"),
    (write_png, "no character card in this PNG"),
    (lambda p: write_png(p, chara="%%%not base64"), "text chunk 'chara': not base64"),
    (lambda p: write_png(p, ccv3=encoded_any(["a list"])), "text chunk 'ccv3': expected"),
    (lambda p: p.write_text("{not json", "utf-8"), "not a PNG and not valid JSON"),
    (json_file(v2({"description": "x"})), "data.name: required"),
    (json_file({"spec": "chara_card_v9"}), "spec: unknown card spec"),
    (json_file(v2({**V2_DATA, "personality": 5})), "data.personality: expected text"),
]


def encoded_any(data: object) -> str:
    return base64.b64encode(json.dumps(data).encode("utf-8")).decode("ascii")


@pytest.mark.parametrize(("make", "expected"), MALFORMED)
def test_malformed_cards_name_the_file_and_the_field(
    tmp_path: Path, make: Callable[[Path], object], expected: str
) -> None:
    path = tmp_path / "card.png"
    make(path)
    with pytest.raises(CardError) as caught:
        import_card(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert expected in str(caught.value)


def test_cli_import_writes_toml_to_the_user_folder_then_lists_and_shows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "beseda.toml"
    config.write_text('[personas]\nfolder = "my-personas"\n', encoding="utf-8")
    png = write_png(tmp_path / "card.png", ccv3=encoded(v3("Forest Guardian")))
    assert main(["--config", str(config), "persona", "import", str(png)]) == 0
    written = tmp_path / "my-personas" / "forest-guardian.toml"
    assert load_card(written).name == "Forest Guardian"
    assert "forest-guardian" in capsys.readouterr().out
    # A second import does not overwrite silently.
    assert main(["--config", str(config), "persona", "import", str(png)]) == 1
    assert "already exists" in capsys.readouterr().err

    assert main(["--config", str(config), "persona", "list"]) == 0
    listed = capsys.readouterr().out
    assert "forest-guardian: Forest Guardian, lorebook of 2" in listed
    assert "beseda-en: Beseda [en]" in listed
    assert "beseda-ru: Беседа [ru]" in listed
    assert "* beseda: Beseda" in listed  # the [persona] section is the default

    assert main(["--config", str(config), "persona", "show", "forest-guardian"]) == 0
    shown = capsys.readouterr().out
    assert 'name = "Forest Guardian"' in shown
    assert "# Forest Guardian is a guardian of the forest." in shown
    assert main(["--config", str(config), "persona", "show", "nobody"]) == 1
    assert "unknown persona 'nobody'" in capsys.readouterr().err


def test_cli_list_reports_a_broken_card(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "beseda.toml"
    config.write_text('[personas]\nfolder = "p"\n', encoding="utf-8")
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "bad.toml").write_text("name = 3\n", encoding="utf-8")
    assert main(["--config", str(config), "persona", "list"]) == 1
    out = capsys.readouterr().out
    assert "! bad: skipped:" in out
    assert "bad.toml: name: input should be a valid string" in out
