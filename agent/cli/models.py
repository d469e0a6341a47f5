"""``python -m agent models {pull [NAME],list [--catalog]}``: fetch the configured model (or
one from the catalog by name), show the local ones or the catalog."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import TextIO

from agent.config import Config
from agent.generators import gguf
from agent.generators.base import GeneratorError
from agent.generators.catalog import catalog_for, with_named_model
from agent.generators.hub import (
    cached_model,
    download_model,
    downloaded_models,
    hub_cache_dir,
    hub_file,
    models_dir,
    resolve_model_path,
    verify_sha256,
)


async def run_models(
    config: Config, action: str, out: TextIO, *, name: str | None = None, catalog: bool = False
) -> int:
    if action == "pull":
        return await asyncio.to_thread(_pull, config, out, name)
    if catalog:
        return await asyncio.to_thread(_catalog, config, out)
    return await asyncio.to_thread(_list, config, out)


def _pull(config: Config, out: TextIO, name: str | None = None) -> int:
    if name:
        # The catalog's file, whatever [model] downloads otherwise (models_dir still applies).
        config = with_named_model(_without_file(config), name)
    spec = hub_file(config)
    if spec is None:
        where = f"[model] path = {config.model.path}" if config.model.path else "the bundled model"
        out.write(f"nothing to download: [model] hf_repo is not set ({where} is used)\n")
        return 0
    # Always asks the hub, so a branch that moved on is updated; an unchanged file is kept.
    try:
        path = download_model(spec)
    except GeneratorError as exc:
        cached = cached_model(spec)
        if cached is None:
            raise
        out.write(f"could not check for a newer file ({exc}); keeping the downloaded one\n")
        path = cached
    verify_sha256(path, spec)
    out.write(f"{spec.wanted}: {path}\n")
    if not spec.sha256:
        out.write("sha256 unverified: no checksum is known for this file to check it against\n")
    if name:
        out.write(f'to use it, set [model] name = "{config.model.name}" in {config.source.name}\n')
    return 0


def _catalog(config: Config, out: TextIO) -> int:
    """Every model the catalog knows by name, and whether it is downloaded already."""
    for entry in catalog_for(config).values():
        named = with_named_model(_without_file(config), entry.name)
        spec = hub_file(named)
        here = spec is not None and cached_model(spec) is not None
        mark = "*" if config.model.name == entry.name else " "
        checksum = "sha256 verified" if entry.verified else "sha256 unverified"
        template = "own chat template" if entry.chat_template else "template from the GGUF"
        licence = entry.licence or "licence unknown"
        out.write(
            f"{mark} {entry.name}: {entry.title}\n"
            f"    {entry.hf_repo}/{entry.hf_file}, {entry.size}, {licence}\n"
            f"    {checksum}, n_ctx {entry.n_ctx or 'default'}, {template}, "
            f"{'downloaded' if here else 'not downloaded'}\n"
        )
    out.write("(* = [model] name; python -m agent models pull NAME downloads one)\n")
    return 0


def _without_file(config: Config) -> Config:
    cleared = {"path": "", "hf_repo": "", "hf_file": "", "sha256": "", "revision": ""}
    return config.model_copy(update={"model": config.model.model_copy(update=cleared)})


def _list(config: Config, out: TextIO) -> int:
    entries: list[tuple[str, Path]] = []
    with contextlib.suppress(GeneratorError):  # not installed: nothing to show
        entries.append(("bundled", gguf.bundled_model_path()))
    if config.model.path:
        entries.append(("[model] path", config.resolve_path(config.model.path)))
    folders = dict.fromkeys([models_dir(config), hub_cache_dir()])
    entries.extend(downloaded_models(folders))
    try:
        in_use: Path | None = resolve_model_path(config, download=False).resolve()
    except GeneratorError:
        in_use = None
    seen: set[Path] = set()
    for origin, path in entries:
        real = path.resolve()
        if real in seen:
            continue
        seen.add(real)
        mark = "*" if real == in_use else " "
        if not path.is_file():
            out.write(f"{mark} {origin}: {path} (missing)\n")
            continue
        try:
            info = gguf.summary(path)
        except (ValueError, RuntimeError, OSError) as exc:
            out.write(f"{mark} {origin}: {path} (unreadable: {exc})\n")
            continue
        template = "yes" if info["chat_template"] else "NO (set [model] chat_template)"
        out.write(
            f"{mark} {origin}: {path.name}\n"
            f"    {info['size'] / 1e6:.0f} MB, {info['architecture']}, {info['quantisation']}, "
            f"context {info['context_length']}, chat template {template}\n"
            f"    {path}\n"
        )
    if not seen:
        out.write("no local models\n")
    else:
        out.write("(* = the model [model] selects)\n")
    return 0
