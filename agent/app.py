"""The one lifecycle owner: builds every component, runs the adapters, shuts down in order."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta

from adapters.attachments import channel_documents
from agent.config import Config, select_backend
from agent.generators import load_generator
from agent.generators.base import Generator
from agent.generators.catalog import with_named_model
from agent.ops.metrics import Metrics
from agent.ops.observe import Observer
from agent.ops.server import Health, OpsServer, ServesHttp, serve_operations
from agent.ports import PlatformAdapter
from agent.prompt.retrieval import Knowledge
from agent.runtime.core import Core
from agent.runtime.ledger import HistoryLedger
from agent.runtime.recovery import Pending, find_pending, resume
from agent.runtime.supervisor import Backoff, Supervisor
from agent.wiring import build_core, build_knowledge
from memory.db import Database
from memory.history import SqlHistoryStore
from memory.instance import serving_lock

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_SECONDS = 10.0
# After the last message of a pipe or a one-shot `chat`, pending summaries may still finish.
BACKGROUND_GRACE_SECONDS = 120.0


class App:
    def __init__(
        self,
        config: Config,
        db: Database,
        generator: Generator,
        core: Core,
        knowledge: Knowledge | None = None,
    ) -> None:
        self.config = config
        self.db = db
        self.generator = generator
        self.core = core
        self.knowledge = knowledge
        self._signals = 0
        # Core.queue_depth (the scheduler's count) when the core has it.
        self.metrics = Metrics(queue_depth=getattr(core, "queue_depth", None))
        self.observer = Observer(self.metrics)
        # The /healthz and /metrics endpoint while serving with [metrics] enabled.
        self.ops: OpsServer | None = None
        # How adapters are restarted after an error; the supervisor of the last serve().
        self.backoff = Backoff()
        self.supervisor: Supervisor | None = None

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls, config: Config, generator: Generator | None = None, *, serving: bool = False
    ) -> AsyncIterator[App]:
        """Open the database (migrating it), load the model, wire the core; on leaving, close
        everything in reverse order of creation, also when opening failed halfway.

        A ``generator`` given here is owned by the app from now on: it is closed with it.
        ``serving`` (``run``): hold the database's serving lock first, so that a second
        ``run`` on it refuses to start (memory/instance.py) before it loads a model.
        """
        # tabby_url/tabby_key pick the remote backend and its sampling defaults (temperature 0).
        config = with_named_model(select_backend(config))
        config.data_dir.mkdir(parents=True, exist_ok=True)
        async with contextlib.AsyncExitStack() as stack:
            db = Database(config.database_url)
            stack.push_async_callback(db.close)
            if serving:
                await stack.enter_async_context(serving_lock(db))
            if generator is not None:
                stack.push_async_callback(generator.aclose)
            await db.migrate()
            if generator is None:
                generator = await load_generator(config)
                stack.push_async_callback(generator.aclose)
            history = SqlHistoryStore(db)
            knowledge = await build_knowledge(config, history)
            retriever = knowledge.retriever if knowledge is not None else None
            core = build_core(config, history, generator, retriever=retriever)
            stack.push_async_callback(core.close, 0)
            yield cls(config, db, generator, core, knowledge)

    async def serve(self, adapters: Sequence[PlatformAdapter]) -> None:
        """Run until every adapter has finished for good or SIGINT/SIGTERM; then drain and
        return. ``self.supervisor`` tells afterwards how each adapter ended."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        main = asyncio.current_task()

        def on_signal() -> None:
            self._signals += 1
            if self._signals == 1:
                log.warning("stopping: finishing replies in progress (signal again to force)")
                stop.set()
            elif main is not None:
                main.cancel()

        self._attach_documents(adapters)
        # Settle what a crash left behind before any adapter takes new messages.
        max_age = timedelta(minutes=self.config.recovery.max_age_minutes)
        self._attach_ledger(adapters, max_age)
        pending = await find_pending(self.core.history, max_age)
        await self._warm()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        supervisor = self.supervisor = Supervisor(
            adapters,
            lambda adapter: self.observer.submit_for(adapter.name, self.core.submit),
            backoff=self.backoff,
            on_change=self.metrics.adapter_changed,
        )
        health = Health(adapters, self.generator, self.db, supervisor=supervisor)
        # Webhooks (Telegram's) are served by the same server as /metrics.
        endpoints = [e for a in adapters if isinstance(a, ServesHttp) for e in a.endpoints()]
        try:
            async with (
                serve_operations(self.config.metrics, self.metrics, health, endpoints) as self.ops,
                asyncio.TaskGroup() as group,
            ):
                # Supervised: an adapter that raises is restarted; nothing else notices.
                runs = [
                    group.create_task(supervisor.run(entry), name=f"adapter:{entry.name}")
                    for entry in supervisor.adapters
                ]
                group.create_task(self._stop_when(stop, runs))
                recovery = group.create_task(self._recover(pending, adapters))
                await stop.wait()
                await supervisor.stop()
                await recovery  # queued before the drain below, so answered within grace
                if self._signals == 0:
                    # The input ended (a pipe, /quit): finish the summaries it started.
                    await self.finish_background(BACKGROUND_GRACE_SECONDS)
                await self.core.close(SHUTDOWN_GRACE_SECONDS)
        finally:
            self.ops = None
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    async def _warm(self) -> None:
        """Channel states read ahead, memories read into memory: a channel's first reply
        after a start does not wait for them."""
        try:
            warmed = await self.core.history.warm()
        except Exception:  # only an optimisation: each state is read when first needed
            log.warning("could not read channel states ahead", exc_info=True)
        else:
            log.info("read ahead the state of %d channels", warmed)
        if self.knowledge is not None:
            await self.knowledge.memories.store.warm()  # logs its own failure
            await self.knowledge.retriever.warm()  # documents for hybrid search, likewise

    def _attach_documents(self, adapters: Sequence[PlatformAdapter]) -> None:
        """Adapters that accept attachments (Discord, Matrix, Telegram) index them into the
        channel's scope."""
        if self.knowledge is None:
            return
        hook = channel_documents(self.knowledge.documents, self.config.data_dir / "attachments")
        for adapter in adapters:
            use_documents = getattr(adapter, "use_documents", None)
            if callable(use_documents):
                use_documents(hook)

    def _attach_ledger(self, adapters: Sequence[PlatformAdapter], max_age: timedelta) -> None:
        """Adapters that catch up on missed messages (Discord) read the history for it."""
        ledger = HistoryLedger(self.core.history, max_age)
        for adapter in adapters:
            use_ledger = getattr(adapter, "use_ledger", None)
            if callable(use_ledger):
                use_ledger(ledger)

    async def _recover(self, pending: Pending, adapters: Sequence[PlatformAdapter]) -> None:
        try:
            await resume(self.core, pending, adapters)
        except Exception:  # e.g. the database went away: serve anyway, retry at next start
            log.exception("recovery failed; unanswered messages are retried at the next start")

    @staticmethod
    async def _stop_when(stop: asyncio.Event, runs: Sequence[asyncio.Task[None]]) -> None:
        await asyncio.wait(runs)
        stop.set()

    async def finish_background(self, grace: float) -> None:
        """Let queued background work (summaries) complete, for at most ``grace`` s."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.core.background.wait_quiet(), grace)


# Seconds a thread may keep the interpreter lock while another waits for it (Python's default
# is 0.005). See share_the_interpreter.
SWITCH_INTERVAL = 0.0005


def share_the_interpreter() -> None:
    """Let the event loop have the interpreter lock back sooner.

    Pure-Python work on a worker thread (chunking a document with the embedder's own
    tokenizer, for one) keeps the lock for Python's 5 ms switch interval each time, and the
    event loop, which needs it again after every await of a thread's result, serves every
    chat at that pace. bench/ingest_queries.py: a piece of work shaped like a message's
    handling took about 190 ms instead of 2 ms while a large text was chunked; with the
    lock handed over every 0.5 ms, about 20 ms, and the chunking took as long. Called by
    ``run``, like :func:`settle_heap`.
    """
    sys.setswitchinterval(SWITCH_INTERVAL)


def settle_heap() -> None:
    """Collect start-up garbage, then exclude what is left from future collections.

    What exists once a long-running process has started (the model, the vector store
    client, the embedder, the libraries) lives until it exits, yet each full collection
    walks all of it: with 10k memories that was a 60 ms pause in the middle of a reply
    (bench/load.py). ``gc.freeze`` moves it out of the collector's sight (Python docs).
    Called by ``run`` only: a short ``chat`` gains nothing, tests would pile up frozen
    objects.
    """
    gc.collect()
    gc.freeze()
