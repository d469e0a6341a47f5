"""The Matrix adapter (matrix-nio with end-to-end encryption): intake, invites, sync loop.

A message is answered when it mentions the bot (``m.mentions``, a pill or its display name),
replies to one of its messages, arrives in a direct (two-person) room, is a ``!`` command, or
arrives in an "all messages" room — and its room and author pass the allow-lists and the
per-user rate limit (adapters/intake.py). In a ``context_rooms`` room the other messages
are submitted as ambient context. A thread is its own channel key (``matrix:!room:server/$root``).

The sync token is saved before a batch's events are handled, so a restart resumes after the
last batch and never answers a message twice; on the very first start the backlog of joined
rooms is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeAlias

import aiohttp
from nio import (
    AsyncClient,
    AsyncClientConfig,
    InviteMemberEvent,
    JoinResponse,
    MatrixRoom,
    MegolmEvent,
    MemoryDownloadResponse,
    RoomEncryptedFile,
    RoomGetEventResponse,
    RoomMessageFile,
    RoomMessageText,
    RoomSendResponse,
    SyncResponse,
)
from nio.crypto import decrypt_attachment
from nio.exceptions import EncryptionError, LocalProtocolError, ProtocolError

from adapters import attachments
from adapters.intake import Facts, Outcome, decide, listed, rate_notice
from adapters.matrix_reply import (
    Content,
    MatrixReply,
    MatrixSendError,
    reply_relation,
    text_content,
)
from adapters.matrix_session import MatrixLoginError, Secrets, log_in, matrix_secrets
from adapters.quotes import quote, reply_chain
from adapters.streaming import Clock, Sleep
from agent.config import Config, MatrixConfig
from agent.events import Inbound
from agent.ports import ReplyTarget
from agent.runtime import chat_commands
from agent.runtime.limits import per_window

log = logging.getLogger(__name__)

Submit = Callable[[Inbound, ReplyTarget], Awaitable[object]]
SYNC_TIMEOUT_MS = 30_000
REMEMBERED = 2000
NETWORK_ERRORS = (aiohttp.ClientError, TimeoutError, OSError)
# A file's download may take this long (nio sets no timeout on downloads).
DOWNLOAD_SECONDS = 120.0
# What a person posts that the bot takes in: a text, or a file (encrypted or not).
Posted: TypeAlias = RoomMessageText | RoomMessageFile | RoomEncryptedFile


def server_of(user_or_room: str) -> str:
    return user_or_room.split(":", 1)[1] if ":" in user_or_room else ""


class _Lru(OrderedDict[str, Any]):
    def remember(self, key: str, value: Any = True) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > REMEMBERED:
            self.popitem(last=False)


class NioRoom:
    """A RoomSink over the nio client for one room."""

    def __init__(self, adapter: MatrixAdapter, room_id: str) -> None:
        self._adapter = adapter
        self._room_id = room_id

    @property
    def label(self) -> str:
        return f"matrix:{self._room_id}"

    async def send(self, content: Content) -> str:
        client = self._adapter.client
        try:
            reply = await client.room_send(
                self._room_id,
                "m.room.message",
                content,
                # A bot cannot verify devices interactively; it encrypts for every device.
                ignore_unverified_devices=True,
            )
        except (*NETWORK_ERRORS, ProtocolError) as exc:
            raise MatrixSendError("M_NETWORK", str(exc) or type(exc).__name__) from exc
        if not isinstance(reply, RoomSendResponse):
            raise MatrixSendError(reply.status_code or "", reply.message)
        self._adapter.own_events.remember(reply.event_id)
        return str(reply.event_id)

    async def redact(self, event_id: str) -> None:
        with contextlib.suppress(*NETWORK_ERRORS):
            await self._adapter.client.room_redact(self._room_id, event_id)

    async def typing(self, on: bool, timeout_ms: int) -> None:
        await self._adapter.client.room_typing(self._room_id, on, timeout=timeout_ms)


class MatrixAdapter:
    def __init__(
        self,
        config: MatrixConfig,
        secrets: Secrets,
        store: Path,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        language: str = "auto",
    ) -> None:
        self.config = config
        self._secrets = secrets
        # [chat] language: notices the adapter writes itself, when the message does not tell.
        self.language = language
        self._store = store
        self._clock = clock
        self._sleep = sleep
        self._limiter = per_window(config.rate_limit_messages, config.rate_limit_seconds, clock)
        self._origins = _Lru()  # event id -> (room id, thread root, sender)
        self.own_events = _Lru()  # ids of the bot's messages: replies to them are answered
        self._invites = _Lru()
        self._submit: Submit | None = None
        self._documents: attachments.DocumentsHook | None = None
        self._lanes = attachments.Lanes()  # a room whose document is being indexed waits for it
        self._stopping = asyncio.Event()
        self._ended = False
        self._replies = 0
        self._catching_up = False
        self.undecryptable = 0
        self.synced = asyncio.Event()  # set after each successful sync (tests wait on it)
        # Why Matrix stopped by itself (the login was refused); None while fine.
        self.failure: str | None = None
        self._connected = False  # the last sync succeeded (for /healthz)
        self._ready = asyncio.Event()  # the first sync is done, or Matrix stopped (reopen)
        self.client = AsyncClient(
            config.homeserver,
            config.user_id,
            store_path=str(store),
            config=AsyncClientConfig(
                encryption_enabled=True,
                store_sync_tokens=True,
                # nio retries a request itself on 429 for retry_after_ms (M_LIMIT_EXCEEDED),
                # and a couple of times on network errors; the sync loop backs off beyond.
                max_timeouts=2,
                backoff_factor=0.5,
                max_timeout_retry_wait_time=min(5.0, config.reconnect_max_seconds),
            ),
        )
        self.client.add_event_callback(self._guard(self._on_message), RoomMessageText)
        self.client.add_event_callback(
            self._guard(self._on_file), (RoomMessageFile, RoomEncryptedFile)
        )
        self.client.add_event_callback(self._guard(self._on_undecryptable), MegolmEvent)
        self.client.add_event_callback(self._guard(self._on_invite), InviteMemberEvent)

    @property
    def name(self) -> str:
        return "matrix"

    @property
    def user_id(self) -> str:
        return self.config.user_id

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self, submit: Submit) -> None:
        self._submit = submit
        self._ended = False  # run again after an error (the app's supervisor restarts it)
        loop = asyncio.create_task(self._serve(), name="matrix:sync")
        stopping = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait({loop, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if loop.done() and not loop.cancelled() and (error := loop.exception()) is not None:
                raise error  # the supervisor logs it and runs Matrix again
        finally:
            for task in (loop, stopping):
                task.cancel()
            await asyncio.gather(loop, stopping, return_exceptions=True)
            # Messages behind a document's indexing still reply through this client.
            await self._lanes.finish(attachments.STOP_GRACE_SECONDS)
            self._ended = True
            self._connected = False
            self._ready.set()
            # Replies still being rendered (the core drains its queues after stop) keep the
            # client open; the last one closes it.
            if not self._replies:
                await self.client.close()

    async def stop(self) -> None:
        self._stopping.set()
        self._ready.set()  # a recovery waiting for the first sync gives up
        # Messages behind a document's indexing are taken in before the core closes.
        await self._lanes.finish(attachments.STOP_GRACE_SECONDS)

    @property
    def connected(self) -> bool:
        return self._connected

    async def _serve(self) -> None:
        self._store.mkdir(parents=True, exist_ok=True)
        if not await self._log_in():
            return
        # Before joining anything: people's clients encrypt only for devices whose keys
        # they can see, so a new device must publish its keys first.
        await self._upload_keys()
        # No saved sync token: this is the first start; the rooms' backlog is not for us.
        self._catching_up = self.client.loaded_sync_token is None
        failures = 0
        first = True
        while True:
            try:
                reply = await self.client.sync(
                    timeout=0 if first else SYNC_TIMEOUT_MS,
                    # nio keeps no room state across restarts: the first sync fetches it.
                    full_state=True if first else None,
                    set_presence="online",
                )
                if isinstance(reply, SyncResponse):
                    await self._after_sync()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # unreachable, restarting, or a malformed batch
                reply = None
                if not isinstance(exc, NETWORK_ERRORS):
                    log.exception("matrix sync failed")
                error = f"{type(exc).__name__}: {exc}"
            else:
                error = str(getattr(reply, "message", ""))
            self._connected = isinstance(reply, SyncResponse)
            if isinstance(reply, SyncResponse):
                if failures:
                    log.warning("matrix: homeserver reachable again; resuming")
                failures, first, self._catching_up = 0, False, False
                self._ready.set()
                self.synced.set()
                self.synced.clear()
                continue
            if getattr(reply, "status_code", None) == "M_UNKNOWN_TOKEN":
                log.warning("matrix: the access token was revoked; logging in again")
                if not await self._log_in():
                    return
                continue
            failures += 1
            delay = self._backoff(failures)
            log.warning("matrix sync failed (%s); retrying in %.1f s", error, delay)
            await self._sleep(delay)

    def _backoff(self, failures: int) -> float:
        """0.5 s, 1 s, 2 s, … up to reconnect_max_seconds."""
        return float(min(self.config.reconnect_max_seconds, 0.5 * 2 ** min(failures - 1, 30)))

    async def _log_in(self) -> bool:
        failures = 0
        while True:
            try:
                await log_in(
                    self.client,
                    homeserver=self.config.homeserver,
                    device_name=self.config.device_name,
                    secrets=self._secrets,
                    store=self._store,
                )
                return True
            except MatrixLoginError as exc:
                self.failure = f"Matrix login failed: {exc}"
                log.error("%s; Matrix is off", self.failure)
                return False
            except NETWORK_ERRORS as exc:
                failures += 1
                log.warning("matrix: cannot reach %s (%s)", self.config.homeserver, exc)
                await self._sleep(self._backoff(failures))

    async def _upload_keys(self) -> None:
        failures = 0
        while self.client.olm is not None and self.client.should_upload_keys:
            try:
                await self.client.keys_upload()
            except NETWORK_ERRORS as exc:
                failures += 1
                log.warning("matrix: cannot upload the device keys (%s)", exc)
                await self._sleep(self._backoff(failures))

    async def _after_sync(self) -> None:
        """What nio's sync_forever does between syncs: to-device messages and E2E keys."""
        client = self.client
        if client.olm is None:
            return
        await client.send_to_device_messages()
        if client.should_upload_keys:
            await client.keys_upload()
        if client.should_query_keys:
            await client.keys_query()
        if client.should_claim_keys:
            await client.keys_claim(client.get_users_for_key_claiming())

    def _guard(self, handler: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
        async def guarded(room: MatrixRoom, event: Any) -> None:
            try:
                await handler(room, event)
            except Exception:  # one bad event never takes the client down
                log.exception(
                    "could not handle event %s in %s",
                    getattr(event, "event_id", "?"),
                    room.room_id,
                )

        return guarded

    # -- invites and undecryptable events -----------------------------------------------------

    def invite_allowed(self, inviter: str, room_id: str) -> bool:
        if inviter in self.config.admins:
            return True
        if self.config.rooms and room_id not in self.config.rooms:
            return False
        users, servers = self.config.invite_users, self.config.invite_servers
        if not users and not servers:
            return server_of(inviter) == server_of(self.user_id)
        return inviter in users or server_of(inviter) in servers

    async def _on_invite(self, room: MatrixRoom, event: InviteMemberEvent) -> None:
        if event.state_key != self.user_id or event.membership != "invite":
            return
        if room.room_id in self._invites:
            return
        self._invites.remember(room.room_id)
        if self.invite_allowed(event.sender, room.room_id):
            reply = await self.client.join(room.room_id)
            if isinstance(reply, JoinResponse):
                log.info("matrix: joined %s on %s's invite", room.room_id, event.sender)
            else:
                log.warning("matrix: could not join %s: %s", room.room_id, reply.message)
        else:
            await self.client.room_leave(room.room_id)  # leaving an invite rejects it
            log.info("matrix: rejected %s's invite to %s", event.sender, room.room_id)

    async def _on_undecryptable(self, room: MatrixRoom, event: MegolmEvent) -> None:
        if self._catching_up:
            return
        self.undecryptable += 1
        log.warning(
            "matrix: cannot decrypt %s from %s in %s (%d so far); asking for the key",
            event.event_id,
            event.sender,
            room.room_id,
            self.undecryptable,
        )
        with contextlib.suppress(LocalProtocolError, *NETWORK_ERRORS):
            await self.client.request_room_key(event)

    # -- messages ----------------------------------------------------------------------------

    async def _on_message(self, room: MatrixRoom, event: RoomMessageText) -> None:
        if self._catching_up or self._submit is None or self._stopping.is_set():
            return
        sender: str = event.sender
        if event.event_id in self._origins:
            return
        content: dict[str, Any] = event.source.get("content", {})
        relation = content.get("m.relates_to") or {}
        if not isinstance(relation, dict) or relation.get("rel_type") == "m.replace":
            return  # edits of earlier messages are not new questions
        room_key = f"matrix:{room.room_id}"
        admin = sender in self.config.admins
        allowed = admin or not self.config.rooms or room.room_id in self.config.rooms
        in_reply = relation.get("m.in_reply_to")
        reply_to = in_reply.get("event_id") if isinstance(in_reply, dict) else None
        reply_to = reply_to if isinstance(reply_to, str) else None
        text = strip_reply_fallback(str(event.body)) if reply_to else str(event.body)
        mentioned = self._mentioned(room, content, text)
        text = self._strip_mention(room, text)
        own = sender == self.user_id
        # Reading the replied event may take a request: only for messages that may count.
        own_reply = bool(reply_to and allowed and not own and await self._is_own(room, reply_to))
        facts = Facts(
            author_id=sender,
            own=own,
            direct=room.member_count <= 2,
            dms_enabled=self.config.dms,
            allowed=allowed,
            admin=admin,
            mention=self.config.mentions and mentioned,
            reply=self.config.replies and own_reply,
            command=chat_commands.parse(text) is not None,
            all_messages=listed(self.config.all_messages_rooms, room.room_id),
            context=listed(self.config.context_rooms, room.room_id),
            empty=not text,
        )
        decision = decide(facts, self._limiter.check)
        if decision.outcome is Outcome.IGNORE:
            log.debug("ignored %s in %s: %s", sender, room_key, decision.reason)
            return
        if decision.outcome is Outcome.LIMITED:
            if decision.notice:
                await self._rate_notice(room, event)
            log.debug("rate-limited %s in %s", sender, room_key)
            return
        ambient = decision.outcome is Outcome.AMBIENT
        key, root = channel_of(room.room_id, event)
        if reply_to is not None and not own_reply and not ambient:
            # What the question replies to, oldest first (the bot's own messages are in the
            # history already): "what do you think of this?" needs "this".
            text = "\n".join([*await self._reply_chain(room, reply_to), text])
        self._origins.remember(event.event_id, (room.room_id, root, sender))
        if self._lanes.busy(key):  # a document of this room is being indexed: after it
            self._lanes.add(key, lambda: self._take(room, event, text, reply_to, facts, ambient))
            return
        await self._take(room, event, text, reply_to, facts, ambient)

    async def _take(  # noqa: PLR0917 - the intake decision's results, handed on
        self,
        room: MatrixRoom,
        event: Posted,
        text: str,
        reply_to: str | None,
        facts: Facts,
        ambient: bool,
    ) -> None:
        """Submit the message (or a file's caption) to the core."""
        assert self._submit is not None
        sender: str = event.sender
        key, root = channel_of(room.room_id, event)
        room_key = f"matrix:{room.room_id}"
        inbound = Inbound(
            platform="matrix",
            channel_key=key,
            author_id=sender,
            author_name=room.user_name(sender) or sender,
            text=text,
            message_id=event.event_id,
            reply_to=reply_to,
            thread_id=root,
            parent_key=room_key if root else None,
            server_id=None if facts.direct else server_of(room.room_id),
            is_direct=facts.direct,
            is_admin=facts.admin,
            ambient=ambient,
            timestamp=datetime.fromtimestamp(event.server_timestamp / 1000, UTC),
        )
        await self._submit(inbound, self)

    # -- files -------------------------------------------------------------------------------

    def use_documents(self, hook: attachments.DocumentsHook) -> None:
        """Where files go (set by the app when the documents pipeline is on)."""
        self._documents = hook

    async def _on_file(self, room: MatrixRoom, event: RoomMessageFile | RoomEncryptedFile) -> None:
        """A txt/md/pdf file sent to the bot: indexed into the room's documents, then its
        caption, if any, is answered. Indexing runs in the room's lane: the room's next
        messages wait for it, other rooms do not."""
        if self._catching_up or self._submit is None or self._stopping.is_set():
            return
        if not self.config.attachments or self._documents is None:
            return
        if event.event_id in self._origins:
            return
        content: dict[str, Any] = event.source.get("content", {})
        name = str(content.get("filename") or event.body)
        if not attachments.accepts(name):
            return
        # With a filename of its own, the body is a caption (Matrix 1.10).
        caption = str(event.body) if content.get("filename") and event.body != name else ""
        sender: str = event.sender
        admin = sender in self.config.admins
        facts = Facts(
            author_id=sender,
            own=sender == self.user_id,
            direct=room.member_count <= 2,
            dms_enabled=self.config.dms,
            allowed=admin or not self.config.rooms or room.room_id in self.config.rooms,
            admin=admin,
            mention=self.config.mentions and self._mentioned(room, content, caption),
            reply=False,
            command=False,
            all_messages=listed(self.config.all_messages_rooms, room.room_id),
            context=listed(self.config.context_rooms, room.room_id),
            empty=False,
        )
        decision = decide(facts, self._limiter.check)
        if decision.outcome is Outcome.LIMITED and decision.notice:
            notice = rate_notice(caption, self.language)
            await self._notice(room.room_id, event, notice)
        if decision.outcome is not Outcome.ACCEPT:
            return  # not addressed to the bot (a file is never ambient context), or limited
        text = self._strip_mention(room, caption)
        key, root = channel_of(room.room_id, event)
        self._origins.remember(event.event_id, (room.room_id, root, sender))

        async def index_then_answer() -> None:
            await self._index_file(room, event, name, text, key)
            if text:
                await self._take(room, event, text, None, facts, False)

        self._lanes.add(key, index_then_answer)

    async def _index_file(
        self, room: MatrixRoom, event: RoomMessageFile | RoomEncryptedFile, name: str, text: str,
        key: str,
    ) -> None:  # fmt: skip
        hook = self._documents
        assert hook is not None
        lang = attachments.notice_language(text, name, self.language)
        info = event.source.get("content", {}).get("info")
        size = info.get("size") if isinstance(info, dict) else None
        limit = self.config.attachment_max_bytes
        if isinstance(size, int) and size > limit:
            notice = attachments.too_large(name, limit, lang)
        else:
            try:
                data = await self._download(event)
                if len(data) > limit:  # the size it was announced with was wrong
                    notice = attachments.too_large(name, limit, lang)
                else:
                    notice = await hook(key, name, data, lang)
            except DownloadFailedError as exc:
                log.warning("matrix: could not fetch %s in %s: %s", name, key, exc)
                notice = attachments.not_indexed(name, lang)
            except Exception:
                log.exception("matrix: could not index %s in %s", name, key)
                notice = attachments.not_indexed(name, lang)
        await self._notice(room.room_id, event, notice)

    async def _download(self, event: RoomMessageFile | RoomEncryptedFile) -> bytes:
        """The file's bytes (decrypted, in an encrypted room)."""
        try:
            response = await asyncio.wait_for(self.client.download(mxc=event.url), DOWNLOAD_SECONDS)
        except (*NETWORK_ERRORS, ValueError) as exc:
            raise DownloadFailedError(str(exc) or type(exc).__name__) from None
        if not isinstance(response, MemoryDownloadResponse):
            raise DownloadFailedError(getattr(response, "message", str(response)))
        if not isinstance(event, RoomEncryptedFile):
            return bytes(response.body)
        try:
            key, digest = event.key["k"], event.hashes["sha256"]
            return bytes(decrypt_attachment(response.body, key, digest, event.iv))
        except (KeyError, TypeError, ValueError, EncryptionError) as exc:
            raise DownloadFailedError(f"cannot decrypt it: {exc}") from None

    def _names(self, room: MatrixRoom) -> list[str]:
        """How people address the bot in text: display name, localpart, full id."""
        names = [room.user_name(self.user_id) or "", self.user_id[1:].split(":", 1)[0]]
        # Longest first: the full id must be removed before its localpart is.
        return sorted({name for name in [*names, self.user_id] if name}, key=len, reverse=True)

    def _mentioned(self, room: MatrixRoom, content: dict[str, Any], text: str) -> bool:
        mentions = content.get("m.mentions")
        if isinstance(mentions, dict) and self.user_id in (mentions.get("user_ids") or []):
            return True
        formatted = str(content.get("formatted_body") or "")
        if f"matrix.to/#/{self.user_id}" in formatted.replace("%40", "@").replace("%3A", ":"):
            return True
        return any(
            re.search(rf"(?<![\w@]){re.escape(name)}(?!\w)", text, re.IGNORECASE)
            for name in self._names(room)
        )

    def _strip_mention(self, room: MatrixRoom, text: str) -> str:
        for name in self._names(room):
            # "Beseda: hi", "@beseda:server, hi" -> "hi"; a name inside a sentence stays.
            text = re.sub(
                rf"^\s*@?{re.escape(name)}(?!\w)\s*[:,]?\s*", "", text, flags=re.IGNORECASE
            )
        return text.strip()

    async def _is_own(self, room: MatrixRoom, event_id: str) -> bool:
        if event_id in self.own_events:
            return True
        # Not sent by this process (e.g. before a restart): the sender is never encrypted.
        reply = await self.client.room_get_event(room.room_id, event_id)
        own = isinstance(reply, RoomGetEventResponse) and reply.event.sender == self.user_id
        if own:
            self.own_events.remember(event_id)
        return own

    async def _reply_chain(self, room: MatrixRoom, event_id: str) -> list[str]:
        """Quotes of ``event_id`` and the messages it replies to (adapters/quotes.py)."""

        def quoted(event: RoomMessageText) -> str:
            body = str(event.body)
            body = strip_reply_fallback(body) if _replied_id(event) else body
            return quote(room.user_name(event.sender) or event.sender, body)

        async def parent(event: RoomMessageText) -> RoomMessageText | None:
            replied = _replied_id(event)
            return await self._readable_event(room, replied) if replied else None

        return await reply_chain(
            await self._readable_event(room, event_id),
            own=lambda event: bool(event.sender == self.user_id),
            quoted=quoted,
            parent=parent,
        )

    async def _readable_event(self, room: MatrixRoom, event_id: str) -> RoomMessageText | None:
        """A text message of the room, fetched (and decrypted) by id; None if it cannot be."""
        reply = await self.client.room_get_event(room.room_id, event_id)
        if not isinstance(reply, RoomGetEventResponse):
            log.debug("matrix: reply chain stops at %s in %s", event_id, room.room_id)
            return None
        event = reply.event
        if isinstance(event, MegolmEvent):
            try:
                event = self.client.decrypt_event(event)
            except EncryptionError:
                log.debug("matrix: cannot decrypt %s for a reply chain", event_id)
                return None
        return event if isinstance(event, RoomMessageText) else None

    async def _rate_notice(self, room: MatrixRoom, event: RoomMessageText) -> None:
        await self._notice(room.room_id, event, rate_notice(event.body, self.language))

    async def _notice(self, room_id: str, event: Posted, text: str) -> None:
        """A short notice replying to ``event``, in its thread if it has one (a failure to
        send it is not fatal)."""
        content = text_content(text)
        content["m.relates_to"] = reply_relation(event.event_id, channel_of(room_id, event)[1])
        with contextlib.suppress(MatrixSendError):
            await NioRoom(self, room_id).send(content)

    # -- replies -----------------------------------------------------------------------------

    async def open_reply(self, inbound: Inbound) -> MatrixReply:
        origin = self._origins.get(inbound.message_id or "")
        if origin is None:
            raise LookupError(f"no Matrix message to answer for {inbound.message_id}")
        room_id, root, sender = origin
        self._replies += 1
        return MatrixReply(
            NioRoom(self, room_id),
            reply_to=inbound.message_id or "",
            thread_root=root,
            mention=None if inbound.is_direct else sender,
            clock=self._clock,
            sleep=self._sleep,
            edit_interval=self.config.edit_interval,
            max_edits=self.config.max_edits,
            limit=self.config.split_limit,
            on_done=self._reply_done,
        )

    async def reopen(
        self, channel_key: str, platform_message_id: str | None
    ) -> MatrixAdapter | None:
        """A message stored before a restart, looked up again so that the answer replies to
        it (in its thread). None when it cannot be: Matrix is stopping or never connected,
        or the event is gone or hidden from the bot."""
        if not channel_key.startswith("matrix:") or not platform_message_id:
            return None
        room_id, _, root = channel_key.removeprefix("matrix:").partition("/")
        await self._ready.wait()
        if not self._connected or self._stopping.is_set():
            return None
        found = await self.client.room_get_event(room_id, platform_message_id)
        if not isinstance(found, RoomGetEventResponse):
            log.info(
                "matrix: cannot answer %s in %s after the restart", platform_message_id, room_id
            )
            return None
        self._origins.remember(platform_message_id, (room_id, root or None, found.event.sender))
        return self

    async def _reply_done(self) -> None:
        self._replies -= 1
        if self._ended and not self._replies:
            await self.client.close()


class DownloadFailedError(Exception):
    """A file could not be fetched from the homeserver or decrypted."""


def channel_of(room_id: str, event: Posted) -> tuple[str, str | None]:
    """The channel key of ``event`` (its room's, or its thread's: ``matrix:!room/$root``)
    and the thread root, if it is in a thread."""
    room_key = f"matrix:{room_id}"
    relation = event.source.get("content", {}).get("m.relates_to")
    if not isinstance(relation, dict) or relation.get("rel_type") != "m.thread":
        return room_key, None
    root = relation.get("event_id")
    return (f"{room_key}/{root}", root) if isinstance(root, str) else (room_key, None)


def _replied_id(event: RoomMessageText) -> str | None:
    """The id of the event ``event`` replies to, if any."""
    relation = event.source.get("content", {}).get("m.relates_to") or {}
    in_reply = relation.get("m.in_reply_to") if isinstance(relation, dict) else None
    parent = in_reply.get("event_id") if isinstance(in_reply, dict) else None
    return parent if isinstance(parent, str) else None


def strip_reply_fallback(body: str) -> str:
    """A reply's body without the quoted "> <@someone> text" lines older clients prepend."""
    lines = body.split("\n")
    if not lines or not lines[0].startswith("> "):
        return body
    while lines and lines[0].startswith(">"):
        lines.pop(0)
    return "\n".join(lines).strip()


def matrix_adapter(config: Config) -> MatrixAdapter | None:
    """The registry's factory: a Matrix adapter when homeserver, user and a secret are set."""
    matrix = config.matrix
    secrets = matrix_secrets(config)
    has_secret = bool(secrets.password or secrets.access_token)
    if has_secret and not (matrix.homeserver and matrix.user_id):
        log.warning("a Matrix secret is set but [matrix] homeserver or user_id is empty: no Matrix")
    if not (matrix.homeserver and matrix.user_id and has_secret):
        return None
    store = config.resolve_path(config.data_dir / matrix.store_path)
    return MatrixAdapter(matrix, secrets, store, language=config.chat.language)
