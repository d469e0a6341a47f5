"""A PDF's text, read in a child process with a time and a memory limit.

pypdf is pure Python, and a PDF is a program as much as a document: a 16 kB file whose pages
all draw one content stream of a few megabytes kept pypdf busy for 7 s per page on this
project's machine, so a thousand such pages (a 130 kB attachment) would take two hours and
hold the interpreter's lock throughout, slowing every chat of the bot. Read in a child
process (``python -m memory.pdf``, see :class:`Reader`), such a file costs one core until
its time is up, and then the child is killed; the bot's own process stays responsive, and
its memory cannot be exhausted by the reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import sys
from typing import Any

# Seconds allowed to read a PDF, per started megabyte of the file: real documents read at
# a megabyte in a few seconds; the limit is there for the ones built to be slow.
SECONDS_PER_MB = 60.0
# The child's address space: pypdf holds the file, its objects and the text (a file over
# 100 MB gets 20 times its size).
MEMORY_BYTES = 2 * 1024**3
MB = 1024 * 1024
# The length before each file and each answer on the child's pipes.
HEADER = 8


class PdfError(Exception):
    """The PDF gave no text. ``kind``: ``password``, ``scanned`` (no text layer), ``pdf``
    (damaged, fake, or needing more memory than allowed) or ``slow`` (over its time)."""

    def __init__(self, reason: str, kind: str) -> None:
        super().__init__(reason)
        self.kind = kind


def extract(data: bytes) -> list[tuple[int, str]]:
    """Each page's number (from 1) and text, in this process. Raises :class:`PdfError`."""
    from pypdf import PdfReader  # noqa: PLC0415 - only when there are PDFs
    from pypdf.errors import FileNotDecryptedError, PyPdfError  # noqa: PLC0415

    # pypdf logs every repair it attempts on a damaged file; the report says it once.
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        # A PDF encrypted for its permissions alone (an empty password) is opened as is.
        reader = PdfReader(io.BytesIO(data))
        pages = [(n, page.extract_text() or "") for n, page in enumerate(reader.pages, 1)]
    except FileNotDecryptedError:
        raise PdfError(
            "password-protected PDF: save a copy without the password to index it", "password"
        ) from None
    except (PyPdfError, OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise PdfError(f"not a readable PDF: {exc}", "pdf") from None
    if not any(text.strip() for _, text in pages):
        raise PdfError("no extractable text (scanned or damaged PDF)", "scanned")
    return pages


def budget(size: int, seconds_per_mb: float = SECONDS_PER_MB) -> float:
    """Seconds allowed for a file of ``size`` bytes."""
    return seconds_per_mb * max(1, -(-size // MB))


class Reader:
    """A child process that reads PDFs one after another (``python -m memory.pdf``: a
    length-prefixed file on its stdin, a length-prefixed JSON answer on its stdout). Started
    at the first PDF (its start, about 0.15 s, is paid once per ingest, not per file),
    killed when a file is over its time, and started again for the next one."""

    def __init__(self) -> None:
        self._child: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> Reader:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def read(self, data: bytes, *, seconds: float | None = None) -> list[tuple[int, str]]:
        """:func:`extract` in the child, which is killed after ``seconds`` (default: the
        file's :func:`budget`). Raises :class:`PdfError`."""
        limit = budget(len(data)) if seconds is None else seconds
        async with self._lock:
            try:
                answer = await asyncio.wait_for(self._ask(data), limit)
            except TimeoutError:
                await self._kill()
                raise PdfError(f"reading it took longer than {limit:.0f} s", "slow") from None
            except (asyncio.IncompleteReadError, ConnectionError, ValueError):
                status = await self._kill()
                reason = f"not a readable PDF: the reader stopped (exit status {status})"
                raise PdfError(reason, "pdf") from None
            except BaseException:  # cancelled: the child may be busy with this file
                await self._kill()
                raise
        if "kind" in answer:
            raise PdfError(answer["reason"], answer["kind"])
        return [(int(n), str(text)) for n, text in answer["pages"]]

    async def _ask(self, data: bytes) -> dict[str, Any]:
        if self._child is None or self._child.returncode is not None:
            self._child = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                __name__,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
        child = self._child
        assert child.stdin is not None
        assert child.stdout is not None
        child.stdin.write(_frame(data))
        await child.stdin.drain()
        size = int.from_bytes(await child.stdout.readexactly(HEADER), "big")
        answer: dict[str, Any] = json.loads(await child.stdout.readexactly(size))
        return answer

    async def _kill(self) -> int | None:
        child, self._child = self._child, None
        if child is None:
            return None
        if child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.kill()
        return await child.wait()

    async def close(self) -> None:
        """Let the child end (its stdin closes), or kill it."""
        child = self._child
        if child is not None and child.returncode is None and child.stdin is not None:
            child.stdin.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(child.wait(), 5)
        await self._kill()


async def read(data: bytes, *, seconds: float | None = None) -> list[tuple[int, str]]:
    """One PDF read in a child process of its own (see :class:`Reader`)."""
    async with Reader() as reader:
        return await reader.read(data, seconds=seconds)


def _frame(data: bytes) -> bytes:
    return len(data).to_bytes(HEADER, "big") + data


def _limit_memory(size: int) -> int:
    """Hold this process to :data:`MEMORY_BYTES` of address space, or 20 times a larger
    file's size; the limit in bytes (where the system has no such limit, nothing is held)."""
    limit = max(MEMORY_BYTES, 20 * size)
    with contextlib.suppress(ImportError, ValueError, OSError):  # not on Windows
        import resource  # noqa: PLC0415

        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    return limit


def main() -> None:
    """The child: PDFs on stdin, for each ``{"pages": [[n, text], ...]}`` or
    ``{"kind", "reason"}`` on stdout, until stdin ends."""
    given, answers = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print must not break the answers' framing
    exhausted = False
    while not exhausted and (header := given.read(HEADER)):
        data = given.read(int.from_bytes(header, "big"))
        limit = _limit_memory(len(data))
        try:
            answer: dict[str, Any] = {"pages": extract(data)}
        except PdfError as exc:
            answer = {"kind": exc.kind, "reason": str(exc)}
        except MemoryError:
            reason = f"not a readable PDF: it needs over {limit // MB} MB to read"
            answer = {"kind": "pdf", "reason": reason}
            exhausted = True  # the next file gets a fresh process
        # ASCII JSON: a PDF's text map may hold lone surrogates, which UTF-8 cannot carry.
        answers.write(_frame(json.dumps(answer).encode("ascii")))
        answers.flush()


if __name__ == "__main__":
    main()
