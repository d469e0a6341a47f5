"""``python -m agent doctor``: what is configured, what works, and what is missing."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from adapters.matrix_session import device_summary
from adapters.registry import configured_adapters
from adapters.telegram import telegram_token
from agent.config import Config, select_backend
from agent.generators.base import GeneratorError
from agent.generators.catalog import with_named_model
from agent.generators.gguf import (
    check_gguf_file,
    kv_bytes_per_token,
    memory_estimate,
    read_metadata,
)
from agent.generators.hub import resolve_model_path
from agent.generators.openai_compat import check_server
from memory.db import Database, DatabaseError, head_revision


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str


async def run_doctor(config: Config, out: TextIO) -> int:
    config = select_backend(config)
    checks = [
        Check("config", True, str(config.source.resolve())),
        _check_data_dir(config.data_dir),
        await _check_database(config),
    ]
    remote = config.model.backend == "openai"
    if remote:
        checks.append(await _check_server(config))
    if not remote or config.model.fallback_to_local:
        model = await asyncio.to_thread(_check_model, config)
        checks.append(Check("fallback model", model.ok, model.detail) if remote else model)
    checks.append(check_platforms(config))
    if config.matrix.homeserver and config.matrix.user_id:
        summary = await asyncio.to_thread(device_summary, config)
        checks.append(Check("matrix", True, f"{config.matrix.user_id}: {summary}"))
    if telegram_token(config):
        from adapters.telegram.check import check_bot  # noqa: PLC0415 - imports aiogram

        checks.append(Check("telegram", *await check_bot(config)))
    width = max(len(c.name) for c in checks)
    for check in checks:
        mark = "ok " if check.ok else "FAIL"
        out.write(f"{check.name:<{width}}  {mark:<4}  {check.detail}\n")
    failed = [c.name for c in checks if not c.ok]
    out.write("all checks passed\n" if not failed else f"problems: {', '.join(failed)}\n")
    return 1 if failed else 0


def _check_data_dir(path: Path) -> Check:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return Check("data dir", False, f"{path}: cannot create: {exc.strerror}")
    if not os.access(path, os.W_OK):
        return Check("data dir", False, f"{path}: not writable ([storage] data_dir)")
    return Check("data dir", True, f"{path} (writable)")


async def _check_database(config: Config) -> Check:
    try:
        db = Database(config.database_url)
    except DatabaseError as exc:
        return Check("database", False, str(exc))
    shown = db.url.render_as_string(hide_password=True)
    try:
        current = await db.revision()
    except Exception as exc:  # any driver error is a finding to report, not a crash
        return Check("database", False, f"{shown}: cannot connect: {exc}")
    finally:
        await db.close()
    head = head_revision()
    if current is None:
        return Check("database", True, f"{shown} (empty: the schema is created on first start)")
    if current != head:
        return Check("database", True, f"{shown} (schema {current}; upgraded to {head} on start)")
    return Check("database", True, f"{shown} (schema {current}, up to date)")


async def _check_server(config: Config) -> Check:
    ok, detail = await check_server(config.model)
    return Check("server", ok, detail)


def _check_model(config: Config) -> Check:
    try:
        config = with_named_model(config)  # [model] name: the catalog's file and template
        # Never downloads: a hub model that is not there yet is reported with the command.
        path = resolve_model_path(config, download=False)
        check_gguf_file(path)
    except GeneratorError as exc:
        return Check("model", False, str(exc))
    origin = (
        f"[model] hf_repo {config.model.hf_repo}"
        if config.model.hf_repo
        else ("[model] path" if config.model.path else "bundled")
    )
    if config.model.name:
        origin = f"[model] name {config.model.name}, {origin}"
    if config.model.hf_repo:
        # Nobody can tell this file from another of the same name: say so.
        origin += ", sha256 verified" if config.model.sha256 else ", sha256 UNVERIFIED"
    size_mb = path.stat().st_size / 1e6
    try:
        metadata = read_metadata(path)
    except (ValueError, RuntimeError) as exc:
        return Check("model", False, f"{path}: llama.cpp cannot read it: {exc}")
    has_template = bool(config.model.chat_template or metadata.get("tokenizer.chat_template"))
    arch = metadata.get("general.architecture", "?")
    trained = metadata.get(f"{arch}.context_length", "?")
    template = (
        "from config"
        if config.model.chat_template
        else ("in GGUF" if has_template else "MISSING: set [model] chat_template")
    )
    detail = (
        f"{path.name} ({origin}, {size_mb:.0f} MB, {arch}, trained context {trained}, "
        f"n_ctx {config.model.n_ctx}, chat template {template})"
    )
    if (per_token := kv_bytes_per_token(metadata)) is not None:
        model, context = config.model, config.context
        detail += "; " + memory_estimate(
            per_token, model.n_ctx, model.parallel, context.state_cache_mb
        )
    return Check("model", has_template, detail)


def check_platforms(config: Config) -> Check:
    # The same decision `run` makes (credentials from the config, the environment or .env).
    found = [adapter.name for adapter in configured_adapters(config, console=None)]
    if not found:
        return Check(
            "platforms",
            True,
            "no Discord or Matrix credentials set, no Telegram token: `run` opens the console chat",
        )
    return Check("platforms", True, f"credentials found for {', '.join(found)}")
