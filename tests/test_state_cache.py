from __future__ import annotations

import numpy as np

from agent.generators.state_cache import StateCache, common_prefix


def test_common_prefix() -> None:
    a = np.array([1, 2, 3, 4], dtype=np.intc)
    assert common_prefix(a, np.array([1, 2, 9], dtype=np.intc)) == 2
    assert common_prefix(a, np.array([1, 2], dtype=np.intc)) == 2
    assert common_prefix(a, np.array([], dtype=np.intc)) == 0


def test_best_returns_the_longest_shared_prefix_and_keeps_every_state() -> None:
    cache = StateCache(budget_bytes=1000)
    cache.put([1, 2, 3, 4], "a", 10)
    cache.put([1, 2, 7, 8], "b", 10)
    found = cache.best([1, 2, 7, 8, 9], better_than=0)
    assert found is not None
    assert (found[0].state, found[1]) == ("b", 4)
    # Loading "b" for one prompt must not cost "a" (or "b") its place: a channel whose
    # prompt merely shares the system prompt with another used to take that channel's state.
    assert len(cache) == 2
    assert cache.used_bytes == 20
    again = cache.best([1, 2, 3, 4, 5], better_than=2)
    assert again is not None
    assert again[0].state == "a"


def test_best_ignores_states_no_better_than_the_context() -> None:
    cache = StateCache(budget_bytes=1000)
    cache.put([1, 2, 3], "a", 10)
    assert cache.best([1, 2, 3, 4], better_than=3) is None
    assert len(cache) == 1


def test_a_state_used_recently_outlives_an_older_one() -> None:
    cache = StateCache(budget_bytes=25)
    cache.put([1], "a", 10)
    cache.put([2], "b", 10)
    assert cache.best([1], better_than=0) is not None  # "a" is now the most recent
    cache.put([3], "c", 10)
    assert cache.best([2], better_than=0) is None  # "b" went first
    assert cache.best([1], better_than=0) is not None


def test_least_recently_used_states_leave_first_and_budget_holds() -> None:
    cache = StateCache(budget_bytes=25)
    cache.put([1], "a", 10)
    cache.put([2], "b", 10)
    cache.put([3], "c", 10)
    assert cache.used_bytes <= 25
    assert cache.best([1], better_than=0) is None  # the oldest went
    assert cache.best([3], better_than=0) is not None


def test_a_state_larger_than_the_budget_is_not_kept() -> None:
    cache = StateCache(budget_bytes=5)
    assert not cache.put([1, 2], "huge", 6)
    assert len(cache) == 0
    assert cache.used_bytes == 0


def test_a_state_extended_by_a_newer_one_is_replaced() -> None:
    cache = StateCache(budget_bytes=100)
    cache.put([1, 2], "short", 10)
    cache.put([1, 2, 3], "longer", 10)
    assert len(cache) == 1
    assert cache.used_bytes == 10
