"""The local engine as it was before the multi-sequence engine (kept for the benchmarks).

One llama.cpp context serving one request at a time through llama-cpp-python's high-level
``Llama.create_completion``, with whole-context snapshots of other channels in a RAM cache.
bench/concurrency.py and bench/context_cache.py compare the engine in agent/ against this
one in the same run. Not used by the agent.

Original description:

llama.cpp is synchronous, so every call into the model runs on one dedicated worker thread
(which also serialises access to the single llama context) and tokens come back to the event
loop through an asyncio queue. The prompt is rendered here with the chat template and passed
as tokens, so what the prompt inspector shows is exactly what the model evaluates, and
llama.cpp reuses the longest common token prefix with the previous call.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from agent.config import ModelConfig
from agent.generators.base import (
    ChatMessage,
    GenerationStats,
    GeneratorError,
    SamplingParams,
    TokenStream,
)
from agent.generators.gguf import check_gguf_file
from agent.generators.state_cache import StateCache, common_prefix

log = logging.getLogger(__name__)

_DONE = object()
# Below this many tokens, re-evaluating is cheaper than keeping a state around.
MIN_STATE_TOKENS = 64
# A cached state is loaded only when it saves evaluating at least this many tokens.
MIN_STATE_GAIN = 16


class LegacyLlamaCppGenerator:
    """A :class:`~agent.generators.base.Generator` backed by one single-sequence context."""

    def __init__(
        self, llama: Any, template: Any, path: Path, *, state_cache_bytes: int = 0
    ) -> None:
        self._llama = llama
        self._template = template
        self._path = path
        self.states = StateCache(state_cache_bytes) if state_cache_bytes > 0 else None
        # One thread: llama.cpp contexts are not thread-safe, and a queue of one is the
        # generator's capacity (a local model serves one request at a time).
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama")
        self._lock = asyncio.Lock()

    @property
    def concurrency(self) -> int:
        return 1  # one context, one thread: requests queue on the lock anyway

    @classmethod
    def load(
        cls, model: ModelConfig, path: Path, *, state_cache_bytes: int = 0
    ) -> LegacyLlamaCppGenerator:
        """Load the model (blocking; call from a thread at start-up)."""
        from llama_cpp import Llama  # noqa: PLC0415 - heavy import, only when a model is used
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter  # noqa: PLC0415

        check_gguf_file(path)
        try:
            llama = Llama(
                model_path=str(path),
                n_ctx=model.n_ctx,
                n_threads=model.n_threads or max(1, os.cpu_count() or 1),
                n_batch=min(model.n_batch, model.n_ctx),
                n_gpu_layers=model.n_gpu_layers,
                rope_freq_base=model.rope_freq_base,
                seed=model.seed if model.seed >= 0 else 0xFFFFFFFF,
                verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise GeneratorError(f"[model] path: llama.cpp cannot load {path}: {exc}") from None

        template = model.chat_template or llama.metadata.get("tokenizer.chat_template", "")
        if not template:
            raise GeneratorError(
                f"[model] path: {path.name} has no chat template in its GGUF metadata; "
                "set [model] chat_template (see README, 'Chat templates')"
            )
        bos_id, eos_id = llama.token_bos(), llama.token_eos()
        formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=_token_text(llama, eos_id),
            bos_token=_token_text(llama, bos_id),
            stop_token_ids=[eos_id] if eos_id != -1 else None,
        )
        log.info("model loaded: %s (n_ctx=%d)", path.name, llama.n_ctx())
        return cls(llama, formatter, path, state_cache_bytes=state_cache_bytes)

    @property
    def name(self) -> str:
        return f"llama.cpp:{self._path.name}"

    @property
    def n_ctx(self) -> int:
        return int(self._llama.n_ctx())

    def count_tokens(self, text: str) -> int:
        return len(self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def render_prompt(self, messages: Sequence[ChatMessage]) -> str:
        payload = [{"role": m.role, "content": m.content} for m in messages]
        try:
            return str(self._template(messages=payload).prompt)
        except Exception as exc:  # the template is user-supplied Jinja
            raise GeneratorError(f"[model] chat_template failed to render: {exc}") from None

    def _prompt_tokens(self, messages: Sequence[ChatMessage]) -> list[int]:
        # Templates write the BOS token themselves (bos_token), so none is added here;
        # special=True turns "<|im_start|>" and friends into their single control tokens.
        prompt = self.render_prompt(messages)
        tokens: list[int] = self._llama.tokenize(
            prompt.encode("utf-8"), add_bos=False, special=True
        )
        return tokens

    def count_prompt_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return len(self._prompt_tokens(messages))

    def stream(self, messages: Sequence[ChatMessage], params: SamplingParams) -> TokenStream:
        stats = GenerationStats()
        return TokenStream(self._run(list(messages), params, stats), stats)

    async def _run(
        self, messages: list[ChatMessage], params: SamplingParams, stats: GenerationStats
    ) -> AsyncIterator[str]:
        tokens = self._prompt_tokens(messages)
        if len(tokens) >= self.n_ctx:
            raise GeneratorError(
                f"the prompt has {len(tokens)} tokens but [model] n_ctx is {self.n_ctx}"
            )
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        cancel = threading.Event()

        def emit(item: object) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def work() -> None:
            try:
                for piece in self._generate(tokens, params, stats, cancel):
                    emit(piece)
            except Exception as exc:  # delivered to the consumer, which re-raises it
                emit(exc)
            finally:
                emit(_DONE)

        async with self._lock:
            job = loop.run_in_executor(self._executor, work)
            try:
                while (item := await queue.get()) is not _DONE:
                    if isinstance(item, Exception):
                        raise GeneratorError(f"llama.cpp generation failed: {item}") from item
                    yield str(item)
            finally:
                # On cancellation or an early close, stop the thread between two tokens and
                # wait for it, so the next generation finds the context idle.
                cancel.set()
                with contextlib.suppress(Exception):
                    await asyncio.shield(job)

    def _generate(
        self,
        tokens: list[int],
        params: SamplingParams,
        stats: GenerationStats,
        cancel: threading.Event,
    ) -> Iterator[str]:
        llama = self._llama
        prefix = self._restore_best_state(tokens)
        stats.prompt_tokens = len(tokens)
        # llama.cpp re-evaluates the last prompt token when the whole prompt is cached.
        stats.cached_tokens = min(prefix, len(tokens) - 1)
        if params.seed >= 0:
            llama.set_seed(params.seed)
        chunks = llama.create_completion(
            prompt=tokens,
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k,
            min_p=params.min_p,
            repeat_penalty=params.repeat_penalty,
            stop=[self._template.eos_token] if self._template.eos_token else None,
            stream=True,
            grammar=_grammar(params.json_schema),
        )
        try:
            for chunk in chunks:
                if cancel.is_set():
                    stats.finish_reason = "cancelled"
                    return
                choice = chunk["choices"][0]
                if choice.get("finish_reason"):
                    stats.finish_reason = choice["finish_reason"]
                text = choice.get("text", "")
                if text:
                    stats.completion_tokens += 1
                    yield text
        finally:
            chunks.close()

    def _restore_best_state(self, tokens: list[int]) -> int:
        """Keep the context's state if this prompt would discard most of it, and load a
        cached state that shares more of the prompt. Returns the reusable prefix length."""
        import numpy as np  # noqa: PLC0415

        llama = self._llama
        held = llama.input_ids[: llama.n_tokens]
        prompt = np.asarray(tokens, dtype=np.intc)
        prefix = common_prefix(held, prompt)
        if self.states is None:
            return prefix
        if llama.n_tokens >= MIN_STATE_TOKENS and prefix < llama.n_tokens // 2:
            state, size = self._save_state()
            self.states.put(held.copy(), state, size)
        # Only a state that saves real work: one sharing just the system prompt plus a token
        # or two (another channel's conversation) is not worth a load.
        found = self.states.best(tokens, better_than=prefix + MIN_STATE_GAIN)
        if found is not None:
            entry, prefix = found
            llama.load_state(entry.state)
        return prefix

    def _save_state(self) -> tuple[Any, int]:
        """The context's state without llama-cpp-python's copy of the logits.

        ``Llama.save_state`` also copies up to n_batch x n_vocab scores (100 MB for a 49k
        vocabulary); they are not needed, because loading a state makes llama.cpp evaluate
        the last token again. One row keeps ``load_state`` working (it broadcasts).
        """
        import llama_cpp  # noqa: PLC0415
        import numpy as np  # noqa: PLC0415
        from llama_cpp.llama import LlamaState  # noqa: PLC0415

        llama = self._llama
        context = llama._ctx.ctx  # noqa: SLF001 - what Llama.save_state itself uses
        capacity = llama_cpp.llama_state_get_size(context)
        buffer = (ctypes.c_uint8 * capacity)()
        written = llama_cpp.llama_state_get_data(context, buffer, capacity)
        scores = np.zeros((1, llama.n_vocab()), dtype=np.single)
        input_ids = llama.input_ids.copy()
        state = LlamaState(
            input_ids=input_ids,
            scores=scores,
            n_tokens=llama.n_tokens,
            llama_state=ctypes.string_at(buffer, written),
            llama_state_size=written,
            seed=llama._seed,  # noqa: SLF001
        )
        return state, written + input_ids.nbytes + scores.nbytes

    async def aclose(self) -> None:
        async with self._lock:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._llama.close)
        self._executor.shutdown(wait=True)


def _token_text(llama: Any, token_id: int) -> str:
    if token_id == -1:
        return ""
    return str(llama._model.token_get_text(token_id))  # noqa: SLF001 - what Llama itself uses


def _grammar(json_schema: str | None) -> Any:
    """A llama.cpp grammar that admits only JSON following ``json_schema``."""
    if json_schema is None:
        return None
    from llama_cpp.llama_grammar import LlamaGrammar  # noqa: PLC0415

    return LlamaGrammar.from_json_schema(json_schema, verbose=False)
