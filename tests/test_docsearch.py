"""Hybrid document search: stems, translation across languages, documents ranked (not chunks),
and a copy in memory that follows what another process ingests."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from memory import docsearch
from memory.docsearch import DocumentSearch, build_snapshot, rank
from memory.documents import DocumentIndex
from memory.lexical import BM25, MAX_QUERY_WORDS, Translator, query_words, terms, vocabulary
from memory.vectors import ChromaStore, open_client
from tests.support.retrieval import WordHashEmbedder


class BilingualEmbedder(WordHashEmbedder):
    """Word-hash vectors, except that the words of each pair of PAIRS (and their forms
    that share the first five letters) embed alike: a tiny multilingual model."""

    PAIRS = (("каталог", "directory"), ("удалить", "remove"), ("пароль", "password"))

    def _embed(self, text: str) -> list[float]:
        for n, pair in enumerate(self.PAIRS):
            if text.lower().startswith(tuple(w[:5] for w in pair)):
                text = f"concept{n}"
        return super()._embed(text)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_stems_match_other_forms_of_a_word_in_both_languages() -> None:
    assert terms("каталогов") == terms("каталоге")
    assert terms("Removing directories") == terms("remove directory")
    assert terms("и the в of") == []  # stopwords carry nothing


def test_bm25_prefers_the_chunk_with_the_rarer_word() -> None:
    chunks = [terms(t) for t in ("file mode file", "file owner", "socket file", "pipe")]
    scores = BM25(chunks).scores({"owner": 1.0, "file": 1.0})
    assert int(np.argmax(scores)) == 1
    assert scores[3] == 0.0


def test_a_word_is_carried_to_its_neighbour_in_the_other_script() -> None:
    embedder = BilingualEmbedder()
    words = vocabulary(["The directory and the directory.", "Password, password; remove it."])
    translator = Translator(words, np.array(embedder.embed_passages(words), dtype=np.float32))
    carried = translator.translate(["каталогов"], np.array([embedder.embed_query("каталогов")]))
    assert set(carried) == {"directori"}


async def index_folder(
    tmp_path: Path, files: dict[str, str], embedder: WordHashEmbedder, chunk_tokens: int = 30
) -> tuple[ChromaStore, DocumentIndex]:
    store = ChromaStore(open_client(tmp_path / "data"), "documents", embedder)
    index = DocumentIndex(store, chunk_tokens=chunk_tokens, overlap_tokens=0)
    folder = tmp_path / "docs"
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    await index.ingest(folder)
    return store, index


async def sources(search: DocumentSearch, query: str, k: int = 3) -> list[str]:
    return [str(h.metadata["source"]) for h in await search.nearest(query, k, ["global"])]


async def test_an_english_question_finds_the_russian_document(tmp_path: Path) -> None:
    files = {
        "ru.txt": "Как удалить пустой каталог. Каталог удаляется вызовом rmdir.",
        "en1.txt": "How to change the owner of a file with chown.",
        "en2.txt": "Signals interrupt a process; a handler runs.",
    }
    store, _ = await index_folder(tmp_path, files, BilingualEmbedder())
    search = DocumentSearch(store)
    # No word of the question is in the Russian text: only the carried words find it.
    assert (await sources(search, "How do I remove an empty directory?"))[0] == "ru.txt"


async def test_a_long_document_does_not_crowd_out_the_others(tmp_path: Path) -> None:
    long = "\n\n".join(f"Section {n}: the kernel memory report, part {n}." for n in range(40))
    files = {
        "long.txt": long,
        "short.txt": "The memory report of one process.",
        "other.txt": "Kernel memory, in short.",
    }
    store, _ = await index_folder(tmp_path, files, WordHashEmbedder(), chunk_tokens=12)
    hits = await DocumentSearch(store).nearest("kernel memory report", 3, ["global"])
    # One chunk per document first; the long one's 40 chunks do not fill the three places.
    assert sorted(str(h.metadata["source"]) for h in hits) == ["long.txt", "other.txt", "short.txt"]


def test_the_document_about_the_question_all_through_beats_one_good_passage(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Near neighbours (getxattr and setxattr) often share a best passage: the whole
    document's similarity decides. Vectors by hand, so only the embedder's signal differs
    (no word of the question is in any text)."""
    e = np.eye(4, dtype=np.float32)
    chunks = {  # source -> chunk vectors; the query is e[0]
        "passing.txt": [0.9 * e[0] + 0.44 * e[3], e[2], e[3]],  # one passage, then elsewhere
        "about.txt": [0.8 * e[0] + 0.6 * e[1], 0.7 * e[0] + 0.71 * e[2], 0.8 * e[0] + 0.6 * e[2]],
        "other.txt": [e[1], e[2], e[3]],
    }
    owner = [name for name, vectors in chunks.items() for _ in vectors]
    snapshot = build_snapshot(
        "1",
        [f"{name}:{n}" for n, name in enumerate(owner)],
        [f"text {n}" for n in range(len(owner))],
        [{"source": name, "scope": "global"} for name in owner],
        np.array([v for vectors in chunks.values() for v in vectors]),
        lambda words: np.zeros((len(words), 4), dtype=np.float32),
    )

    def first() -> str:
        found = rank(snapshot, "zzz", e[0], np.zeros((1, 4), np.float32), ["global"], 1, -1.0)
        return owner[found[0][0]]

    assert first() == "about.txt"
    monkeypatch.setattr(docsearch, "WHOLE_WEIGHT", 0.0)
    assert first() == "passing.txt"  # by best passages alone


async def test_a_long_message_carries_over_a_bounded_number_of_words(tmp_path: Path) -> None:
    """A message of thousands of made-up words (hostile, or a pasted log) must not embed
    each of them for the translation: a second of CPU per message otherwise."""

    embedder = CountingEmbedder()
    store, _ = await index_folder(tmp_path, {"a.txt": "The kernel memory report."}, embedder)
    search = DocumentSearch(store)
    await search.warm()
    embedder.embedded = 0
    words = [f"{a}{b}{c}word" for a in "bcdfg" for b in "hjklm" for c in "npqrstvwxz"]
    assert len(set(words)) == 250
    await search.nearest(" ".join(words) + " kernel memory", 3, ["global"])
    assert embedder.embedded == MAX_QUERY_WORDS
    assert query_words(" ".join(words)) == words[:MAX_QUERY_WORDS]


class CountingEmbedder(WordHashEmbedder):
    """Counts the passages (and words) it embeds."""

    embedded = 0

    def embed_passages(self, texts: Sequence[str]) -> list[list[float]]:
        self.embedded += len(texts)
        return super().embed_passages(texts)


async def test_one_document_still_fills_every_place(tmp_path: Path) -> None:
    text = "\n\n".join(f"Pump P-{n} has valve code {n}{n}." for n in range(10))
    store, _ = await index_folder(tmp_path, {"pumps.txt": text}, WordHashEmbedder(), 12)
    hits = await DocumentSearch(store).nearest("pump valve code", 4, ["global"])
    assert len({h.id for h in hits}) == 4


async def test_the_copy_follows_documents_ingested_by_another_process(tmp_path: Path) -> None:
    embedder = WordHashEmbedder()
    store, _ = await index_folder(tmp_path, {"a.txt": "Bees keep the hive warm."}, embedder)
    clock = Clock()
    search = DocumentSearch(store, refresh_seconds=2.0, clock=clock)
    assert await sources(search, "volcanic ash flights") == ["a.txt"]
    # Another process: its own client and store on the same folder, as `beseda ingest` is.
    other = ChromaStore(open_client(tmp_path / "data"), "documents", embedder)
    (tmp_path / "docs" / "b.txt").write_text("Volcanic ash closed flights.", encoding="utf-8")
    await DocumentIndex(other, chunk_tokens=30).ingest(tmp_path / "docs")
    clock.now = 1.0  # not looked at again yet: the old copy answers
    assert await sources(search, "volcanic ash flights") == ["a.txt"]
    clock.now = 3.0
    await sources(search, "volcanic ash flights")  # sees the new generation, reads it
    await settled(search)
    assert (await sources(search, "volcanic ash flights"))[0] == "b.txt"


async def settled(search: DocumentSearch) -> None:
    loading = search._loading
    if loading is not None:
        await loading


async def test_scopes_hold_in_the_copy(tmp_path: Path) -> None:
    embedder = WordHashEmbedder()
    store, index = await index_folder(tmp_path, {"a.txt": "Bees keep the hive warm."}, embedder)
    private = tmp_path / "private"
    private.mkdir()
    (private / "secret.txt").write_text("The hive code is 4411.", encoding="utf-8")
    await index.ingest(private, scope="discord:1")
    search = DocumentSearch(store)
    assert await sources(search, "hive code") == ["a.txt"]
    both = await search.nearest("hive code", 3, ["global", "discord:1"])
    assert str(both[0].metadata["source"]) == "secret.txt"


async def test_ingest_changes_the_generation_and_keeps_the_embedder_check(tmp_path: Path) -> None:
    embedder = WordHashEmbedder()
    store, index = await index_folder(tmp_path, {"a.txt": "One."}, embedder)
    first = await store.generation()
    assert first
    (tmp_path / "docs" / "b.txt").write_text("Two.", encoding="utf-8")
    await index.ingest(tmp_path / "docs")
    assert await store.generation() not in {"", first}
    unchanged = await store.generation()
    await index.ingest(tmp_path / "docs")  # nothing to do: readers keep their copy
    assert await store.generation() == unchanged
    # The collection still names its embedder after the metadata was rewritten.
    ChromaStore(open_client(tmp_path / "data"), "documents", embedder)


async def test_an_empty_collection_is_searched_quietly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    search = DocumentSearch(ChromaStore(open_client(tmp_path), "documents", WordHashEmbedder()))
    await search.warm()
    assert await search.nearest("anything", 3, ["global"]) == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
