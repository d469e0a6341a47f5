"""One serving process per database: a second ``run`` on the same database refuses to start.

The history's caches, crash recovery and the memories' in-memory copy assume that one
process serves a database (and two processes with one bot token would answer every message
twice). ``run`` therefore holds a lock for as long as it serves:

- SQLite: an exclusive ``flock`` on ``<database>.lock`` next to the database file, which
  holds the serving process's PID. The kernel drops the lock when the process ends, however
  it ends (SIGKILL, a power cut), so a stale file never blocks a start.
- PostgreSQL: a session advisory lock, held on a connection of its own (autocommit, so it is
  never idle in a transaction); the server drops it when that connection closes. The
  connection's ``application_name`` names the PID and host, for the refusal message.

One-shot commands (``chat``, ``prompt``, ``search``, …) take no lock and work beside a
running bot; :func:`holder` tells them who serves, so that they can say what that means.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from memory.db import Database, DatabaseError

# pg_try_advisory_lock(int4, int4): Beseda's class ("BSDA") and the "serving" lock in it.
ADVISORY_CLASS = 0x42534441
ADVISORY_SERVING = 1
APPLICATION_PREFIX = "beseda pid "


class InstanceLockedError(DatabaseError):
    """Another process serves this database; the message is the one line to print."""

    def __init__(self, database: str, holder: str) -> None:
        super().__init__(
            f"another Beseda ({holder}) is serving {database}; stop it first, or give this "
            "one its own [storage] (chat, prompt and search work beside it)"
        )
        self.holder = holder


def lock_path(db: Database) -> Path | None:
    """The lock file of a SQLite database file (None: in memory, or not SQLite)."""
    database = db.url.database or ""
    if not db.is_sqlite or database in {"", ":memory:"}:
        return None
    path = Path(database)
    return path.with_name(path.name + ".lock")


def describe(db: Database) -> str:
    """The database as people know it: the SQLite file, or the URL without its password."""
    path = lock_path(db)
    if path is not None:
        return str(Path(db.url.database or "").resolve())
    return db.url.render_as_string(hide_password=True)


@contextlib.asynccontextmanager
async def serving_lock(db: Database) -> AsyncIterator[None]:
    """Hold the database's serving lock; :class:`InstanceLockedError` if another holds it."""
    path = lock_path(db)
    if path is not None:
        with _file_lock(db, path):
            yield
    elif db.is_sqlite:  # in memory: no other process can see it
        yield
    else:
        async with _advisory_lock(db):
            yield


async def holder(db: Database) -> str | None:
    """Who serves the database now ("PID 1234" or "PID 1234 on host"), or None."""
    path = lock_path(db)
    if path is not None:
        if not path.exists():
            return None
        try:
            with _file_lock(db, path, probe=True):
                return None
        except InstanceLockedError as locked:
            return locked.holder
    if db.is_sqlite:
        return None
    try:
        async with db.engine.connect() as conn:
            return await _advisory_holder(conn)
    except (SQLAlchemyError, OSError):
        return None


@contextlib.contextmanager
def _file_lock(db: Database, path: Path, *, probe: bool = False) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # Not O_TRUNC: the file holds the PID of whoever has the lock now.
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise DatabaseError(
            f"[storage] data_dir: cannot create the lock file {path}: {exc.strerror}"
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in {errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES}:
                raise DatabaseError(f"cannot lock {path}: {exc.strerror}") from None
            pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise InstanceLockedError(describe(db), f"PID {pid}") from None
        if not probe:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.asynccontextmanager
async def _advisory_lock(db: Database) -> AsyncIterator[None]:
    name = f"{APPLICATION_PREFIX}{os.getpid()} on {socket.gethostname()}"
    try:
        conn = await db.engine.connect()
    except (SQLAlchemyError, OSError) as exc:
        raise DatabaseError(f"[storage] database_url: cannot connect: {exc}") from None
    try:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(
            text("SELECT set_config('application_name', :name, false)"), {"name": name}
        )
        locked = await conn.scalar(
            text("SELECT pg_try_advisory_lock(:cls, :key)"),
            {"cls": ADVISORY_CLASS, "key": ADVISORY_SERVING},
        )
        if not locked:
            who = await _advisory_holder(conn) or "its PID unknown"
            raise InstanceLockedError(describe(db), who)
        try:
            yield
        finally:
            with contextlib.suppress(SQLAlchemyError, OSError):
                await conn.execute(
                    text("SELECT pg_advisory_unlock(:cls, :key)"),
                    {"cls": ADVISORY_CLASS, "key": ADVISORY_SERVING},
                )
    finally:
        # Not back into the pool: it carries this process's application_name.
        with contextlib.suppress(SQLAlchemyError, OSError):
            await conn.invalidate()
        await conn.close()


async def _advisory_holder(conn: AsyncConnection) -> str | None:
    """The serving lock's holder, from the application_name of its connection."""
    name = await conn.scalar(
        text(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = :cls "
            "AND l.objid = :key AND l.objsubid = 2 "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ),
        {"cls": ADVISORY_CLASS, "key": ADVISORY_SERVING},
    )
    if name is None:
        return None
    name = str(name)
    if name.startswith(APPLICATION_PREFIX):
        return "PID " + name.removeprefix(APPLICATION_PREFIX)
    return name
