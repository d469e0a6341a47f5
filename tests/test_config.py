from __future__ import annotations

from pathlib import Path

import pytest

from agent.cli import main
from agent.config import ConfigError, config_path_from, load_config
from tests.conftest import write_config


def test_shipped_config_loads_with_documented_defaults() -> None:
    config = load_config(Path("config.toml"), environ={})
    assert config.model.backend == "llama_cpp"
    assert config.model.path == ""
    assert config.storage.data_dir == Path("data")
    assert config.data_dir == Path("config.toml").resolve().parent / "data"
    assert config.database_url.startswith("sqlite+aiosqlite:///")
    assert config.database_url.endswith("data/beseda.db")


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "beseda.toml"
    path.parent.mkdir()
    path.write_text('[storage]\ndata_dir = "state"\n', encoding="utf-8")
    config = load_config(path, environ={})
    assert config.data_dir == path.parent.resolve() / "state"


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path / "c.toml"), environ={})
    with pytest.raises(ValueError, match="frozen"):
        config.model.n_ctx = 5  # type: ignore[misc]


def test_environment_overrides_a_key(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.toml")
    config = load_config(path, environ={"BESEDA_MODEL__N_CTX": "2048", "OTHER": "x"})
    assert config.model.n_ctx == 2048


def test_dotenv_file_beside_the_config_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(tmp_path / "c.toml")
    (tmp_path / ".env").write_text("BESEDA_MODEL__MAX_TOKENS=77\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BESEDA_MODEL__MAX_TOKENS", raising=False)
    assert load_config(path).model.max_tokens == 77


def test_config_path_precedence() -> None:
    assert config_path_from("a.toml", {"BESEDA_CONFIG": "b.toml"}) == Path("a.toml")
    assert config_path_from(None, {"BESEDA_CONFIG": "b.toml"}) == Path("b.toml")
    assert config_path_from(None, {}) == Path("config.toml")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("[model]\nn_cxt = 5\n", "model.n_cxt: unknown key"),
        ("[modle]\npath = ''\n", "modle: unknown key"),
        ("[model]\nn_ctx = 'big'\n", "model.n_ctx: input should be a valid integer"),
        ("[model]\nn_ctx = 10\n", "model.n_ctx: input should be greater than or equal to 256"),
        ("[model]\nbackend = 'gpt'\n", "model.backend: input should be 'llama_cpp'"),
        ("model = 3\n", "model: expected a table [model], got 3"),
        ("[model\npath = ''\n", "not valid TOML"),
    ],
)
def test_invalid_config_names_file_and_key(tmp_path: Path, body: str, expected: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert expected in message
    assert "\n" not in message


def test_bad_environment_override_names_the_variable(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.toml")
    with pytest.raises(ConfigError, match=r"model\.n_ctx: .*BESEDA_MODEL__N_CTX"):
        load_config(path, environ={"BESEDA_MODEL__N_CTX": "lots"})


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml", environ={})


def test_unreadable_bytes_are_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_bytes(b"[model]\npath = '\xff\xfe'\n")
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_config(path, environ={})


def test_cli_prints_one_line_and_exits_non_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[model]\nn_ctx = 'big'\n", encoding="utf-8")
    code = main(["--config", str(path), "doctor"])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"beseda: config error: {path}: model.n_ctx")
    assert "Traceback" not in captured.err
