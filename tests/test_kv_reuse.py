"""Which cached tokens a new prompt keeps: the prefix, then runs that moved (pure, no model)."""

from __future__ import annotations

from agent.generators.kv_reuse import Chunk, ReusePlan, plan_reuse

SYSTEM = list(range(100, 120))  # 20 tokens
BLOCK = list(range(500, 540))  # the old volatile block, 40 tokens
EXCHANGE = list(range(200, 230))  # the previous user turn and reply, 30 tokens
NEW = list(range(900, 925))


def test_the_previous_exchange_is_shifted_over_the_old_volatile_block() -> None:
    cached = SYSTEM + BLOCK + EXCHANGE
    prompt = SYSTEM + EXCHANGE + NEW
    plan = plan_reuse(cached, prompt, min_run=16)
    assert plan.prefix == 20
    assert plan.chunks == (Chunk(source=60, target=20, length=30),)
    assert plan.shifted == 30
    assert plan.reused == 50
    assert plan.chunks[0].delta == -40


def test_runs_shorter_than_the_minimum_are_evaluated() -> None:
    cached = SYSTEM + BLOCK + EXCHANGE[:10]
    prompt = SYSTEM + EXCHANGE[:10] + NEW
    assert plan_reuse(cached, prompt, min_run=16) == ReusePlan(20)
    assert plan_reuse(cached, prompt, min_run=8).shifted == 10


def test_zero_minimum_keeps_the_prefix_only() -> None:
    cached = SYSTEM + BLOCK + EXCHANGE
    assert plan_reuse(cached, SYSTEM + EXCHANGE, min_run=0) == ReusePlan(20)


def test_reuse_stops_at_the_first_token_no_run_covers() -> None:
    # llama.cpp needs a sequence's positions to stay contiguous: after new text, nothing
    # cached can follow, even a run that appears later in the prompt.
    cached = SYSTEM + BLOCK + EXCHANGE
    prompt = SYSTEM + NEW + EXCHANGE
    assert plan_reuse(cached, prompt, min_run=8) == ReusePlan(20)


def test_across_gaps_a_run_after_new_tokens_is_kept() -> None:
    # After an eviction: a new summary (NEW) before the history that stays (EXCHANGE).
    cached = SYSTEM + BLOCK + EXCHANGE
    prompt = SYSTEM + NEW + EXCHANGE + [7, 8]
    plan = plan_reuse(cached, prompt, min_run=16, across_gaps=True)
    assert plan.prefix == 20
    assert plan.chunks == (Chunk(source=60, target=45, length=30),)
    assert plan.contiguous == 20  # the run follows new tokens: it is parked, not shifted
    assert plan.end == 75
    assert plan.reused == 50
    # Runs still come in their cached order, and short ones are still evaluated.
    assert plan_reuse(cached, SYSTEM + EXCHANGE + NEW + BLOCK, 16, across_gaps=True).chunks == (
        Chunk(60, 20, 30),
    )
    assert plan_reuse(cached, SYSTEM + NEW + EXCHANGE[:10], 16, across_gaps=True) == ReusePlan(20)


def test_capping_a_run_after_a_gap() -> None:
    cached = SYSTEM + BLOCK + EXCHANGE
    prompt = SYSTEM + NEW + EXCHANGE
    plan = plan_reuse(cached, prompt, min_run=16, across_gaps=True).capped(len(prompt) - 1)
    assert plan.chunks == (Chunk(60, 45, 29),)
    assert plan.end == len(prompt) - 1


def test_several_runs_in_order_and_the_longest_match_wins() -> None:
    a, b = list(range(300, 320)), list(range(400, 420))
    cached = SYSTEM + BLOCK + a[:12] + [1, 2] + a + BLOCK + b
    prompt = SYSTEM + a + b + NEW
    plan = plan_reuse(cached, prompt, min_run=16)
    first, second = plan.chunks
    assert (first.source, first.target, first.length) == (74, 20, 20)  # the full copy of a
    assert (second.target, second.length) == (40, 20)
    assert second.source > first.source
    assert plan.reused == 60


def test_a_run_before_the_previous_one_is_not_used() -> None:
    a, b = list(range(300, 320)), list(range(400, 420))
    cached = SYSTEM + b + a
    prompt = SYSTEM + a + b
    plan = plan_reuse(cached, prompt, min_run=16)
    assert [(c.source, c.length) for c in plan.chunks] == [(40, 20)]


def test_capping_keeps_the_last_prompt_token_for_evaluation() -> None:
    cached = SYSTEM + BLOCK + EXCHANGE
    prompt = SYSTEM + EXCHANGE
    plan = plan_reuse(cached, prompt, min_run=16)
    assert plan.reused == len(prompt)
    capped = plan.capped(len(prompt) - 1)
    assert capped.reused == len(prompt) - 1
    assert capped.chunks == (Chunk(60, 20, 29),)
    assert ReusePlan(30).capped(10) == ReusePlan(10)
    assert plan_reuse(SYSTEM, SYSTEM, min_run=16).capped(19) == ReusePlan(19)
