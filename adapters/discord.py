"""The Discord adapter (discord.py 2.x): which messages to answer, and slash commands.

A message is answered when it mentions the bot, replies to one of its messages, is a
direct message (if enabled), is a ``!`` command, or arrives in an "all messages" channel —
and its author passes the allow-lists and the per-user rate limit (adapters/intake.py).
In a ``context_channels`` channel the other messages are submitted as ambient context;
everything else is ignored silently (logged at debug). A thread is its own channel key.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import discord
from discord import app_commands

from adapters import attachments, discord_json
from adapters.credentials import platform_secret
from adapters.discord_catchup import CatchUp
from adapters.discord_reply import Editable, discord_reply
from adapters.intake import AllowLists, Facts, Outcome, decide, listed, rate_notice
from adapters.quotes import quote, reply_chain
from adapters.streaming import Clock, EditedReply, Sleep
from agent.config import Config, DiscordConfig
from agent.events import Attachment, Inbound
from agent.i18n import Text, choose, ours
from agent.i18n import catalog as texts
from agent.ports import Ledger, ReplyTarget
from agent.runtime import chat_commands
from agent.runtime.limits import Verdict, per_window

log = logging.getLogger(__name__)

Submit = Callable[[Inbound, ReplyTarget], Awaitable[object]]
NOT_ALLOWED = texts.NOT_ALLOWED.en
# Discord's longest slash-command (and option) description.
DESCRIPTION_LIMIT = 100
ORIGINS_KEPT = 1000


def strip_mention(text: str, bot_id: int, role_ids: Iterable[int] = ()) -> str:
    """The text without the bot's mention (or a mention of the role Discord gave it)."""
    for role_id in role_ids:
        text = text.replace(f"<@&{role_id}>", "")
    return re.sub(rf"<@!?{bot_id}>", "", text).strip()


def _inbound(
    message: discord.Message, where: str, text: str, *, admin: bool, ambient: bool
) -> Inbound:
    reference = message.reference
    channel = message.channel
    return Inbound(
        platform="discord",
        channel_key=where,
        author_id=str(message.author.id),
        author_name=message.author.display_name,
        text=text,
        message_id=str(message.id),
        reply_to=str(reference.message_id) if reference and reference.message_id else None,
        thread_id=str(channel.id) if isinstance(channel, discord.Thread) else None,
        parent_key=_parent_key(channel),
        server_id=str(message.guild.id) if message.guild is not None else None,
        is_direct=message.guild is None,
        is_admin=admin,
        attachments=tuple(
            Attachment(a.filename, a.content_type or "", a.size, a.url) for a in message.attachments
        ),
        ambient=ambient,
        timestamp=message.created_at,
    )


def _unlimited(_user: str) -> Verdict:
    return "ok"


def _quote(message: discord.Message) -> str:
    return quote(message.author.display_name, message.content) if message.content else ""


def _parent_key(channel: object) -> str | None:
    """A thread's parent channel key: threads inherit the channel's persona."""
    if isinstance(channel, discord.Thread) and channel.parent_id is not None:
        return f"discord:{channel.parent_id}"
    return None


def _guarded(event: str, parse: Callable[[Any], None]) -> Callable[[Any], None]:
    def guarded(data: Any) -> None:
        try:
            parse(data)
        except Exception:
            log.exception("skipped a malformed %s event from the gateway", event)

    return guarded


def _localised(text: Text) -> app_commands.locale_str:
    """A slash-command text in English, with its Russian for :class:`_Russian`."""
    return app_commands.locale_str(text.en[:DESCRIPTION_LIMIT], text=text)


class _Russian(app_commands.Translator):
    """Fills ``description_localizations`` (Discord's ``ru`` locale) from the catalog."""

    async def translate(
        self,
        string: app_commands.locale_str,
        locale: discord.Locale,
        context: app_commands.TranslationContextTypes,
    ) -> str | None:
        text = string.extras.get("text")
        if locale is not discord.Locale.russian or not isinstance(text, Text):
            return None
        return text.ru[:DESCRIPTION_LIMIT]


class _Client(discord.Client):
    def __init__(self, adapter: DiscordAdapter, **options: Any) -> None:
        super().__init__(**options)
        self.adapter = adapter
        self.tree = app_commands.CommandTree(self)
        # discord.py lets an exception in a gateway event parser (a malformed or unexpected
        # payload) escape the connection loop and end the client; skip that event instead.
        parsers: dict[str, Callable[[Any], None]] = self._connection.parsers
        for event, parse in parsers.items():
            parsers[event] = _guarded(event, parse)

    async def setup_hook(self) -> None:
        await self.adapter.setup(self)

    async def on_message(self, message: discord.Message) -> None:
        await self.adapter.on_message(message)

    async def on_ready(self) -> None:  # after every IDENTIFY: a new session, nothing replayed
        self.adapter.ready.set()
        self.adapter.catch_up.start(self)


class DiscordAdapter:
    def __init__(
        self,
        config: DiscordConfig,
        token: str,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        client_options: dict[str, Any] | None = None,
        language: str = "auto",
    ) -> None:
        self.config = config
        self._token = token
        # [chat] language: notices the adapter writes itself, when the message does not tell.
        self.language = language
        self._clock = clock
        self._sleep = sleep
        self._options = client_options or {}
        self._limiter = per_window(config.rate_limit_messages, config.rate_limit_seconds, clock)
        self._allow = AllowLists.of(
            servers=config.guilds,
            channels=config.channels,
            users=config.users,
            roles=config.roles,
            admin_users=config.admin_users,
            admin_roles=config.admin_roles,
        )
        self._origins: OrderedDict[str, discord.Message | discord.Interaction] = OrderedDict()
        self._submit: Submit | None = None
        self._documents: attachments.DocumentsHook | None = None
        self._lanes = attachments.Lanes()  # a channel whose document is being indexed waits for it
        self._stopped = False
        self.client: _Client | None = None
        # Why the platform stopped by itself (bad token, refused intent); None while fine.
        self.failure: str | None = None
        # Set once the gateway is ready, or when stopping (recovery waits on it).
        self.ready = asyncio.Event()
        # Messages written while the bot was away, answered on every new session.
        self.catch_up = CatchUp(self._replay)

    @property
    def name(self) -> str:
        return "discord"

    @property
    def connected(self) -> bool:
        """The gateway socket is open (False before login and while reconnecting): /healthz."""
        client = self.client
        return bool(client and not client.is_closed() and client.ws and client.ws.open)

    def _intents(self) -> discord.Intents:
        intents = discord.Intents.none()
        intents.guilds = True
        intents.guild_messages = True
        intents.dm_messages = True
        intents.message_content = True  # privileged: enable it in the developer portal
        return intents

    async def run(self, submit: Submit) -> None:
        self._submit = submit
        discord_json.install()  # a payload orjson refuses must not end the connection
        # Nothing the bot sends pings anyone: not @everyone/@here, roles or users, even when
        # the model repeats a flood of mentions from a message.
        options = {"allowed_mentions": discord.AllowedMentions.none(), **self._options}
        client = _Client(self, intents=self._intents(), **options)
        self.client = client
        try:
            # Logs in, connects, and reconnects (resuming the session) until closed.
            await client.start(self._token, reconnect=True)
        except discord.LoginFailure:
            # Not worth taking the other platforms down: say what to fix and stop Discord.
            self.failure = "Discord rejected the bot token: check DISCORD_TOKEN"
            log.error("%s; Discord is off", self.failure)
        except discord.PrivilegedIntentsRequired:
            self.failure = (
                "Discord refused the Message Content intent: enable it for the bot in the "
                "developer portal (Bot → Privileged Gateway Intents)"
            )
            log.error("%s; Discord is off", self.failure)
        finally:
            if not client.is_closed():
                await client.close()

    async def stop(self) -> None:
        self._stopped = True
        self.ready.set()  # a recovery waiting for the connection gives up now
        await self.catch_up.cancel()
        # Messages behind a document's indexing are taken in before the core closes.
        await self._lanes.finish(attachments.STOP_GRACE_SECONDS)
        if self.client is not None:
            await self.client.close()

    async def setup(self, client: _Client) -> None:
        if not self.config.slash_commands:
            return
        # Russian descriptions for people whose Discord is in Russian; the names stay the
        # ! commands' names, which work as messages in every language.
        await client.tree.set_translator(_Russian())
        for command in chat_commands.COMMANDS.values():
            client.tree.add_command(self._slash_command(command))
        try:
            synced = await client.tree.sync()
            log.info("synced %d slash commands", len(synced))
        except Exception as exc:  # e.g. no applications.commands scope, an odd answer
            # A nicety: never worth the bot. The ! commands work as messages regardless.
            log.warning(
                "could not sync slash commands (%s: %s); running without them",
                type(exc).__name__, exc,
            )  # fmt: skip

    def _slash_command(
        self, command: chat_commands.Command
    ) -> app_commands.Command[Any, ..., None]:
        name = command.name

        async def without_args(interaction: discord.Interaction) -> None:
            await self.on_slash(interaction, name, "")

        async def with_args(interaction: discord.Interaction, text: str = "") -> None:
            await self.on_slash(interaction, name, text)

        if command.takes_args:
            with_args = app_commands.describe(text=_localised(texts.OPTION_TEXT))(with_args)
        return app_commands.Command(
            name=name,
            description=_localised(command.help),
            callback=with_args if command.takes_args else without_args,
        )

    # -- intake ------------------------------------------------------------------------------

    async def on_message(self, message: discord.Message) -> None:
        await self.catch_up.wait()  # missed messages first: each channel in order
        try:
            await self._on_message(message)
        except Exception:  # one bad event never takes the bot down
            log.exception("could not handle a message in discord:%s", message.channel.id)

    async def _replay(self, message: discord.Message) -> None:
        """A message missed while away (adapters/discord_catchup.py)."""
        try:
            await self._on_message(message, replay=True)
        except Exception:
            log.exception("could not handle a missed message in discord:%s", message.channel.id)

    def use_ledger(self, ledger: Ledger) -> None:
        """Where the catch-up reads what is stored (set by the app)."""
        self.catch_up.ledger = ledger

    async def _on_message(self, message: discord.Message, *, replay: bool = False) -> None:
        client = self.client
        me = client.user if client is not None else None
        if self._stopped or self._submit is None or me is None:
            return
        author, channel = message.author, message.channel
        where = f"discord:{channel.id}"
        roles = {str(role.id) for role in getattr(author, "roles", ())}
        channel_ids = {str(channel.id)}
        if isinstance(channel, discord.Thread) and channel.parent_id is not None:
            channel_ids.add(str(channel.parent_id))
        bot_roles = [
            role.id
            for role in message.role_mentions
            if role.tags is not None and role.tags.bot_id == me.id
        ]
        text = strip_mention(message.content, me.id, bot_roles)
        replied = self._replied_message(message)
        facts = Facts(
            author_id=str(author.id),
            own=author.id == me.id,
            bot=author.bot and not self.config.answer_bots,
            direct=message.guild is None,
            dms_enabled=self.config.dms,
            allowed=self._allow.admits(
                str(author.id),
                roles=roles,
                server=str(message.guild.id) if message.guild else None,
                channels=channel_ids,
            ),
            admin=self._allow.is_admin(str(author.id), roles),
            # People often mention the bot's own role instead of the bot.
            mention=me in message.mentions or bool(bot_roles),
            reply=replied is not None and replied.author.id == me.id,
            command=chat_commands.parse(text) is not None,
            all_messages=listed(self.config.all_messages_channels, *channel_ids),
            context=listed(self.config.context_channels, *channel_ids),
            empty=not text and not message.attachments,
        )
        # Missed messages were written over a longer time: no per-user rate limit.
        decision = decide(facts, _unlimited if replay else self._limiter.check)
        if decision.outcome is Outcome.IGNORE:
            log.debug("ignored user %s in %s: %s", author.id, where, decision.reason)
            return
        if decision.outcome is Outcome.LIMITED:
            if decision.notice:
                notice = rate_notice(text, self.language)
                await message.reply(notice, mention_author=False)
            log.debug("rate-limited user %s in %s", author.id, where)
            return
        ambient = decision.outcome is Outcome.AMBIENT
        documents = not ambient and message.attachments and self.config.attachments
        if (documents and self._documents) or self._lanes.busy(where):
            # The channel's next messages wait for the documents (a question about one is
            # answered with it); other channels do not.
            self._lanes.add(
                where, lambda: self._take(message, where, text, ambient, facts, replied, me)
            )
            return
        await self._take(message, where, text, ambient, facts, replied, me)

    async def _take(  # noqa: PLR0917 - the intake decision's results, handed on
        self,
        message: discord.Message,
        where: str,
        text: str,
        ambient: bool,
        facts: Facts,
        replied: discord.Message | None,
        me: discord.ClientUser,
    ) -> None:
        """Index the message's documents, if any, and submit the message to the core."""
        assert self._submit is not None
        indexed = False
        if not ambient and message.attachments and self.config.attachments and self._documents:
            indexed = await self._index_attachments(message, where, text)
        if not text and (ambient or indexed):
            return  # only documents: their confirmation was the answer
        # An empty mention, or one with only an image, goes on: the core stores it and tells
        # the person there is nothing to answer.
        if not ambient and replied is not None and not facts.reply:
            # The reply chain up to the bot's own message (which is in the history already),
            # oldest first, quoted before the question.
            quotes = await reply_chain(
                replied, own=lambda m: m.author.id == me.id, quoted=_quote, parent=self._parent
            )
            text = "\n".join([*quotes, text])
        inbound = _inbound(message, where, text, admin=facts.admin, ambient=ambient)
        self._remember(str(message.id), message)
        await self._submit(inbound, self)

    def use_documents(self, hook: attachments.DocumentsHook) -> None:
        """Where attachments go (set by the app when the documents pipeline is on)."""
        self._documents = hook

    async def _index_attachments(self, message: discord.Message, where: str, text: str) -> bool:
        """Index the message's documents; whether it had any (each was answered)."""
        hook = self._documents
        assert hook is not None
        found = False
        for attachment in message.attachments:
            name = attachment.filename
            if not attachments.accepts(name):
                continue
            found = True
            lang = attachments.notice_language(text, name, self.language)
            if attachment.size > self.config.attachment_max_bytes:
                notice = attachments.too_large(name, self.config.attachment_max_bytes, lang)
            else:
                try:
                    notice = await hook(where, name, await attachment.read(), lang)
                except Exception:
                    log.exception("could not index %s in %s", name, where)
                    notice = attachments.not_indexed(name, lang)
            await message.reply(notice, mention_author=False)
        return found

    async def _parent(self, message: discord.Message) -> discord.Message | None:
        """The message ``message`` replies to; Discord sends only one level, so deeper ones
        are fetched (one REST call each)."""
        if (found := self._replied_message(message)) is not None:
            return found
        reference = message.reference
        if reference is None or reference.message_id is None:
            return None
        if reference.channel_id != message.channel.id:  # a reply across channels: not quoted
            return None
        try:
            return await message.channel.fetch_message(reference.message_id)
        except discord.HTTPException as exc:  # deleted, or no Read Message History permission
            log.debug(
                "reply chain stops at %s in %s: %s", reference.message_id, message.channel.id, exc
            )
            return None

    def _replied_message(self, message: discord.Message) -> discord.Message | None:
        reference = message.reference
        if reference is None:
            return None
        resolved = reference.resolved or reference.cached_message
        return resolved if isinstance(resolved, discord.Message) else None

    async def on_slash(self, interaction: discord.Interaction, name: str, args: str) -> None:
        try:
            await self._on_slash(interaction, name, args)
        except Exception:
            log.exception("could not handle /%s in discord:%s", name, interaction.channel_id)

    async def _on_slash(self, interaction: discord.Interaction, name: str, args: str) -> None:
        if self._stopped or self._submit is None or interaction.channel_id is None:
            return
        user = interaction.user
        roles = {str(role.id) for role in getattr(user, "roles", ())}
        channel_ids = {str(interaction.channel_id)}
        channel = interaction.channel
        if isinstance(channel, discord.Thread) and channel.parent_id is not None:
            channel_ids.add(str(channel.parent_id))
        is_direct = interaction.guild_id is None
        allowed = (self.config.dms or not is_direct) and self._allow.admits(
            str(user.id),
            roles=roles,
            server=str(interaction.guild_id) if interaction.guild_id is not None else None,
            channels=channel_ids,
        )
        if not allowed:
            log.debug("refused /%s from user %s: not in the allow-lists", name, user.id)
            # The person's Discord language, else the language of what they typed.
            lang = ours(str(interaction.locale.value)) or choose(None, [args], self.language)
            await interaction.response.send_message(texts.NOT_ALLOWED(lang), ephemeral=True)
            return
        await interaction.response.defer(thinking=True)
        inbound = Inbound(
            platform="discord",
            channel_key=f"discord:{interaction.channel_id}",
            author_id=str(user.id),
            author_name=user.display_name,
            text=f"{chat_commands.PREFIX}{name} {args}".strip(),
            message_id=f"interaction:{interaction.id}",
            thread_id=str(channel.id) if isinstance(channel, discord.Thread) else None,
            parent_key=_parent_key(channel),
            server_id=str(interaction.guild_id) if interaction.guild_id is not None else None,
            is_direct=is_direct,
            is_admin=self._allow.is_admin(str(user.id), roles),
            locale=str(interaction.locale.value),
            timestamp=interaction.created_at,
        )
        self._remember(f"interaction:{interaction.id}", interaction)
        await self._submit(inbound, self)

    def _remember(self, key: str, origin: discord.Message | discord.Interaction) -> None:
        self._origins[key] = origin
        while len(self._origins) > ORIGINS_KEPT:
            self._origins.popitem(last=False)

    # -- replies -----------------------------------------------------------------------------

    async def open_reply(self, inbound: Inbound) -> EditedReply[Editable]:
        origin = self._origins.get(inbound.message_id or "")
        if origin is None:
            raise LookupError(f"no Discord message to answer for {inbound.message_id}")
        return discord_reply(
            origin, clock=self._clock, sleep=self._sleep, edit_interval=self.config.edit_interval
        )

    # -- recovery ----------------------------------------------------------------------------

    async def reopen(self, channel_key: str, platform_message_id: str | None) -> ReplyTarget | None:
        """A message stored before a restart, fetched again so that the answer replies to it.

        None when it cannot be answered: a slash command (its interaction expired), a
        channel or message that is gone or hidden from the bot, or Discord is stopping.
        """
        if not channel_key.startswith("discord:") or not (platform_message_id or "").isdigit():
            return None
        await self.ready.wait()
        client = self.client
        if client is None or self._stopped:
            return None
        channel_id = int(channel_key.split(":", 1)[1])
        try:
            channel = client.get_channel(channel_id) or await client.fetch_channel(channel_id)
            if not isinstance(channel, discord.abc.Messageable):
                return None
            message = await channel.fetch_message(int(platform_message_id or 0))
        except (discord.NotFound, discord.Forbidden):
            return None
        self._remember(str(message.id), message)
        return self


def discord_token(config: Config) -> str:
    """``[discord] token`` (BESEDA_DISCORD__TOKEN), else DISCORD_TOKEN from env or .env."""
    return platform_secret(config, config.discord.token, "DISCORD_TOKEN")


def discord_adapter(config: Config) -> DiscordAdapter | None:
    """The registry's factory: a Discord adapter when a token is configured."""
    token = discord_token(config)
    if not token:
        return None
    return DiscordAdapter(config.discord, token, language=config.chat.language)
