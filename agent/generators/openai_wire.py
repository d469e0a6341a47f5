"""The wire format of OpenAI-compatible chat servers, apart from any HTTP client.

Server-Sent Events, streamed chunks and their ``usage``, ``Retry-After``, the tokenize
endpoints some servers offer, and a conservative token estimate for those that offer none.
"""

from __future__ import annotations

import email.utils
import json
import math
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agent.generators.base import GenerationStats, GeneratorError

ERROR_DETAIL_CHARS = 300


class RemoteUnavailableError(GeneratorError):
    """The server could not be reached, or kept answering 429/5xx through every retry."""


_RUNS = re.compile(r"[A-Za-z]+|[0-9]+|\s+|[^\x00-\x7f]|[^A-Za-z0-9\s]")


def estimate_tokens(text: str) -> int:
    """A token count that should not fall short for any common tokenizer, Cyrillic included.

    Non-ASCII characters count their UTF-8 bytes (2 for Cyrillic): a byte-level or
    byte-fallback tokenizer never needs more, and English-centric vocabularies come close
    (SmolLM2 spends 1.7 tokens on each upper-case Cyrillic letter, 0.9-1.2 on lower-case).
    ASCII words count a token per 3 letters (2 when capitalised), digits and punctuation one
    each. Multilingual tokenizers need far fewer (Gemma-class ~0.3 per Cyrillic letter), so
    prompts end up shorter than necessary; a tokenize endpoint makes the counts exact.
    """
    total = 0
    for match in _RUNS.finditer(text):
        run = match.group()
        first = run[0]
        if not first.isascii():
            total += len(first.encode("utf-8"))
        elif first.isspace():
            # A single space is merged into the next word, but not into a digit.
            if run != " ":
                total += math.ceil(len(run) / 2)
            elif text[match.end() : match.end() + 1].isdigit():
                total += 1
        elif first.isdigit():
            total += len(run)  # many vocabularies split numbers into single digits
        elif first.isalpha():
            capitals = sum(c.isupper() for c in run)
            total += math.ceil(len(run) / (2 if capitals > 1 else 3))
        else:
            total += 1
    return math.ceil(total * 1.05)


async def iter_sse_data(lines: AsyncIterator[bytes]) -> AsyncGenerator[str, None]:
    """The ``data`` of each Server-Sent Event; comments (``: ping``) and other fields skipped."""
    data: list[str] = []
    async for raw in lines:
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if name == "data":
            data.append(value.removeprefix(" "))
    if data:
        yield "\n".join(data)


@dataclass(frozen=True, slots=True)
class TokenizeEndpoint:
    """A server's tokenizer: llama-cpp-python's ``/extras/tokenize/count`` or a ``/tokenize``
    (llama.cpp's own server reads ``content``, vLLM ``prompt``; each ignores the other)."""

    path: str
    # Tokens the endpoint adds to every text (a BOS token), measured on the empty string.
    offset: int = 0

    def body(self, text: str, model: str) -> dict[str, Any]:
        if self.path == "/extras/tokenize/count":
            return {"input": text}
        body: dict[str, Any] = {
            "content": text,
            "add_special": False,
            "prompt": text,
            "add_special_tokens": False,
        }
        if model:
            body["model"] = model
        return body

    @staticmethod
    def parse(payload: Any) -> int:
        if isinstance(payload, dict):
            if isinstance(payload.get("count"), int):
                return int(payload["count"])
            if isinstance(payload.get("tokens"), list):
                return len(payload["tokens"])
        raise ValueError("no token count in the answer")


TOKENIZE_ENDPOINTS = (TokenizeEndpoint("/extras/tokenize/count"), TokenizeEndpoint("/tokenize"))


def model_entries(payload: Any) -> list[dict[str, Any]]:
    data = payload.get("data") if isinstance(payload, dict) else None
    return [entry for entry in data if isinstance(entry, dict)] if isinstance(data, list) else []


def chunk_pieces(data: str, stats: GenerationStats, redact: Callable[[str], str]) -> list[str]:
    try:
        chunk = json.loads(data)
    except ValueError:
        raise GeneratorError(
            f"the server sent an event that is not JSON: {redact(data)[:ERROR_DETAIL_CHARS]}"
        ) from None
    if not isinstance(chunk, dict):
        return []
    if chunk.get("error"):
        error = chunk["error"]
        text = error.get("message", error) if isinstance(error, dict) else error
        raise GeneratorError(f"the server reported an error: {redact(str(text))}")
    apply_usage(chunk.get("usage"), stats)
    pieces = []
    for choice in chunk.get("choices") or []:
        if not isinstance(choice, dict) or choice.get("index", 0) != 0:
            continue
        if choice.get("finish_reason"):
            stats.finish_reason = str(choice["finish_reason"])
        delta = choice.get("delta") or {}
        content = delta.get("content") if isinstance(delta, dict) else None
        if isinstance(content, str) and content:
            pieces.append(content)
    return pieces


def message_text(payload: Any, stats: GenerationStats) -> str:
    """The reply of a non-streamed answer (``choices[0].message.content``)."""
    try:
        choice = payload["choices"][0]
        text = choice["message"]["content"] or ""
    except (KeyError, IndexError, TypeError):
        raise GeneratorError("the server's answer has no choices[0].message.content") from None
    stats.finish_reason = choice.get("finish_reason")
    apply_usage(payload.get("usage"), stats)
    return str(text)


def apply_usage(usage: Any, stats: GenerationStats) -> None:
    if not isinstance(usage, dict):
        return
    if isinstance(usage.get("prompt_tokens"), int):
        stats.prompt_tokens = usage["prompt_tokens"]
    if isinstance(usage.get("completion_tokens"), int):
        stats.completion_tokens = usage["completion_tokens"]
    details = usage.get("prompt_tokens_details")
    if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
        stats.cached_tokens = details["cached_tokens"]


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: a number of seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
