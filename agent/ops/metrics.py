"""The Prometheus metrics of one running Beseda (served on /metrics, see agent/ops/server.py).

Every :class:`Metrics` has its own ``CollectorRegistry`` rather than prometheus-client's
global one, so several apps in one process (tests, benchmarks) never collide.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    Histogram,
    generate_latest,
)

from agent.runtime.supervisor import ADAPTER_STATES, Supervised

# Error kinds (label values of beseda_errors_total); each is documented in README, Operations.
SUBMIT_ERROR = "submit"  # the message could not be stored or queued
GENERATION_ERROR = "generation"  # the generator failed while answering
EMPTY_REPLY = "empty_reply"  # the model produced nothing
INTERNAL_ERROR = "internal"  # failed before generation (database, prompt building)
DELIVERY_ERROR = "delivery"  # the platform refused to show (part of) the reply
ERROR_KINDS = (SUBMIT_ERROR, GENERATION_ERROR, EMPTY_REPLY, INTERNAL_ERROR, DELIVERY_ERROR)

# Seconds from a message's arrival to the first token shown: the queue wait and the prompt
# evaluation, which on a CPU dominates (hence the long tail of buckets).
FIRST_TOKEN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120)
TOKENS_PER_SECOND_BUCKETS = (1, 2, 5, 10, 20, 40, 80, 160, 320, 640)


class Metrics:
    def __init__(self, queue_depth: Callable[[], int] | None = None) -> None:
        """``queue_depth`` reads the messages waiting in the core; without it, the gauge
        shows the messages accepted and not yet answered (counted by the observer)."""
        self.registry = CollectorRegistry(auto_describe=True)
        self.in_flight = 0
        r = self.registry
        self.messages_in = Counter(
            "beseda_messages_received", "Messages handed to the core, per adapter.",
            ["adapter"], registry=r,
        )  # fmt: skip
        self.messages_out = Counter(
            "beseda_replies", "Replies finished, per adapter and final status "
            "(done, failed, cancelled).", ["adapter", "status"], registry=r,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "beseda_queue_depth", "Messages waiting for their reply.", registry=r
        )
        depth = queue_depth or (lambda: self.in_flight)
        self.queue_depth.set_function(lambda: float(depth()))
        self.first_token = Histogram(
            "beseda_time_to_first_token_seconds",
            "From a message's arrival to the first token of its reply.",
            buckets=FIRST_TOKEN_BUCKETS, registry=r,
        )  # fmt: skip
        self.tokens_per_second = Histogram(
            "beseda_generation_tokens_per_second",
            "Generation speed of each reply after its first token.",
            buckets=TOKENS_PER_SECOND_BUCKETS, registry=r,
        )  # fmt: skip
        self.prompt_tokens = Counter(
            "beseda_prompt_tokens", "Prompt tokens of replies: evaluated by the model, or "
            "reused from its cache (the common prefix with the previous prompt), or shifted "
            "(cached runs that moved, moved into place).",
            ["kind"], registry=r,
        )  # fmt: skip
        self.completion_tokens = Counter(
            "beseda_completion_tokens", "Tokens generated for replies.", registry=r
        )
        self.errors = Counter("beseda_errors", "Failures, by kind.", ["kind"], registry=r)
        self.adapter_state = Enum(
            "beseda_adapter_state", "Each adapter's state: running, restarting (its run "
            "failed; waiting to run it again), stopped, failed (for good).",
            ["adapter"], states=list(ADAPTER_STATES), registry=r,
        )  # fmt: skip
        self.adapter_restarts = Counter(
            "beseda_adapter_restarts", "Adapters run again after an error, per adapter.",
            ["adapter"], registry=r,
        )  # fmt: skip
        self._restarts: dict[str, int] = {}
        for kind in ("evaluated", "reused", "shifted"):
            self.prompt_tokens.labels(kind)
        for kind in ERROR_KINDS:
            self.errors.labels(kind)

    def adapter_changed(self, entry: Supervised) -> None:
        """The supervisor's report: an adapter changed state or was restarted."""
        self.adapter_state.labels(entry.name).state(str(entry.state))
        restarts = self.adapter_restarts.labels(entry.name)
        if entry.restarts > self._restarts.get(entry.name, 0):
            restarts.inc(entry.restarts - self._restarts.get(entry.name, 0))
        self._restarts[entry.name] = entry.restarts

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)
