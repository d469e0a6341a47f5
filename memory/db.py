"""The async engine, session factory and schema migrations (Alembic, applied on start)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import AsyncAdaptedQueuePool

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"


class DatabaseError(Exception):
    """The database cannot be used; the message names [storage] database_url."""


class StorageError(Exception):
    """The database refused a write while running: read-only, full, locked or unreachable.
    The message says which, in a few words a person can be shown."""


def storage_error(exc: BaseException) -> StorageError:
    """``exc`` (from a write) as a StorageError whose message says what happened, briefly;
    the driver's own text, which may quote a statement, stays in the chained exception."""
    raw = str(getattr(exc, "orig", None) or exc).lower()
    if any(word in raw for word in ("readonly", "read-only", "read only")):
        reason = "the database is read-only"
    elif any(word in raw for word in ("is full", "no space left", "disk full")):
        reason = "the database is full (no space left)"
    elif any(word in raw for word in ("locked", "lock timeout", "busy")):
        reason = "the database is locked by another program"
    else:
        reason = "the database is unavailable"
    return StorageError(reason)


class Database:
    def __init__(self, url: str, *, lock_timeout: float = 30.0) -> None:
        """``lock_timeout``: seconds a SQLite write waits for another writer's lock before
        it fails as "locked"."""
        try:
            parsed = make_url(url)
        except ArgumentError:
            raise DatabaseError(f"[storage] database_url: not a database URL: {url!r}") from None
        # Statement parameters hold message text: keep them out of exceptions, hence logs.
        options: dict[str, Any] = {"hide_parameters": True}
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite:
            database = parsed.database or ""
            if database in {"", ":memory:"}:
                # The database lives in one connection. A pool of exactly one hands it to one
                # session at a time; sharing it (StaticPool) would interleave transactions.
                options.update(poolclass=AsyncAdaptedQueuePool, pool_size=1, max_overflow=0)
            else:
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            options["connect_args"] = {"timeout": lock_timeout}
        try:
            self.engine: AsyncEngine = create_async_engine(parsed, **options)
        except (ArgumentError, ImportError) as exc:
            raise DatabaseError(f"[storage] database_url: {exc}") from None
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self.url = parsed

    def session(self) -> AsyncSession:
        return self.sessions()

    async def migrate(self) -> None:
        """Bring the schema to the newest revision."""
        try:
            async with self.engine.begin() as conn:
                await conn.run_sync(_upgrade)
        except (SQLAlchemyError, OSError) as exc:
            raise DatabaseError(
                f"[storage] database_url: cannot open {self.url.render_as_string()}: {exc}"
            ) from None

    async def revision(self) -> str | None:
        """The schema revision in the database (None before the first migration)."""
        async with self.engine.connect() as conn:
            return await conn.run_sync(
                lambda sync: MigrationContext.configure(sync).get_current_revision()
            )

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def close(self) -> None:
        await self.engine.dispose()


def head_revision() -> str:
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    return head or ""


def _alembic_config(connection: Connection | None = None) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _upgrade(connection: Connection) -> None:
    command.upgrade(_alembic_config(connection), "head")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers (the CLI, doctor) work while the agent writes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
