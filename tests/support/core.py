"""One way to build a Core for tests: the production wiring over a small, deterministic
config (no date line, short replies), with the knobs the tests turn."""

from __future__ import annotations

import time

from agent.config import ChatConfig, Config, ContextConfig, LimitsConfig, ModelConfig, PersonaConfig
from agent.generators.base import Generator
from agent.runtime.core import Core
from agent.runtime.limits import Clock
from agent.wiring import build_core
from memory.history import HistoryStore

TEST_PERSONA = "You are a test."


def make_core(
    history: HistoryStore,
    generator: Generator,
    *,
    clock: Clock | None = None,
    max_tokens: int = 64,
    margin: int = 8,
    persona: str = TEST_PERSONA,
    max_chars: int = 20_000,
    limits: dict[str, float] | None = None,
    chat: dict[str, object] | None = None,
    **context: object,
) -> Core:
    """``context`` goes to [context] over ``date = "off"`` (e.g. ``summaries=False``),
    ``chat`` to [chat] (e.g. ``{"speaker_names": "never"}``)."""
    config = Config(
        model=ModelConfig(max_tokens=max_tokens, temperature=0),
        persona=PersonaConfig(system_prompt=persona),
        chat=ChatConfig.model_validate(
            {"safety_margin_tokens": margin, "max_message_chars": max_chars, **(chat or {})}
        ),
        context=ContextConfig.model_validate({"date": "off", **context}),
        limits=LimitsConfig.model_validate(limits or {}),
    )
    return build_core(config, history, generator, rate_clock=clock or time.monotonic)
