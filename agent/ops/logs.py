"""Structured logs: one line per event, logfmt (key=value) or JSON, secrets masked.

Log calls keep the standard library's API; fields passed as ``extra={...}`` (channel keys,
ids, counts) become keys of the line. Rules the code follows: message text appears at DEBUG
only, never at INFO or above; secrets never appear. As a second line of defence every value
is scrubbed of the configured secrets (tokens, API keys, the database password) before it is
written, whichever library logged it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from dotenv import dotenv_values
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from agent.config import Config

REDACTED = "[secret]"
# Shorter values are not treated as secrets: masking "1" or "abc" would garble every line.
MIN_SECRET_CHARS = 6
# Environment variables whose values are secrets wherever they come from.
SECRET_NAMES = re.compile(r"TOKEN|KEY|SECRET|PASSWORD|PASSWD", re.IGNORECASE)
# The attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}
_BARE = re.compile(r"^[^\s\"=\\]+$")


class StructuredFormatter(logging.Formatter):
    """Renders each record as one line of logfmt or JSON, with secrets replaced."""

    def __init__(self, style: str = "logfmt", secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._json = style == "json"
        found = {s for s in secrets if s and len(s) >= MIN_SECRET_CHARS}
        # Longest first, so a secret that contains another is masked whole.
        self._secrets = sorted(found, key=len, reverse=True)

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and value is not None:
                fields[key] = value
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            fields["exc"] = record.exc_text
        if record.stack_info:
            fields["stack"] = self.formatStack(record.stack_info)
        fields = {key: self._scrub(value) for key, value in fields.items()}
        if self._json:
            return json.dumps(fields, ensure_ascii=False, default=str)
        return " ".join(f"{key}={_logfmt_value(value)}" for key, value in fields.items())

    def _scrub(self, value: Any) -> Any:
        if value is None or isinstance(value, bool | int | float):
            return value
        text = str(value)
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text


def _logfmt_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if _BARE.match(text):
        return text
    # json.dumps quotes and escapes newlines, so a traceback stays on the event's line.
    return json.dumps(text, ensure_ascii=False)


def configured_secrets(config: Config, environ: dict[str, str] | None = None) -> list[str]:
    """Every secret this process may hold: config secrets, secret-named variables (from the
    environment and the .env files Beseda reads), and the database password."""
    if environ is None:
        env: dict[str, str] = {}
        for folder in (config.base_dir, Path.cwd()):
            if (folder / ".env").is_file():
                env.update({k: v for k, v in dotenv_values(folder / ".env").items() if v})
        env.update(os.environ)
    else:
        env = environ
    secrets = [
        config.discord.token.get_secret_value(),
        config.telegram.token.get_secret_value(),
        config.model.api_key.get_secret_value(),
    ]
    secrets += [value for name, value in env.items() if SECRET_NAMES.search(name)]
    try:
        password = make_url(config.database_url).password
    except ArgumentError:
        password = None
    if password:
        secrets.append(str(password))
    return [s.strip() for s in secrets if s and s.strip()]


def setup_logging(config: Config, stream: TextIO | None = None) -> logging.Handler:
    """Send every log record, from any library, to ``stream`` (stderr) as structured lines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(StructuredFormatter(config.logging.format, configured_secrets(config)))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(config.logging.level)
    # Alembic announces every migration step at INFO; that is noise for a chat user.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))
    # llama.cpp's own log (printed straight to stderr by llama-cpp-python when its logger
    # allows): warnings about vocab-only loads and the like mean nothing to a user.
    logging.getLogger("llama-cpp-python").setLevel(
        logging.DEBUG if config.logging.level == "DEBUG" else logging.ERROR
    )
    return handler
