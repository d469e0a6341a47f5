"""Shared helpers for the memory/document tests: a fake embedder and a real Chroma server."""

from __future__ import annotations

import hashlib
import math
import re
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

WORD = re.compile(r"\w+", re.UNICODE)


class WordHashEmbedder:
    """Deterministic bag-of-words vectors: texts sharing words are close. Fast, no model."""

    def __init__(self, dimension: int = 64, name: str = "fake:word-hash") -> None:
        self._dimension = dimension
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    @property
    def dimension(self) -> int:
        return self._dimension

    def _embed(self, text: str) -> list[float]:
        vector = [0.0] * self._dimension
        for word in WORD.findall(text.lower()):
            digest = hashlib.blake2b(word.encode(), digest_size=4).digest()
            vector[int.from_bytes(digest, "big") % self._dimension] += 1.0
        norm = math.sqrt(sum(v * v for v in vector)) or 1.0
        return [v / norm for v in vector]

    def embed_passages(self, texts: Sequence[str]) -> list[list[float]]:
        return [self._embed(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._embed(text)

    def count_tokens(self, text: str) -> int:
        return len(WORD.findall(text))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def chroma_server(chroma: Path, data: Path, port: int = 0) -> Iterator[str]:
    """A real ``chroma run`` on loopback (on ``port``, else a free one); yields its URL and
    stops it afterwards."""
    port = port or free_port()
    log = (data.parent / "chroma-server.log").open("wb")
    process = subprocess.Popen(
        [str(chroma), "run", "--path", str(data), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"chroma run exited: {process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("chroma run did not start listening in 60 s") from None
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


class CountingCollection:
    """A Chroma collection that counts queries and whole reads (a mirrored search makes none
    of either once the mirror is loaded)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.queries = 0
        self.loads = 0

    def query(self, *args: Any, **kwargs: Any) -> Any:
        self.queries += 1
        return self._inner.query(*args, **kwargs)

    def get(self, *args: Any, **kwargs: Any) -> Any:
        if "embeddings" in kwargs.get("include", ()):
            self.loads += 1
        return self._inner.get(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)
