"""The Telegram adapter (aiogram 3): updates by long polling or a webhook, and intake.

A message is answered in a private chat (``dms``); in a group or supergroup when it mentions
the bot by ``@username`` (or by a text mention), replies to one of its messages, is one of
Beseda's ``/commands``, or arrives in an ``all_messages_chats`` chat — and its author passes
the allow-lists and the per-user rate limit (adapters/intake.py). In a ``context_chats``
chat the other messages are submitted as ambient context. A forum topic is its own channel
key (``telegram:<chat id>/<topic id>``, its chat as parent).

Updates are handled, then confirmed to Telegram (the next ``getUpdates`` carries the offset
past them), so a stop or a crash in the middle of a batch loses nothing: the batch comes
again, and the history's once-only check on the platform message id refuses what was taken
in already (memory/migrations/versions/0007_platform_message_ids.py), so nothing is answered
twice either. Telegram keeps what arrived while Beseda was down for 24 hours; messages older
than ``[recovery] max_age_minutes`` from before the start are skipped. An update aiogram
cannot read is skipped with a log line, never retried forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from aiogram import Bot
from aiogram.client.session.middlewares.request_logging import RequestLogging
from aiogram.exceptions import (
    AiogramError,
    ClientDecodeError,
    TelegramAPIError,
    TelegramConflictError,
    TelegramNotFound,
    TelegramRetryAfter,
    TelegramUnauthorizedError,
)
from aiogram.types import Message, ReplyParameters, Update, User
from aiogram.utils.token import TokenValidationError
from aiohttp import web
from pydantic import ValidationError

from adapters import attachments
from adapters.intake import AllowLists, Facts, Outcome, decide, listed, rate_notice
from adapters.streaming import Clock, EditedReply, Sleep
from adapters.telegram import commands, messages
from adapters.telegram.markup import TELEGRAM_LIMIT, split_for_telegram
from adapters.telegram.reply import Origin, TelegramSurface
from adapters.telegram.session import DownloadError, TokenSafeSession
from agent.config import TelegramConfig
from agent.events import Inbound
from agent.ops.server import Endpoint
from agent.ports import ReplyTarget
from agent.runtime.limits import per_window
from memory.text import loads_valid

log = logging.getLogger(__name__)

Submit = Callable[[Inbound, ReplyTarget], Awaitable[object]]
Now = Callable[[], datetime]
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"  # noqa: S105 (a header's name)
ALLOWED_UPDATES = ["message"]
REMEMBERED = 2000


class _Lru(OrderedDict[Any, Any]):
    def remember(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > REMEMBERED:
            self.popitem(last=False)


class _Session:
    """One run's Bot API session. Replies still being rendered when the run ends (after a
    stop, or a crash the supervisor restarts Telegram after) finish through it; it is closed
    once the run has ended and the last of them is done. Counted per run: a restarted run
    has a session of its own, and the old one is still closed."""

    def __init__(self, bot: Bot) -> None:
        self.bot = bot
        self._replies = 0
        self._ended = False

    def reply(self) -> Callable[[], Awaitable[None]]:
        """A reply starts using the session; call the result when it is done."""
        self._replies += 1
        return self._reply_done

    async def _reply_done(self) -> None:
        self._replies -= 1
        await self._close_when_unused()

    async def end(self) -> None:
        self._ended = True
        await self._close_when_unused()

    async def _close_when_unused(self) -> None:
        if self._ended and not self._replies:
            await self.bot.session.close()


class TelegramAdapter:
    def __init__(
        self,
        config: TelegramConfig,
        token: str,
        *,
        max_age: timedelta = timedelta(minutes=30),
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        now: Now = lambda: datetime.now(UTC),
        language: str = "auto",
    ) -> None:
        self.config = config
        self._token = token
        # [chat] language: notices the adapter writes itself, when the message does not tell.
        self.language = language
        self._max_age = max_age
        self._clock = clock
        self._sleep = sleep
        self._now = now
        self._limiter = per_window(config.rate_limit_messages, config.rate_limit_seconds, clock)
        self._allow = AllowLists.of(
            channels=config.chats, users=config.users, admin_users=config.admin_users
        )
        self._origins = _Lru()  # message key -> Origin
        self._seen = _Lru()  # (chat id, message id) -> Message: deeper reply chains
        self._submit: Submit | None = None
        self._documents: attachments.DocumentsHook | None = None
        self._lanes = attachments.Lanes()  # a chat whose document is being indexed waits for it
        self._drafts = config.drafts
        self._secret = ""  # the webhook's, new at every start
        self._started = now()
        self._stopping = asyncio.Event()
        self._ready = asyncio.Event()  # connected once, or stopping (reopen waits on it)
        self._connected = False
        self._session: _Session | None = None  # the current run's
        self.me: User | None = None
        # Why Telegram stopped by itself (a rejected token); None while fine.
        self.failure: str | None = None

    @property
    def name(self) -> str:
        return "telegram"

    @property
    def bot(self) -> Bot | None:
        """The current run's Bot API client."""
        return self._session.bot if self._session is not None else None

    @property
    def connected(self) -> bool:
        return self._connected

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self, submit: Submit) -> None:
        self._submit = submit
        self._started = self._now()
        try:
            bot = Bot(self._token, session=TokenSafeSession(self.config.api_url, self._token))
        except TokenValidationError:
            self._fail("the Telegram token is malformed: check TELEGRAM_TOKEN")
            return
        if logging.getLogger("aiogram").isEnabledFor(logging.DEBUG):
            bot.session.middleware(RequestLogging())  # one line per request: method, bot id
        session = self._session = _Session(bot)
        serving = asyncio.create_task(self._serve(bot), name="telegram:updates")
        stopping = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if serving.done() and not serving.cancelled() and (error := serving.exception()):
                raise error  # the supervisor logs it and runs Telegram again
        finally:
            for task in (serving, stopping):
                task.cancel()
            await asyncio.gather(serving, stopping, return_exceptions=True)
            # Messages behind a document's indexing still reply through this session.
            await self._lanes.finish(attachments.STOP_GRACE_SECONDS)
            self._connected = False
            self._ready.set()
            # Replies still being rendered (the core drains its queues after stop) keep the
            # session open; the last one closes it.
            await session.end()

    async def stop(self) -> None:
        self._stopping.set()
        self._ready.set()  # a recovery waiting for the connection gives up
        # Messages behind a document's indexing are taken in before the core closes.
        await self._lanes.finish(attachments.STOP_GRACE_SECONDS)

    def _fail(self, failure: str) -> None:
        self.failure = failure
        log.error("%s; Telegram is off", failure)
        self._ready.set()

    def _backoff(self, failures: int) -> float:
        """0.5 s, 1 s, 2 s, … up to reconnect_max_seconds."""
        return float(min(self.config.reconnect_max_seconds, 0.5 * 2 ** min(failures - 1, 30)))

    async def _serve(self, bot: Bot) -> None:
        failures = 0
        while self.me is None:
            try:
                self.me = await bot.get_me()
            except (TelegramUnauthorizedError, TelegramNotFound):
                self._fail("Telegram rejected the bot token: check TELEGRAM_TOKEN")
                return
            except TelegramAPIError as exc:  # unreachable, restarting, 429
                failures += 1
                log.warning("telegram: cannot reach the Bot API (%s)", exc)
                await self._sleep(self._retry_delay(exc, failures))
        self._connected = True
        self._ready.set()
        await self._register_commands(bot)
        if self.config.webhook_url:
            await self._use_webhook(bot)
        else:
            await self._poll(bot)

    def _retry_delay(self, exc: Exception, failures: int) -> float:
        if isinstance(exc, TelegramRetryAfter):
            return float(exc.retry_after)
        return self._backoff(failures)

    async def _register_commands(self, bot: Bot) -> None:
        if not self.config.commands:
            return
        for language, listed_commands in commands.command_lists().items():
            try:
                await bot.set_my_commands(listed_commands, language_code=language)
            except TelegramAPIError as exc:
                log.warning("telegram: could not register the commands (%s): %s", language, exc)
                return

    async def _poll(self, bot: Bot) -> None:
        offset: int | None = None
        failures = 0
        webhook_cleared = False
        while True:
            try:
                if not webhook_cleared:  # getUpdates is refused while a webhook is set
                    await bot.delete_webhook(drop_pending_updates=False)
                    webhook_cleared = True
                # The offset confirms the batch handled before: not earlier, or a stop or a
                # crash while handling it would lose the rest.
                updates, last = await self._get_updates(bot, offset)
            except TelegramUnauthorizedError:
                self._fail("Telegram rejected the bot token: check TELEGRAM_TOKEN")
                return
            except (AiogramError, ValidationError) as exc:  # incl. an answer that is no JSON
                failures += 1
                self._connected = False
                if isinstance(exc, TelegramConflictError):
                    # Another process polls with this token, or a webhook was set again.
                    webhook_cleared = False
                log.warning("telegram: getUpdates failed (%s); retrying", _brief(exc))
                await self._sleep(self._retry_delay(exc, failures))
                continue
            if failures:
                log.warning("telegram: the Bot API is reachable again; resuming")
            failures, self._connected = 0, True
            for update in updates:
                await self.handle(update)
            if self._stopping.is_set():
                return  # unconfirmed: what was not taken in comes again at the next start
            if last is not None:
                offset = last + 1

    async def _get_updates(self, bot: Bot, offset: int | None) -> tuple[list[Update], int | None]:
        """The next batch and the last update id in it (of a readable update or not)."""
        try:
            updates = await bot.get_updates(
                offset=offset,
                timeout=self.config.poll_timeout,
                allowed_updates=ALLOWED_UPDATES,
                request_timeout=self.config.poll_timeout + 15,
            )
        except ClientDecodeError as exc:
            # One update aiogram cannot read (malformed, or newer than aiogram) fails the
            # whole batch, and would fail it again at every retry: read them one by one.
            return _readable(exc, bot)
        return updates, updates[-1].update_id if updates else None

    async def _use_webhook(self, bot: Bot) -> None:
        self._secret = secrets.token_urlsafe(32)
        failures = 0
        while True:
            try:
                await bot.set_webhook(
                    self.config.webhook_url,
                    secret_token=self._secret,
                    allowed_updates=ALLOWED_UPDATES,
                    drop_pending_updates=False,  # what arrived while down is still wanted
                )
                break
            except TelegramAPIError as exc:
                failures += 1
                log.warning("telegram: could not set the webhook (%s); retrying", exc)
                await self._sleep(self._retry_delay(exc, failures))
        await self._stopping.wait()

    def endpoints(self) -> Sequence[Endpoint]:
        """The webhook's path on the operations server ([metrics] host and port)."""
        if not self.config.webhook_url:
            return []
        path = urlsplit(self.config.webhook_url).path or "/"
        return [Endpoint("POST", path, self._on_webhook)]

    async def _on_webhook(self, request: web.Request) -> web.Response:
        bot = self.bot
        if bot is None or not self._secret or self._stopping.is_set():
            return web.Response(status=503)  # Telegram delivers it again later
        given = request.headers.get(SECRET_HEADER, "")
        if not hmac.compare_digest(given.encode(), self._secret.encode()):
            log.warning("telegram: refused a webhook call without the secret token")
            return web.Response(status=401)
        try:
            update = Update.model_validate(
                await request.json(loads=loads_valid), context={"bot": bot}
            )
        except (ValueError, ValidationError):
            log.warning("telegram: skipped a malformed update from the webhook")
            return web.Response(status=400)
        await self.handle(update)
        return web.Response()

    # -- intake ------------------------------------------------------------------------------

    async def handle(self, update: Update) -> None:
        if update.message is None:
            return
        try:
            await self._on_message(update.message)
        except Exception:  # one bad update never takes the bot down
            log.exception("could not handle a message in telegram:%s", update.message.chat.id)

    async def _on_message(self, message: Message) -> None:
        me, user = self.me, message.from_user
        if self._submit is None or me is None or self._stopping.is_set():
            return
        self._seen.remember((message.chat.id, message.message_id), message)
        if user is None:  # a channel post, or an anonymous group admin
            return
        where = messages.channel_of(message)[0]
        if message.date < self._started and self._now() - message.date > self._max_age:
            log.info("telegram: skipped a message in %s from before the start: too old", where)
            return
        raw = message.text or message.caption or ""
        entities = message.entities or message.caption_entities
        parsed = commands.parse(raw, entities, me.username or "")
        text = messages.strip_mention(parsed.text, me.username)
        chat_id, direct = str(message.chat.id), message.chat.type == "private"
        replied = messages.replied(message)
        facts = Facts(
            author_id=str(user.id),
            own=user.id == me.id,
            bot=user.is_bot,
            direct=direct,
            dms_enabled=self.config.dms,
            allowed=self._allow.admits(
                str(user.id), server=None if direct else chat_id, channels={chat_id}
            ),
            admin=self._allow.is_admin(str(user.id)),
            mention=messages.mentioned(raw, entities or [], me),
            reply=replied is not None and replied.from_user is not None
            and replied.from_user.id == me.id,
            command=parsed.known,
            all_messages=listed(self.config.all_messages_chats, chat_id) and not parsed.elsewhere,
            context=listed(self.config.context_chats, chat_id),
            empty=not text and message.document is None,
        )  # fmt: skip
        decision = decide(facts, self._limiter.check)
        if decision.outcome is Outcome.IGNORE:
            log.debug("ignored user %s in %s: %s", user.id, where, decision.reason)
            return
        if decision.outcome is Outcome.LIMITED:
            if decision.notice:
                await self._say(message, rate_notice(text, self.language))
            log.debug("rate-limited user %s in %s", user.id, where)
            return
        ambient = decision.outcome is Outcome.AMBIENT
        document = not ambient and message.document and self.config.attachments
        if (document and self._documents) or self._lanes.busy(where):
            # Indexing takes seconds to minutes: the updates of other chats go on meanwhile.
            self._lanes.add(where, lambda: self._take(message, where, text, ambient, facts, user))
            return
        await self._take(message, where, text, ambient, facts, user)

    async def _take(  # noqa: PLR0917 - the intake decision's results, handed on
        self, message: Message, where: str, text: str, ambient: bool, facts: Facts, user: User
    ) -> None:
        """Index the message's document, if any, and submit the message to the core."""
        indexed = False
        if not ambient and message.document and self.config.attachments and self._documents:
            indexed = await self._index_document(message, where, text, user)
        if not text and (ambient or indexed):
            return  # only a document: its confirmation was the answer
        me = self.me
        assert me is not None
        assert self._submit is not None
        _, parent = messages.channel_of(message)
        direct = message.chat.type == "private"
        replied = messages.replied(message)
        # An empty mention, or only a photo, goes on: the core stores it and tells the person
        # there is nothing to answer.
        if not ambient and replied is not None and not facts.reply:
            quoted = await messages.quotes(message, replied, me, self._seen)
            text = "\n".join([*quoted, text])
        inbound = Inbound(
            platform="telegram",
            channel_key=where,
            author_id=str(user.id),
            author_name=messages.author_name(user),
            text=text,
            message_id=str(message.message_id),
            reply_to=str(replied.message_id) if replied is not None else None,
            thread_id=str(message.message_thread_id) if parent else None,
            parent_key=parent,
            is_direct=direct,
            is_admin=facts.admin,
            attachments=messages.attachments(message),
            ambient=ambient,
            locale=user.language_code,
            timestamp=message.date,
        )
        self._remember(where, message)
        await self._submit(inbound, self)

    async def _say(self, message: Message, text: str) -> None:
        """A short notice replying to ``message`` (a failure is only logged)."""
        bot = self.bot
        assert bot is not None
        try:
            await bot.send_message(
                message.chat.id,
                text,
                message_thread_id=message.message_thread_id if message.is_topic_message else None,
                reply_parameters=ReplyParameters(
                    message_id=message.message_id, allow_sending_without_reply=True
                ),
            )
        except TelegramAPIError as exc:
            log.warning("telegram: could not send a notice in %s: %s", message.chat.id, exc)

    def use_documents(self, hook: attachments.DocumentsHook) -> None:
        """Where documents go (set by the app when the documents pipeline is on)."""
        self._documents = hook

    async def _index_document(self, message: Message, where: str, text: str, user: User) -> bool:
        """Index the message's document; whether it was one (and was answered)."""
        hook, bot, document = self._documents, self.bot, message.document
        assert hook is not None
        assert bot is not None
        assert document is not None
        name = document.file_name or "document"
        if not attachments.accepts(name):
            return False
        lang = attachments.notice_language(text, name, self.language, user.language_code)
        if (document.file_size or 0) > self.config.attachment_max_bytes:
            await self._say(
                message, attachments.too_large(name, self.config.attachment_max_bytes, lang)
            )
            return True
        try:
            file = await bot.get_file(document.file_id)
            if file.file_path is None:
                raise DownloadError("the Bot API gave no file path")
            data = await bot.download_file(file.file_path)
            assert data is not None
            notice = await hook(where, name, data.read(), lang)
        except (TelegramAPIError, DownloadError) as exc:
            log.warning("telegram: could not fetch %s in %s: %s", name, where, exc)
            notice = attachments.not_indexed(name, lang)
        except Exception:
            log.exception("telegram: could not index %s in %s", name, where)
            notice = attachments.not_indexed(name, lang)
        await self._say(message, notice)
        return True

    def _remember(self, where: str, message: Message) -> None:
        self._origins.remember(
            (where, str(message.message_id)),
            Origin(
                chat_id=message.chat.id,
                message_id=message.message_id,
                thread_id=message.message_thread_id if message.is_topic_message else None,
                direct=message.chat.type == "private",
            ),
        )

    # -- replies -----------------------------------------------------------------------------

    async def open_reply(self, inbound: Inbound) -> EditedReply[int]:
        origin = self._origins.get((inbound.channel_key, inbound.message_id or ""))
        session = self._session
        if origin is None or session is None:
            raise LookupError(f"no Telegram message to answer for {inbound.message_id}")
        bot = session.bot
        surface = TelegramSurface(
            bot,
            origin,
            drafts=self._drafts and origin.direct,
            drafts_refused=self._no_drafts,
        )
        interval = self.config.edit_interval if origin.direct else self.config.group_edit_interval
        return EditedReply(
            surface,
            clock=self._clock,
            sleep=self._sleep,
            edit_interval=interval,
            limit=TELEGRAM_LIMIT,
            split=split_for_telegram,
            on_done=session.reply(),
        )

    def _no_drafts(self) -> None:
        self._drafts = False

    # -- recovery ----------------------------------------------------------------------------

    async def reopen(self, channel_key: str, platform_message_id: str | None) -> ReplyTarget | None:
        """A message stored before a restart: the answer replies to it by id (the Bot API
        cannot read it back; if it was deleted, the answer is posted without the reply)."""
        if not channel_key.startswith("telegram:") or not (platform_message_id or "").isdigit():
            return None
        chat, _, topic = channel_key.removeprefix("telegram:").partition("/")
        with contextlib.suppress(ValueError):
            chat_id, thread_id = int(chat), int(topic) if topic else None
            await self._ready.wait()
            if not self._connected or self._stopping.is_set():
                return None
            self._origins.remember(
                (channel_key, platform_message_id),
                # Private chats have the user's (positive) id; groups negative ones.
                Origin(chat_id, int(platform_message_id or 0), thread_id, direct=chat_id > 0),
            )
            return self
        return None


def _readable(error: ClientDecodeError, bot: Bot) -> tuple[list[Update], int | None]:
    """The updates of a batch aiogram refused as a whole, without the ones it cannot read
    (each skipped with a log line). An answer that is no batch at all raises ``error``."""
    data = error.data
    batch = data.get("result") if isinstance(data, dict) and data.get("ok") else None
    if not isinstance(batch, list):
        raise error
    updates: list[Update] = []
    last: int | None = None
    for raw in batch:
        update_id = raw.get("update_id") if isinstance(raw, dict) else None
        if isinstance(update_id, int):
            last = update_id if last is None else max(last, update_id)
        try:
            updates.append(Update.model_validate(raw, context={"bot": bot}))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3]
            )
            log.warning("telegram: skipped update %s that cannot be read (%s)", update_id, problems)
    if last is None:
        raise error  # nothing to confirm past: try again
    return updates, last


def _brief(error: Exception) -> str:
    """An error for a log line: a decode error without the whole answer it could not read."""
    if isinstance(error, ClientDecodeError):
        return f"{error.message}: {type(error.original).__name__}: {error.original}"
    return str(error)
