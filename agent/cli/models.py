"""``python -m agent models {pull,list}``: fetch the configured model, show the local ones."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import TextIO

from agent.config import Config
from agent.generators import gguf
from agent.generators.base import GeneratorError
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


async def run_models(config: Config, action: str, out: TextIO) -> int:
    if action == "pull":
        return await asyncio.to_thread(_pull, config, out)
    return await asyncio.to_thread(_list, config, out)


def _pull(config: Config, out: TextIO) -> int:
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
    return 0


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
