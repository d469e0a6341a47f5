"""Attachments into a channel's document scope: each channel keeps its files in a folder.

The folder is the source of truth the documents pipeline indexes (incrementally, by hash),
so an attachment sent again with the same name replaces its earlier version. Indexing a file
takes seconds to minutes (a long PDF is thousands of chunks to embed), so adapters run it in
the channel's :class:`Lanes`: the messages of that channel wait for it, in order, and every
other channel goes on. What the person is told comes back in their language.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import shutil
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path

from agent.i18n import Lang, detect, ours
from agent.i18n import catalog as texts
from memory.documents import SUFFIXES, DocumentIndex

log = logging.getLogger(__name__)

# (scope, file name, content, language of the notice) -> a one-line report for the sender.
DocumentsHook = Callable[[str, str, bytes, Lang], Awaitable[str]]
# At a stop, how long the messages waiting for a document's indexing may still take: they
# are taken in before the core closes. Past it they are cancelled (and logged).
STOP_GRACE_SECONDS = 30.0

UNREADABLE = {
    "binary": texts.UNREADABLE_BINARY,
    "password": texts.UNREADABLE_PASSWORD,
    "scanned": texts.UNREADABLE_SCANNED,
    "pdf": texts.UNREADABLE_PDF,
    "slow": texts.UNREADABLE_SLOW,
}


def accepts(filename: str) -> bool:
    return Path(filename).suffix.lower() in SUFFIXES


def safe_name(name: str) -> str:
    """A file or folder name that cannot climb out of its folder or hide itself."""
    cleaned = re.sub(r"[^\w.\-]+", "_", Path(name).name).lstrip(".")
    return cleaned or "attachment"


def scope_folder(scope: str) -> str:
    """The folder name of a scope's files: readable, and no other scope's. The file-name rule
    (:func:`safe_name`) keeps only the last part of a key, so Telegram forum topics 45 of two
    groups ("telegram:-1001/45", "telegram:-1002/45") once shared one folder, and each group's
    ingest indexed the other's files into its own scope."""
    readable = re.sub(r"[^\w.\-]+", "_", scope).strip("._")[:80] or "channel"
    digest = hashlib.sha256(scope.encode("utf-8", "replace")).hexdigest()[:12]
    return f"{readable}-{digest}"


def notice_language(caption: str, filename: str, setting: str, locale: str | None = None) -> Lang:
    """The language to tell the sender in: their caption's, else their own (``locale``:
    Telegram says it, Discord does not), else ``[chat] language``, where that is "auto" the
    file name's ("отчёт.pdf"), else English."""
    found = detect(caption) or ours(locale) or ours(setting)
    if found is None and setting == "auto":
        found = detect(Path(filename).stem)
    return found or "en"


def too_large(filename: str, limit_bytes: int, lang: Lang) -> str:
    limit = f"{limit_bytes / 1_000_000:g}"
    return texts.ATTACHMENT_TOO_LARGE(lang, name=filename, limit=limit)


def not_indexed(filename: str, lang: Lang) -> str:
    """The notice when fetching or indexing the file failed (the reason is in the log)."""
    return texts.ATTACHMENT_FAILED(lang, name=filename)


def channel_documents(index: DocumentIndex, root: Path) -> DocumentsHook:
    """Store an attachment under ``root/<scope folder>/`` (:func:`scope_folder`) and index
    that folder into the scope.

    One channel's files are indexed one at a time: files sent at once would each start an
    ingest of the folder, and each would embed the files the others were still embedding."""
    locks: dict[str, asyncio.Lock] = {}

    async def add(scope: str, filename: str, data: bytes, lang: Lang) -> str:
        folder = root / scope_folder(scope)
        async with locks.setdefault(folder.name, asyncio.Lock()):
            if not folder.exists():
                sources = list(await index.indexed(scope))
                await asyncio.to_thread(_adopt, root / safe_name(scope), folder, sources, scope)
            folder.mkdir(parents=True, exist_ok=True)
            stored = safe_name(filename)
            (folder / stored).write_bytes(data)
            report = await index.ingest(folder, scope=scope)
        if stored in dict(report.failed):
            # Not kept: it would fail again at every later ingest of this folder.
            (folder / stored).unlink(missing_ok=True)
            reason = UNREADABLE.get(report.failure_kinds.get(stored, ""))
            if reason is None:
                return not_indexed(filename, lang)
            return texts.ATTACHMENT_UNREADABLE(lang, name=filename, reason=reason(lang))
        if stored in report.unchanged:
            return texts.ATTACHMENT_UNCHANGED(lang, name=filename)
        chunks = report.written.get(stored, 0)
        if not chunks:
            return texts.ATTACHMENT_EMPTY(lang, name=filename)
        return texts.ATTACHMENT_INDEXED(lang, chunks, name=filename)

    return add


def _adopt(legacy: Path, folder: Path, sources: Collection[str], scope: str) -> None:
    """Copy this scope's files (``sources``: those indexed in it) from the folder an earlier
    version kept them in (named by :func:`safe_name`, possibly shared with another scope), so
    the new folder's first ingest prunes none of them and adds none of another scope's."""
    if not legacy.is_dir():
        return
    folder.mkdir(parents=True, exist_ok=True)
    kept = [s for s in sources if (legacy / s).is_file()]
    for source in kept:
        shutil.copy2(legacy / source, folder / source)
    log.info("attachments of %s: %d files taken over from %s", scope, len(kept), legacy.name)


class Lanes:
    """Work for one channel in arrival order, off the caller's path: while a document of one
    channel is indexed, the next messages of that channel wait for it (a question about the
    document is answered with it) and every other channel goes on."""

    def __init__(self) -> None:
        self._tails: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def busy(self, key: str) -> bool:
        """Whether ``key`` has work queued or running (a new message must queue behind it)."""
        return key in self._tails

    def add(self, key: str, work: Callable[[], Awaitable[None]]) -> None:
        """Run ``work`` after the work queued for ``key`` before it (which may have failed:
        each piece logs its own failure)."""
        previous = self._tails.get(key)

        async def step() -> None:
            if previous is not None:
                await asyncio.wait({previous})
            await work()

        task = asyncio.create_task(step(), name=f"lane:{key}")
        self._tails[key] = task
        self._tasks.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._tasks.discard(finished)
            if self._tails.get(key) is finished:
                del self._tails[key]
            if not finished.cancelled() and (error := finished.exception()) is not None:
                log.error("a message of %s failed", key, exc_info=error)

        task.add_done_callback(done)

    async def finish(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for the queued work (at a stop), then cancel it."""
        if not self._tasks:
            return
        _done, pending = await asyncio.wait(set(self._tasks), timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("stopped %d messages still waiting for a document's indexing", len(pending))
            await asyncio.gather(*pending, return_exceptions=True)
