"""PDFs are read in a child process (memory/pdf.py): the same text as in this process, and a
PDF built to keep its reader busy is stopped at its time, reported in the sender's language,
and costs nothing else of the folder."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from adapters.attachments import channel_documents
from memory import pdf
from memory.documents import DocumentIndex
from memory.vectors import ChromaStore, open_client
from tests.support.pdfs import simple_pdf, slow_pdf
from tests.support.retrieval import WordHashEmbedder


@pytest.fixture
def children(monkeypatch: pytest.MonkeyPatch) -> list[asyncio.subprocess.Process]:
    """The child processes memory.pdf starts."""
    started: list[asyncio.subprocess.Process] = []
    start = asyncio.create_subprocess_exec

    async def recorded(*args: Any, **kwargs: Any) -> asyncio.subprocess.Process:
        child = await start(*args, **kwargs)
        started.append(child)
        return child

    monkeypatch.setattr(pdf.asyncio, "create_subprocess_exec", recorded)
    return started


async def test_the_child_reads_what_this_process_reads(
    children: list[asyncio.subprocess.Process],
) -> None:
    data = simple_pdf("Page one talks about pumps.", "The valve code.")
    assert (
        await pdf.read(data)
        == pdf.extract(data)
        == [
            (1, "Page one talks about pumps."),
            (2, "The valve code."),
        ]
    )
    with pytest.raises(pdf.PdfError, match="password-protected") as raised:
        await pdf.read(simple_pdf("secret", password="user"))
    assert raised.value.kind == "password"
    with pytest.raises(pdf.PdfError, match="not a readable PDF") as raised:
        await pdf.read(b"%PDF-1.4 and then nothing")
    assert raised.value.kind == "pdf"
    assert len(children) == 3
    assert all(child.returncode == 0 for child in children)


async def test_a_pdf_built_to_be_slow_is_stopped_at_its_time(
    children: list[asyncio.subprocess.Process],
) -> None:
    data = slow_pdf(pages=300)  # about five minutes of pypdf's time, in 4 kB
    assert len(data) < 50_000
    with pytest.raises(pdf.PdfError, match="took longer than 1 s") as raised:
        await pdf.read(data, seconds=1.0)
    assert raised.value.kind == "slow"
    [child] = children
    assert child.returncode is not None  # killed, not left running
    assert child.returncode < 0


def test_the_time_allowed_grows_with_the_file() -> None:
    assert pdf.budget(0) == pdf.budget(1) == pdf.budget(pdf.MB) == pdf.SECONDS_PER_MB
    assert pdf.budget(pdf.MB + 1, 10) == 20
    assert pdf.budget(8_000_000, 10) == 80


async def test_a_slow_pdf_in_a_folder_costs_only_itself(tmp_path: Path) -> None:
    store = ChromaStore(open_client(tmp_path / "chroma"), "documents", WordHashEmbedder())
    index = DocumentIndex(store, chunk_tokens=30, overlap_tokens=8, pdf_seconds_per_mb=1)
    folder = tmp_path / "documents"
    folder.mkdir()
    # First: the next PDF is read by a child started again after this one was killed.
    (folder / "a-slow.pdf").write_bytes(slow_pdf(pages=300))
    (folder / "manual.pdf").write_bytes(simple_pdf("The valve code is 7741."))
    (folder / "notes.txt").write_text("Otters hold hands while sleeping.", encoding="utf-8")
    report = await index.ingest(folder)
    assert sorted(report.added) == ["manual.pdf", "notes.txt"]
    assert [source for source, _ in report.failed] == ["a-slow.pdf"]
    assert report.failure_kinds == {"a-slow.pdf": "slow"}
    # Sent to a chat, the sender is told why, in their language.
    add = channel_documents(index, tmp_path / "attachments")
    notice = await add("telegram:42", "отчёт.pdf", slow_pdf(pages=300), "ru")
    assert notice == (
        "Не получилось прочитать отчёт.pdf: его чтение заняло слишком много времени "
        "(PDF повреждён?)."
    )


@pytest.mark.skipif(sys.platform == "win32", reason="no address-space limit on Windows")
async def test_a_pdf_that_needs_more_memory_than_allowed_is_refused_and_the_reader_restarts() -> (
    None
):
    """The child is held to its memory limit (here 120 MB instead of 2 GB, so that a small
    PDF reaches it): the file is refused with the reason, and the child ends, so the next
    file gets a fresh process."""
    data = slow_pdf(pages=1, stream_bytes=5_000_000)  # about 250 MB to read its text
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import memory.pdf as p; p.MEMORY_BYTES = 120 * 2**20; p.main()",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(child.communicate(pdf._frame(data) * 2), 60)
    size = int.from_bytes(out[: pdf.HEADER], "big")
    assert json.loads(out[pdf.HEADER : pdf.HEADER + size]) == {
        "kind": "pdf",
        "reason": "not a readable PDF: it needs over 120 MB to read",
    }
    assert len(out) == pdf.HEADER + size  # no answer for the second file: it ended
    assert child.returncode == 0
