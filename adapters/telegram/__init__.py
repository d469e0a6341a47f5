"""Telegram: the adapter (adapter.py) on the shared kit, its reply surface (reply.py),
Markdown as Telegram HTML (markup.py), /commands (commands.py), a Bot API session that
keeps the token out of errors (session.py) and doctor's check (check.py).

Importing aiogram builds a pydantic model for every Bot API type (seconds of CPU), so this
package's front door does not: the adapter is imported only when a token is configured, and
one-shot commands such as ``chat`` never pay for it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from adapters.credentials import platform_secret
from agent.config import Config

if TYPE_CHECKING:
    from adapters.telegram.adapter import TelegramAdapter

__all__ = ["telegram_adapter", "telegram_token"]


def telegram_token(config: Config) -> str:
    """``[telegram] token`` (BESEDA_TELEGRAM__TOKEN), else TELEGRAM_TOKEN from env or .env."""
    return platform_secret(config, config.telegram.token, "TELEGRAM_TOKEN")


def telegram_adapter(config: Config) -> TelegramAdapter | None:
    """The registry's factory: a Telegram adapter when a token is configured."""
    token = telegram_token(config)
    if not token:
        return None
    from adapters.telegram.adapter import TelegramAdapter  # noqa: PLC0415 - imports aiogram

    max_age = timedelta(minutes=config.recovery.max_age_minutes)
    return TelegramAdapter(config.telegram, token, max_age=max_age, language=config.chat.language)
