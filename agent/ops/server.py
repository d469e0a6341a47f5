"""The operations endpoint ([metrics]): ``/healthz`` and ``/metrics`` over aiohttp.

Off by default and bound to 127.0.0.1: traffic figures and the model's name are for the
operator, so expose them to a network only behind something that restricts access.

Adapters that receive webhooks (Telegram's ``[telegram] webhook_url``) add their
:class:`Endpoint` to the same server; it then runs even with [metrics] off, serving only
those paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from agent.config import MetricsConfig
from agent.generators.base import Generator
from agent.ops.metrics import Metrics
from agent.ports import PlatformAdapter, is_connected
from agent.runtime.supervisor import AdapterState, Supervisor
from memory.db import Database

log = logging.getLogger(__name__)

CHECK_TIMEOUT_SECONDS = 5.0


class OpsServerError(Exception):
    """The endpoint cannot start; the message names the [metrics] setting."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A path an adapter serves (a webhook), e.g. ``POST /telegram/…``."""

    method: str
    path: str
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]


@runtime_checkable
class ServesHttp(Protocol):
    """Optional for adapters: paths to serve on the operations server while running."""

    def endpoints(self) -> Sequence[Endpoint]: ...


class Health:
    """What /healthz reports: each adapter's state, connection and restarts; generator
    ready; database reachable."""

    def __init__(
        self,
        adapters: Sequence[PlatformAdapter],
        generator: Generator,
        db: Database,
        *,
        supervisor: Supervisor | None = None,
        timeout: float = CHECK_TIMEOUT_SECONDS,
    ) -> None:
        self._adapters = adapters
        self._generator = generator
        self._db = db
        self._supervisor = supervisor
        self._timeout = timeout

    async def report(self) -> dict[str, Any]:
        adapters = {a.name: self._adapter(a) for a in self._adapters}
        generator_ready, database_reachable = await asyncio.gather(
            self._generator_ready(), self._database_reachable()
        )
        healthy = (
            all(a["state"] == AdapterState.RUNNING and a["connected"] for a in adapters.values())
            and generator_ready
            and database_reachable
        )
        return {
            "status": "ok" if healthy else "unhealthy",
            "adapters": adapters,
            "generator": {"name": self._generator.name, "ready": generator_ready},
            "database": {"reachable": database_reachable},
        }

    def _adapter(self, adapter: PlatformAdapter) -> dict[str, Any]:
        entry = self._supervisor.state(adapter) if self._supervisor is not None else None
        state = entry.state if entry is not None else AdapterState.RUNNING
        return {
            "state": str(state),
            # Only a running adapter can be connected (a failed one may keep a stale flag).
            "connected": state is AdapterState.RUNNING and is_connected(adapter),
            "restarts": entry.restarts if entry is not None else 0,
        }

    async def _generator_ready(self) -> bool:
        # A local model is ready once loaded (the app exists only after that); a remote
        # server (it has probe()) is asked for its model list.
        probe = getattr(self._generator, "probe", None)
        if probe is None:
            return bool(getattr(self._generator, "ready", True))
        try:
            result = await asyncio.wait_for(probe(), self._timeout)
        except Exception as exc:
            log.debug("generator probe failed: %s", type(exc).__name__)
            return False
        return bool(getattr(result, "ok", False))

    async def _database_reachable(self) -> bool:
        try:
            await asyncio.wait_for(self._db.ping(), self._timeout)
        except Exception as exc:
            log.debug("database ping failed: %s", type(exc).__name__)
            return False
        return True


class OpsServer:
    def __init__(self, runner: web.AppRunner, host: str, port: int) -> None:
        self._runner = runner
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @classmethod
    async def start(
        cls,
        config: MetricsConfig,
        metrics: Metrics,
        health: Health,
        endpoints: Sequence[Endpoint] = (),
    ) -> OpsServer:
        app = web.Application()

        async def healthz(_request: web.Request) -> web.Response:
            report = await health.report()
            return web.json_response(report, status=200 if report["status"] == "ok" else 503)

        async def metrics_text(_request: web.Request) -> web.Response:
            return web.Response(
                body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST}
            )

        if config.enabled:
            app.router.add_get("/healthz", healthz)
            app.router.add_get("/metrics", metrics_text)
        for endpoint in endpoints:
            app.router.add_route(endpoint.method, endpoint.path, endpoint.handler)
        # No access log: a scraper every few seconds would drown the events that matter.
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, config.host, config.port)
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            reason = exc.strerror or str(exc)
            raise OpsServerError(
                f"[metrics] host/port: cannot listen on {config.host}:{config.port}: {reason}"
            ) from None
        host, port = runner.addresses[0][:2]
        log.info("metrics and health endpoint listening", extra={"url": f"http://{host}:{port}"})
        return cls(runner, str(host), int(port))

    async def stop(self) -> None:
        await self._runner.cleanup()


@contextlib.asynccontextmanager
async def serve_operations(
    config: MetricsConfig,
    metrics: Metrics,
    health: Health,
    endpoints: Sequence[Endpoint] = (),
) -> AsyncIterator[OpsServer | None]:
    """The endpoint while the app serves; None (nothing listens) unless [metrics] enabled
    or an adapter has endpoints."""
    if not config.enabled and not endpoints:
        yield None
        return
    server = await OpsServer.start(config, metrics, health, endpoints)
    try:
        yield server
    finally:
        await server.stop()
