"""Document ingestion: read txt/md/pdf, chunk by tokens on natural boundaries, index.

Incremental by content hash: unchanged files are skipped, changed ones re-indexed, deleted
ones removed. A file that cannot be read is reported and skipped; the rest is indexed.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from memory import pdf
from memory.text import valid_text
from memory.vectors import ChromaStore, Item

log = logging.getLogger(__name__)

SUFFIXES = frozenset({".txt", ".md", ".markdown", ".pdf"})
MARKDOWN = frozenset({".md", ".markdown"})
GLOBAL_SCOPE = "global"
# Chroma metadata cannot be null: page 0 means "no pages" (txt, md).
NO_PAGE = 0
# Chunks embedded and written at once (the embedder gains from batches up to about this).
BATCH = 128
# Every chunk but the first is embedded after the document's opening (its first
# OPENING_CHARS characters: a title, a name line, what the document is about), so a chunk deep
# inside a manual still says which manual it is. The stored text is the chunk alone. On the
# man-page benchmark: recall@3 0.784 -> 0.817, same-language 0.804 -> 0.860 (README).
OPENING_CHARS = 200
# Stored with each chunk: chunks embedded another way are embedded again by the next ingest.
METHOD = f"opening-{OPENING_CHARS}"

# A file that fails as UTF-8 is still UTF-8 with broken bytes when its valid multibyte
# characters outnumber the broken bytes this many times (Windows-1251 Russian read as UTF-8
# breaks at nearly every letter).
DAMAGED_UTF8 = 20

_PARAGRAPHS = re.compile(r"\n\s*\n")
# A file embedded in a Markdown document as a data URI (an image pasted into a note, as
# Obsidian, Typora and Notion exports keep them): kilobytes of base64 and no text.
_DATA_URI = re.compile(r"data:[\w.+-]+/[\w.+-]+(?:;[\w.+-]+=[\w.+-]+)*;base64,[A-Za-z0-9+/=]+")
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")

Counter = Callable[[str], int]


class UnreadableDocumentError(Exception):
    """A file that cannot be turned into text. ``kind`` says why in one word, for a notice
    in the reader's language (adapters/attachments.py): ``binary`` (not text),
    ``password`` (a PDF that needs one), ``scanned`` (a PDF without a text layer), ``pdf``
    (a damaged or fake PDF), ``slow`` (a PDF that took longer to read than it may),
    ``unreadable`` (the file itself could not be read)."""

    def __init__(self, reason: str, kind: str = "unreadable") -> None:
        super().__init__(reason)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Page:
    number: int  # 1-based for PDFs, NO_PAGE otherwise
    text: str


@dataclass(frozen=True, slots=True)
class Chunk:
    page: int
    text: str


@dataclass(slots=True)
class IngestReport:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    # Unchanged files whose chunks an older ingest embedded another way (METHOD).
    reembedded: list[str] = field(default_factory=list)
    # Unchanged files an earlier ingest indexed only in part (stopped midway): now whole.
    completed: list[str] = field(default_factory=list)
    # Chunks written for each file added, updated, embedded again or completed.
    written: dict[str, int] = field(default_factory=dict)
    # Why each failed file failed, as UnreadableDocumentError.kind.
    failure_kinds: dict[str, str] = field(default_factory=dict)

    @property
    def chunks(self) -> int:
        """Chunks written in all."""
        return sum(self.written.values())

    def summary(self) -> str:
        again = (
            f", {len(self.reembedded)} embedded again (chunks now carry their document's opening)"
            if self.reembedded
            else ""
        )
        if self.completed:
            again += f", {len(self.completed)} completed (an earlier ingest stopped midway)"
        return (
            f"{len(self.added)} added, {len(self.updated)} updated, "
            f"{len(self.unchanged)} unchanged, {len(self.removed)} removed, "
            f"{len(self.failed)} failed{again}; {self.chunks} chunks written"
        )


def read_document(path: Path, data: bytes | None = None) -> list[Page]:
    """The text of ``path`` by page, valid (a PDF's text map may hold lone surrogates).
    ``data``: its bytes, when the caller read them already (ingest hashes them first: the
    text is then exactly what the hash says, even if the file changes meanwhile).
    A PDF is read in this process; ``ingest`` reads them in a child process with a time and
    memory limit instead (memory/pdf.py). Raises :class:`UnreadableDocumentError`."""
    if data is None:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise UnreadableDocumentError(str(exc)) from None
    if path.suffix.lower() == ".pdf":
        try:
            return _pdf_pages(pdf.extract(data))
        except pdf.PdfError as exc:
            raise UnreadableDocumentError(str(exc), exc.kind) from None
    text, encoding = decode_text(data)
    if encoding != "utf-8":
        log.info("%s: read as %s", path.name, encoding)
    if path.suffix.lower() in MARKDOWN:
        text = _DATA_URI.sub("data:", text)  # ![diagram](data:) keeps the alt text
    return [Page(NO_PAGE, valid_text(text))]


async def _read_pdf(reader: pdf.Reader, data: bytes, seconds: float) -> list[Page]:
    """A PDF's pages, read in ``reader``'s child process within ``seconds``."""
    try:
        return _pdf_pages(await reader.read(data, seconds=seconds))
    except pdf.PdfError as exc:
        raise UnreadableDocumentError(str(exc), exc.kind) from None


def _pdf_pages(pages: list[tuple[int, str]]) -> list[Page]:
    # A PDF's text map may hold lone surrogates.
    return [Page(number, valid_text(text)) for number, text in pages]


def decode_text(data: bytes) -> tuple[str, str]:
    """A text file's text and the encoding it was read in. UTF-8 first; else (Windows-1251,
    KOI8-R, DOS 866, UTF-16, Windows-1252: what Russian and English text files come in)
    the encoding chardet finds. A UTF-8 file with a few broken bytes (cut short, one stray
    byte) stays UTF-8 with U+FFFD for them: guessing again would garble all of it.
    Raises :class:`UnreadableDocumentError` for binary data."""
    # UTF-8 text holds no NUL bytes; UTF-16 without a byte order mark does.
    if b"\x00" not in data:
        try:
            return data.decode("utf-8-sig"), "utf-8"
        except UnicodeDecodeError:
            pass
        text = data.decode("utf-8-sig", "replace")
        broken = text.count("\ufffd")
        if sum(ord(c) > 127 for c in text) - broken >= DAMAGED_UTF8 * broken:
            return text, "utf-8 with broken bytes"
    import chardet  # noqa: PLC0415 - only for files that are not UTF-8

    encoding = chardet.detect(data, prefer_superset=True)["encoding"]
    if encoding is None:
        raise UnreadableDocumentError("not text (binary data)", "binary")
    return data.decode(encoding, "replace"), encoding


def chunk_pages(
    pages: Sequence[Page], count: Counter, *, max_tokens: int, overlap_tokens: int
) -> list[Chunk]:
    """Chunks of at most ``max_tokens``, cut between paragraphs, else sentences, else words;
    consecutive chunks of a page share up to ``overlap_tokens`` of whole units."""
    chunks: list[Chunk] = []
    for page in pages:
        current: list[tuple[str, int]] = []
        size = 0
        for unit, tokens in _units(page.text, count, max_tokens):
            if current and size + tokens > max_tokens:
                chunks.append(Chunk(page.number, _join(current)))
                carried: list[tuple[str, int]] = []
                kept = 0
                for previous in reversed(current):
                    if kept + previous[1] > overlap_tokens or kept + previous[1] + tokens > (
                        max_tokens
                    ):
                        break
                    carried.insert(0, previous)
                    kept += previous[1]
                current, size = carried, kept
            current.append((unit, tokens))
            size += tokens
        if current:
            chunks.append(Chunk(page.number, _join(current)))
    return chunks


def document_opening(pages: Sequence[Page]) -> str:
    """The first :data:`OPENING_CHARS` characters of the document's text, whitespace
    collapsed, cut at a word."""
    text = ""
    for page in pages:
        text = f"{text} {' '.join(page.text.split())}".strip()
        if len(text) > OPENING_CHARS:
            break
    if len(text) <= OPENING_CHARS:
        return text
    cut = text[: OPENING_CHARS + 1].rsplit(" ", 1)[0]
    return cut if cut else text[:OPENING_CHARS]


def _context(opening: str, chunk: str) -> str:
    """What a chunk is embedded after: the opening, unless the chunk starts with it (its
    first 60 characters are the opening's: the document's first chunk)."""
    head = " ".join(chunk.split())[: min(len(opening), 60)]
    return "" if opening.startswith(head) else opening


def _units(text: str, count: Counter, max_tokens: int) -> Iterator[tuple[str, int]]:
    """Paragraphs, else sentences, else runs of words, each with its token count."""
    for raw in _PARAGRAPHS.split(text):
        paragraph = " ".join(raw.split())
        if not paragraph:
            continue
        tokens = count(paragraph)
        if tokens <= max_tokens:
            yield paragraph, tokens
            continue
        sentences = _SENTENCE_END.split(paragraph)
        for sentence in sentences:
            tokens = count(sentence) if len(sentences) > 1 else tokens
            if tokens <= max_tokens:
                yield sentence, tokens
                continue
            yield from _runs(sentence.split(" "), count, max_tokens)


def _runs(words: Sequence[str], count: Counter, max_tokens: int) -> Iterator[tuple[str, int]]:
    """The longest runs of ``words`` that fit ``max_tokens``, in order, with their counts (a
    word that alone does not fit is cut, see :func:`_pieces`). Found by doubling, then
    halving, the run: a few counts of about a run's length each, where adding one word at a
    time counted the run again for every word (a quadratic cost in long table rows and
    code)."""
    start, guess = 0, 16
    while start < len(words):
        fits, size = start + 1, count(words[start])
        if size > max_tokens:
            yield from _pieces(words[start], count, max_tokens)
            start += 1
            continue
        too_long = len(words) + 1
        step = guess
        while fits + 1 < too_long:  # grow by doubling until a run does not fit
            end = min(fits + step, too_long - 1)
            tokens = count(" ".join(words[start:end]))
            if tokens > max_tokens:
                too_long = end
                break
            fits, size = end, tokens
            if end == len(words):
                break
            step *= 2
        while fits + 1 < too_long:  # then halve the gap
            middle = (fits + too_long) // 2
            tokens = count(" ".join(words[start:middle]))
            if tokens > max_tokens:
                too_long = middle
            else:
                fits, size = middle, tokens
        yield " ".join(words[start:fits]), size
        guess = max(1, fits - start)
        start = fits


def _pieces(word: str, count: Counter, max_tokens: int) -> Iterator[tuple[str, int]]:
    """A word longer than a chunk, in pieces that fit, in order, nothing left out.

    Base64 (an image inside a Markdown file), a long URL, minified code, text written
    without spaces: one 400,000-character word was one chunk, 200,000 of the embedder's
    tokens, and embedding it took 20 s and 5 GB of memory (an 8 MB attachment of it would
    have taken the bot's process down). Each piece's length follows the word's density so
    far: a few counts per piece."""
    size = 4 * max_tokens  # characters; shrunk or grown to the word's density
    start = 0
    while start < len(word):
        piece = word[start : start + size]
        tokens = count(piece)
        while tokens > max_tokens and len(piece) > 1:
            piece = piece[: max(1, len(piece) * max_tokens // (tokens + 1))]
            tokens = count(piece)
        yield piece, tokens
        start += len(piece)
        size = len(piece) * 2 if tokens <= max_tokens // 2 else len(piece)


def _join(units: Sequence[tuple[str, int]]) -> str:
    return "\n\n".join(u for u, _ in units)


def discover(root: Path) -> dict[str, Path]:
    """Supported files under ``root`` (a folder or one file), keyed by their source name.

    A file name that is not valid UTF-8 reaches Python with surrogates in it
    (``surrogateescape``); its source name, stored in Chroma, has U+FFFD there instead.
    """
    if root.is_file():
        return {valid_text(root.name): root}
    if not root.is_dir():
        return {}
    return {
        valid_text(path.relative_to(root).as_posix()): path
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.suffix.lower() in SUFFIXES and not path.name.startswith(".")
    }


class DocumentIndex:
    """Documents of one scope in a vector store collection."""

    def __init__(
        self,
        store: ChromaStore,
        *,
        chunk_tokens: int = 200,
        overlap_tokens: int = 40,
        pdf_seconds_per_mb: float = pdf.SECONDS_PER_MB,
    ) -> None:
        self.store = store
        self._chunk_tokens = chunk_tokens
        self._overlap = overlap_tokens
        self._pdf_seconds_per_mb = pdf_seconds_per_mb

    async def indexed(self, scope: str = GLOBAL_SCOPE) -> dict[str, Indexed]:
        """What is in the index now, by source."""
        found: dict[str, Indexed] = {}
        totals: dict[str, set[int]] = {}  # the number of chunks each chunk says its file has
        for item in await self.store.get({"scope": scope}):
            source = str(item.metadata.get("source", ""))
            digest = str(item.metadata.get("hash", ""))
            known = found.setdefault(source, Indexed(digest, [], current=True))
            known.ids.append(item.id)
            if item.metadata.get("method") != METHOD:
                known.current = False  # embedded by an older method: indexed again
            if isinstance(total := item.metadata.get("chunks"), int):
                totals.setdefault(source, set()).add(total)
        for source, known in found.items():
            if totals.get(source, {len(known.ids)}) != {len(known.ids)}:
                # Not the whole file: an ingest stopped between two batches of its chunks
                # (Ctrl-C, a crash), or between writing a new version and deleting the old.
                known.whole = False
        return found

    async def ingest(
        self,
        root: Path,
        *,
        scope: str = GLOBAL_SCOPE,
        progress: bool = False,
        prune: bool = True,
    ) -> IngestReport:
        """Bring the index of ``scope`` in line with the files under ``root``."""
        report = IngestReport()
        files = discover(root)
        known = await self.indexed(scope)
        bar = _progress(len(files), enabled=progress)
        pending: list[_Prepared] = []
        changed = False
        pdfs = pdf.Reader()  # one child process reads this ingest's PDFs
        try:
            for source, path in files.items():
                bar.set_postfix_str(source[-40:], refresh=False)
                prepared = await self._prepare(
                    source, path, scope, known.get(source), report, pdfs=pdfs
                )
                if prepared is not None:
                    pending.append(prepared)
                # Chunks of several files are embedded together: the embedder's batches,
                # not the files, set the pace (a man page is ~12 chunks).
                if sum(len(p.items) for p in pending) >= BATCH:
                    changed = True
                    await self._write(pending, report)
                    pending = []
                bar.update(1)
            if pending:
                changed = True
                await self._write(pending, report)
            if prune:
                for source in sorted(set(known) - set(files)):
                    changed = True
                    await self.store.delete(known[source].ids)
                    report.removed.append(source)
        finally:
            bar.close()
            await pdfs.close()
            if changed:  # also after a failure: what was written is searchable
                await self.store.mark_changed()
        return report

    async def _prepare(
        self,
        source: str,
        path: Path,
        scope: str,
        previous: Indexed | None,
        report: IngestReport,
        *,
        pdfs: pdf.Reader,
    ) -> _Prepared | None:
        """A file's chunks, or None when it is unchanged or unreadable (reported)."""
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except OSError as exc:
            report.failed.append((source, str(exc)))
            return None
        digest = hashlib.sha256(data).hexdigest()
        if (
            previous is not None
            and previous.digest == digest
            and previous.current
            and previous.whole
        ):
            report.unchanged.append(source)
            return None
        try:
            if path.suffix.lower() == ".pdf":
                seconds = pdf.budget(len(data), self._pdf_seconds_per_mb)
                pages = await _read_pdf(pdfs, data, seconds)
            else:
                pages = await asyncio.to_thread(read_document, path, data)
        except UnreadableDocumentError as exc:
            log.warning("skipped %s: %s", source, exc)
            report.failed.append((source, str(exc)))
            report.failure_kinds[source] = exc.kind
            return None
        count = self.store.embedder.count_tokens
        chunks = await asyncio.to_thread(
            chunk_pages, pages, count, max_tokens=self._chunk_tokens, overlap_tokens=self._overlap
        )
        opening = document_opening(pages)
        items = [
            Item(
                f"{scope}|{source}|{digest[:16]}|{n}",
                chunk.text,
                {
                    "kind": "document",
                    "scope": scope,
                    "source": source,
                    "page": chunk.page,
                    "hash": digest,
                    "chunk": n,
                    "chunks": len(chunks),
                    "method": METHOD,
                },
                context=_context(opening, chunk.text),
            )
            for n, chunk in enumerate(chunks)
        ]
        return _Prepared(source, digest, items, previous)

    async def _write(self, files: Sequence[_Prepared], report: IngestReport) -> None:
        # New chunks first, then the old ones go: a crash in between leaves duplicates that
        # the next run cleans up, never a missing document.
        items = [item for prepared in files for item in prepared.items]
        for start in range(0, len(items), BATCH):
            await self.store.add(items[start : start + BATCH])
        for prepared in files:
            previous = prepared.previous
            if previous is not None:
                stale = set(previous.ids) - {i.id for i in prepared.items}
                await self.store.delete(sorted(stale))
                if previous.digest != prepared.digest:
                    report.updated.append(prepared.source)
                elif not previous.whole:
                    report.completed.append(prepared.source)
                else:  # only the method changed
                    report.reembedded.append(prepared.source)
            else:
                report.added.append(prepared.source)
            report.written[prepared.source] = len(prepared.items)


@dataclass(slots=True)
class Indexed:
    """A source's chunks in the index: the content hash they were made from, their ids,
    whether they were embedded by the current :data:`METHOD`, and whether they are all there."""

    digest: str
    ids: list[str]
    current: bool
    # All its chunks are there (an index written before chunks recorded their number: True).
    whole: bool = True


@dataclass(frozen=True, slots=True)
class _Prepared:
    source: str
    digest: str
    items: list[Item]
    previous: Indexed | None


class _NoBar:
    def set_postfix_str(self, _text: str, refresh: bool = True) -> None:
        return None

    def update(self, _n: int) -> None:
        return None

    def close(self) -> None:
        return None


def _progress(total: int, *, enabled: bool) -> _NoBar:
    if not enabled:
        return _NoBar()
    from tqdm import tqdm  # noqa: PLC0415

    bar: _NoBar = tqdm(total=total, unit="file", desc="ingest", dynamic_ncols=True)
    return bar
