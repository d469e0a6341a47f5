"""Supervised adapters: one that raises is restarted with back-off; the others and the core
never notice; only a permanent error stops an adapter for good. Seen on /healthz and
/metrics."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from agent.app import App
from agent.config import ConfigError, load_config
from agent.ports import PermanentAdapterError
from agent.runtime.supervisor import AdapterState, Backoff, Supervised, Supervisor
from memory.records import Status
from tests.conftest import write_config
from tests.support.fakes import FakeGenerator
from tests.test_metrics import Running, ScriptedAdapter, Start, start_app, value  # noqa: F401

QUICK = Backoff(first=0.01, cap=0.04)


class FlakyAdapter(ScriptedAdapter):
    """Its run raises ``errors`` one after the other, then it serves like ScriptedAdapter."""

    def __init__(self, name: str, errors: list[Exception]) -> None:
        super().__init__(name)
        self.errors = errors
        self.runs = 0

    async def run(self, submit: object) -> None:
        self.runs += 1
        if self.errors:
            await asyncio.sleep(0)
            raise self.errors.pop(0)
        await super().run(submit)  # type: ignore[arg-type]


class FailingPlatform(ScriptedAdapter):
    """Returns from run having set ``failure``, like Discord with a rejected token."""

    async def run(self, submit: object) -> None:
        self.failure = f"{self.name} rejected the token"


async def reaches(
    running: Running, adapter: ScriptedAdapter, state: AdapterState
) -> tuple[Supervisor, Supervised]:
    """The app's supervisor and the adapter's entry, once it is in ``state``."""
    supervisor = running.app.supervisor
    assert supervisor is not None
    entry = supervisor.state(adapter)
    assert entry is not None
    for _ in range(500):
        if entry.state is state:
            break
        await asyncio.sleep(0.01)
    assert entry.state is state
    return supervisor, entry


def test_the_back_off_doubles_up_to_its_cap() -> None:
    backoff = Backoff(first=1.0, cap=60.0)
    assert [backoff.delay(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert backoff.delay(10_000) == 60


async def test_an_adapter_that_raises_is_restarted_and_the_others_never_notice(
    start_app: Start,  # noqa: F811 (the fixture imported above)
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="agent.runtime.supervisor")
    steady = ScriptedAdapter("steady")
    flaky = FlakyAdapter("flaky", [RuntimeError(f"boom {n}") for n in range(4)])
    running = await start_app(adapters=[steady, flaky], backoff=QUICK)
    # The steady adapter answers while the flaky one fails and waits.
    assert (await (await steady.say("are you there?"))).status is Status.DONE
    reply = await asyncio.wait_for(await flaky.say("and you?", channel="flaky:1"), 10)
    assert reply.status is Status.DONE
    assert flaky.runs == 5
    assert not running.serving.done()
    # Each failure was logged with the adapter's name, and the waits doubled up to the cap.
    failed = [r for r in caplog.records if r.getMessage().startswith("flaky failed")]
    assert [r.args for r in failed] == [("flaky", d) for d in (0.01, 0.02, 0.04, 0.04)]
    assert all(r.exc_info and "boom" in str(r.exc_info[1]) for r in failed)
    status, report = await running.get("/healthz")
    assert status == 200
    assert report["adapters"] == {
        "steady": {"state": "running", "connected": True, "restarts": 0},
        "flaky": {"state": "running", "connected": True, "restarts": 4},
    }
    samples = await running.metrics()
    assert value(samples, "beseda_adapter_restarts_total", adapter="flaky") == 4
    assert value(samples, "beseda_adapter_restarts_total", adapter="steady") == 0
    assert value(samples, "beseda_adapter_state", adapter="flaky", beseda_adapter_state="running")
    restarting = {"adapter": "flaky", "beseda_adapter_state": "restarting"}
    assert value(samples, "beseda_adapter_state", **restarting) == 0


@pytest.mark.parametrize(
    "permanent",
    [PermanentAdapterError("the intent is missing"), ConfigError("c.toml: x: bad")],
)
async def test_a_permanent_error_stops_only_that_adapter_for_good(
    start_app: Start,  # noqa: F811
    permanent: Exception,
) -> None:
    steady = ScriptedAdapter("steady")
    broken = FlakyAdapter("broken", [permanent, RuntimeError("never reached")])
    running = await start_app(adapters=[steady, broken], backoff=QUICK)
    assert (await (await steady.say("still here?"))).status is Status.DONE
    supervisor, _ = await reaches(running, broken, AdapterState.FAILED)
    assert broken.runs == 1  # not restarted
    assert supervisor.failures() == [f"broken: {permanent}"]
    status, report = await running.get("/healthz")
    assert status == 503  # serving, but not everything that should run does
    assert report["adapters"]["broken"] == {"state": "failed", "connected": False, "restarts": 0}
    assert not running.serving.done()


async def test_serving_ends_when_every_adapter_has_stopped_for_good(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.toml", retrieval={"enabled": False})
    async with App.open(load_config(path, environ={}), FakeGenerator()) as app:
        adapters = [
            FailingPlatform("discord"),
            FlakyAdapter("matrix", [PermanentAdapterError("x")]),
        ]
        await asyncio.wait_for(app.serve(adapters), 10)
        assert app.supervisor is not None
        # What `run` prints before it exits 1.
        assert app.supervisor.failures() == ["discord rejected the token", "matrix: x"]


async def test_stop_during_the_back_off_ends_without_another_run(
    start_app: Start,  # noqa: F811
) -> None:
    flaky = FlakyAdapter("flaky", [RuntimeError("down")])
    running = await start_app(adapters=[flaky], backoff=Backoff(first=30.0))
    supervisor, entry = await reaches(running, flaky, AdapterState.RESTARTING)
    await supervisor.stop()  # as a signal does; the 30 s wait ends at once
    await asyncio.wait_for(running.serving, 5)
    assert flaky.runs == 1
    assert entry.state is AdapterState.STOPPED
