"""Command line: ``python -m agent [--config PATH] {run,chat,prompt,doctor,models,persona}``."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from adapters.console import ConsoleAdapter
from adapters.registry import configured_adapters
from agent.app import BACKGROUND_GRACE_SECONDS, App, settle_heap, share_the_interpreter
from agent.cli.doctor import run_doctor
from agent.cli.knowledge import run_eval, run_ingest, run_search
from agent.cli.models import run_models
from agent.cli.personas import run_persona
from agent.config import Config, ConfigError, config_path_from, load_config
from agent.events import Inbound, channel_key
from agent.generators.base import Generator, GeneratorError
from agent.generators.catalog import RUSSIAN_MODEL
from agent.generators.llama_cpp import LlamaCppGenerator
from agent.i18n import catalog as texts
from agent.ops.logs import setup_logging
from agent.ops.server import OpsServerError
from agent.ports import platform_failures
from agent.prompt.context import Prompt
from agent.prompt.personas import PersonaError
from agent.runtime.core import Reply
from memory.db import DatabaseError
from memory.embeddings import EmbedderError
from memory.instance import holder
from memory.records import Status
from memory.vectors import VectorStoreError
from personas.card import CardError

EXIT_CONFIG = 2
EXIT_FAILED = 1
# `chat` beside a running `run`: works, but the bot's caches do not see what it stores.
BESIDE_RUN = (
    "note: Beseda ({holder}) is serving this database; this exchange is stored, but that "
    "process may not show it in its prompts for this channel until it restarts"
)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        metavar="PATH",
        help="config file (default: $BESEDA_CONFIG or ./config.toml)",
    )
    parser = argparse.ArgumentParser(
        prog="python -m agent",
        description="Beseda: a self-hosted chat agent for Discord, Matrix and the console.",
        parents=[common],
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser(
        "run",
        parents=[common],
        help="start every configured platform; the console chat when none is configured",
    )
    chat = commands.add_parser("chat", parents=[common], help="answer one message and exit")
    chat.add_argument("--channel", default=None, help="channel key (default: [console] channel)")
    chat.add_argument("--stats", action="store_true", help="print token counters to stderr")
    chat.add_argument("message")
    prompt = commands.add_parser(
        "prompt", parents=[common], help="show exactly what the model would be given, no reply"
    )
    prompt.add_argument("--channel", default=None, help="channel key (default: [console] channel)")
    prompt.add_argument("--json", action="store_true", help="machine-readable output")
    prompt.add_argument("message")
    commands.add_parser(
        "doctor", parents=[common], help="check config, model and database; show what is missing"
    )
    ingest = commands.add_parser(
        "ingest", parents=[common], help="index the documents folder (changed files only)"
    )
    ingest.add_argument("path", nargs="?", default=None, help="default: [documents] path")
    ingest.add_argument(
        "--reindex", action="store_true", help="rebuild the index (after changing the embedder)"
    )
    search = commands.add_parser(
        "search", parents=[common], help="show the document chunks retrieved for a query"
    )
    search.add_argument("--channel", default=None, help="see what this channel may see")
    search.add_argument("--json", action="store_true", help="machine-readable output")
    search.add_argument(
        "--eval", metavar="QUESTIONS.json", default=None,
        help="run a questions file and print recall@1/3, MRR, cross-language recall",
    )  # fmt: skip
    search.add_argument("query", nargs="?", default=None)
    models = commands.add_parser(
        "models", parents=[common], help="download the configured model, or list local models"
    )
    models_actions = models.add_subparsers(dest="models_action", metavar="ACTION", required=True)
    pull = models_actions.add_parser(
        "pull",
        parents=[common],
        help="download what [model] needs (or catalog model NAME), without starting the bot",
    )
    pull.add_argument("model_name", nargs="?", default=None, metavar="NAME")
    listed = models_actions.add_parser(
        "list", parents=[common], help="local GGUF models: size, quantisation, context, template"
    )
    listed.add_argument(
        "--catalog", action="store_true", help="the models known by name ([model] name)"
    )
    persona = commands.add_parser(
        "persona", parents=[common], help="import SillyTavern cards, list and show personas"
    )
    persona_actions = persona.add_subparsers(dest="persona_action", metavar="ACTION", required=True)
    imported = persona_actions.add_parser(
        "import",
        parents=[common],
        help="convert a SillyTavern V2/V3 card (JSON or PNG) to [personas] folder/NAME.toml",
    )
    imported.add_argument("file")
    imported.add_argument("--name", default=None, help="file and persona name (default: card's)")
    imported.add_argument("--force", action="store_true", help="overwrite an existing card")
    persona_actions.add_parser(
        "list", parents=[common], help="every persona, where it comes from, skipped cards"
    )
    shown = persona_actions.add_parser(
        "show", parents=[common], help="a persona's card and the system prompt it gives"
    )
    shown.add_argument("name")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    path = config_path_from(getattr(args, "config", None))
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"beseda: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(config)
    if sys.stdin is not None and hasattr(sys.stdin, "reconfigure"):
        # Undecodable bytes from a pipe become U+FFFD instead of killing the reader.
        sys.stdin.reconfigure(errors="replace")
    commands: dict[str, Callable[[], Coroutine[Any, Any, int]]] = {
        "run": lambda: _run(config),
        "chat": lambda: _chat(config, args.channel, args.message, stats=args.stats),
        "prompt": lambda: _prompt(config, args.channel, args.message, as_json=args.json),
        "doctor": lambda: run_doctor(config, sys.stdout),
        "ingest": lambda: run_ingest(config, args.path, rebuild=args.reindex),
        "search": lambda: _search(config, args),
        "models": lambda: run_models(
            config,
            args.models_action,
            sys.stdout,
            name=getattr(args, "model_name", None),
            catalog=getattr(args, "catalog", False),
        ),
        "persona": lambda: _persona(config, args),
    }
    try:
        return asyncio.run(commands[args.command or "run"]())
    except (
        GeneratorError,
        DatabaseError,
        VectorStoreError,
        EmbedderError,
        CardError,
        OpsServerError,
    ) as exc:
        print(f"beseda: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except PersonaError as exc:  # a persona named in config.toml does not exist
        print(f"beseda: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130


async def _search(config: Config, args: argparse.Namespace) -> int:
    if (args.eval is None) == (args.query is None):
        print("beseda: search takes a QUERY or --eval QUESTIONS.json", file=sys.stderr)
        return EXIT_FAILED
    if args.eval is not None:
        return await run_eval(config, args.channel, args.eval)
    return await run_search(config, args.channel, args.query, as_json=args.json)


async def _persona(config: Config, args: argparse.Namespace) -> int:
    return run_persona(
        config,
        args.persona_action,
        sys.stdout,
        file=getattr(args, "file", None),
        name=getattr(args, "name", None),
        force=getattr(args, "force", False),
    )


def _console(
    config: Config, channel: str | None, *, interactive: bool, app: App | None = None
) -> ConsoleAdapter:
    return ConsoleAdapter(
        channel=channel or config.console.channel,
        user_name=config.console.user_name,
        assistant_name=config.persona.name,
        stdin=sys.stdin,
        stdout=sys.stdout,
        stderr=sys.stderr,
        interactive=interactive,
        speaker=app.core.window.speaker if app is not None else None,
        russian_hint=russian_hint(config),
    )


def russian_hint(config: Config) -> str | None:
    """What the console says once to someone writing Russian to the bundled model, which does
    not speak it; None when another model is configured."""
    model = config.model
    if model.backend != "llama_cpp" or model.path or model.hf_repo or model.name:
        return None
    command = f"python -m agent models pull {RUSSIAN_MODEL}"
    return texts.RUSSIAN_MODEL_HINT("ru", command=command, model=RUSSIAN_MODEL)


async def _run(config: Config) -> int:
    async with App.open(config, serving=True) as app:
        settle_heap()
        share_the_interpreter()
        console = lambda: _console(config, None, interactive=sys.stdin.isatty(), app=app)  # noqa: E731
        adapters = configured_adapters(config, console)
        await app.serve(adapters)
    supervisor = app.supervisor
    failures = supervisor.failures() if supervisor is not None else platform_failures(adapters)
    # Non-zero only when every adapter stopped for good: nothing was served; say why.
    if failures and len(failures) == len(adapters):
        for failure in failures:
            print(f"beseda: {failure}", file=sys.stderr)
        return EXIT_FAILED
    return 0


async def _chat(config: Config, channel: str | None, message: str, *, stats: bool) -> int:
    async with App.open(config) as app:
        if (who := await holder(app.db)) is not None:
            print(f"beseda: {BESIDE_RUN.format(holder=who)}", file=sys.stderr)
        console = _console(config, channel, interactive=False)
        reply: Reply = await (await app.core.submit(console.inbound(message), console))
        sys.stdout.flush()  # the answer is out; a summary it triggered may still be written
        await app.finish_background(BACKGROUND_GRACE_SECONDS)
    if stats and reply.stats is not None:
        s = reply.stats
        print(
            f"prompt_tokens={s.prompt_tokens} cached_tokens={s.cached_tokens} "
            f"shifted_tokens={s.shifted_tokens} evaluated_tokens={s.evaluated_tokens} "
            f"completion_tokens={s.completion_tokens}",
            file=sys.stderr,
        )
    return 0 if reply.status is Status.DONE else EXIT_FAILED


async def _reuse_against_previous(
    app: App, key: str, prompt: Prompt, asker: Inbound
) -> dict[str, int] | None:
    """What the local engine would take from its cache for ``prompt`` when the channel's
    sequence still holds the last answered message's prompt and reply (prefix and shifted
    runs, as the engine plans them); None for a server or a channel without a reply yet."""
    generator = app.generator
    if not isinstance(generator, LlamaCppGenerator):
        return None
    turns = await app.core.history.conversation(key, limit=50)
    reply = next(
        (t for t in reversed(turns) if t.role == "assistant" and t.in_reply_to_id and t.text),
        None,
    )
    asked = next((t for t in turns if reply is not None and t.id == reply.in_reply_to_id), None)
    if reply is None or asked is None:
        return None
    previous = await app.core.window.preview(key, asked.text, asker, before_id=asked.id)
    plan = generator.reuse_plan(previous.messages, reply.text, prompt.messages)
    total = generator.count_prompt_tokens(prompt.messages)
    return {
        "after_message": asked.id,
        "prefix_tokens": plan.prefix,
        "shifted_tokens": plan.shifted,
        "evaluated_tokens": total - plan.reused,
    }


async def _prompt(
    config: Config,
    channel: str | None,
    message: str,
    *,
    as_json: bool,
    generator: Generator | None = None,
) -> int:
    async with App.open(config, generator) as app:
        key = channel_key("console", channel or config.console.channel)
        asker = Inbound(
            platform=key.split(":", 1)[0],
            channel_key=key,
            author_id=config.console.user_name,
            author_name=config.console.user_name,
            text=message,
        )
        prompt = await app.core.prompt_for(key, message, asker)
        rendered = app.generator.render_prompt(prompt.messages)
        n_ctx = app.generator.n_ctx
        reuse = await _reuse_against_previous(app, key, prompt, asker)
    if as_json:
        payload = {
            "channel": key,
            "persona": prompt.persona,
            "model": app.generator.name,
            "tokens": prompt.tokens,
            "budget": prompt.budget,
            "n_ctx": n_ctx,
            "history_ids": list(prompt.history_ids),
            "new_message_cut": prompt.new_message_cut,
            "messages": [{"role": m.role, "content": m.content} for m in prompt.messages],
            "rendered": rendered,
            "reuse": reuse,
        }
        print(json.dumps(payload, ensure_ascii=False, indent=2))
    else:
        print(
            f"# {key}: persona {prompt.persona}, {prompt.tokens} prompt tokens of "
            f"{prompt.budget} allowed "
            f"(n_ctx {n_ctx}), {len(prompt.history_ids)} history messages",
            file=sys.stderr,
        )
        if reuse is not None:
            print(
                f"# after the reply to message {reuse['after_message']}: "
                f"{reuse['prefix_tokens']} tokens from the cache as the common prefix, "
                f"{reuse['shifted_tokens']} shifted into place, "
                f"{reuse['evaluated_tokens']} to evaluate",
                file=sys.stderr,
            )
        sys.stdout.write(rendered)
        if not rendered.endswith("\n"):
            sys.stdout.write("\n")
    return 0
