"""Models by name: [model] name, `models pull NAME`, `models list --catalog`, against the
loopback hub."""

from __future__ import annotations

import hashlib
import io
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from agent.cli.doctor import _check_model
from agent.cli.main import russian_hint
from agent.cli.models import run_models
from agent.config import load_config
from agent.generators.base import GeneratorError
from agent.generators.catalog import BUILTIN, RUSSIAN_MODEL, CatalogError, load_catalog
from agent.generators.catalog import with_named_model as named
from agent.generators.gguf import bundled_model_path
from agent.generators.hub import hub_file, resolve_model_path
from tests.conftest import write_config
from tests.support.hub_fake import COMMIT, FakeHub
from tests.test_models_hub import beseda, closed_port_url

SAIGA_REPO = "Kamnsv/SaigaGemma2-9B-GGUF"
SAIGA_FILE = "model-00001-of-00001.gguf"
SAIGA_SHA = "07dca63c396ed58060e75ad3f9409e89b30a9f7771989aefacfa03bb17d8eed9"
TEST_REPO = "test-org/tiny-gemma-style"
TEST_FILE = "tiny.Q4_1.gguf"
GEMMA_SYSTEM = "You are a test."


@pytest.fixture(scope="module")
def gguf_bytes() -> bytes:
    return bundled_model_path().read_bytes()


def config_file(tmp_path: Path, **model: object) -> Path:
    """The tests' config (small n_ctx, temperature 0) with these [model] settings."""
    return write_config(tmp_path / "beseda.toml", model=dict(model))


def bare_config(tmp_path: Path, **model: object) -> Path:
    """Only these [model] settings: everything else is left to the catalog."""
    lines = ["[model]", *(f"{k} = {v!r}".replace("'", '"') for k, v in model.items())]
    path = tmp_path / "bare.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# -- resolution, in process ----------------------------------------------------------------------


def test_the_seed_model_resolves_to_its_repository_checksum_and_template(tmp_path: Path) -> None:
    config = named(load_config(bare_config(tmp_path, name="saiga-gemma2-9b")))
    model = config.model
    assert (model.hf_repo, model.hf_file, model.sha256) == (SAIGA_REPO, SAIGA_FILE, SAIGA_SHA)
    assert model.n_ctx == 8192
    assert model.top_p == 0.9
    assert model.chat_template.startswith("{{ bos_token }}")
    spec = hub_file(config)
    assert spec is not None
    assert spec.wanted == f"{SAIGA_REPO}/{SAIGA_FILE}"
    assert spec.pull == "python -m agent models pull saiga-gemma2-9b"
    assert named(config) == config  # applying it again changes nothing


def test_what_the_config_sets_wins_over_the_catalog(tmp_path: Path) -> None:
    path = bare_config(tmp_path, name="saiga-gemma2-9b", n_ctx=2048, temperature=0.0)
    model = named(load_config(path)).model
    assert (model.n_ctx, model.temperature, model.top_p) == (2048, 0.0, 0.9)
    # A file downloaded by hand: the file is the config's, the template still the catalog's.
    by_hand = named(load_config(config_file(tmp_path, name="saiga-gemma2-9b", path="saiga.gguf")))
    assert (by_hand.model.path, by_hand.model.hf_repo) == ("saiga.gguf", "")
    assert "<start_of_turn>" in by_hand.model.chat_template
    other_repo = config_file(
        tmp_path, name="saiga-gemma2-9b", hf_repo="someone/mirror", hf_file="x.gguf"
    )
    mirror = named(load_config(other_repo)).model
    assert (mirror.hf_repo, mirror.hf_file, mirror.sha256) == ("someone/mirror", "x.gguf", "")


def test_an_unknown_name_lists_the_known_ones(tmp_path: Path) -> None:
    config = load_config(config_file(tmp_path, name="gpt-17"))
    with pytest.raises(CatalogError, match=r"\[model\] name: no model named 'gpt-17'.*saiga"):
        named(config)
    with pytest.raises(GeneratorError, match="models list --catalog"):
        resolve_model_path(config)


def test_the_gemma_template_folds_the_system_prompt_into_the_first_user_turn() -> None:
    template = load_catalog()["saiga-gemma2-9b"].chat_template
    render = Jinja2ChatFormatter(template=template, eos_token="<eos>", bos_token="<bos>")
    prompt = render(
        messages=[
            {"role": "system", "content": "Ты Беседа."},
            {"role": "user", "content": "Привет"},
            {"role": "assistant", "content": "Здравствуйте!"},
            {"role": "user", "content": "Сколько будет 2+2?"},
        ]
    ).prompt
    assert prompt == (
        "<bos><start_of_turn>user\nТы Беседа.\n\nПривет<end_of_turn>\n"
        "<start_of_turn>model\nЗдравствуйте!<end_of_turn>\n"
        "<start_of_turn>user\nСколько будет 2+2?<end_of_turn>\n<start_of_turn>model\n"
    )
    bare = render(messages=[{"role": "user", "content": "Hi"}]).prompt
    assert bare == "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"


def test_the_catalog_claims_only_what_is_known() -> None:
    raw = tomllib.loads(BUILTIN.read_text(encoding="utf-8"))
    entries = load_catalog()
    assert set(raw) == set(entries)
    assert len(entries) >= 5
    for entry in entries.values():
        assert entry.licence, entry.name
        assert "ru" in entry.languages, entry.name
        assert re.fullmatch(r"([0-9a-f]{64})?", entry.sha256), entry.name
    # The only checksum verified from here is the seed project's.
    assert {e.name: e.sha256 for e in entries.values() if e.sha256} == {
        "saiga-gemma2-9b": SAIGA_SHA
    }
    # From about 1B to about 9B parameters.
    assert {"vikhr-llama3.2-1b", "qwen2.5-1.5b", "qwen2.5-3b", "qwen2.5-7b"} <= set(entries)


def test_a_catalog_file_of_ones_own_adds_and_replaces(tmp_path: Path) -> None:
    extra = tmp_path / "models.toml"
    extra.write_text(
        f'[mine]\nhf_repo = "{TEST_REPO}"\nhf_file = "{TEST_FILE}"\nlicence = "MIT"\n'
        '[saiga-gemma2-9b]\nhf_repo = "mirror/saiga"\nhf_file = "saiga.gguf"\n',
        encoding="utf-8",
    )
    config = load_config(config_file(tmp_path, name="mine", catalog="models.toml"))
    assert named(config).model.hf_repo == TEST_REPO
    assert named(config, "saiga-gemma2-9b").model.hf_repo == "mirror/saiga"
    extra.write_text("[broken]\nhf_file = 3\n", encoding="utf-8")
    with pytest.raises(CatalogError, match=r"models.toml: \[broken\] hf_repo"):
        named(config)


async def test_models_list_catalog_shows_every_entry(tmp_path: Path) -> None:
    out = io.StringIO()
    config = load_config(config_file(tmp_path, name="saiga-gemma2-9b", models_dir="models"))
    assert await run_models(config, "list", out, catalog=True) == 0
    text = out.getvalue()
    assert "* saiga-gemma2-9b: SaigaGemma2 9B" in text
    assert f"{SAIGA_REPO}/{SAIGA_FILE}, size unknown, Gemma Terms of Use" in text
    assert "sha256 verified, n_ctx 8192, own chat template, not downloaded" in text
    assert text.count("sha256 unverified") == len(load_catalog()) - 1


def test_not_downloaded_offline_names_the_pull_command(tmp_path: Path) -> None:
    config = load_config(config_file(tmp_path, name="qwen2.5-1.5b", models_dir="models"))
    with pytest.raises(GeneratorError, match=r"run `python -m agent models pull qwen2.5-1.5b`"):
        resolve_model_path(config, download=False)
    check = _check_model(config)
    assert not check.ok
    assert "models pull qwen2.5-1.5b" in check.detail


def test_the_console_hint_is_for_the_bundled_model_only(tmp_path: Path) -> None:
    hint = russian_hint(load_config(config_file(tmp_path)))
    assert hint is not None
    assert f"python -m agent models pull {RUSSIAN_MODEL}" in hint
    assert f'[model] name = "{RUSSIAN_MODEL}"' in hint
    assert "\n" not in hint  # one line
    assert russian_hint(load_config(config_file(tmp_path, name="qwen2.5-3b"))) is None
    assert russian_hint(load_config(config_file(tmp_path, path="m.gguf"))) is None


# -- against the loopback hub, in a child process (huggingface_hub reads HF_ENDPOINT once) -------


@pytest.fixture
def test_hub(gguf_bytes: bytes) -> Iterator[FakeHub]:
    fake = FakeHub(TEST_REPO, {TEST_FILE: gguf_bytes}).start()
    yield fake
    fake.stop()


def served_catalog(tmp_path: Path, sha256: str) -> Path:
    """A catalog entry for the served file, with the Gemma template of the seed's model."""
    template = load_catalog()["saiga-gemma2-9b"].chat_template
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(
        f'[tiny]\nhf_repo = "{TEST_REPO}"\nhf_file = "{TEST_FILE}"\nsha256 = "{sha256}"\n'
        f'licence = "Apache-2.0"\nn_ctx = 2048\nchat_template = """{template}"""\n',
        encoding="utf-8",
    )
    return catalog


@pytest.mark.slow
@pytest.mark.model
def test_pull_by_name_downloads_checks_and_applies_the_template(
    test_hub: FakeHub, tmp_path: Path, gguf_bytes: bytes
) -> None:
    digest = hashlib.sha256(gguf_bytes).hexdigest()
    served_catalog(tmp_path, digest)
    config = config_file(tmp_path, catalog="catalog.toml", models_dir="models")
    hf_home = tmp_path / "hf"
    pulled = beseda(config, test_hub.url, hf_home, "models", "pull", "tiny", TQDM_POSITION="-1")
    assert pulled.returncode == 0, pulled.stderr
    assert "100%" in pulled.stderr  # the progress bar
    stored = tmp_path / "models" / "models--test-org--tiny-gemma-style" / "snapshots" / COMMIT
    assert hashlib.sha256((stored / TEST_FILE).read_bytes()).hexdigest() == digest
    assert 'to use it, set [model] name = "tiny"' in pulled.stdout
    assert "unverified" not in pulled.stdout

    # Now by name in the config, offline: the downloaded file and the catalog's template.
    test_hub.stop()
    named_config = config_file(tmp_path, name="tiny", catalog="catalog.toml", models_dir="models")
    shown = beseda(named_config, closed_port_url(), hf_home, "prompt", "Привет")
    assert shown.returncode == 0, shown.stderr
    assert "<start_of_turn>user\n" in shown.stdout
    assert "Привет<end_of_turn>\n<start_of_turn>model\n" in shown.stdout
    # Not the GGUF's own (SmolLM2's) template; its BOS token opens the prompt, as it should.
    assert "<|im_start|>system" not in shown.stdout
    assert "<|im_start|><start_of_turn>user\nYou are Beseda" in shown.stdout
    doctor = beseda(named_config, closed_port_url(), hf_home, "doctor")
    assert "[model] name tiny, [model] hf_repo test-org/tiny-gemma-style" in doctor.stdout
    assert "sha256 verified" in doctor.stdout


@pytest.mark.slow
def test_a_checksum_mismatch_stops_the_pull(
    test_hub: FakeHub, tmp_path: Path, gguf_bytes: bytes
) -> None:
    served_catalog(tmp_path, "ab" * 32)
    config = config_file(tmp_path, catalog="catalog.toml", models_dir="models")
    result = beseda(config, test_hub.url, tmp_path / "hf", "models", "pull", "tiny")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    actual = hashlib.sha256(gguf_bytes).hexdigest()
    assert f"announces sha256 {actual} for {TEST_FILE} in {TEST_REPO}, but" in result.stderr
    assert f"but {'ab' * 32} was expected" in result.stderr
    assert test_hub.downloads() == []  # refused before fetching a byte


@pytest.mark.slow
def test_pull_saiga_asks_for_the_seed_file_and_holds_it_to_the_seed_checksum(
    tmp_path: Path, gguf_bytes: bytes
) -> None:
    """The real file is 9B parameters and the hub is out of reach here: the fake serves other
    bytes under the seed's repository and file name. What is tested is everything but those
    bytes: the name resolves to the seed's repository and file, the hub is asked for exactly
    them, the download runs with progress, and the seed's checksum is what the file is held
    to — both when the hub announces another checksum (refused before downloading) and when
    it announces the seed's but serves other bytes (refused after downloading, nothing
    loaded)."""
    hub = FakeHub(SAIGA_REPO, {SAIGA_FILE: gguf_bytes, "README.md": b"# Saiga\n"}).start()
    try:
        config = config_file(tmp_path, models_dir="models")
        hf_home = tmp_path / "hf"
        refused = beseda(config, hub.url, hf_home, "models", "pull", "saiga-gemma2-9b")
        assert refused.returncode == 1
        assert f"but {SAIGA_SHA} was expected" in refused.stderr
        assert hub.downloads() == []
        assert any(r.path.startswith(f"/api/models/{SAIGA_REPO}/revision/") for r in hub.requests)

        hub.announced[SAIGA_FILE] = SAIGA_SHA  # as the real hub announces it
        pulled = beseda(
            config, hub.url, hf_home, "models", "pull", "saiga-gemma2-9b", TQDM_POSITION="-1"
        )
        assert any(r.path == f"/{SAIGA_REPO}/resolve/main/{SAIGA_FILE}" for r in hub.requests)
        assert len(hub.downloads()) == 1
        assert "100%" in pulled.stderr
        assert pulled.returncode == 1
        assert "Traceback" not in pulled.stderr
        actual = hashlib.sha256(gguf_bytes).hexdigest()
        assert f"[model] sha256: {SAIGA_FILE}" in pulled.stderr
        assert f"has sha256 {actual}, but {SAIGA_SHA} was expected" in pulled.stderr
    finally:
        hub.stop()


@pytest.mark.slow
def test_offline_a_named_model_names_the_pull_command(tmp_path: Path) -> None:
    config = config_file(tmp_path, name="saiga-gemma2-9b")
    result = beseda(config, closed_port_url(), tmp_path / "hf", "chat", "Привет")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"cannot download {SAIGA_REPO}/{SAIGA_FILE}" in result.stderr
    assert "`python -m agent models pull saiga-gemma2-9b`" in result.stderr
