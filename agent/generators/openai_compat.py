"""Remote generation through an OpenAI-compatible chat endpoint: Tabby, vLLM, llama.cpp's server.

Each reply is one ``POST {base_url}/v1/chat/completions`` with ``stream: true``, read as
Server-Sent Events. The server applies the chat template, so the prompt inspector shows the JSON
that is sent. Token counts come from the server's tokenize endpoint where it has one (cached per
text and filled before each request, because the Generator protocol counts synchronously) and
otherwise from :func:`estimate_tokens`, which errs on the high side; the reply's ``usage``, when
the server reports it, corrects the prompt overhead upwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from agent.config import Config, ModelConfig
from agent.generators.base import (
    ChatMessage,
    GenerationStats,
    Generator,
    GeneratorError,
    SamplingParams,
    TokenStream,
)
from agent.generators.control import neutralise
from agent.generators.fallback import FallbackGenerator
from agent.generators.openai_wire import (
    ERROR_DETAIL_CHARS,
    RemoteUnavailableError,
    TokenizeEndpoint,
    chunk_pieces,
    iter_sse_data,
    message_text,
    model_entries,
    retry_after,
)
from agent.generators.remote_tokens import RemoteTokenCounter

__all__ = [
    "FallbackGenerator",
    "OpenAICompatGenerator",
    "RemoteUnavailableError",
    "ServerProbe",
    "check_server",
    "load_remote_generator",
]

log = logging.getLogger(__name__)

CHAT_PATH = "/v1/chat/completions"
MODELS_PATH = "/v1/models"
TABBY_HEALTH_PATH = "/v1/health"
KEY_SETTINGS = "tabby_key or BESEDA_MODEL__API_KEY"
# A Retry-After longer than this is not waited for: the reply fails with the server's reason.
MAX_RETRY_AFTER = 120.0
MAX_BACKOFF = 30.0
Sleep = Callable[[float], Awaitable[None]]


class _RetryableError(Exception):
    def __init__(self, error: RemoteUnavailableError, retry_after: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class ServerProbe:
    """What ``GET /v1/models`` (or Tabby's ``/v1/health``) says about the server."""

    ok: bool
    detail: str
    models: tuple[str, ...] = ()
    unreachable: bool = False
    auth_failed: bool = False


class OpenAICompatGenerator:
    """A :class:`~agent.generators.base.Generator` for one OpenAI-compatible server."""

    def __init__(self, model: ModelConfig, *, sleep: Sleep = asyncio.sleep) -> None:
        if not model.base_url.strip():
            raise GeneratorError(
                '[model] backend is "openai" but [model] base_url is empty: set it, or the '
                "tabby_url environment variable"
            )
        self._config = model
        self._root = _server_root(model.base_url)
        self._display = str(self._root.with_user(None).with_password(None)).rstrip("/")
        self._key = model.api_key.get_secret_value()
        self._sleep = sleep
        self._session: aiohttp.ClientSession | None = None
        self._tokens = RemoteTokenCounter(self._tokenize, self._display, model.read_timeout)

    @property
    def name(self) -> str:
        return f"openai:{self._config.model or 'default'}@{self._display}"

    @property
    def n_ctx(self) -> int:
        return self._config.n_ctx

    @property
    def concurrency(self) -> int:
        return self._config.concurrency

    @property
    def tokenizer(self) -> TokenizeEndpoint | None:
        return self._tokens.endpoint

    def count_tokens(self, text: str) -> int:
        return self._tokens.count(text)

    def count_prompt_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return self._tokens.count_prompt(messages)

    def render_prompt(self, messages: Sequence[ChatMessage]) -> str:
        """The messages as sent; the server turns them into a prompt with its chat template."""
        payload: dict[str, Any] = {}
        if self._config.model:
            payload["model"] = self._config.model
        payload["messages"] = _wire_messages(messages)
        return json.dumps(payload, ensure_ascii=False, indent=2) + "\n"

    def request_body(
        self, messages: Sequence[ChatMessage], params: SamplingParams, *, stream: bool = True
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "messages": _wire_messages(messages),
            "stream": stream,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_tokens,
        }
        if self._config.model:
            body["model"] = self._config.model
        if params.seed >= 0:
            body["seed"] = params.seed
        if self._config.extended_sampling:
            body["top_k"] = params.top_k
            body["min_p"] = params.min_p
            body["repeat_penalty"] = params.repeat_penalty  # llama.cpp
            body["repetition_penalty"] = params.repeat_penalty  # vLLM
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    def stream(self, messages: Sequence[ChatMessage], params: SamplingParams) -> TokenStream:
        stats = GenerationStats()
        return TokenStream(self._run(list(messages), params, stats), stats)

    async def start(self) -> ServerProbe:
        """Check the server once: a refused key fails now, an unreachable server is logged."""
        probe = await self.probe()
        if probe.auth_failed:
            log.error("%s", probe.detail)
            raise GeneratorError(probe.detail)
        if probe.unreachable:
            log.warning("%s; every message will try again", probe.detail)
            return probe
        if probe.ok:
            log.info("remote model server: %s", probe.detail)
        else:
            log.warning("%s", probe.detail)
        await self._tokens.detect()
        return probe

    async def probe(self) -> ServerProbe:
        """Reachability, authentication and the model list (for start-up and the doctor)."""
        try:
            async with self._client().get(self._url(MODELS_PATH)) as response:
                status, payload = response.status, await _json_or_none(response)
            if status == 404:
                async with self._client().get(self._url(TABBY_HEALTH_PATH)) as response:
                    health = await _json_or_none(response)
                    return self._tabby_probe(response.status, health)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return ServerProbe(
                False, f"cannot reach {self._display}: {_describe(exc)}", unreachable=True
            )
        if status in (401, 403):
            return ServerProbe(False, self._key_message(status), auth_failed=True)
        if status != 200:
            return ServerProbe(False, f"{self._display}{MODELS_PATH} answered {status}")
        return self._judge_models(model_entries(payload))

    def _judge_models(self, entries: list[dict[str, Any]]) -> ServerProbe:
        models = tuple(str(entry["id"]) for entry in entries if entry.get("id"))
        wanted = self._config.model
        if wanted and models and wanted not in models:
            return ServerProbe(
                False,
                f"{self._display} does not serve [model] model {wanted!r}; it serves: "
                + ", ".join(models),
                models,
            )
        listed = ", ".join(models) or "none listed"
        # vLLM reports each model's context; a larger [model] n_ctx overflows it.
        served = [e for e in entries if e.get("id") == wanted] if wanted else entries[:1]
        context = served[0].get("max_model_len") if len(served) == 1 else None
        if isinstance(context, int) and self._config.n_ctx > context:
            return ServerProbe(
                False,
                f"{self._display}: [model] n_ctx {self._config.n_ctx} is larger than the "
                f"server's context of {context} tokens; lower it",
                models,
            )
        return ServerProbe(True, f"{self._display} (models: {listed})", models)

    def _tabby_probe(self, status: int, payload: Any) -> ServerProbe:
        """A server without /v1/models: Tabby reports its chat model in /v1/health."""
        if status in (401, 403):
            return ServerProbe(False, self._key_message(status), auth_failed=True)
        if status != 200 or not isinstance(payload, dict):
            return ServerProbe(
                False,
                f"{self._display}{MODELS_PATH} was not found (404): check [model] base_url "
                "(the server's root URL)",
            )
        chat = payload.get("chat_model")
        if not chat:
            return ServerProbe(
                False,
                f"Tabby at {self._display} has no chat model: start it with --chat-model, or "
                "set [model.chat] in Tabby's config.toml",
            )
        return ServerProbe(True, f"Tabby at {self._display} (chat model: {chat})", (str(chat),))

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- internals ---------------------------------------------------------------------------

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            headers = {"User-Agent": "beseda"}
            if self._key:
                headers["Authorization"] = f"Bearer {self._key}"
            timeout = aiohttp.ClientTimeout(
                total=None,
                connect=self._config.connect_timeout,
                sock_read=self._config.read_timeout,
            )
            # At most one connection per reply in flight plus one for token counts and
            # checks: llama.cpp's server serves connections from a thread pool of its slots
            # plus two and keeps an idle keep-alive connection's thread for 5 s, so a burst
            # of token-count requests on fresh connections held replies up for 5 s.
            connector = aiohttp.TCPConnector(limit_per_host=self.concurrency + 1)
            self._session = aiohttp.ClientSession(
                headers=headers, timeout=timeout, connector=connector
            )
        return self._session

    def _url(self, path: str) -> URL:
        return self._root.with_path(self._root.path.rstrip("/") + path)

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "[api key]") if self._key else text

    def _key_message(self, status: int, detail: str = "") -> str:
        if not self._key:
            return (
                f"the server at {self._display} wants an API key ({status}{detail}) and none "
                f"is set: set {KEY_SETTINGS}"
            )
        return (
            f"the server at {self._display} refused the API key ({status}{detail}): "
            f"check {KEY_SETTINGS}"
        )

    async def _run(
        self, messages: list[ChatMessage], params: SamplingParams, stats: GenerationStats
    ) -> AsyncIterator[str]:
        await self._tokens.learn(messages)
        estimate = self.count_prompt_tokens(messages)
        body = self.request_body(messages, params)
        attempt = 0
        while True:
            stats.prompt_tokens, stats.cached_tokens, stats.completion_tokens = estimate, 0, 0
            try:
                async with contextlib.aclosing(self._attempt(body, stats)) as pieces:
                    async for piece in pieces:
                        yield piece
                break
            except _RetryableError as retry:
                if attempt >= self._config.max_retries:
                    if attempt:
                        message = f"{retry.error} ({attempt + 1} attempts)"
                        raise RemoteUnavailableError(message) from None
                    raise retry.error from None
                if retry.retry_after is not None and retry.retry_after > MAX_RETRY_AFTER:
                    raise RemoteUnavailableError(
                        f"{retry.error} and asks to wait {retry.retry_after:.0f} s"
                    ) from None
                delay = retry.retry_after
                if delay is None:
                    delay = min(MAX_BACKOFF, self._config.retry_backoff * 2**attempt)
                attempt += 1
                log.warning(
                    "%s; retry %d of %d in %.1f s",
                    retry.error,
                    attempt,
                    self._config.max_retries,
                    delay,
                )
                await self._sleep(delay)
        self._tokens.correct(estimate, stats.prompt_tokens)

    async def _attempt(
        self, body: dict[str, Any], stats: GenerationStats
    ) -> AsyncGenerator[str, None]:
        """One request. Failures before the first token raise _RetryableError where sensible."""
        try:
            response = await self._client().post(self._url(CHAT_PATH), json=body)
        except aiohttp.SocketTimeoutError:
            raise self._stalled(0) from None
        except aiohttp.ClientConnectionError as exc:
            raise _RetryableError(
                RemoteUnavailableError(
                    f"cannot reach the server at {self._display} ([model] base_url): "
                    f"{_describe(exc)}"
                )
            ) from None
        finished = False
        try:
            if response.status != 200:
                raise await self._status_error(response)
            if response.content_type == "application/json":  # a server that does not stream
                text = message_text(await response.json(), stats)
                finished = True
                if text:
                    yield text
                return
            async with contextlib.aclosing(self._read_stream(response, stats)) as pieces:
                async for piece in pieces:
                    yield piece
            finished = True
        finally:
            # An unfinished stream (cancelled, stalled, failed) closes the connection, so the
            # server stops generating; a finished one goes back to the pool.
            if finished:
                response.release()
            else:
                response.close()

    async def _read_stream(
        self, response: aiohttp.ClientResponse, stats: GenerationStats
    ) -> AsyncGenerator[str, None]:
        produced = 0
        events = iter_sse_data(response.content.__aiter__())
        async with contextlib.aclosing(events):
            while True:
                try:
                    data = await anext(events)
                except StopAsyncIteration:
                    break
                except aiohttp.SocketTimeoutError:
                    raise self._stalled(produced) from None
                except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
                    raise self._lost(produced, exc) from None
                if data.strip() == "[DONE]":
                    return
                for piece in chunk_pieces(data, stats, self._redact):
                    produced += 1
                    stats.completion_tokens += 1
                    yield piece
        # Without [DONE]: complete only if the server said why it stopped.
        if stats.finish_reason is None:
            raise self._lost(produced, None)

    async def _status_error(self, response: aiohttp.ClientResponse) -> Exception:
        status = response.status
        detail = await self._error_detail(response)
        where = self._display
        if status in (401, 403):
            message = self._key_message(status, detail)
        elif status == 404:
            message = (
                f"{where}{CHAT_PATH} was not found (404{detail}): check [model] base_url "
                "(the server's root URL) and [model] model"
            )
        elif status == 501:
            message = (
                f"the server at {where} does not serve chat completions (501 Not Implemented"
                f"{detail}); a Tabby server answers this when it has no chat model: start it "
                "with --chat-model, or set [model.chat] in Tabby's config.toml"
            )
        elif status in (408, 429) or status >= 500:
            error = RemoteUnavailableError(f"the server at {where} answered {status}{detail}")
            return _RetryableError(error, retry_after(response.headers.get("Retry-After")))
        else:
            message = f"the server at {where} rejected the request ({status}{detail})"
        log.error("%s", message)
        return GeneratorError(message)

    async def _error_detail(self, response: aiohttp.ClientResponse) -> str:
        try:
            raw = await response.content.read(16_384)
        except (aiohttp.ClientError, TimeoutError):
            return ""
        text = raw.decode("utf-8", errors="replace").strip()
        try:
            payload = json.loads(text)
        except ValueError:
            payload = None
        if isinstance(payload, dict):
            found = payload.get("error", payload.get("detail", payload.get("message")))
            if isinstance(found, dict):
                found = found.get("message", found)
            if isinstance(found, list):  # validation errors (FastAPI) echo the request: drop it
                found = [
                    {k: v for k, v in e.items() if k != "input"}
                    for e in found
                    if isinstance(e, dict)
                ]
            if found is not None:
                text = found if isinstance(found, str) else json.dumps(found)
        text = " ".join(self._redact(text).split())[:ERROR_DETAIL_CHARS]
        return f": {text}" if text else ""

    def _stalled(self, produced: int) -> GeneratorError:
        where = f"after {produced} tokens" if produced else "before the first token"
        message = (
            f"the server at {self._display} sent nothing for {self._config.read_timeout:g} s "
            f"{where}; the reply was cut ([model] read_timeout)"
        )
        log.error("%s", message)
        return GeneratorError(message)

    def _lost(self, produced: int, exc: BaseException | None) -> Exception:
        reason = _describe(exc) if exc is not None else "the stream ended early"
        if not produced:
            return _RetryableError(
                RemoteUnavailableError(f"the server at {self._display} failed: {reason}")
            )
        message = (
            f"the connection to {self._display} broke after {produced} tokens ({reason}); "
            "the reply is incomplete"
        )
        log.error("%s", message)
        return GeneratorError(message)

    async def _tokenize(self, endpoint: TokenizeEndpoint, text: str) -> int:
        body = endpoint.body(text, self._config.model)
        async with self._client().post(self._url(endpoint.path), json=body) as response:
            if response.status != 200:
                raise ValueError(f"answered {response.status}")
            return max(0, endpoint.parse(await response.json(content_type=None)) - endpoint.offset)


async def load_remote_generator(
    config: Config, load_local: Callable[[], Awaitable[Generator]] | None = None
) -> Generator:
    """The remote generator for ``[model] backend = "openai"`` (after :func:`select_backend`).

    With ``[model] fallback_to_local``, ``load_local`` loads the local model when the server
    is unreachable (agent/generators/__init__.py passes llama.cpp's loader).
    """
    generator = OpenAICompatGenerator(config.model)
    try:
        await generator.start()
    except BaseException:
        await generator.aclose()
        raise
    if not config.model.fallback_to_local or load_local is None:
        return generator
    return FallbackGenerator(generator, load_local)


async def check_server(model: ModelConfig) -> tuple[bool, str]:
    """The doctor's view of the server: reachable, key accepted, models, token counting."""
    try:
        generator = OpenAICompatGenerator(model)
    except GeneratorError as exc:
        return False, str(exc)
    try:
        probe = await generator.probe()
        if not probe.ok:
            return False, probe.detail
        await generator._tokens.detect()  # noqa: SLF001 - same module
        tokenizer = generator.tokenizer
        counting = f"exact via {tokenizer.path}" if tokenizer else "estimated"
        return True, f"{probe.detail}, token counts {counting}, n_ctx {model.n_ctx} from config"
    finally:
        await generator.aclose()


def _wire_messages(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    """The messages as sent. The server applies its chat template to them, so control-token
    spellings in their text are neutralised first (see agent.generators.control)."""
    return [{"role": m.role, "content": neutralise(m.content)} for m in messages]


def _server_root(base_url: str) -> URL:
    try:
        url = URL(base_url.strip())
    except ValueError:
        url = URL()
    if url.scheme not in ("http", "https") or not url.host:
        raise GeneratorError(
            "[model] base_url must be an http:// or https:// URL such as http://127.0.0.1:8080"
        )
    path = url.path.rstrip("/").removesuffix("/v1")
    return url.with_path(path or "/").with_query(None).with_fragment(None)


async def _json_or_none(response: aiohttp.ClientResponse) -> Any:
    try:
        return await response.json(content_type=None)
    except (ValueError, aiohttp.ClientError):
        return None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError) and not str(exc):
        return "timed out ([model] connect_timeout)"
    return str(exc) or type(exc).__name__
