"""Models by name: ``[model] name = "saiga-gemma2-9b"`` instead of a repository, a file, a
checksum and a chat template found by hand.

The catalog (models.toml beside this module, plus ``[model] catalog``, a file of the same
form whose entries add to or replace the built-in ones) maps a name to where the GGUF is on
the hub and how to run it. :func:`with_named_model` fills the ``[model]`` settings the
configuration leaves unset from the entry; what the configuration sets wins, and an explicit
``path`` or ``hf_repo`` keeps its file (the entry still gives the template and defaults).
"""

from __future__ import annotations

import tomllib
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.config import Config
from agent.generators.base import GeneratorError

BUILTIN = Path(__file__).with_name("models.toml")
# The model the console suggests to people who write in Russian to the bundled one.
RUSSIAN_MODEL = "saiga-gemma2-9b"
_SAMPLER_KEYS = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty")


class CatalogError(GeneratorError):
    """An unknown name, or a catalog file that cannot be used (the message says which)."""


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Sampler(_Strict):
    temperature: float | None = Field(default=None, ge=0.0, le=5.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repeat_penalty: float | None = Field(default=None, ge=0.0)


class Entry(_Strict):
    name: str
    title: str = ""
    hf_repo: str = Field(min_length=3)
    hf_file: str = Field(min_length=1)
    revision: str = ""
    # "" = nobody verified it: the download is not checked (doctor says so).
    sha256: str = Field(default="", pattern=r"^([0-9a-fA-F]{64})?$")
    # 0 = not known.
    size_bytes: int = Field(default=0, ge=0)
    licence: str = ""
    languages: tuple[str, ...] = ()
    n_ctx: int = Field(default=0, ge=0)
    # "" = the template inside the GGUF.
    chat_template: str = ""
    sampler: Sampler = Sampler()

    @property
    def verified(self) -> bool:
        return bool(self.sha256)

    @property
    def size(self) -> str:
        return f"{self.size_bytes / 1e9:.2f} GB" if self.size_bytes else "size unknown"


def load_catalog(extra: Path | None = None) -> dict[str, Entry]:
    """The built-in entries, then ``extra``'s (which win on equal names)."""
    entries = dict(_builtin())
    if extra is not None:
        entries.update(_read(extra))
    return entries


@cache
def _builtin() -> tuple[tuple[str, Entry], ...]:
    return tuple(_read(BUILTIN).items())


def _read(path: Path) -> dict[str, Entry]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogError(f"[model] catalog: cannot read {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"[model] catalog: {path} is not valid TOML: {exc}") from None
    entries = {}
    for name, table in data.items():
        if not isinstance(table, dict):
            raise CatalogError(f"[model] catalog: {path}: {name}: expected a table [{name}]")
        try:
            entries[name] = Entry.model_validate({"name": name, **table})
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg'].lower()}" for e in exc.errors()
            )
            raise CatalogError(f"[model] catalog: {path}: [{name}] {problems}") from None
    return entries


def catalog_for(config: Config) -> dict[str, Entry]:
    extra = config.model.catalog
    return load_catalog(config.resolve_path(extra) if extra else None)


def entry_for(config: Config, name: str | None = None) -> Entry | None:
    """The entry ``name`` (default: ``[model] name``) designates; None when no name is set.
    Raises :class:`CatalogError` for an unknown name."""
    wanted = (name if name is not None else config.model.name).strip()
    if not wanted:
        return None
    entries = catalog_for(config)
    found = entries.get(wanted) or entries.get(wanted.lower())
    if found is None:
        raise CatalogError(
            f"[model] name: no model named {wanted!r} in the catalog; known: "
            f"{', '.join(sorted(entries))} (python -m agent models list --catalog)"
        )
    return found


def with_named_model(config: Config, name: str | None = None) -> Config:
    """``config`` with the ``[model]`` settings it leaves unset taken from the catalog entry
    (``name``, default ``[model] name``). Applying it twice changes nothing more."""
    entry = entry_for(config, name)
    if entry is None:
        return config
    model = config.model
    given = model.model_fields_set
    update: dict[str, Any] = {"name": entry.name}
    if not model.path and not model.hf_repo:
        update |= {"hf_repo": entry.hf_repo, "hf_file": entry.hf_file, "sha256": entry.sha256}
        if entry.revision and "revision" not in given:
            update["revision"] = entry.revision
    if entry.chat_template and "chat_template" not in given:
        update["chat_template"] = entry.chat_template
    if entry.n_ctx and "n_ctx" not in given:
        update["n_ctx"] = entry.n_ctx
    for key in _SAMPLER_KEYS:
        value = getattr(entry.sampler, key)
        if value is not None and key not in given:
            update[key] = value
    return config.model_copy(update={"model": model.model_copy(update=update)})


def named_entry(config: Config) -> Entry | None:
    """The catalog entry whose file ``[model]`` downloads, if it names one (for doctor)."""
    try:
        entry = entry_for(config)
    except CatalogError:
        return None
    if entry is None or config.model.hf_repo.strip("/") != entry.hf_repo:
        return None
    return entry
