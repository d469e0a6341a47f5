"""Which platform adapters ``run`` starts: every configured platform, else the console."""

from __future__ import annotations

from collections.abc import Callable

from adapters.discord import discord_adapter
from adapters.matrix import matrix_adapter
from adapters.telegram import telegram_adapter
from agent.config import Config
from agent.ports import PlatformAdapter

# Each platform module contributes a factory: it returns its adapter when the platform is
# configured (credentials present), None otherwise. Add new platforms here.
PlatformFactory = Callable[[Config], PlatformAdapter | None]
PLATFORMS: list[PlatformFactory] = [discord_adapter, matrix_adapter, telegram_adapter]


def configured_adapters(
    config: Config, console: Callable[[], PlatformAdapter] | None
) -> list[PlatformAdapter]:
    """The configured platforms' adapters; else ``[console()]`` (else none, without one)."""
    adapters = [adapter for factory in PLATFORMS if (adapter := factory(config)) is not None]
    if not adapters and console is not None:
        return [console()]
    return adapters
