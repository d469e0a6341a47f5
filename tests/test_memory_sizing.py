"""What a configuration's KV cache takes, from GGUF metadata (doctor and README)."""

from __future__ import annotations

from agent.generators.gguf import kv_bytes_per_token, memory_estimate

GEMMA2_9B = {
    "general.architecture": "gemma2",
    "gemma2.block_count": "42",
    "gemma2.embedding_length": "3584",
    "gemma2.attention.head_count": "16",
    "gemma2.attention.head_count_kv": "8",
    "gemma2.attention.key_length": "256",
    "gemma2.attention.value_length": "256",
}
SMOLLM2_135M = {
    "general.architecture": "llama",
    "llama.block_count": "30",
    "llama.embedding_length": "576",
    "llama.attention.head_count": "9",
    "llama.attention.head_count_kv": "3",
}


def test_kv_bytes_per_token_from_the_architecture() -> None:
    assert kv_bytes_per_token(SMOLLM2_135M) == 30 * 3 * (64 + 64) * 2  # 22.5 KiB
    assert kv_bytes_per_token(GEMMA2_9B) == 42 * 8 * (256 + 256) * 2  # 336 KiB
    assert kv_bytes_per_token({"general.architecture": "llama"}) is None


def test_the_estimate_counts_every_sequence() -> None:
    per_token = kv_bytes_per_token(GEMMA2_9B)
    assert per_token is not None
    text = memory_estimate(per_token, 4096, 4, 1024)
    assert text == (
        "KV cache 4 x 4096 tokens x 336.0 KiB = 5376 MiB, idle sequences in RAM up to 1024 MiB"
    )
