"""A platform's secret (a bot token, a password) from the config, the environment or .env.

``[discord] token`` (or BESEDA_DISCORD__TOKEN) wins; else the platform's own variable
(DISCORD_TOKEN, TELEGRAM_TOKEN, MATRIX_PASSWORD, …) from the environment; else from a
``.env`` file — only that one variable is read from it, and the working directory's wins
over the config file's folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from dotenv import dotenv_values
from pydantic import SecretStr

from agent.config import Config


def platform_secret(config: Config, configured: SecretStr, variable: str) -> str:
    if value := configured.get_secret_value().strip():
        return value
    if value := os.environ.get(variable, "").strip():
        return value
    for folder in (Path.cwd(), config.base_dir):
        env_file = folder / ".env"
        if env_file.is_file() and (found := dotenv_values(env_file).get(variable)):
            return found.strip()
    return ""
