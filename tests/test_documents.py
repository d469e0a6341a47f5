"""Document ingestion: formats, chunking, incremental re-indexing, corrupt files, progress."""

from __future__ import annotations

import base64
import itertools
from collections.abc import Sequence
from pathlib import Path

import pytest
from fpdf import FPDF
from fpdf.enums import EncryptionMethod

from memory.documents import (
    METHOD,
    OPENING_CHARS,
    DocumentIndex,
    Page,
    UnreadableDocumentError,
    chunk_pages,
    document_opening,
    read_document,
)
from memory.vectors import ChromaStore, Item, open_client
from tests.support.retrieval import WordHashEmbedder


def words(text: str) -> int:
    return len(text.split())


def write_pdf(path: Path, pages: list[str]) -> Path:
    pdf = FPDF()
    pdf.set_font("Helvetica", size=12)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 8, text)
    pdf.output(str(path))
    return path


@pytest.fixture
def index(tmp_path: Path) -> DocumentIndex:
    store = ChromaStore(open_client(tmp_path / "data"), "documents", WordHashEmbedder())
    return DocumentIndex(store, chunk_tokens=30, overlap_tokens=8)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "documents"
    (root / "sub").mkdir(parents=True)
    (root / "cats.txt").write_text("Cats sleep sixteen hours a day.\n", encoding="utf-8")
    (root / "sub" / "notes.md").write_text("# Notes\n\nThe lighthouse keeper is Arvid.\n")
    write_pdf(root / "manual.pdf", ["Page one talks about pumps.", "The valve code is 7741."])
    return root


def test_a_word_longer_than_a_chunk_is_cut_into_chunks_that_fit() -> None:
    """An image inside a Markdown file (base64, no spaces) was one chunk however long: 20 s
    and 5 GB of memory to embed 400,000 characters of it."""

    def count(text: str) -> int:  # about three characters a token, as base64 with `use`
        return len(text) // 3 + 1

    blob = base64.b64encode(bytes(range(256)) * 90).decode()  # 30,720 characters
    text = f"A diagram follows.\n\n![diagram](data:image/png;base64,{blob})\n\nThat is all."
    chunks = chunk_pages([Page(0, text)], count, max_tokens=50, overlap_tokens=10)
    assert max(count(chunk.text) for chunk in chunks) <= 50
    assert len(chunks) > 30_720 // 150
    assert chunks[0].text == "A diagram follows."
    assert chunks[-1].text.endswith("That is all.")
    assert f"![diagram](data:image/png;base64,{blob})" in "".join(c.text for c in chunks)


def test_images_inside_markdown_are_not_indexed_as_text(tmp_path: Path) -> None:
    blob = base64.b64encode(bytes(range(256)) * 90).decode()
    note = tmp_path / "note.md"
    note.write_text(
        f"# Pump\n\n![diagram](data:image/png;base64,{blob})\n\n"
        f"Inline data:image/svg+xml;charset=utf-8;base64,{blob[:64]} and text after it.",
        encoding="utf-8",
    )
    assert read_document(note) == [
        Page(0, "# Pump\n\n![diagram](data:)\n\nInline data: and text after it.")
    ]
    # A text file is indexed as written.
    plain = tmp_path / "note.txt"
    plain.write_text(f"data:image/png;base64,{blob[:8]}", encoding="utf-8")
    assert read_document(plain) == [Page(0, f"data:image/png;base64,{blob[:8]}")]


def test_chunks_respect_the_budget_cut_at_sentences_and_overlap() -> None:
    sentences = [f"Sentence number {i} has exactly seven words." for i in range(12)]
    text = " ".join(sentences[:6]) + "\n\n" + " ".join(sentences[6:])
    chunks = chunk_pages([Page(3, text)], words, max_tokens=20, overlap_tokens=7)
    assert len(chunks) >= 5
    for chunk in chunks:
        assert words(chunk.text) <= 20
        assert chunk.page == 3
        # Cut on sentence boundaries: every chunk starts a sentence and ends one.
        assert chunk.text.startswith("Sentence number")
        assert chunk.text.endswith("words.")
    for before, after in itertools.pairwise(chunks):
        last = before.text.split("\n\n")[-1].split(". ")[-1]
        assert last in after.text  # overlap: the next chunk repeats the last sentence
    joined = " ".join(c.text for c in chunks)
    assert all(s in joined for s in sentences)


def test_a_long_sentence_is_cut_between_words() -> None:
    chunks = chunk_pages([Page(0, "word " * 95)], words, max_tokens=20, overlap_tokens=0)
    assert [words(c.text) for c in chunks] == [20, 20, 20, 20, 15]


def test_cutting_a_long_sentence_costs_about_its_length_in_counting() -> None:
    # A table row or a line of code has no sentence ends: 20,000 words of varied length.
    text = " ".join("x" * (1 + n % 7) for n in range(20_000))
    counted = 0

    def letters(piece: str) -> int:  # tokens: a word is one per 3 letters, rounded up
        nonlocal counted
        counted += len(piece)
        return sum(-(-len(w) // 3) for w in piece.split())

    chunks = chunk_pages([Page(0, text)], letters, max_tokens=50, overlap_tokens=0)
    assert " ".join(c.text for c in chunks) == text
    # Each chunk is the longest run of words that fits.
    rest = text.split(" ")
    for chunk in chunks:
        taken = chunk.text.split(" ")
        assert rest[: len(taken)] == taken
        assert letters(chunk.text) <= 50
        if len(taken) < len(rest):
            assert letters(" ".join(rest[: len(taken) + 1])) > 50
        rest = rest[len(taken) :]
    counted = 0
    chunk_pages([Page(0, text)], letters, max_tokens=50, overlap_tokens=0)
    # Adding a word at a time counted the text 17 times over here (the run again per word).
    assert counted < 8 * len(text)


def test_pdf_pages_keep_their_numbers(folder: Path) -> None:
    pages = read_document(folder / "manual.pdf")
    assert [p.number for p in pages] == [1, 2]
    assert "7741" in pages[1].text


async def test_ingest_indexes_every_format_with_source_and_page(
    index: DocumentIndex, folder: Path
) -> None:
    report = await index.ingest(folder)
    assert sorted(report.added) == ["cats.txt", "manual.pdf", "sub/notes.md"]
    assert report.failed == []
    hits = await index.store.query("valve code", 1)
    assert hits[0].metadata["source"] == "manual.pdf"
    assert hits[0].metadata["page"] == 2
    assert hits[0].metadata["scope"] == "global"
    hits = await index.store.query("who is the lighthouse keeper", 1)
    assert (hits[0].metadata["source"], hits[0].metadata["page"]) == ("sub/notes.md", 0)


async def test_ingest_is_incremental(index: DocumentIndex, folder: Path) -> None:
    await index.ingest(folder)
    before = {i.id for i in await index.store.get()}
    again = await index.ingest(folder)
    assert (again.added, again.updated, again.removed, again.chunks) == ([], [], [], 0)
    assert sorted(again.unchanged) == ["cats.txt", "manual.pdf", "sub/notes.md"]
    assert {i.id for i in await index.store.get()} == before

    (folder / "cats.txt").write_text("Cats purr when they are content.\n", encoding="utf-8")
    (folder / "sub" / "notes.md").unlink()
    changed = await index.ingest(folder)
    assert (changed.updated, changed.removed) == (["cats.txt"], ["sub/notes.md"])
    sources = [i.metadata["source"] for i in await index.store.get()]
    assert "sub/notes.md" not in sources
    cats = await index.store.get({"source": "cats.txt"})
    assert [c.text for c in cats] == ["Cats purr when they are content."]


class RecordingEmbedder(WordHashEmbedder):
    def __init__(self) -> None:
        super().__init__()
        self.passages: list[str] = []

    def embed_passages(self, texts: Sequence[str]) -> list[list[float]]:
        self.passages.extend(texts)
        return super().embed_passages(texts)


def test_the_opening_is_the_documents_start_cut_at_a_word() -> None:
    pages = [Page(1, "  Pump   manual\n\nModel X"), Page(2, "word " * 100)]
    opening = document_opening(pages)
    assert opening.startswith("Pump manual Model X word word")
    assert len(opening) <= OPENING_CHARS
    assert opening.endswith("word")  # not a cut word
    assert document_opening([Page(0, "Short note.")]) == "Short note."
    assert document_opening([Page(0, "   ")]) == ""


async def test_chunks_deep_in_a_document_are_embedded_after_its_opening(tmp_path: Path) -> None:
    embedder = RecordingEmbedder()
    store = ChromaStore(open_client(tmp_path / "data"), "documents", embedder)
    index = DocumentIndex(store, chunk_tokens=30, overlap_tokens=0)
    root = tmp_path / "docs"
    root.mkdir()
    body = "\n\n".join(f"Step {n} is to wait a little while longer." for n in range(12))
    kettle = "KETTLE MANUAL. Caring for your electric kettle."
    (root / "kettle.txt").write_text(f"{kettle}\n\n{body}\n\nClean the filter monthly.\n")
    mower = "LAWN MOWER MANUAL. Caring for your petrol lawn mower."
    (root / "mower.txt").write_text(f"{mower}\n\n{body}\n\nClean the filter monthly, filter.\n")
    await index.ingest(root)
    stored = sorted(
        await store.get({"source": "kettle.txt"}), key=lambda i: int(i.metadata["chunk"])
    )
    assert len(stored) > 3
    assert stored[0].text.startswith("KETTLE MANUAL")
    assert stored[-1].text.endswith("Clean the filter monthly.")  # the stored text: the chunk
    assert all(i.metadata["method"] == METHOD for i in stored)
    assert stored[0].text in embedder.passages  # the first chunk starts with the opening
    opening = document_opening([Page(0, f"{kettle}\n\n{body}")])
    assert opening.startswith("KETTLE MANUAL. Caring for your electric kettle. Step 0")
    for item in stored[1:]:
        assert f"{opening}\n\n{item.text}" in embedder.passages
    # The deep chunk is found by what its document is about (embedded alone, the mower's
    # chunk is the closer one: it says "filter" twice).
    hits = await store.query("how do I clean the kettle filter", 3)
    deep = [h for h in hits if "filter" in h.text]
    assert deep[0].metadata["source"] == "kettle.txt"


async def test_a_file_an_interrupted_ingest_wrote_in_part_is_completed(
    index: DocumentIndex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C during a long ingest stops it between two batches of a file's chunks: the
    next ingest must not take the part for the whole file because its hash matches."""
    root = tmp_path / "long"
    root.mkdir()
    paragraphs = [f"Paragraph {n} tells how pump {n} is primed and bled." for n in range(12)]
    (root / "pumps.txt").write_text("\n\n".join(paragraphs), encoding="utf-8")
    monkeypatch.setattr("memory.documents.BATCH", 3)
    real_add = index.store.add
    calls = 0

    async def add_then_stop(items: Sequence[Item]) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise KeyboardInterrupt  # between the first and the second batch
        await real_add(items)

    monkeypatch.setattr(index.store, "add", add_then_stop)
    with pytest.raises(KeyboardInterrupt):
        await index.ingest(root)
    monkeypatch.setattr(index.store, "add", real_add)
    part = await index.store.get({"source": "pumps.txt"})
    assert 0 < len(part) < len(paragraphs) / 2
    again = await index.ingest(root)
    assert (again.completed, again.unchanged) == (["pumps.txt"], [])
    assert "1 completed (an earlier ingest stopped midway)" in again.summary()
    whole = await index.store.get({"source": "pumps.txt"})
    assert len(whole) > len(part)
    assert all(f"pump {n} " in " ".join(i.text for i in whole) for n in range(12))
    assert (await index.ingest(root)).unchanged == ["pumps.txt"]


async def test_an_index_embedded_the_old_way_is_embedded_again(
    index: DocumentIndex, folder: Path
) -> None:
    await index.ingest(folder)
    old = [
        Item(i.id, i.text, {k: v for k, v in i.metadata.items() if k != "method"})
        for i in await index.store.get({"source": "cats.txt"})
    ]
    await index.store.delete([i.id for i in old])
    await index.store.add(old)  # as an ingest before chunks had openings wrote it
    again = await index.ingest(folder)
    assert (again.reembedded, again.updated, sorted(again.unchanged)) == (
        ["cats.txt"],
        [],
        ["manual.pdf", "sub/notes.md"],
    )
    assert "1 embedded again (chunks now carry their document's opening)" in again.summary()
    assert all(i.metadata["method"] == METHOD for i in await index.store.get())
    assert [i.text for i in await index.store.get({"source": "cats.txt"})] == [
        "Cats sleep sixteen hours a day."
    ]
    assert (await index.ingest(folder)).reembedded == []


RUSSIAN = (
    "Утилита ls выводит список файлов каталога.\n\n"
    "Параметр -l включает подробный формат: права, владелец, размер и дата изменения."
)
ENGLISH_1252 = "The caf\u00e9 \u2014 open from nine \u2014 serves cr\u00e8me br\u00fbl\u00e9e."


@pytest.mark.parametrize(
    ("encoding", "text"),
    [
        ("cp1251", RUSSIAN),  # Windows, the most common for Russian text files
        ("koi8-r", RUSSIAN),  # Unix, older mail and FTP archives
        ("cp866", RUSSIAN),  # DOS
        ("utf-16", RUSSIAN),  # Windows Notepad's "Unicode", with a byte order mark
        ("utf-16-le", RUSSIAN),  # the same without one
        ("cp1252", ENGLISH_1252),
        ("utf-8-sig", RUSSIAN),
        ("utf-8", "Кошка"),  # a single word
    ],
)
def test_text_files_are_read_in_the_encoding_they_were_written_in(
    tmp_path: Path, encoding: str, text: str
) -> None:
    path = tmp_path / "doc.txt"
    path.write_bytes(text.encode(encoding))
    assert read_document(path) == [Page(0, text)]


def test_a_short_koi8_file_reads_as_russian(tmp_path: Path) -> None:
    path = tmp_path / "note.txt"
    path.write_bytes("Кошки спят.".encode("koi8-r"))
    assert read_document(path)[0].text == "Кошки спят."


def test_utf8_with_a_few_broken_bytes_stays_utf8(tmp_path: Path) -> None:
    # Cut short in the middle of a letter, and a stray byte inside: the rest must not be
    # read as some single-byte encoding (every letter garbled).
    data = RUSSIAN.encode("utf-8")
    middle = data.index("список".encode())
    path = tmp_path / "cut.txt"
    path.write_bytes(data[:middle] + b"\xff" + data[middle:] + "ё".encode()[:1])
    text = read_document(path)[0].text
    assert text.startswith("Утилита ls выводит \ufffdсписок файлов каталога.")
    assert text.endswith("дата изменения.\ufffd")


def test_encrypted_pdfs_open_unless_they_need_a_password(tmp_path: Path) -> None:
    def encrypted(name: str, user_password: str | None = None) -> Path:
        pdf = FPDF()
        pdf.set_font("Helvetica", size=12)
        pdf.add_page()
        pdf.multi_cell(0, 8, "The valve code is 7741.")
        pdf.set_encryption("owner", user_password, EncryptionMethod.RC4)
        pdf.output(str(tmp_path / name))
        return tmp_path / name

    # Permissions only (no password to open it): most "protected" manuals.
    opened = read_document(encrypted("manual.pdf"))
    assert opened == [Page(1, "The valve code is 7741.")]
    locked = encrypted("locked.pdf", user_password="user")
    with pytest.raises(UnreadableDocumentError, match="password-protected PDF"):
        read_document(locked)


def test_the_bytes_ingest_hashed_are_the_ones_read(tmp_path: Path) -> None:
    """Ingest hashes a file's bytes, then reads its text: from those same bytes, so a file
    rewritten in between is not indexed under the old hash (and is read once)."""
    text = tmp_path / "notes.txt"
    text.write_text("Written later.", encoding="utf-8")
    assert read_document(text, "Hashed first.".encode("cp1251")) == [Page(0, "Hashed first.")]
    pdf = write_pdf(tmp_path / "manual.pdf", ["The valve code is 7741."])
    data = pdf.read_bytes()
    pdf.unlink()
    assert read_document(pdf, data) == [Page(1, "The valve code is 7741.")]


def test_a_binary_file_named_txt_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "picture.txt"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    with pytest.raises(UnreadableDocumentError, match="binary"):
        read_document(path)


async def test_corrupt_and_binary_files_are_reported_and_skipped(
    index: DocumentIndex, folder: Path
) -> None:
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4\n1 0 obj garbage\n%%EOF")
    (folder / "image.md").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    report = await index.ingest(folder)
    assert sorted(s for s, _ in report.failed) == ["broken.pdf", "image.md"]
    assert sorted(report.added) == ["cats.txt", "manual.pdf", "sub/notes.md"]
    assert {i.metadata["source"] for i in await index.store.get()} == {
        "cats.txt",
        "manual.pdf",
        "sub/notes.md",
    }


async def test_progress_bar_counts_files(
    index: DocumentIndex, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await index.ingest(folder, progress=True)
    err = capsys.readouterr().err
    assert "ingest" in err
    assert "3/3" in err
