"""Shared by the remote generator's tests: a config for the scripted loopback server
(tests/support/openai_peer.py), and an injected ``sleep`` that records the delays between
retries, so the retry policy is asserted exactly and nothing depends on the wall clock."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from agent.config import Config, ModelConfig, load_config
from agent.generators.base import ChatMessage, SamplingParams
from tests.conftest import write_config

MESSAGES = [
    ChatMessage("system", "You are a helpful assistant. Answer briefly."),
    ChatMessage("user", "What is the capital of France?"),
]
GREEDY = SamplingParams(temperature=0.0, max_tokens=24, seed=7)
HANG_GUARD = 30  # seconds; only stops a broken test from hanging, never a measured quantity


class RecordingSleep:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


def remote_config(url: str, key: str | None = "fake-key", **values: Any) -> ModelConfig:
    settings: dict[str, Any] = {
        "backend": "openai",
        "base_url": url,
        "n_ctx": 1024,
        "retry_backoff": 0.25,
        "max_retries": 2,
        "read_timeout": 30.0,
        "connect_timeout": 5.0,
    }
    if key is not None:
        settings["api_key"] = key
    settings.update(values)
    return ModelConfig.model_validate(settings)


async def collect(generator: Any, params: SamplingParams = GREEDY) -> tuple[list[str], Any]:
    tokens = generator.stream(MESSAGES, params)
    pieces = [piece async for piece in tokens]
    return pieces, tokens.stats


async def drain(generator: Any, into: list[str]) -> None:
    """Collect pieces into ``into`` so a test sees what arrived before an error."""
    async for piece in generator.stream(MESSAGES, GREEDY):
        into.append(piece)


def doctor_config(tmp_path: Path, **model: Any) -> Config:
    model = {"backend": "openai", "max_retries": 0, **model}
    return load_config(write_config(tmp_path / "c.toml", model=model), environ={})
