"""Peers for the remote generator tests.

``LlamaServer`` runs the real ``llama_cpp.server`` (an OpenAI-compatible server) on loopback
with the bundled model and an API key. ``FakeOpenAIServer`` is a small aiohttp server whose
answers are scripted per request, for the error paths a real server will not produce on demand
(429, 5xx, 501, a stalled or dropped stream).
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from agent.generators.gguf import bundled_model_path

Behaviour = Callable[[web.Request], Awaitable[web.StreamResponse]]
STARTUP_SECONDS = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LlamaServer:
    """``python -m llama_cpp.server`` as a subprocess; output goes to ``log_path``."""

    def __init__(self, api_key: str, log_path: Path, *, n_ctx: int = 1024) -> None:
        self.api_key = api_key
        self.log_path = log_path
        self.n_ctx = n_ctx
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.port = free_port()
        command = [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(bundled_model_path()),
            "--api_key",
            self.api_key,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--n_ctx",
            str(self.n_ctx),
            "--n_threads",
            "2",
            "--seed",
            "7",
            "--verbose",
            "False",
        ]
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_SECONDS
        request = urllib.request.Request(  # noqa: S310 - loopback http by construction
            f"{self.url}/v1/models", headers={"Authorization": f"Bearer {self.api_key}"}
        )
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited: {self.log_text()[-2000:]}")
            try:
                with urllib.request.urlopen(request, timeout=2) as answer:  # noqa: S310
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.2)
        raise RuntimeError(f"llama_cpp.server did not start: {self.log_text()[-2000:]}")

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def restart(self) -> None:
        """A fresh process: no prompt cache, so the next reply starts from a clean state."""
        self.stop()
        self.start()

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def chat_requests_logged(self) -> int:
        """Chat requests answered 200, from uvicorn's access log."""
        return self.log_text().count('"POST /v1/chat/completions HTTP/1.1" 200')


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: Any


def sse_event(payload: object) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n".encode()


def content_chunk(text: str) -> dict[str, Any]:
    return {
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
    }


@dataclass
class FakeOpenAIServer:
    """Scripted answers for ``/v1/chat/completions``; every chat request is recorded."""

    key: str | None = "fake-key"
    models: Sequence[str] = ("fake-model",)
    # vLLM lists each model's context size as max_model_len.
    max_model_len: int | None = None
    # Answers for the next chat requests, in order; then ``default``.
    script: deque[Behaviour] = field(default_factory=deque)
    requests: list[Recorded] = field(default_factory=list)
    # Tabby has no /v1/models; it reports its chat model in /v1/health.
    tabby_chat_model: str | None = None
    serve_models: bool = True
    # llama.cpp's /tokenize (each answer held a moment, so requests overlap).
    serve_tokenize: bool = False
    url: str = ""
    # The most client connections that were open at once while a request came in.
    most_connections: int = 0

    def __post_init__(self) -> None:
        self.default: Behaviour = self.stream(["Hello", " from", " the", " fake", "."])
        self.disconnected = asyncio.Event()
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._connections: set[asyncio.BaseTransport] = set()

    async def start(self) -> None:
        app = web.Application(middlewares=[self._count_connections])
        app.router.add_post("/v1/chat/completions", self._chat)
        if self.serve_tokenize:
            app.router.add_post("/tokenize", self._tokenize)
        if self.serve_models:
            app.router.add_get("/v1/models", self._models)
        else:
            app.router.add_get("/v1/health", self._health)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _count_connections(self, request: web.Request, handler: Any) -> Any:
        if request.transport is not None:
            self._connections = {t for t in self._connections if not t.is_closing()}
            self._connections.add(request.transport)
            self.most_connections = max(self.most_connections, len(self._connections))
        return await handler(request)

    async def _tokenize(self, request: web.Request) -> web.Response:
        body = await request.json()
        await asyncio.sleep(0.02)
        return web.json_response({"tokens": list(range(len(str(body["content"]).split())))})

    def _authorised(self, request: web.Request) -> web.Response | None:
        if self.key is None:
            return None
        given = request.headers.get("Authorization", "")
        if given == f"Bearer {self.key}":
            return None
        # Like a careless proxy, echo what was received: the client must redact it.
        return web.json_response({"error": {"message": f"bad credentials: {given}"}}, status=401)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(Recorded(request.path, dict(request.headers), body))
        refused = self._authorised(request)
        if refused is not None:
            return refused
        behaviour = self.script.popleft() if self.script else self.default
        return await behaviour(request)

    async def _models(self, request: web.Request) -> web.Response:
        refused = self._authorised(request)
        if refused is not None:
            return refused
        data = [{"id": m, "object": "model"} for m in self.models]
        if self.max_model_len is not None:
            for entry in data:
                entry["max_model_len"] = self.max_model_len
        return web.json_response({"object": "list", "data": data})

    async def _health(self, request: web.Request) -> web.Response:
        refused = self._authorised(request)
        if refused is not None:
            return refused
        return web.json_response({"model": None, "chat_model": self.tabby_chat_model})

    # -- behaviours --------------------------------------------------------------------------

    def stream(
        self,
        pieces: Sequence[str],
        *,
        usage: dict[str, Any] | None = None,
        done: bool = True,
        finish_reason: str | None = "stop",
    ) -> Behaviour:
        """A well-formed SSE stream; each event is written in two halves (split mid-character
        when possible) with a keep-alive comment first, as real servers do."""

        async def handler(request: web.Request) -> web.StreamResponse:
            response = await _sse_response(request)
            await response.write(b": ping\n\n")
            role = {"choices": [{"index": 0, "delta": {"role": "assistant"}}]}
            await response.write(sse_event(role))
            for piece in pieces:
                event = sse_event(content_chunk(piece))
                middle = len(event) // 2
                await response.write(event[:middle])
                await asyncio.sleep(0)
                await response.write(event[middle:])
            final = {"choices": [{"index": 0, "delta": {}, "finish_reason": finish_reason}]}
            await response.write(sse_event(final))
            if usage is not None:
                await response.write(sse_event({"choices": [], "usage": usage}))
            if done:
                await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            return response

        return handler

    def events(self, raw: bytes) -> Behaviour:
        """Exactly these bytes as the event stream."""

        async def handler(request: web.Request) -> web.StreamResponse:
            response = await _sse_response(request)
            await response.write(raw)
            await response.write_eof()
            return response

        return handler

    def status(
        self, code: int, body: object = None, headers: dict[str, str] | None = None
    ) -> Behaviour:
        async def handler(request: web.Request) -> web.StreamResponse:
            payload = body if body is not None else {"error": {"message": f"status {code}"}}
            return web.json_response(payload, status=code, headers=headers)

        return handler

    def json_reply(self, text: str, usage: dict[str, Any]) -> Behaviour:
        """A server that ignores ``stream: true`` and answers with one JSON document."""

        async def handler(request: web.Request) -> web.StreamResponse:
            message = {"role": "assistant", "content": text}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            return web.json_response({"choices": [choice], "usage": usage})

        return handler

    def stall(self, pieces: Sequence[str]) -> Behaviour:
        """Send ``pieces`` and then nothing at all, holding the connection open."""

        async def handler(request: web.Request) -> web.StreamResponse:
            response = await _sse_response(request)
            for piece in pieces:
                await response.write(sse_event(content_chunk(piece)))
            await self._release.wait()
            return response

        return handler

    def drop(self, pieces: Sequence[str]) -> Behaviour:
        """Send ``pieces`` and then cut the TCP connection."""

        async def handler(request: web.Request) -> web.StreamResponse:
            response = await _sse_response(request)
            for piece in pieces:
                await response.write(sse_event(content_chunk(piece)))
            assert request.transport is not None
            request.transport.abort()
            return response

        return handler

    def endless(self) -> Behaviour:
        """A token every few milliseconds until the client goes away (then ``disconnected``)."""

        async def handler(request: web.Request) -> web.StreamResponse:
            response = await _sse_response(request)
            try:
                while True:
                    await response.write(sse_event(content_chunk("la ")))
                    await asyncio.sleep(0.005)
            except ConnectionError:  # the client closed the connection
                return response
            finally:
                self.disconnected.set()

        return handler


async def _sse_response(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    return response
