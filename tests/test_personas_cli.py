"""The built-in personas through the real command line and the bundled model's template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import write_config
from tests.test_cli import beseda

pytestmark = [pytest.mark.model, pytest.mark.slow]


def test_prompt_shows_the_builtin_persona_in_use(tmp_path: Path) -> None:
    config = write_config(tmp_path / "beseda.toml", personas={"default": "beseda-ru"})
    result = beseda(config, "prompt", "--json", "Привет!")
    data = json.loads(result.stdout)
    assert data["persona"] == "beseda-ru"
    system = data["messages"][0]["content"]
    assert system.startswith("Ты Беседа, полезный помощник. Всегда отвечай по-русски")
    assert data["rendered"].startswith("<|im_start|>system\nТы Беседа")
    assert data["tokens"] <= data["budget"]
    other = beseda(config, "prompt", "--channel", "other", "Hi")
    assert "# console:other: persona beseda-ru," in other.stderr
    listed = beseda(config, "persona", "list")
    assert "* beseda-ru: Беседа [ru]" in listed.stdout
    assert "  beseda-en: Beseda [en]" in listed.stdout


def test_unknown_persona_in_config_exits_with_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "beseda.toml"
    write_config(config)
    with config.open("a", encoding="utf-8") as file:
        file.write('[personas.channels]\n"discord:1" = "nope"\n')
    result = beseda(config, "prompt", "hi", check=False)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert (
        f"beseda: config error: {config}: [personas] channels.discord:1: unknown persona 'nope'"
        in result.stderr
    )
