"""Telegram: the adapter (adapter.py) on the shared kit, its reply surface (reply.py),
Markdown as Telegram HTML (markup.py), /commands (commands.py) and a Bot API session that
keeps the token out of errors (session.py)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from aiogram import Bot
from aiogram.exceptions import TelegramAPIError, TelegramNotFound, TelegramUnauthorizedError
from aiogram.utils.token import TokenValidationError

from adapters.credentials import platform_secret
from adapters.telegram.adapter import TelegramAdapter
from adapters.telegram.session import TokenSafeSession
from agent.config import Config

__all__ = ["TelegramAdapter", "check_bot", "telegram_adapter", "telegram_token"]
DOCTOR_TIMEOUT_SECONDS = 10.0


def telegram_token(config: Config) -> str:
    """``[telegram] token`` (BESEDA_TELEGRAM__TOKEN), else TELEGRAM_TOKEN from env or .env."""
    return platform_secret(config, config.telegram.token, "TELEGRAM_TOKEN")


def telegram_adapter(config: Config) -> TelegramAdapter | None:
    """The registry's factory: a Telegram adapter when a token is configured."""
    token = telegram_token(config)
    if not token:
        return None
    max_age = timedelta(minutes=config.recovery.max_age_minutes)
    return TelegramAdapter(config.telegram, token, max_age=max_age)


async def check_bot(config: Config) -> tuple[bool, str]:
    """For ``doctor``: whether Telegram accepts the token, and how the bot is set up."""
    token = telegram_token(config)
    api_url = config.telegram.api_url
    try:
        bot = Bot(token, session=TokenSafeSession(api_url, token))
    except TokenValidationError:
        return False, "the token is malformed (TELEGRAM_TOKEN)"
    try:
        me = await asyncio.wait_for(bot.get_me(), DOCTOR_TIMEOUT_SECONDS)
        hook = await asyncio.wait_for(bot.get_webhook_info(), DOCTOR_TIMEOUT_SECONDS)
    except (TelegramUnauthorizedError, TelegramNotFound):
        return False, "Telegram rejected the token (TELEGRAM_TOKEN)"
    except (TelegramAPIError, TimeoutError) as exc:
        return False, f"cannot reach {api_url}: {exc or type(exc).__name__}"
    finally:
        await bot.session.close()
    mode = f"webhook {hook.url}" if hook.url else "long polling"
    privacy = (
        "reads all group messages"
        if me.can_read_all_group_messages
        else "privacy mode on: in groups it sees mentions, replies and commands only"
    )
    return True, f"@{me.username} ({mode}; {privacy}; {hook.pending_update_count} updates waiting)"
