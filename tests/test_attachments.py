"""Documents sent to a channel: what the sender is told, in their language; one channel's files
indexed one at a time; the channel lanes that keep a document's indexing off other channels."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import pytest
from fpdf import FPDF
from fpdf.enums import EncryptionMethod

from adapters.attachments import (
    Lanes,
    channel_documents,
    notice_language,
    scope_folder,
    too_large,
)
from memory.documents import DocumentIndex
from memory.vectors import ChromaStore, open_client
from tests.support.retrieval import WordHashEmbedder

SCOPE = "telegram:42"


def documents(tmp_path: Path) -> DocumentIndex:
    store = ChromaStore(open_client(tmp_path / "chroma"), "documents", WordHashEmbedder())
    return DocumentIndex(store, chunk_tokens=30, overlap_tokens=8)


def locked_pdf() -> bytes:
    pdf = FPDF()
    pdf.set_font("Helvetica", size=12)
    pdf.add_page()
    pdf.multi_cell(0, 8, "The valve code is 7741.")
    pdf.set_encryption("owner", "user", EncryptionMethod.RC4)
    return bytes(pdf.output())


async def test_the_sender_is_told_what_happened_in_russian(tmp_path: Path) -> None:
    index = documents(tmp_path)
    add = channel_documents(index, tmp_path / "attachments")
    one = "Выдры держатся за лапы во сне.\n"
    notice = await add(SCOPE, "выдры.txt", one.encode(), "ru")
    assert notice == "Добавила выдры.txt в документы этого канала (1 фрагмент)."
    assert await add(SCOPE, "выдры.txt", one.encode(), "ru") == (
        "выдры.txt уже есть в документах этого канала, без изменений."
    )
    # The count is of this file's chunks, in Russian plural forms.
    long = "\n\n".join(f"Абзац номер {n} о выдрах, их лапах, норах и рыбе." for n in range(8))
    notice = await add(SCOPE, "много.md", long.encode(), "ru")
    count = len(await index.store.get({"source": "много.md"}))
    assert count > 1
    form = "фрагментов" if count % 10 >= 5 or count % 10 == 0 else "фрагмента"
    assert notice == f"Добавила много.md в документы этого канала ({count} {form})."
    assert await add(SCOPE, "пусто.txt", b"", "ru") == (
        "В пусто.txt нет текста, который я могла бы добавить."
    )
    assert await add(SCOPE, "картинка.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "ru") == (
        "Не получилось прочитать картинка.txt: это не текст."
    )
    assert await add(SCOPE, "секрет.pdf", locked_pdf(), "ru") == (
        "Не получилось прочитать секрет.pdf: он защищён паролем; пришлите, пожалуйста, копию "
        "без пароля."
    )
    assert await add(SCOPE, "broken.pdf", b"%PDF-1.4 and then nothing", "en") == (
        "I could not read broken.pdf: it is not a readable PDF."
    )
    kept = sorted(p.name for p in (tmp_path / "attachments").rglob("*") if p.is_file())
    assert kept == ["выдры.txt", "много.md", "пусто.txt"]  # what failed is not kept
    assert too_large("отчёт.pdf", 8_000_000, "ru") == (
        "отчёт.pdf слишком большой, я не могу его добавить (предел — 8 МБ)."
    )


def test_the_notice_language_comes_from_the_sender_first() -> None:
    # The caption decides; then the person's own language (Telegram says it); then [chat]
    # language; where that is "auto", the file name; else English.
    assert notice_language("что в нём?", "report.pdf", "en", "en") == "ru"
    assert notice_language("", "report.pdf", "auto", "ru-RU") == "ru"
    assert notice_language("", "report.pdf", "ru") == "ru"
    assert notice_language("", "отчёт.pdf", "auto") == "ru"
    assert notice_language("", "отчёт.pdf", "en") == "en"
    assert notice_language("", "2024.pdf", "auto") == "en"


async def test_forum_topics_with_the_same_number_keep_their_documents_apart(
    tmp_path: Path,
) -> None:
    """Topic 45 of one group and topic 45 of another once shared a folder: each group's
    ingest indexed the other's files into its own scope (a leak between chats)."""
    index = documents(tmp_path)
    add = channel_documents(index, tmp_path / "attachments")
    first, second = "telegram:-1001/45", "telegram:-1002/45"
    await add(first, "plans.txt", b"The first group's secret plans.", "en")
    await add(second, "menu.txt", b"The second group's lunch menu.", "en")
    assert list(await index.indexed(first)) == ["plans.txt"]
    assert list(await index.indexed(second)) == ["menu.txt"]
    assert scope_folder(first) != scope_folder(second)
    assert scope_folder(first).startswith("telegram_-1001_45-")


async def test_a_scopes_files_in_the_folder_of_an_earlier_version_are_taken_over(
    tmp_path: Path,
) -> None:
    """The earlier folder (named "45" for both topics) holds both scopes' files: each scope
    takes over its own, so none is pruned from its index and none reaches the other."""
    index = documents(tmp_path)
    root = tmp_path / "attachments"
    first, second = "telegram:-1001/45", "telegram:-1002/45"
    legacy = root / "45"
    legacy.mkdir(parents=True)
    (legacy / "plans.txt").write_bytes(b"The first group's secret plans.")
    await index.ingest(legacy, scope=first)  # as the earlier version indexed it
    (legacy / "menu.txt").write_bytes(b"The second group's lunch menu.")
    await index.ingest(legacy / "menu.txt", scope=second)
    add = channel_documents(index, root)
    await add(first, "notes.txt", b"New notes of the first group.", "en")
    assert sorted(await index.indexed(first)) == ["notes.txt", "plans.txt"]
    assert sorted(p.name for p in (root / scope_folder(first)).iterdir()) == [
        "notes.txt",
        "plans.txt",
    ]
    await add(second, "drinks.txt", b"The second group's drinks.", "en")
    assert sorted(await index.indexed(second)) == ["drinks.txt", "menu.txt"]


class CountingEmbedder(WordHashEmbedder):
    def __init__(self) -> None:
        super().__init__()
        self.embedded: list[str] = []

    def embed_passages(self, texts: Sequence[str]) -> list[list[float]]:
        self.embedded.extend(texts)
        return super().embed_passages(texts)


async def test_one_channels_files_are_indexed_one_at_a_time(tmp_path: Path) -> None:
    """Files sent at once: each ingest of the folder would also embed the files the others
    were still embedding (a long PDF twice over, on a machine answering chats meanwhile)."""
    embedder = CountingEmbedder()
    store = ChromaStore(open_client(tmp_path / "chroma"), "documents", embedder)
    index = DocumentIndex(store, chunk_tokens=30, overlap_tokens=8)
    add = channel_documents(index, tmp_path / "attachments")
    names = [f"file{n}.txt" for n in range(4)]
    notices = await asyncio.gather(
        *(add(SCOPE, name, f"Note {name} about otters.\n\n{'Otters swim. ' * 40}".encode(), "en")
          for name in names)
    )  # fmt: skip
    assert all(n.startswith("Indexed file") for n in notices), notices
    assert sorted(await index.indexed(SCOPE)) == names
    chunks = len(await store.get())
    assert len(embedder.embedded) == chunks  # every chunk embedded once
    # Another channel's folder is not held up by this one's lock.
    other = await add("telegram:43", "file0.txt", b"Another channel's note.", "en")
    assert other.startswith("Indexed file0.txt")


async def test_a_lane_keeps_one_channels_order_and_holds_back_no_other() -> None:
    lanes = Lanes()
    done: list[str] = []
    release = asyncio.Event()

    async def slow() -> None:
        await release.wait()
        done.append("a1")

    def record(name: str) -> Callable[[], Awaitable[None]]:
        async def work() -> None:
            done.append(name)

        return work

    lanes.add("a", slow)
    lanes.add("a", record("a2"))
    lanes.add("b", record("b1"))
    await asyncio.sleep(0.01)
    assert done == ["b1"]
    assert lanes.busy("a")
    assert not lanes.busy("b")
    release.set()
    await lanes.finish(5)
    assert done == ["b1", "a1", "a2"]
    assert not lanes.busy("a")


async def test_a_failed_piece_of_work_does_not_stop_its_lane(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lanes = Lanes()
    done: list[str] = []

    async def fails() -> None:
        raise RuntimeError("boom")

    async def after() -> None:
        done.append("after")

    lanes.add("a", fails)
    lanes.add("a", after)
    await lanes.finish(5)
    assert done == ["after"]
    assert "a message of a failed" in caplog.text


async def test_at_a_stop_the_lanes_get_a_grace_then_are_cancelled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    lanes = Lanes()
    cancelled = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    lanes.add("a", forever)
    await lanes.finish(0.05)
    assert cancelled.is_set()
    assert not lanes.busy("a")
    assert "stopped 1 messages still waiting" in caplog.text
