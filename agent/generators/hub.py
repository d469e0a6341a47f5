"""GGUF models from a Hugging Face repository: ``[model] hf_repo`` and ``hf_file``.

The file is downloaded once with huggingface_hub into the Hugging Face cache layout (the
standard cache, or ``[model] models_dir``) and later starts find it there without touching the
network, so a bot that once worked keeps starting when the hub is unreachable. Every failure
becomes a :class:`GeneratorError` that names the setting to change.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from agent.config import Config, load_dotenv_into_environ
from agent.generators.base import GeneratorError
from agent.generators.catalog import named_entry, with_named_model
from agent.generators.gguf import bundled_model_path, check_gguf_file

COMMIT_HASH = re.compile(r"^[0-9a-f]{40}$")
DEFAULT_REVISION = "main"
_HASH_CHUNK = 1 << 20
# Written in the repository's cache folder after a successful check, so a large file is
# hashed once, not at every start; keyed by the expected hash, invalidated when the file's
# size or mtime change.
VERIFIED_DIR = ".beseda-verified"


@dataclass(frozen=True, slots=True)
class HubFile:
    """What ``[model]`` asks for: a file (or glob) in a repository at a revision."""

    repo: str
    pattern: str
    revision: str
    sha256: str
    cache_dir: Path
    # [model] name, when the catalog chose the file: `models pull NAME` fetches it.
    name: str = ""

    @property
    def pull(self) -> str:
        """The command that downloads it."""
        return f"python -m agent models pull {self.name}".strip()

    @property
    def storage(self) -> Path:
        return self.cache_dir / f"models--{self.repo.replace('/', '--')}"

    @property
    def wanted(self) -> str:
        at = f"@{self.revision}" if self.revision != DEFAULT_REVISION else ""
        return f"{self.repo}/{self.pattern}{at}"


def hub_cache_dir() -> Path:
    """The standard Hugging Face cache (honours HF_HOME and HF_HUB_CACHE)."""
    from huggingface_hub import constants  # noqa: PLC0415 - only when a hub model is used

    return Path(constants.HF_HUB_CACHE)


def models_dir(config: Config) -> Path:
    if config.model.models_dir:
        return config.resolve_path(config.model.models_dir)
    return hub_cache_dir()


def hub_file(config: Config) -> HubFile | None:
    config = with_named_model(config)  # [model] name: the catalog's repository and file
    model = config.model
    if not model.hf_repo:
        return None
    if model.path:
        raise GeneratorError(
            "[model] path and [model] hf_repo are both set: keep one of them "
            "(path for a local file, hf_repo and hf_file to download one)"
        )
    if not model.hf_file:
        raise GeneratorError(
            "[model] hf_file: empty; set it to the GGUF file's name in "
            f"{model.hf_repo} or to a glob such as *Q4_K_M.gguf"
        )
    # .env may carry HF_TOKEN or HF_ENDPOINT; huggingface_hub reads them from os.environ.
    load_dotenv_into_environ(config.base_dir)
    return HubFile(
        repo=model.hf_repo.strip("/"),
        pattern=model.hf_file,
        revision=model.revision or DEFAULT_REVISION,
        sha256=model.sha256.lower(),
        cache_dir=models_dir(config),
        name=model.name if model.name and model.hf_repo == _catalog_repo(config) else "",
    )


def _catalog_repo(config: Config) -> str:
    entry = named_entry(config)
    return entry.hf_repo if entry is not None else ""


def ensure_model(config: Config, *, download: bool = True) -> Path:
    """The local path of the configured hub model, downloading it only when it is missing."""
    spec = hub_file(config)
    if spec is None:
        raise GeneratorError("[model] hf_repo is not set")
    path = cached_model(spec)
    if path is None:
        if not download:
            raise GeneratorError(
                f"[model] hf_repo: {spec.wanted} is not downloaded yet (looked in "
                f"{spec.cache_dir}); run `{spec.pull}`"
            )
        path = download_model(spec)
    try:
        check_gguf_file(path)
    except GeneratorError as exc:
        problem = str(exc).removeprefix("[model] path: ")
        raise GeneratorError(
            f"[model] hf_file: the downloaded {spec.wanted} is unusable: {problem}; "
            f"delete {path.resolve()} to download it again"
        ) from None
    verify_sha256(path, spec)
    return path


def cached_model(spec: HubFile) -> Path | None:
    """The file from a previous download, found without any network access."""
    if COMMIT_HASH.match(spec.revision):
        commit = spec.revision
    else:
        try:
            commit = (spec.storage / "refs" / spec.revision).read_text(encoding="utf-8").strip()
        except OSError:
            return None
    snapshot = spec.storage / "snapshots" / commit
    if not snapshot.is_dir():
        return None
    names = sorted(
        path.relative_to(snapshot).as_posix()
        for path in snapshot.rglob("*")
        if path.is_file()  # a dangling link (blob removed) does not count
    )
    matches = _matching(names, spec.pattern)
    return snapshot / matches[0] if len(matches) == 1 else None


def download_model(spec: HubFile) -> Path:
    """Download (or confirm) the file with huggingface_hub; resumes a cut connection."""
    # huggingface_hub prints its warnings through its own handler; without this, the root
    # handler would print each one a second time.
    logging.getLogger("huggingface_hub").propagate = False
    from huggingface_hub import constants, hf_hub_download  # noqa: PLC0415
    from huggingface_hub.errors import (  # noqa: PLC0415
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint = constants.ENDPOINT
    try:
        # The file list first, even for an exact name: it fails at once when the hub is
        # unreachable (the download's HEAD request retries for about 20 s) and tells a
        # missing file from a missing repository.
        filename, announced = _remote_filename(spec)
        if spec.sha256 and announced and announced != spec.sha256:
            # Before gigabytes are fetched: the repository's file is not the one expected.
            raise GeneratorError(
                f"[model] sha256: {endpoint} announces sha256 {announced} for {filename} in "
                f"{spec.repo}, but {spec.sha256} was expected ([model] sha256, or the catalog "
                "entry of [model] name): the file there has changed; check it, then set "
                "[model] sha256 to the new value"
            )
        path = hf_hub_download(
            spec.repo, filename, revision=spec.revision, cache_dir=spec.cache_dir
        )
    except GatedRepoError:
        raise GeneratorError(
            f"[model] hf_repo: {spec.repo} is gated on {endpoint}: accept its terms on the "
            "website, then set HF_TOKEN to a token of that account"
        ) from None
    except RepositoryNotFoundError:
        raise GeneratorError(
            f"[model] hf_repo: repository {spec.repo} not found on {endpoint} "
            "(a private repository needs HF_TOKEN)"
        ) from None
    except RevisionNotFoundError:
        raise GeneratorError(
            f"[model] revision: {spec.revision!r} not found in {spec.repo} on {endpoint}"
        ) from None
    except EntryNotFoundError as exc:
        if isinstance(exc, LocalEntryNotFoundError):
            raise GeneratorError(_offline_message(spec, endpoint, exc)) from None
        raise GeneratorError(
            f"[model] hf_file: {spec.pattern} is not in {spec.repo}@{spec.revision} on {endpoint}"
        ) from None
    except (OfflineModeIsEnabled, HfHubHTTPError, OSError) as exc:
        raise GeneratorError(_offline_message(spec, endpoint, exc)) from None
    except Exception as exc:  # httpx errors and the like: the network, not a bug here
        if type(exc).__module__.split(".")[0] in {"httpx", "httpx2", "httpcore", "httpcore2"}:
            raise GeneratorError(_offline_message(spec, endpoint, exc)) from None
        raise
    return Path(path)


def _remote_filename(spec: HubFile) -> tuple[str, str]:
    """The file's name in the repository, and the sha256 the hub announces for it ("" when
    it announces none: files not stored with LFS)."""
    from huggingface_hub import HfApi, constants  # noqa: PLC0415

    info = HfApi().model_info(
        spec.repo,
        revision=spec.revision,
        timeout=constants.HF_HUB_ETAG_TIMEOUT,
        files_metadata=bool(spec.sha256),
    )
    siblings = {sibling.rfilename: sibling for sibling in info.siblings or []}
    names = sorted(siblings)
    matches = _matching(names, spec.pattern)
    if len(matches) == 1:
        lfs = siblings[matches[0]].lfs
        return matches[0], (lfs.sha256 if lfs is not None else "").lower()
    ggufs = [name for name in names if name.endswith(".gguf")]
    if not matches:
        raise GeneratorError(
            f"[model] hf_file: no file in {spec.repo}@{spec.revision} matches {spec.pattern!r}; "
            f"GGUF files there: {', '.join(ggufs) or 'none'}"
        )
    raise GeneratorError(
        f"[model] hf_file: {spec.pattern!r} matches several files in {spec.repo}: "
        f"{', '.join(matches)}; give one exact name"
    )


def _matching(names: Iterable[str], pattern: str) -> list[str]:
    # Case-insensitive (repositories spell Q4_K_M and q4_k_m alike), and a bare glob also
    # matches inside sub-folders of the repository ("*Q4_K_M.gguf").
    pattern = pattern.lower()
    return [
        name
        for name in names
        if fnmatch.fnmatchcase(name.lower(), pattern)
        or fnmatch.fnmatchcase(name.rsplit("/", 1)[-1].lower(), pattern)
    ]


def _offline_message(spec: HubFile, endpoint: str, exc: BaseException) -> str:
    # "not in the local cache" says less than what made the hub unreachable.
    if isinstance(exc.__cause__, Exception):
        exc = exc.__cause__
    text = str(exc).strip()
    reason = text.splitlines()[0] if text else type(exc).__name__
    return (
        f"[model] hf_repo: cannot download {spec.wanted} from {endpoint} ({reason[:200]}), "
        f"and it is not in {spec.cache_dir} yet. Connect to the network and run "
        f"`{spec.pull}` (HF_ENDPOINT selects a mirror), or download the file "
        "by hand and set [model] path to it instead of hf_repo"
    )


def verify_sha256(path: Path, spec: HubFile) -> None:
    if not spec.sha256:
        return
    real = path.resolve()
    stat = real.stat()
    stamp = f"{real}\n{stat.st_size}\n{stat.st_mtime_ns}\n"
    # Inside the repository's folder: `hf cache scan` warns about unknown top-level folders.
    marker = spec.storage / VERIFIED_DIR / spec.sha256
    try:
        if marker.read_text(encoding="utf-8") == stamp:
            return
    except OSError:
        pass
    actual = file_sha256(real)
    if actual != spec.sha256:
        raise GeneratorError(
            f"[model] sha256: {path.name} ({real}) has sha256 {actual}, but {spec.sha256} was "
            "expected: fix [model] sha256, or delete that file to download it again"
        )
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(stamp, encoding="utf-8")
    except OSError:
        pass  # only a cache: the next start hashes again


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def downloaded_models(cache_dirs: Iterable[Path]) -> list[tuple[str, Path]]:
    """GGUF files in Hugging Face cache folders, as (``repo@commit``, path)."""
    found: dict[Path, tuple[str, Path]] = {}
    for cache_dir in cache_dirs:
        for storage in sorted(cache_dir.glob("models--*")):
            repo = storage.name.removeprefix("models--").replace("--", "/")
            for path in sorted((storage / "snapshots").glob("*/**/*.gguf")):
                if path.is_file():
                    commit = path.relative_to(storage / "snapshots").parts[0]
                    found.setdefault(path.resolve(), (f"{repo}@{commit[:8]}", path))
    return list(found.values())


def resolve_model_path(config: Config, *, download: bool = True) -> Path:
    """The GGUF to load; a ``[model] hf_repo`` file is downloaded on first use (blocking)."""
    config = with_named_model(config)
    if config.model.hf_repo:
        return ensure_model(config, download=download)
    if not config.model.path:
        return bundled_model_path()
    path = config.resolve_path(config.model.path)
    check_gguf_file(path)
    return path
