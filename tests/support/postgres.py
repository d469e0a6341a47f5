"""A throwaway PostgreSQL server for the database contract tests, and the database kinds.

``postgres_server`` (session scope) finds ``initdb``/``pg_ctl`` on PATH or in
``/usr/lib/postgresql/*/bin`` (Debian's layout), creates a cluster in a temporary folder and
starts it on 127.0.0.1 on a free port; the unix socket stays inside that folder too. PostgreSQL
refuses to run as root, so as root every server command runs as the ``postgres`` user (through
``runuser``) in a folder that user owns. Without the binaries the PostgreSQL variants are
skipped with the reason; ``.ci/run`` installs Debian's ``postgresql`` so CI always runs them.

Each test gets its own freshly created database, so the tests stay independent.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from memory.db import Database

SQLITE_KINDS = ("sqlite-file", "sqlite-memory")
ALL_KINDS = (*SQLITE_KINDS, "postgresql")
START_TIMEOUT_SECONDS = 60
USER = "beseda"
_databases = itertools.count(1)


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    # Seconds from initdb to accepting connections (reported by the test run, see README).
    startup_seconds: float

    def url(self, database: str, driver: str = "asyncpg") -> str:
        return f"postgresql+{driver}://{USER}@{self.host}:{self.port}/{database}"


def find_postgres_bin() -> Path | None:
    """The folder holding initdb and pg_ctl: PATH first, else the newest Debian version."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    return Path(candidates[-1]).parent if candidates else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_server_user(argv: list[str]) -> list[str]:
    """PostgreSQL will not run as root: run it as the ``postgres`` system user instead."""
    if os.geteuid() != 0:
        return argv
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.fail("running as root but `runuser` is missing: cannot start PostgreSQL")
    return [runuser, "-u", "postgres", "--", *argv]


def _run(argv: list[str], log: Path | None = None) -> None:
    done = subprocess.run(_as_server_user(argv), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        server_log = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
        pytest.fail(
            f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}{done.stderr}{server_log}"
        )


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bindir = find_postgres_bin()
    if bindir is None:
        pytest.skip(
            "PostgreSQL not found (no initdb on PATH or in /usr/lib/postgresql/*/bin); "
            "install Debian's `postgresql` package to run these variants"
        )
    pytest.importorskip("asyncpg", reason="the asyncpg driver is needed: pip install asyncpg")
    root = Path(tempfile.mkdtemp(prefix="beseda-pg-"))
    data, log = root / "data", root / "server.log"
    pg_ctl = str(bindir / "pg_ctl")
    try:
        if os.geteuid() == 0:
            shutil.chown(root, "postgres", "postgres")
        started = time.monotonic()
        # -N and -F: no fsync, the cluster is thrown away. Trust authentication is safe
        # here: the server listens on loopback and on a socket inside a private folder.
        _run([str(bindir / "initdb"), "-D", str(data), "-U", USER, "-A", "trust",
              "-E", "UTF8", "--no-locale", "-N"])  # fmt: skip
        port = _free_port()
        options = f"-h 127.0.0.1 -p {port} -k {root} -F -c full_page_writes=off"
        _run([pg_ctl, "-D", str(data), "-l", str(log), "-o", options,
              "-w", "-t", str(START_TIMEOUT_SECONDS), "start"], log)  # fmt: skip
        yield PostgresServer("127.0.0.1", port, time.monotonic() - started)
    finally:
        if (data / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.SubprocessError):
                subprocess.run(
                    _as_server_user([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"]),
                    capture_output=True,
                    check=False,
                    timeout=START_TIMEOUT_SECONDS,
                )
        shutil.rmtree(root, ignore_errors=True)


async def create_postgres_database(server: PostgresServer) -> str:
    """A new empty database on ``server``; returns its SQLAlchemy URL."""
    import asyncpg  # noqa: PLC0415 - optional: only needed when PostgreSQL runs

    name = f"beseda_{os.getpid()}_{next(_databases)}"
    conn = await asyncpg.connect(host=server.host, port=server.port, user=USER, database="postgres")
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return server.url(name)


@contextlib.asynccontextmanager
async def open_database(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Database]:
    """A migrated, empty database of ``kind`` (one of :data:`ALL_KINDS`)."""
    if kind == "sqlite-file":
        url = f"sqlite+aiosqlite:///{tmp_path / 'history.db'}"
    elif kind == "sqlite-memory":
        url = "sqlite+aiosqlite://"
    else:
        url = await create_postgres_database(request.getfixturevalue("postgres_server"))
    db = Database(url)
    await db.migrate()
    try:
        yield db
    finally:
        await db.close()
