"""The local engine: one llama.cpp context holding several sequences, decoded together.

Up to ``parallel`` generations run at once, each in a sequence of its own. Every step puts
one token for each generating sequence and a chunk of the prompt of each sequence still
reading its prompt into one ``llama_batch`` and calls ``llama_decode`` once: on a CPU,
decoding is limited by memory bandwidth, so four sequences in one batch cost little more
than one. A long prompt is evaluated in chunks, so the others keep streaming meanwhile.

A sequence keeps its KV after its reply, so the same conversation's next prompt finds it
resident (the common prefix, and runs that moved, see kv_reuse.py). A cached run that follows
new tokens in the prompt (the history that stays after an eviction, behind a new summary) is
parked in the sequence's spare (seq_id + parallel) while the new tokens are evaluated, then
moved back to its new position: llama.cpp appends to a sequence only at its end. Only the
same conversation's sequence lends such runs (``SamplingParams.conversation``).

When a new prompt shares too little with every idle sequence, the least recently used one is
saved into a bounded RAM cache (``llama_state_seq_get_data``) and takes the new prompt; a
saved sequence that shares more is loaded back (``llama_state_seq_set_data``).

Everything that touches the context runs on one thread (``Engine._loop``); the event loop
hands requests over and receives pieces of text through callbacks.
"""

from __future__ import annotations

import codecs
import ctypes
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.generators.base import GenerationStats, SamplingParams
from agent.generators.kv_reuse import Chunk, ReusePlan, common_prefix, plan_reuse
from agent.generators.state_cache import CachedState, StateCache

log = logging.getLogger(__name__)

# Below this many tokens, evaluating again is cheaper than keeping a saved state around.
MIN_STATE_TOKENS = 64
# A saved state is loaded only when it saves evaluating at least this many more tokens.
MIN_STATE_GAIN = 16
# Prompt tokens of one sequence per step while other sequences are generating: small enough
# that their next token is not held up long, large enough to keep the batch efficient.
PREFILL_CHUNK = 128
# As llama-cpp-python's create_completion: the repeat penalty looks at the last 64 tokens.
PENALTY_LAST_N = 64
_RANDOM_SEED = 0xFFFFFFFF


class EngineClosed(RuntimeError):
    """The engine was closed before this request finished."""


@dataclass(eq=False)
class Request:
    prompt: list[int]
    params: SamplingParams
    stats: GenerationStats
    # Called on the engine thread with a str piece, an Exception, or None when finished.
    emit: Callable[[object], None]
    cancel: threading.Event = field(default_factory=threading.Event)
    sampler: Any = None
    decoder: Any = None
    slot: Slot | None = None
    todo: list[int] = field(default_factory=list)  # prompt tokens still to evaluate
    next_token: int | None = None  # sampled, to be evaluated in the next step
    batch_index: int = -1
    # (sequence, length): the prompt's first ``length`` tokens are being evaluated in that
    # sequence for another request; this one copies them from there instead of evaluating.
    wait: tuple[Slot, int] | None = None
    # Cached runs waiting in the slot's spare sequence for the tokens before them; each is
    # moved back when the sequence reaches its target position. ``todo`` stops before the
    # first of them.
    parked: list[Chunk] = field(default_factory=list)


@dataclass(eq=False)
class Slot:
    seq_id: int
    tokens: list[int] = field(default_factory=list)  # what the sequence's KV holds
    request: Request | None = None
    last_used: int = 0
    saved: bool = True  # its content is in the RAM cache already (or not worth saving)
    # Positions below this may share their KV cells with another sequence (a common prefix
    # copied by llama_memory_seq_cp): they are never shifted, which would move both.
    shared: int = 0
    conversation: str | None = None  # whose prompt it last served (SamplingParams)


class Engine:
    def __init__(
        self,
        model: Any,
        context: Any,
        *,
        parallel: int,
        n_ctx: int,
        n_batch: int,
        seed: int,
        reuse_min_tokens: int,
        state_cache_bytes: int,
    ) -> None:
        import llama_cpp  # noqa: PLC0415 - heavy import, only when a model is used
        from llama_cpp._internals import LlamaBatch  # noqa: PLC0415

        self._lib = llama_cpp
        self._model = model
        self._context = context
        self._ctx = context.ctx
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._vocab = model.vocab
        self._n_vocab = int(llama_cpp.llama_vocab_n_tokens(model.vocab))
        self.n_ctx = n_ctx
        self.n_batch = n_batch
        self.parallel = parallel
        self._seed = seed
        self.can_shift = bool(llama_cpp.llama_memory_can_shift(self._memory))
        self.reuse_min_tokens = reuse_min_tokens if self.can_shift else 0
        self.states = StateCache(state_cache_bytes) if state_cache_bytes > 0 else None
        self._batch: Any = LlamaBatch(n_tokens=n_batch, embd=0, n_seq_max=1, verbose=False)
        self._slots = [Slot(i) for i in range(parallel)]
        # A parked run waits at its target position plus this, clear of every other run.
        self._park_offset = 2 * n_ctx
        self._pending: list[Request] = []
        self._clock = 0
        self._cv = threading.Condition()
        self._incoming: list[Request] = []
        self._closing = False
        self._piece = ctypes.create_string_buffer(256)
        self._thread = threading.Thread(target=self._loop, name="llama-engine", daemon=True)
        self._thread.start()

    # -- called from the event loop ----------------------------------------------------------

    def submit(self, request: Request) -> None:
        with self._cv:
            if self._closing:
                raise EngineClosed("the model is closed")
            self._incoming.append(request)
            self._cv.notify()

    def wake(self) -> None:
        with self._cv:
            self._cv.notify()

    def close(self) -> None:
        """Stop the engine thread (every unfinished request ends with EngineClosed), then
        free the context and the model. Blocking."""
        with self._cv:
            self._closing = True
            self._cv.notify()
        self._thread.join()
        self._batch.close()
        self._context.close()
        self._model.close()

    def busy_sequences(self) -> int:
        return sum(1 for slot in self._slots if slot.request is not None)

    # -- the engine thread -------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not (self._incoming or self._closing or self._has_work()):
                    self._cv.wait()
                self._pending.extend(self._incoming)
                self._incoming.clear()
                closing = self._closing
            if closing:
                self._fail_all(EngineClosed("the model was closed"))
                return
            try:
                self._drop_cancelled()
                self._admit()
                if any(slot.request is not None for slot in self._slots):
                    self._step()
            except Exception as exc:  # one failed decode must not stop the engine
                log.exception("llama.cpp engine step failed")
                self._fail_all(exc, pending=False)

    def _has_work(self) -> bool:
        return bool(self._pending) or any(s.request is not None for s in self._slots)

    def _drop_cancelled(self) -> None:
        for request in [r for r in self._pending if r.cancel.is_set()]:
            self._pending.remove(request)
            request.stats.finish_reason = "cancelled"
            request.emit(None)
        for slot in self._slots:
            if slot.request is not None and slot.request.cancel.is_set():
                self._finish(slot.request, "cancelled")

    def _fail_all(self, exc: Exception, *, pending: bool = True) -> None:
        for slot in self._slots:
            request = slot.request
            if request is not None:
                # The sequence may hold part of a batch: forget it rather than trust it.
                self._lib.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
                self._release(request)
                slot.tokens, slot.saved, slot.shared = [], True, 0
                request.emit(exc)
                request.emit(None)
        if pending:
            for request in self._pending:
                request.emit(exc)
                request.emit(None)
            self._pending.clear()

    # -- admission: which sequence serves a prompt -------------------------------------------

    def _admit(self) -> None:
        while self._pending:
            free = [slot for slot in self._slots if slot.request is None]
            if not free:
                return
            request = self._pending.pop(0)
            try:
                self._start(request, free)
            except Exception as exc:
                self._release(request)
                request.emit(exc)
                request.emit(None)

    def _spare(self, slot: Slot) -> int:
        """The sequence a slot parks cached runs in (the context has 2 x parallel)."""
        return slot.seq_id + self.parallel

    def _reuse(self, held: Any, owner: str | None, request: Request) -> ReusePlan:
        """What of ``held`` (a sequence's or a saved state's tokens, last serving ``owner``)
        ``request``'s prompt can keep. Runs that moved come only from its own conversation
        (their KV was computed in it); another conversation lends only a common prefix."""
        conversation = request.params.conversation
        if conversation is not None and owner == conversation:
            return plan_reuse(held, request.prompt, self.reuse_min_tokens, across_gaps=True)
        if conversation is None and owner is None:  # callers that name no conversation
            return plan_reuse(held, request.prompt, self.reuse_min_tokens)
        return plan_reuse(held, request.prompt, 0)

    def _plan(self, slot: Slot, request: Request) -> ReusePlan:
        plan = self._reuse(slot.tokens, slot.conversation, request)
        if plan.chunks and plan.chunks[0].source < slot.shared:
            return ReusePlan(plan.prefix)  # moving shared cells would move them for both
        return plan

    def _start(self, request: Request, free: list[Slot]) -> None:
        prompt = request.prompt
        # First what can fail (a JSON schema llama.cpp cannot turn into a grammar): before
        # any sequence is touched.
        request.sampler = self._sampler(request.params)
        plans = {slot.seq_id: self._plan(slot, request) for slot in free}
        best = max(free, key=lambda s: (plans[s.seq_id].reused, -s.last_used))
        plan = plans[best.seq_id]
        # What any sequence, busy or not, could lend this prompt (the persona's system prompt,
        # say) without giving up its own content.
        shareable = max(min(common_prefix(s.tokens, prompt), len(prompt) - 1) for s in self._slots)
        # A sequence whose content the prompt continues, or that holds more of this
        # conversation than could be lent, serves it (what it loses is the old volatile block
        # and the like). Otherwise the prompt takes an empty sequence, else the least recently
        # used one, whose content is saved to the RAM cache first; a saved sequence holding
        # more of this conversation is loaded back into it.
        # (Another conversation's sequence never serves it in place: its content would be
        # lost without being saved.)
        continues = plan.reused >= MIN_STATE_GAIN > len(best.tokens) - plan.reused
        mine = best.conversation == request.params.conversation
        if not continues and (not mine or plan.reused < shareable + MIN_STATE_GAIN):
            target = min(free, key=lambda s: (bool(s.tokens), s.last_used))
            plan = plans[target.seq_id]
            found = None
            if self.states is not None:
                found = self.states.best(
                    prompt,
                    better_than=max(plan.reused, shareable) + MIN_STATE_GAIN,
                    reuse=lambda entry: (
                        self._reuse(entry.tokens, entry.conversation, request).reused
                    ),
                )
            if found is not None or plan.reused * 2 < len(target.tokens):
                self._save(target)
            if found is not None:
                self._load(target, found[0])
                plan = self._plan(target, request)
            best = target
        plan = self._share_prefix(best, plan, prompt)
        self._bind(request, best, plan)
        request.wait = self._leader(best, plan, prompt)

    def _share_prefix(self, target: Slot, plan: ReusePlan, prompt: list[int]) -> ReusePlan:
        """Start ``target`` from another sequence's longer common prefix (the persona's
        system prompt and whatever else channels share): the KV cells are shared, not
        evaluated again."""
        best_slot, best_prefix = None, plan.reused + MIN_STATE_GAIN
        for slot in self._slots:
            if slot is not target:
                prefix = min(common_prefix(slot.tokens, prompt), len(prompt) - 1)
                if prefix > best_prefix:
                    best_slot, best_prefix = slot, prefix
        if best_slot is None:
            return plan
        self._copy_prefix(best_slot, target, best_prefix, prompt)
        return ReusePlan(best_prefix)

    def _copy_prefix(self, source: Slot, target: Slot, length: int, prompt: list[int]) -> None:
        """``target`` holds the first ``length`` tokens of ``prompt``, sharing ``source``'s
        cells (a copy of the KV is a reference to the same cells, nothing is evaluated)."""
        lib = self._lib
        lib.llama_memory_seq_rm(self._memory, target.seq_id, -1, -1)
        lib.llama_memory_seq_cp(self._memory, source.seq_id, target.seq_id, 0, length)
        target.tokens, target.saved, target.shared = prompt[:length], False, length
        source.shared = max(source.shared, length)

    def _leader(self, target: Slot, plan: ReusePlan, prompt: list[int]) -> tuple[Slot, int] | None:
        """A sequence still reading a prompt that begins like this one, further than
        ``plan`` reuses (channels of one persona starting at once, as after a restart): this
        prompt waits for those tokens and copies them, rather than evaluating them again."""
        best: tuple[Slot, int] | None = None
        least = plan.reused + MIN_STATE_GAIN
        for slot in self._slots:
            other = slot.request
            if slot is target or other is None or not other.todo or other.wait is not None:
                continue
            length = min(common_prefix(other.prompt, prompt), len(prompt) - 1)
            if length > least:
                best, least = (slot, length), length
        return best

    def _resolve_waits(self) -> None:
        """Requests waiting for another sequence's prompt tokens copy them once they are
        there; if that sequence stopped reading first, they copy what it holds (when it is
        worth it) and evaluate the rest themselves."""
        for slot in self._slots:
            request = slot.request
            if request is None or request.wait is None:
                continue
            source, length = request.wait
            held = min(common_prefix(source.tokens, request.prompt), length)
            leader = source.request
            still_reading = leader is not None and bool(leader.todo) and held < length
            if still_reading:
                continue
            request.wait = None
            if held >= len(slot.tokens) + MIN_STATE_GAIN:
                self._unpark(request)
                self._copy_prefix(source, slot, held, request.prompt)
                request.todo = request.prompt[held:]
                request.stats.cached_tokens, request.stats.shifted_tokens = held, 0

    def _save(self, slot: Slot) -> None:
        if slot.saved or self.states is None or len(slot.tokens) < MIN_STATE_TOKENS:
            return
        lib = self._lib
        size = lib.llama_state_seq_get_size(self._ctx, slot.seq_id)
        buffer = (ctypes.c_uint8 * size)()
        written = lib.llama_state_seq_get_data(self._ctx, buffer, size, slot.seq_id)
        if written:
            state = ctypes.string_at(buffer, written)
            self.states.put(slot.tokens, state, written, slot.conversation)
        slot.saved = True

    def _load(self, slot: Slot, found: CachedState) -> None:
        lib = self._lib
        lib.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
        buffer = (ctypes.c_uint8 * len(found.state)).from_buffer_copy(found.state)
        slot.shared = 0
        if lib.llama_state_seq_set_data(self._ctx, buffer, len(found.state), slot.seq_id):
            slot.tokens, slot.saved = [int(t) for t in found.tokens], True
            slot.conversation = found.conversation
        else:  # an unusable state: start from an empty sequence
            lib.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
            slot.tokens, slot.saved = [], True

    def _bind(self, request: Request, slot: Slot, plan: ReusePlan) -> None:
        """Keep what ``plan`` reuses of ``slot`` (shifting moved runs into place), drop the
        rest, and start evaluating the remainder of the prompt in it."""
        lib, mem, seq = self._lib, self._memory, slot.seq_id
        prompt = request.prompt
        # The last prompt token is always evaluated again: its logits give the first token.
        plan = plan.capped(len(prompt) - 1)
        if plan.reused < len(slot.tokens):
            slot.saved = False
        # Runs that follow new tokens wait in the spare sequence (their cells leave this
        # one, so moving them there moves nothing here).
        lead = plan.contiguous
        parked = [chunk for chunk in plan.chunks if chunk.target >= lead]
        spare = self._spare(slot)
        lib.llama_memory_seq_rm(mem, spare, -1, -1)
        for chunk in parked:
            end = chunk.source + chunk.length
            lib.llama_memory_seq_cp(mem, seq, spare, chunk.source, end)
            lib.llama_memory_seq_rm(mem, seq, chunk.source, end)
            lib.llama_memory_seq_add(mem, spare, chunk.source, end, chunk.delta + self._park_offset)
        kept = [chunk for chunk in plan.chunks if chunk.target < lead]
        keep_ok = True
        start = plan.prefix
        for chunk in kept:  # remove the gaps between the runs kept
            if chunk.source > start:
                keep_ok = keep_ok and lib.llama_memory_seq_rm(mem, seq, start, chunk.source)
            start = chunk.source + chunk.length
        keep_ok = keep_ok and lib.llama_memory_seq_rm(mem, seq, start, -1)
        if not keep_ok:  # a model whose memory cannot drop part of a sequence
            lib.llama_memory_seq_rm(mem, seq, -1, -1)
            lib.llama_memory_seq_rm(mem, spare, -1, -1)
            plan, slot.shared, kept, parked, lead = ReusePlan(0), 0, [], [], 0
        # Every run kept here moves towards the start, so moving them in order never lands
        # one on another that has not moved yet.
        for chunk in kept:
            lib.llama_memory_seq_add(
                mem, seq, chunk.source, chunk.source + chunk.length, chunk.delta
            )
        slot.tokens = prompt[:lead]
        slot.conversation = request.params.conversation
        slot.request = request
        request.slot = slot
        request.parked = parked
        request.todo = prompt[lead : parked[0].target if parked else len(prompt)]
        stats = request.stats
        stats.prompt_tokens = len(prompt)
        stats.cached_tokens = plan.prefix
        stats.shifted_tokens = plan.shifted
        request.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def _place_parked(self, request: Request) -> None:
        """Move the parked runs the sequence has reached back into it, and set ``todo`` to
        the new tokens up to the next one."""
        lib, mem, slot = self._lib, self._memory, request.slot
        assert slot is not None
        spare = self._spare(slot)
        while request.parked and request.parked[0].target == len(slot.tokens):
            chunk = request.parked.pop(0)
            start, end = chunk.target, chunk.target + chunk.length
            waiting = start + self._park_offset
            lib.llama_memory_seq_add(
                mem, spare, waiting, waiting + chunk.length, -self._park_offset
            )
            lib.llama_memory_seq_cp(mem, spare, slot.seq_id, start, end)
            lib.llama_memory_seq_rm(mem, spare, start, end)
            slot.tokens.extend(request.prompt[start:end])
            stop = request.parked[0].target if request.parked else len(request.prompt)
            request.todo = request.prompt[end:stop]

    def _unpark(self, request: Request) -> None:
        if request.slot is not None:
            self._lib.llama_memory_seq_rm(self._memory, self._spare(request.slot), -1, -1)
        request.parked = []

    def _sampler(self, params: SamplingParams) -> Any:
        """The same chain llama-cpp-python's create_completion builds, for this request."""
        from llama_cpp._internals import LlamaSampler  # noqa: PLC0415
        from llama_cpp.llama_grammar import LlamaGrammar  # noqa: PLC0415

        sampler: Any = LlamaSampler()  # type: ignore[no-untyped-call]
        sampler.add_penalties(
            n_vocab=self._n_vocab,
            penalty_last_n=PENALTY_LAST_N,
            penalty_repeat=params.repeat_penalty,
            penalty_freq=0.0,
            penalty_present=0.0,
        )
        if params.json_schema is not None:
            grammar = LlamaGrammar.from_json_schema(params.json_schema, verbose=False)
            sampler.add_grammar(self._model, grammar)
        if params.temperature == 0.0:
            sampler.add_greedy()
        else:
            sampler.add_top_k(params.top_k)
            sampler.add_typical(1.0, 1)
            sampler.add_top_p(params.top_p, 1)
            sampler.add_min_p(params.min_p, 1)
            sampler.add_temp(params.temperature)
            seed = params.seed if params.seed >= 0 else self._seed
            sampler.add_dist(seed if seed >= 0 else _RANDOM_SEED)
        return sampler

    # -- one decode step ---------------------------------------------------------------------

    def _step(self) -> None:
        batch = self._batch.batch
        n = 0
        added: list[tuple[Request, list[int]]] = []
        self._resolve_waits()
        active = [slot.request for slot in self._slots if slot.request is not None]
        for request in active:
            if request.parked and not request.todo and request.wait is None:
                self._place_parked(request)
        generating = [r for r in active if r.next_token is not None]
        reading = [r for r in active if r.next_token is None and r.wait is None]

        def put(request: Request, tokens: list[int], *, logits_last: bool) -> None:
            nonlocal n
            assert request.slot is not None
            pos = len(request.slot.tokens)
            seq = request.slot.seq_id
            for i, token in enumerate(tokens):
                batch.token[n] = token
                batch.pos[n] = pos + i
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = seq
                batch.logits[n] = 0
                n += 1
            if logits_last:
                batch.logits[n - 1] = 1
                request.batch_index = n - 1
            else:
                request.batch_index = -1
            added.append((request, tokens))

        for request in generating:
            assert request.next_token is not None
            put(request, [request.next_token], logits_last=True)
        budget = self.n_batch - n
        if generating:
            budget = min(budget, PREFILL_CHUNK * len(reading))
        for request in reading:
            share = budget if request is reading[-1] else budget // 2
            take = min(len(request.todo), max(share, 0))
            if take <= 0:
                continue
            chunk, request.todo = request.todo[:take], request.todo[take:]
            put(request, chunk, logits_last=not request.todo and not request.parked)
            budget -= take
        if n == 0:
            return
        batch.n_tokens = n
        status = self._lib.llama_decode(self._ctx, batch)
        if status != 0:
            raise RuntimeError(f"llama_decode returned {status}")
        for request, tokens in added:
            assert request.slot is not None
            request.slot.tokens.extend(tokens)
            request.next_token = None
            if request.batch_index >= 0:
                self._sample(request)

    def _sample(self, request: Request) -> None:
        lib = self._lib
        sampler, index = request.sampler.sampler, request.batch_index
        token = int(lib.llama_sampler_sample(sampler, self._ctx, index))
        if lib.llama_vocab_is_eog(self._vocab, token):
            self._finish(request, "stop")
            return
        stats = request.stats
        stats.completion_tokens += 1
        size = lib.llama_token_to_piece(self._vocab, token, self._piece, len(self._piece), 0, False)
        text = request.decoder.decode(self._piece.raw[: max(size, 0)])
        if text:
            request.emit(text)
        assert request.slot is not None
        full = len(request.slot.tokens) + 1 >= self.n_ctx
        if full or stats.completion_tokens >= request.params.max_tokens:
            self._finish(request, "length")
        else:
            request.next_token = token

    def _finish(self, request: Request, reason: str) -> None:
        request.stats.finish_reason = reason
        tail = request.decoder.decode(b"", final=True) if request.decoder is not None else ""
        if tail and reason != "cancelled":
            request.emit(tail)
        self._release(request)
        request.emit(None)

    def _release(self, request: Request) -> None:
        self._unpark(request)
        slot = request.slot
        if slot is not None:
            self._clock += 1
            # Whatever the request evaluated is in no saved state yet.
            slot.request, slot.last_used, slot.saved = None, self._clock, False
        request.slot = None
        if request.sampler is not None:
            request.sampler.close()
            request.sampler = None
