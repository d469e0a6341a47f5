"""[model] hf_repo: download from a loopback hub, reuse offline, verify, resume, list."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.cli.models import run_models
from agent.config import load_config
from agent.generators.base import GeneratorError
from agent.generators.gguf import bundled_model_path
from agent.generators.hub import cached_model, hub_file, resolve_model_path
from tests.conftest import write_config
from tests.support.hub_fake import COMMIT, FakeHub

ROOT = Path(__file__).resolve().parent.parent
# A failsafe against a hung child, never a performance assertion.
HANG = 180
REPO = "test-org/smollm2-gguf"
FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def gguf_bytes() -> bytes:
    return bundled_model_path().read_bytes()


@pytest.fixture
def hub(gguf_bytes: bytes) -> Iterator[FakeHub]:
    fake = FakeHub(REPO, {FILE: gguf_bytes, "README.md": b"# a model\n"}).start()
    yield fake
    fake.stop()


def hub_config(tmp_path: Path, **model: object) -> Path:
    values: dict[str, object] = {"hf_repo": REPO, "hf_file": "*Q4_1.gguf", **model}
    return write_config(tmp_path / "beseda.toml", model=values)


def beseda(
    config: Path, endpoint: str, hf_home: Path, *args: str, **extra_env: str
) -> subprocess.CompletedProcess[str]:
    # HF_ENDPOINT and HF_HOME are read by huggingface_hub when it is imported, hence a child.
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("HF_", "HUGGING_FACE_")) and key != "BESEDA_CONFIG"
    }
    env.update(
        {
            "HF_ENDPOINT": endpoint,
            "HF_HOME": str(hf_home),
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "PYTHONUNBUFFERED": "1",
            **extra_env,
        }
    )
    return subprocess.run(
        [sys.executable, "-m", "agent", "--config", str(config), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=HANG,
        env=env,
        check=False,
    )


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- in-process: configuration and the offline cache lookup -----------------------------


def test_hub_file_needs_hf_file(tmp_path: Path) -> None:
    config = load_config(hub_config(tmp_path, hf_file=""))
    with pytest.raises(GeneratorError, match=r"\[model\] hf_file: empty"):
        hub_file(config)


def test_path_and_hf_repo_together_are_refused(tmp_path: Path) -> None:
    config = load_config(hub_config(tmp_path, path="model.gguf"))
    with pytest.raises(GeneratorError, match=r"\[model\] path and \[model\] hf_repo"):
        resolve_model_path(config)


def test_sha256_must_be_hex(tmp_path: Path) -> None:
    from agent.config import ConfigError  # noqa: PLC0415

    with pytest.raises(ConfigError, match="sha256"):
        load_config(hub_config(tmp_path, sha256="not-a-hash"))


def test_cached_lookup_follows_the_ref_and_the_glob(tmp_path: Path) -> None:
    models = tmp_path / "models"
    config = load_config(hub_config(tmp_path, models_dir=str(models)))
    spec = hub_file(config)
    assert spec is not None
    assert spec.cache_dir == models
    assert cached_model(spec) is None
    storage = models / "models--test-org--smollm2-gguf"
    snapshot = storage / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(COMMIT)
    (snapshot / FILE).write_bytes(b"GGUF")
    (snapshot / "other.Q8_0.gguf").write_bytes(b"GGUF")
    assert cached_model(spec) == snapshot / FILE
    lower = hub_file(
        load_config(hub_config(tmp_path, models_dir=str(models), hf_file="*q4_1.GGUF"))
    )
    assert lower is not None
    assert cached_model(lower) == snapshot / FILE
    # Not downloaded yet, and downloads are not allowed: the command to run is named.
    other = load_config(hub_config(tmp_path, models_dir=str(models), hf_file="*Q5_K_M.gguf"))
    with pytest.raises(GeneratorError, match=r"not downloaded yet.*models pull"):
        resolve_model_path(other, download=False)


async def test_pull_without_hf_repo_has_nothing_to_do(tmp_path: Path) -> None:
    out = io.StringIO()
    config = load_config(write_config(tmp_path / "beseda.toml"))
    assert await run_models(config, "pull", out) == 0
    assert out.getvalue() == (
        "nothing to download: [model] hf_repo is not set (the bundled model is used)\n"
    )


# --- subprocesses against the loopback hub ------------------------------------------------


@pytest.mark.slow
@pytest.mark.model
def test_first_run_downloads_later_runs_need_no_hub(
    hub: FakeHub, tmp_path: Path, gguf_bytes: bytes
) -> None:
    hf_home = tmp_path / "hf"
    digest = hashlib.sha256(gguf_bytes).hexdigest()
    config = hub_config(tmp_path, sha256=digest)

    # tqdm hides its bar when stderr is not a terminal; TQDM_POSITION=-1 keeps it here.
    first = beseda(config, hub.url, hf_home, "chat", "What is 2+2?", TQDM_POSITION="-1")
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip()
    assert "Traceback" not in first.stderr
    assert "100%" in first.stderr
    assert "98.4M/98.4M" in first.stderr
    assert [r.path for r in hub.downloads()] == [f"/cdn/{digest}"]
    assert any(r.path == f"/{REPO}/resolve/main/{FILE}" for r in hub.requests)
    # The standard cache under HF_HOME, in the hub's own layout.
    stored = hf_home / "hub" / "models--test-org--smollm2-gguf" / "snapshots" / COMMIT / FILE
    assert sha256(stored) == digest

    hub.stop()
    second = beseda(config, hub_url_gone := closed_port_url(), hf_home, "chat", "Hello!")
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip()
    assert hub_url_gone not in second.stderr

    pulled = beseda(config, closed_port_url(), hf_home, "models", "pull")
    assert pulled.returncode == 0, pulled.stderr
    assert "keeping the downloaded one" in pulled.stdout

    listed = beseda(config, closed_port_url(), hf_home, "models", "list")
    assert listed.returncode == 0, listed.stderr
    out = listed.stdout
    assert "bundled: SmolLM2-135M-Instruct.Q4_1.gguf" in out
    assert f"* {REPO}@{COMMIT[:8]}: {FILE}" in out
    assert out.count("98 MB, llama, Q4_1, context 8192, chat template yes") == 2

    doctor = beseda(config, closed_port_url(), hf_home, "doctor")
    assert f"[model] hf_repo {REPO}" in doctor.stdout


@pytest.mark.slow
def test_wrong_sha256_is_a_clear_error(hub: FakeHub, tmp_path: Path) -> None:
    config = hub_config(tmp_path, sha256="0" * 64)
    result = beseda(config, hub.url, tmp_path / "hf", "chat", "Hello!")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "[model] sha256: " in result.stderr
    assert f"for {FILE} in " in result.stderr
    assert "0" * 64 + " was expected" in result.stderr
    # The hub announced the file's checksum, so nothing was fetched to find out.
    assert hub.downloads() == []


@pytest.mark.slow
@pytest.mark.parametrize("cdn_redirect", [True, False], ids=["lfs-cdn", "direct"])
def test_interrupted_download_resumes(
    hub: FakeHub, tmp_path: Path, gguf_bytes: bytes, cdn_redirect: bool
) -> None:
    hub.cut_first_download = True
    hub.cdn_redirect = cdn_redirect
    config = hub_config(tmp_path, models_dir="data/models", hf_file=FILE)
    result = beseda(config, hub.url, tmp_path / "hf", "models", "pull")
    assert result.returncode == 0, result.stderr
    ranges = [r.range for r in hub.downloads()]
    assert ranges[0] is None
    assert len(ranges) == 2
    assert ranges[1] is not None
    resumed_at = int(ranges[1].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at < len(gguf_bytes)
    stored = tmp_path / "data" / "models" / "models--test-org--smollm2-gguf" / "snapshots"
    assert sha256(stored / COMMIT / FILE) == hashlib.sha256(gguf_bytes).hexdigest()
    assert not (tmp_path / "hf" / "hub" / "models--test-org--smollm2-gguf").exists()


@pytest.mark.slow
@pytest.mark.parametrize("hf_file", ["*Q4_1.gguf", FILE])
def test_unreachable_hub_names_what_to_do(tmp_path: Path, hf_file: str) -> None:
    config = hub_config(tmp_path, hf_file=hf_file)
    result = beseda(config, closed_port_url(), tmp_path / "hf", "chat", "Hello!")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"cannot download {REPO}/{hf_file}" in result.stderr
    assert "set [model] path to it" in result.stderr
    assert "python -m agent models pull" in result.stderr


@pytest.mark.slow
def test_unknown_file_and_repo_name_the_setting(hub: FakeHub, tmp_path: Path) -> None:
    missing = beseda(
        hub_config(tmp_path, hf_file="*Q8_0.gguf"), hub.url, tmp_path / "hf", "models", "pull"
    )
    assert missing.returncode == 1
    assert "[model] hf_file: no file in" in missing.stderr
    assert FILE in missing.stderr  # what is there instead
    other = hub_config(tmp_path, hf_repo="nobody/nothing")
    unknown = beseda(other, hub.url, tmp_path / "hf", "models", "pull")
    assert unknown.returncode == 1
    assert "[model] hf_repo: repository nobody/nothing not found" in unknown.stderr


@pytest.mark.slow
@pytest.mark.model
def test_downloaded_gguf_without_template_names_the_setting(
    tmp_path: Path, gguf_bytes: bytes
) -> None:
    key = b"tokenizer.chat_template"
    assert gguf_bytes.count(key) == 1
    templateless = gguf_bytes.replace(key, b"tokenizer.chat_templatX")
    fake = FakeHub(REPO, {"base.Q4_1.gguf": templateless}).start()
    try:
        config = hub_config(tmp_path, hf_file="base.Q4_1.gguf")
        result = beseda(config, fake.url, tmp_path / "hf", "chat", "Hello!")
    finally:
        fake.stop()
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "no chat template" in result.stderr
    assert "[model] chat_template" in result.stderr


@pytest.mark.slow
def test_corrupted_file_is_caught_and_deleting_it_downloads_again(
    hub: FakeHub, tmp_path: Path, gguf_bytes: bytes
) -> None:
    hf_home = tmp_path / "hf"
    config = hub_config(tmp_path, sha256=hashlib.sha256(gguf_bytes).hexdigest())
    assert beseda(config, hub.url, hf_home, "models", "pull").returncode == 0
    blobs = list((hf_home / "hub" / "models--test-org--smollm2-gguf" / "blobs").iterdir())
    assert len(blobs) == 1
    blobs[0].write_bytes(gguf_bytes[:-1] + b"\0")  # same size, one byte differs

    hub.stop()  # the check is offline
    corrupted = beseda(config, closed_port_url(), hf_home, "chat", "Hello!")
    assert corrupted.returncode == 1
    assert "Traceback" not in corrupted.stderr
    assert f"[model] sha256: {FILE} ({blobs[0].resolve()}) has sha256" in corrupted.stderr

    blobs[0].unlink()
    hub.start()
    again = beseda(config, hub.url, hf_home, "models", "pull")
    assert again.returncode == 0, again.stderr
    assert sha256(blobs[0]) == hashlib.sha256(gguf_bytes).hexdigest()
