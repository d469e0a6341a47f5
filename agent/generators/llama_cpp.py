"""Local generation with llama.cpp (through llama-cpp-python's low-level API).

The prompt is rendered here with the chat template and passed to the engine as tokens, so
what the prompt inspector shows is exactly what the model evaluates. The engine (engine.py)
holds ``[model] parallel`` sequences in one context and decodes them together on its own
thread; tokens come back to the event loop through an asyncio queue, so the loop never
blocks on the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from agent.config import Config, ModelConfig
from agent.generators.base import (
    ChatMessage,
    GenerationStats,
    GeneratorError,
    SamplingParams,
    TokenStream,
)
from agent.generators.control import prompt_tokens
from agent.generators.engine import Engine, EngineClosed, Request
from agent.generators.gguf import check_gguf_file, quiet_stderr
from agent.generators.hub import resolve_model_path
from agent.generators.kv_reuse import ReusePlan, plan_reuse
from agent.generators.state_cache import StateCache

log = logging.getLogger(__name__)

# Cached runs shorter than this are evaluated again rather than shifted into place.
DEFAULT_REUSE_MIN_TOKENS = 16


class LlamaCppGenerator:
    """A :class:`~agent.generators.base.Generator` backed by one multi-sequence llama.cpp
    context."""

    def __init__(self, model: Any, engine: Engine, template: Any, path: Path) -> None:
        self._model = model
        self._engine = engine
        self._template = template
        self._path = path
        self._closed = False

    @property
    def concurrency(self) -> int:
        """Sequences that generate at once: the scheduler's slots."""
        return self._engine.parallel

    @property
    def states(self) -> StateCache | None:
        """Idle sequences saved to RAM (None when ``[context] state_cache_mb`` is 0)."""
        return self._engine.states

    @property
    def can_shift(self) -> bool:
        """Whether cached runs that moved are shifted into place (the model allows it)."""
        return self._engine.can_shift

    @classmethod
    def load(
        cls,
        model: ModelConfig,
        path: Path,
        *,
        state_cache_bytes: int = 0,
        reuse_min_tokens: int = DEFAULT_REUSE_MIN_TOKENS,
    ) -> LlamaCppGenerator:
        """Load the model (blocking; call from a thread at start-up)."""
        import llama_cpp  # noqa: PLC0415 - heavy import, only when a model is used
        from llama_cpp._internals import LlamaContext, LlamaModel  # noqa: PLC0415
        from llama_cpp._logger import set_verbose  # noqa: PLC0415
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter  # noqa: PLC0415

        check_gguf_file(path)
        set_verbose(False)
        llama_cpp.llama_backend_init()
        model_params = llama_cpp.llama_model_default_params()
        model_params.n_gpu_layers = model.n_gpu_layers
        try:
            loaded: Any = LlamaModel(path_model=str(path), params=model_params, verbose=False)
        except (ValueError, RuntimeError) as exc:
            raise GeneratorError(f"[model] path: llama.cpp cannot load {path}: {exc}") from None
        metadata = loaded.metadata()
        template = model.chat_template or metadata.get("tokenizer.chat_template", "")
        if not template:
            loaded.close()
            raise GeneratorError(
                f"[model] path: {path.name} has no chat template in its GGUF metadata; "
                "set [model] chat_template (see README, 'Chat templates')"
            )
        threads = model.n_threads or max(1, os.cpu_count() or 1)
        params = llama_cpp.llama_context_default_params()
        # One KV buffer of n_ctx tokens per sequence, shared by all of them (the engine keeps
        # each sequence within n_ctx). Unified, because llama.cpp splits a batch mixing
        # separate buffers into equal parts per sequence: a prompt chunk next to other
        # sequences' single tokens became a hundred tiny batches. It also lets sequences
        # share the cells of a common prefix.
        params.n_ctx = model.n_ctx * model.parallel
        params.n_seq_max = 2 * model.parallel  # each with a spare to park cached runs in
        params.kv_unified = True
        params.n_batch = params.n_ubatch = min(model.n_batch, model.n_ctx)
        params.n_threads = params.n_threads_batch = threads
        params.rope_freq_base = model.rope_freq_base
        params.no_perf = True
        try:
            # llama.cpp warns that the whole buffer (parallel x n_ctx) exceeds the trained
            # context; no sequence goes past n_ctx, so the warning would only mislead.
            with quiet_stderr():
                context: Any = LlamaContext(model=loaded, params=params, verbose=False)
        except (ValueError, RuntimeError) as exc:
            loaded.close()
            raise GeneratorError(
                f"[model] n_ctx/parallel: llama.cpp cannot create a context of "
                f"{model.parallel} x {model.n_ctx} tokens: {exc}"
            ) from None
        engine = Engine(
            loaded,
            context,
            parallel=model.parallel,
            n_ctx=model.n_ctx,
            n_batch=int(params.n_batch),
            seed=model.seed,
            reuse_min_tokens=reuse_min_tokens,
            state_cache_bytes=state_cache_bytes,
        )
        vocab = loaded.vocab
        bos_id, eos_id = llama_cpp.llama_vocab_bos(vocab), llama_cpp.llama_vocab_eos(vocab)
        formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=_token_text(loaded, eos_id),
            bos_token=_token_text(loaded, bos_id),
            stop_token_ids=[eos_id] if eos_id != -1 else None,
        )
        log.info(
            "model loaded: %s (n_ctx=%d, parallel=%d, KV shift %s)",
            path.name, model.n_ctx, model.parallel, "on" if engine.can_shift else "off",
        )  # fmt: skip
        return cls(loaded, engine, formatter, path)

    @property
    def name(self) -> str:
        return f"llama.cpp:{self._path.name}"

    @property
    def n_ctx(self) -> int:
        return self._engine.n_ctx

    def tokenize(self, text: str, *, special: bool) -> list[int]:
        """``text``'s tokens, without BOS; ``special`` turns control-token spellings such as
        "<|im_start|>" into their single tokens (only the template's own text may)."""
        if self._closed:  # the vocabulary went with the model
            raise GeneratorError("llama.cpp generation failed: the model is closed")
        tokens: list[int] = self._model.tokenize(
            text.encode("utf-8"), add_bos=False, special=special
        )
        return tokens

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text, special=False))

    def render_prompt(self, messages: Sequence[ChatMessage]) -> str:
        payload = [{"role": m.role, "content": m.content} for m in messages]
        try:
            return str(self._template(messages=payload).prompt)
        except Exception as exc:  # the template is user-supplied Jinja
            raise GeneratorError(f"[model] chat_template failed to render: {exc}") from None

    def _prompt_tokens(self, messages: Sequence[ChatMessage]) -> list[int]:
        # Templates write the BOS token themselves (bos_token), so none is added here. Only
        # the template's own text may become control tokens ("<|im_start|>" and friends):
        # the messages' text is tokenised as plain text (see agent.generators.control).
        return prompt_tokens(self.render_prompt, self._tokenize, messages)

    def _tokenize(self, text: str, special: bool) -> list[int]:
        return self.tokenize(text, special=special)

    def count_prompt_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return len(self._prompt_tokens(messages))

    def reuse_plan(
        self, previous: Sequence[ChatMessage], reply: str, messages: Sequence[ChatMessage]
    ) -> ReusePlan:
        """What of ``messages``' prompt a sequence holding ``previous``'s prompt and then
        ``reply`` keeps (the common prefix and the runs shifted into place), as the engine
        plans it (for the prompt inspector)."""
        held = self._prompt_tokens(previous) + self._tokenize(reply, False)
        prompt = self._prompt_tokens(messages)
        return plan_reuse(held, prompt, self._engine.reuse_min_tokens, across_gaps=True).capped(
            len(prompt) - 1
        )

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

        def emit(item: object) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is listening
                loop.call_soon_threadsafe(queue.put_nowait, item)

        request = Request(tokens, params, stats, emit)
        try:
            self._engine.submit(request)
        except EngineClosed as exc:
            raise GeneratorError(f"llama.cpp generation failed: {exc}") from None
        finished = False
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, Exception):
                    raise GeneratorError(f"llama.cpp generation failed: {item}") from item
                yield str(item)
            finished = True
        finally:
            if not finished:
                # Cancelled, closed early or failed: stop this sequence between two steps
                # (the others go on) and wait until the engine has let it go, so no
                # sequence is left half-used.
                request.cancel.set()
                self._engine.wake()
                with contextlib.suppress(Exception):
                    await asyncio.shield(_drain(queue))

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._engine.close)


async def _drain(queue: asyncio.Queue[object]) -> None:
    while (await queue.get()) is not None:
        pass


def _token_text(model: Any, token_id: int) -> str:
    if token_id == -1:
        return ""
    return str(model.token_get_text(token_id))


async def load_generator(config: Config) -> LlamaCppGenerator:
    path = resolve_model_path(config)
    cache_bytes = config.context.state_cache_mb * 1024 * 1024
    return await asyncio.to_thread(
        LlamaCppGenerator.load,
        config.model,
        path,
        state_cache_bytes=cache_bytes,
        reuse_min_tokens=config.context.reuse_min_tokens,
    )
