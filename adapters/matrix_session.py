"""Logging the Matrix bot in once and reusing its device on every start.

Each password login creates a new device, and a new device has new encryption keys: people
would see an unverified device per restart and the bot could not read messages encrypted for
its old one. So the first login's access token and device id are kept in the store folder
(``credentials.json``, readable by the owner only) and restored on later starts; the
encryption keys and the sync token live beside them in matrix-nio's SQLite store.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nio import AsyncClient, LoginResponse, WhoamiResponse

from adapters.credentials import platform_secret
from agent.config import Config

log = logging.getLogger(__name__)

CREDENTIALS_FILE = "credentials.json"


class MatrixLoginError(Exception):
    """The homeserver refused the configured credentials (worded for the operator)."""


@dataclass(frozen=True, slots=True)
class Secrets:
    password: str = ""
    access_token: str = ""

    def __repr__(self) -> str:  # never show a secret in a log or a traceback
        return f"Secrets(password={'***' if self.password else ''!r}, access_token=***)"


@dataclass(frozen=True, slots=True)
class Credentials:
    homeserver: str
    user_id: str
    device_id: str
    access_token: str

    def __repr__(self) -> str:
        return f"Credentials({self.user_id}, device {self.device_id})"


def matrix_secrets(config: Config) -> Secrets:
    """``[matrix] password``/``access_token`` (BESEDA_MATRIX__…), else MATRIX_PASSWORD and
    MATRIX_ACCESS_TOKEN from the environment or a ``.env`` file."""
    matrix = config.matrix
    return Secrets(
        password=platform_secret(config, matrix.password, "MATRIX_PASSWORD"),
        access_token=platform_secret(config, matrix.access_token, "MATRIX_ACCESS_TOKEN"),
    )


def load_credentials(store: Path) -> Credentials | None:
    path = store / CREDENTIALS_FILE
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return Credentials(**{key: str(data[key]) for key in Credentials.__slots__})
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable %s (%s): logging in again", path, exc)
        return None


def save_credentials(store: Path, credentials: Credentials) -> None:
    store.mkdir(parents=True, exist_ok=True)
    path = store / CREDENTIALS_FILE
    temporary = path.with_suffix(".tmp")
    # Created owner-only from the start: the file holds an access token.
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        json.dump(asdict(credentials), file)
    temporary.replace(path)


async def log_in(
    client: AsyncClient, *, homeserver: str, device_name: str, secrets: Secrets, store: Path
) -> Credentials:
    """Restore the saved device, or log in (password) / adopt a token, and save the result.

    Raises :class:`MatrixLoginError` when the homeserver refuses the credentials; network
    errors propagate so that the caller can retry later.
    """
    user_id: str = client.user
    saved = load_credentials(store)
    if saved is not None and (saved.homeserver, saved.user_id) != (homeserver, user_id):
        log.warning("%s belongs to %s: logging in afresh", store / CREDENTIALS_FILE, saved)
        saved = None
    token_changed = bool(secrets.access_token) and (
        saved is None or saved.access_token != secrets.access_token
    )
    if saved is not None and not token_changed:
        client.restore_login(saved.user_id, saved.device_id, saved.access_token)
        reply = await client.whoami()
        if isinstance(reply, WhoamiResponse) or reply.status_code != "M_UNKNOWN_TOKEN":
            log.info("matrix: restored %s", saved)
            return saved
        log.warning("matrix: the saved access token was revoked; logging in again")
        client.access_token = ""
    if secrets.access_token:
        credentials = await _adopt_token(client, homeserver, secrets.access_token)
    elif secrets.password:
        credentials = await _password_login(
            client, homeserver, device_name, secrets.password, saved
        )
    else:
        raise MatrixLoginError("no MATRIX_PASSWORD or MATRIX_ACCESS_TOKEN to log in with")
    save_credentials(store, credentials)
    log.info("matrix: logged in as %s", credentials)
    return credentials


async def _adopt_token(client: AsyncClient, homeserver: str, token: str) -> Credentials:
    client.access_token = token
    reply = await client.whoami()
    if not isinstance(reply, WhoamiResponse):
        raise MatrixLoginError(f"the homeserver refused MATRIX_ACCESS_TOKEN: {reply.message}")
    if reply.user_id != client.user:
        raise MatrixLoginError(
            f"MATRIX_ACCESS_TOKEN belongs to {reply.user_id}, not [matrix] user_id {client.user}"
        )
    if not reply.device_id:
        raise MatrixLoginError("MATRIX_ACCESS_TOKEN has no device: create it by a login")
    client.restore_login(reply.user_id, reply.device_id, token)
    return Credentials(homeserver, reply.user_id, reply.device_id, token)


async def _password_login(
    client: AsyncClient,
    homeserver: str,
    device_name: str,
    password: str,
    saved: Credentials | None,
) -> Credentials:
    # Logging in again with the saved device id keeps the device and its keys.
    client.device_id = saved.device_id if saved is not None else None
    reply = await client.login(password=password, device_name=device_name)
    if not isinstance(reply, LoginResponse):
        raise MatrixLoginError(
            f"the homeserver refused the login of [matrix] user_id {client.user} "
            f"(check MATRIX_PASSWORD): {reply.message}"
        )
    return Credentials(homeserver, reply.user_id, reply.device_id, reply.access_token)


def device_summary(config: Config) -> str:
    """The saved device and its Ed25519 fingerprint (for manual verification); no network."""
    store = config.resolve_path(config.data_dir / config.matrix.store_path)
    saved = load_credentials(store)
    if saved is None:
        return "not logged in yet: the first start logs in and creates the device"
    client = AsyncClient(saved.homeserver, saved.user_id, store_path=str(store))
    try:
        client.restore_login(saved.user_id, saved.device_id, saved.access_token)
        keys = client.olm.account.identity_keys if client.olm is not None else {}
    except Exception as exc:  # a damaged store is a finding, not a crash
        return f"device {saved.device_id}; cannot read the key store: {exc}"
    fingerprint = keys.get("ed25519", "")
    shown = " ".join(fingerprint[i : i + 4] for i in range(0, len(fingerprint), 4))
    return f"device {saved.device_id}, fingerprint {shown or 'unknown (no encryption)'}"
