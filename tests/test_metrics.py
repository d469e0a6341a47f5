"""/healthz and /metrics: a real App and Core, a real HTTP client, the Prometheus parser."""

from __future__ import annotations

import asyncio
import contextlib
import io
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from adapters.console import ConsoleAdapter
from agent.app import App
from agent.config import MetricsConfig, ModelConfig, load_config
from agent.events import Inbound
from agent.generators.base import ChatMessage, SamplingParams, TokenStream
from agent.generators.openai_compat import OpenAICompatGenerator
from agent.ops.metrics import ERROR_KINDS, Metrics
from agent.ops.server import Health, OpsServer, OpsServerError
from agent.ports import ReplyTarget
from agent.runtime.core import Reply
from agent.runtime.supervisor import Backoff
from memory.db import Database
from memory.records import Status
from tests.conftest import write_config
from tests.support.fakes import FakeGenerator, RecordedReply, inbound

Submit = Callable[[Inbound, ReplyTarget], Awaitable[object]]


class CachingGenerator(FakeGenerator):
    """Reports the first half of every prompt as served from the model's cache."""

    def stream(self, messages: Sequence[ChatMessage], params: SamplingParams) -> TokenStream:
        tokens = super().stream(messages, params)
        tokens.stats.cached_tokens = tokens.stats.prompt_tokens // 2
        return tokens


class ScriptedAdapter:
    """A platform whose users are the test: ``say`` submits a message, replies are kept."""

    def __init__(self, name: str = "scripted") -> None:
        self._name = name
        self.connected = True
        self.replies: list[RecordedReply] = []
        self.submit: Submit | None = None
        self._started = asyncio.Event()
        self._stopped = asyncio.Event()

    @property
    def name(self) -> str:
        return self._name

    async def run(self, submit: Submit) -> None:
        self.submit = submit
        self._started.set()
        await self._stopped.wait()

    async def stop(self) -> None:
        self._stopped.set()

    async def open_reply(self, inbound: Inbound) -> RecordedReply:
        reply = RecordedReply(inbound)
        self.replies.append(reply)
        return reply

    async def say(self, text: str, channel: str = "scripted:1") -> asyncio.Future[Reply]:
        await self._started.wait()
        assert self.submit is not None
        future = await self.submit(inbound(text, channel), self)
        assert isinstance(future, asyncio.Future)
        return future


class FailingDelivery(ScriptedAdapter):
    async def open_reply(self, inbound: Inbound) -> RecordedReply:
        reply = await super().open_reply(inbound)

        async def refuse(_text: str) -> None:
            raise RuntimeError("the platform refused the message")

        reply.finish = refuse  # type: ignore[method-assign]
        return reply


class Running:
    def __init__(self, app: App, adapters: list[ScriptedAdapter], serving: asyncio.Task[None]):
        self.app = app
        self.adapters = adapters
        self.serving = serving
        assert app.ops is not None
        self.url = app.ops.url

    async def get(self, path: str) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as http, http.get(self.url + path) as response:
            if response.content_type == "application/json":
                return response.status, await response.json()
            return response.status, await response.text()

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of /metrics by name and labels."""
        status, text = await self.get("/metrics")
        assert status == 200
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }


Start = Callable[..., Awaitable[Running]]


@pytest.fixture
async def start_app(tmp_path: Path) -> AsyncIterator[Start]:
    started: list[Running] = []
    apps = contextlib.AsyncExitStack()

    async def start(
        generator: FakeGenerator | None = None,
        adapters: list[ScriptedAdapter] | None = None,
        backoff: Backoff | None = None,
    ) -> Running:
        path = write_config(
            tmp_path / "config.toml",
            retrieval={"enabled": False},
            context={"date": "off", "summaries": False},
            metrics={"enabled": True, "port": 0},
        )
        app = await apps.enter_async_context(
            App.open(load_config(path, environ={}), generator or FakeGenerator())
        )
        adapters = adapters or [ScriptedAdapter()]
        app.backoff = backoff or app.backoff
        serving = asyncio.create_task(app.serve(adapters))
        for _ in range(500):
            if app.ops is not None or serving.done():
                break
            await asyncio.sleep(0.01)
        running = Running(app, adapters, serving)
        started.append(running)
        return running

    async with apps:
        yield start
        for running in started:
            for adapter in running.adapters:
                await adapter.stop()
            await asyncio.wait_for(running.serving, 20)


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def test_metrics_count_messages_tokens_and_timings(start_app: Start) -> None:
    generator = CachingGenerator()
    running = await start_app(generator)
    [adapter] = running.adapters
    before = await running.metrics()
    assert value(before, "beseda_messages_received_total", adapter="scripted") == 0
    assert all(value(before, "beseda_errors_total", kind=kind) == 0 for kind in ERROR_KINDS)

    replies = [await (await adapter.say(f"hello number {i}")) for i in range(3)]
    assert [r.status for r in replies] == [Status.DONE] * 3

    samples = await running.metrics()
    assert value(samples, "beseda_messages_received_total", adapter="scripted") == 3
    assert value(samples, "beseda_replies_total", adapter="scripted", status="done") == 3
    stats = [r.stats for r in replies if r.stats is not None]
    assert len(stats) == 3
    assert value(samples, "beseda_prompt_tokens_total", kind="evaluated") == sum(
        s.evaluated_tokens for s in stats
    )
    assert value(samples, "beseda_prompt_tokens_total", kind="reused") == sum(
        s.cached_tokens for s in stats
    )
    assert value(samples, "beseda_prompt_tokens_total", kind="reused") > 0
    assert value(samples, "beseda_completion_tokens_total") == sum(
        s.completion_tokens for s in stats
    )
    assert value(samples, "beseda_time_to_first_token_seconds_count") == 3
    assert value(samples, "beseda_time_to_first_token_seconds_sum") > 0
    assert value(samples, "beseda_generation_tokens_per_second_count") == 3
    assert value(samples, "beseda_generation_tokens_per_second_sum") > 0
    assert value(samples, "beseda_queue_depth") == 0
    assert all(value(samples, "beseda_errors_total", kind=kind) == 0 for kind in ERROR_KINDS)


async def test_queue_depth_counts_messages_waiting_for_their_reply(start_app: Start) -> None:
    generator = FakeGenerator()
    generator.gate = asyncio.Event()
    running = await start_app(generator)
    [adapter] = running.adapters
    pending = [await adapter.say(f"m{i}") for i in range(3)]
    await generator.started.wait()
    # m0 is being answered; m1 and m2 (one author) wait, merged into one reply.
    assert value(await running.metrics(), "beseda_queue_depth") == 2
    generator.gate.set()
    await asyncio.gather(*pending)
    assert value(await running.metrics(), "beseda_queue_depth") == 0


async def test_failures_are_counted_by_kind(start_app: Start) -> None:
    answers = iter(["", "fine then"])
    generator = FakeGenerator(lambda _m: next(answers))
    refusing = FailingDelivery("refusing")
    running = await start_app(generator, [ScriptedAdapter(), refusing])
    scripted = running.adapters[0]

    assert (await (await scripted.say("say nothing"))).error == "empty"
    await (await refusing.say("deliver this"))  # stored; the platform refused to show it
    generator.fail_with = RuntimeError("the model crashed")
    assert (await (await scripted.say("crash"))).status is Status.FAILED

    samples = await running.metrics()
    assert value(samples, "beseda_errors_total", kind="empty_reply") == 1
    assert value(samples, "beseda_errors_total", kind="delivery") == 1
    assert value(samples, "beseda_errors_total", kind="generation") == 1
    assert value(samples, "beseda_errors_total", kind="submit") == 0
    assert value(samples, "beseda_replies_total", adapter="scripted", status="failed") == 2
    assert value(samples, "beseda_replies_total", adapter="refusing", status="done") == 1


async def test_a_message_the_core_cannot_take_counts_as_a_submit_error(
    start_app: Start,
) -> None:
    running = await start_app()
    [adapter] = running.adapters
    await running.app.core.close(0)  # taking no new messages, as during shutdown
    with pytest.raises(RuntimeError, match="shutting down"):
        await adapter.say("too late")
    samples = await running.metrics()
    assert value(samples, "beseda_errors_total", kind="submit") == 1
    assert value(samples, "beseda_messages_received_total", adapter="scripted") == 0


async def test_healthz_is_200_when_every_part_is_up_and_503_otherwise(start_app: Start) -> None:
    running = await start_app()
    status, report = await running.get("/healthz")
    assert status == 200
    assert report == {
        "status": "ok",
        "adapters": {"scripted": {"state": "running", "connected": True, "restarts": 0}},
        "generator": {"name": "fake", "ready": True},
        "database": {"reachable": True},
    }
    running.adapters[0].connected = False
    status, report = await running.get("/healthz")
    assert status == 503
    assert report["status"] == "unhealthy"
    assert report["adapters"] == {
        "scripted": {"state": "running", "connected": False, "restarts": 0}
    }


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_health_sees_an_unreachable_database_and_model_server() -> None:
    port = closed_port()
    db = Database(f"postgresql+asyncpg://nobody@127.0.0.1:{port}/none")
    remote = OpenAICompatGenerator(
        ModelConfig(backend="openai", base_url=f"http://127.0.0.1:{port}", connect_timeout=2)
    )
    try:
        report = await Health([], remote, db, timeout=10).report()
    finally:
        await remote.aclose()
        await db.close()
    assert report["status"] == "unhealthy"
    assert report["generator"]["ready"] is False
    assert report["database"] == {"reachable": False}


async def test_the_endpoint_is_off_by_default_and_clear_about_a_busy_port(
    tmp_path: Path,
) -> None:
    path = write_config(tmp_path / "config.toml", retrieval={"enabled": False})
    async with App.open(load_config(path, environ={}), FakeGenerator()) as app:
        adapter = ScriptedAdapter()
        serving = asyncio.create_task(app.serve([adapter]))
        try:
            assert (await (await adapter.say("hi"))).status is Status.DONE
            assert app.ops is None  # [metrics] enabled = false: nothing listens
            # The counters still run: they are cheap and the log events need the same hooks.
            assert app.metrics.messages_in.labels("scripted")._value.get() == 1
        finally:
            await adapter.stop()
            await asyncio.wait_for(serving, 20)

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        config = MetricsConfig(enabled=True, port=busy.getsockname()[1])
        db = Database("sqlite+aiosqlite://")
        with pytest.raises(OpsServerError, match=r"\[metrics\] host/port"):
            await OpsServer.start(config, Metrics(), Health([], FakeGenerator(), db))
        await db.close()


def test_each_metrics_instance_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.messages_in.labels("console").inc()
    assert b'beseda_messages_received_total{adapter="console"} 1.0' in first.exposition()
    assert b"beseda_messages_received_total{" not in second.exposition()


async def test_the_console_is_connected_while_it_reads_input() -> None:
    console = ConsoleAdapter(
        channel="local", user_name="you", assistant_name="Beseda", stdin=io.StringIO("hi\n"),
        stdout=io.StringIO(), stderr=io.StringIO(), interactive=False,
    )  # fmt: skip
    seen: list[bool] = []

    async def submit(_inbound: Inbound, _target: ReplyTarget) -> None:
        seen.append(console.connected)

    assert not console.connected
    await console.run(submit)  # returns at the end of the input
    assert seen == [True]
    assert not console.connected
