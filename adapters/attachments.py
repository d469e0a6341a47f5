"""Attachments into a channel's document scope: each channel keeps its files in a folder.

The folder is the source of truth the documents pipeline indexes (incrementally, by hash),
so an attachment sent again with the same name replaces its earlier version.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from pathlib import Path

from memory.documents import SUFFIXES, DocumentIndex

# (scope, file name, content) -> a one-line report for the person who sent it.
DocumentsHook = Callable[[str, str, bytes], Awaitable[str]]


def accepts(filename: str) -> bool:
    return Path(filename).suffix.lower() in SUFFIXES


def safe_name(name: str) -> str:
    """A file or folder name that cannot climb out of its folder or hide itself."""
    cleaned = re.sub(r"[^\w.\-]+", "_", Path(name).name).lstrip(".")
    return cleaned or "attachment"


def channel_documents(index: DocumentIndex, root: Path) -> DocumentsHook:
    """Store an attachment under ``root/<scope>/`` and index that folder into the scope."""

    async def add(scope: str, filename: str, data: bytes) -> str:
        folder = root / safe_name(scope)
        folder.mkdir(parents=True, exist_ok=True)
        stored = safe_name(filename)
        (folder / stored).write_bytes(data)
        report = await index.ingest(folder, scope=scope)
        if any(Path(source).name == stored for source, _reason in report.failed):
            # Not kept: it would fail again at every later ingest of this folder.
            (folder / stored).unlink(missing_ok=True)
            return f"I could not read {filename}."
        return f"Indexed {filename} for this channel ({report.chunks} chunks written)."

    return add
