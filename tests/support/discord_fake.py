"""A loopback Discord: the real gateway protocol and the REST routes Beseda uses, on 127.0.0.1.

The unmodified discord.py client is pointed at it (``Route.BASE`` and
``DiscordWebSocket.DEFAULT_GATEWAY``). It records every REST request and every gateway
opcode the bot sends, and lets a test dispatch events, drop the connection (or forget the
session, so that the RESUME fails into a new IDENTIFY), break the next HELLO, or make the
next matching request fail (403, 429 with ``retry_after``, 5xx). Ids are snowflakes of the
time they are made, as on Discord (discord.py reads a message's time from its id), and a
channel's messages can be read back through REST (history, ``after``/``before``/``limit``).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import WSMsgType, web

TOKEN = "fake-bot-token"
BOT_ID = 900_000_000_000_000_001
APP_ID = 900_000_000_000_000_002
GUILD_ID = 100_000_000_000_000_001
CHANNEL_ID = 200_000_000_000_000_001
OTHER_CHANNEL_ID = 200_000_000_000_000_002
THREAD_ID = 300_000_000_000_000_001
DM_CHANNEL_ID = 400_000_000_000_000_001
ROLE_ID = 500_000_000_000_000_001
BOT_ROLE_ID = 500_000_000_000_000_002  # the role Discord manages for the bot's integration
MESSAGE_CONTENT = 1 << 15  # the privileged intent bit
TIMESTAMP = "2026-01-01T00:00:00.000000+00:00"

DISCORD_EPOCH_MS = 1_420_070_400_000

# Opcodes of the gateway.
DISPATCH, HEARTBEAT, IDENTIFY, RESUME, INVALID_SESSION, HELLO, HEARTBEAT_ACK = 0, 1, 2, 6, 9, 10, 11


def snowflake(at: datetime, low: int = 0) -> int:
    return ((int(at.timestamp() * 1000) - DISCORD_EPOCH_MS) << 22) | (low & 0x3FFFFF)


def snowflake_time(snowflake_id: int) -> str:
    """The ISO timestamp a snowflake was made at (what Discord sends as ``timestamp``)."""
    seconds = ((snowflake_id >> 22) + DISCORD_EPOCH_MS) / 1000
    return datetime.fromtimestamp(seconds, UTC).isoformat()


def user(user_id: int, name: str, *, bot: bool = False) -> dict[str, Any]:
    return {
        "id": str(user_id),
        "username": name,
        "global_name": name,
        "discriminator": "0",
        "avatar": None,
        "bot": bot,
    }


@dataclass
class Request:
    method: str
    path: str
    body: Any
    query: dict[str, str] = field(default_factory=dict)


@dataclass
class Failure:
    method: str
    pattern: str
    status: int
    body: dict[str, Any]
    times: int = 1
    headers: dict[str, str] = field(default_factory=dict)


class DiscordFake:
    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.sent_ops: list[int] = []
        self.identifies = 0
        self.resumes = 0
        self.failures: list[Failure] = []
        self.messages: dict[int, dict[str, Any]] = {}
        # Messages "people" sent (MESSAGE_CREATE), readable through REST like the bot's own.
        self.received: dict[int, dict[str, Any]] = {}
        self.files: dict[str, bytes] = {}  # the CDN: attachment id -> content
        self._last_id = 0
        self._ws: web.WebSocketResponse | None = None
        self._seq = 0
        self._session = "fake-session-1"
        self._events: list[dict[str, Any]] = []  # every dispatch, for RESUME replay
        self._ready = asyncio.Event()
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.bot = user(BOT_ID, "beseda", bot=True)
        # False: the bot's Message Content intent is not enabled in the developer portal.
        self.message_content_allowed = True
        # HELLOs still to send without a heartbeat interval (a payload the client chokes on).
        self.broken_hellos = 0
        self._sessions = 1

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/gateway", self._gateway)
        app.router.add_get("/attachments/{id}/{name}", self._attachment)
        app.router.add_route("*", "/api/v10/{tail:.*}", self._rest)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._ws is not None and not self._ws.closed:
            await self._ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    # -- test controls -----------------------------------------------------------------------

    async def wait_ready(self, seconds: float = 10) -> None:
        await asyncio.wait_for(self._ready.wait(), seconds)

    async def wait_for(self, predicate: Callable[[], bool], seconds: float = 10) -> None:
        async def waiter() -> None:
            async with self._changed:
                await self._changed.wait_for(predicate)

        await asyncio.wait_for(waiter(), seconds)

    def fail_next(
        self, method: str, pattern: str, status: int, body: dict[str, Any], times: int = 1
    ) -> None:
        headers = {"Via": "1.1 google"} if status == 429 else {}
        self.failures.append(Failure(method, pattern, status, body, times, headers))

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        self._seq += 1
        payload = {"op": DISPATCH, "t": event, "s": self._seq, "d": data}
        self._events.append(payload)
        if self._ws is not None and not self._ws.closed:
            await self._ws.send_str(json.dumps(payload))

    async def send_raw(self, frame: str) -> None:
        """Send a gateway frame as it is (e.g. one that is not JSON)."""
        assert self._ws is not None
        await self._ws.send_str(frame)

    async def drop(self, code: int = 4000) -> None:
        """Close the gateway connection as Discord does on a hiccup (the client may RESUME)."""
        self._ready.clear()
        ws = self._ws
        if ws is not None:
            await ws.close(code=code, message=b"dropped by the fake")

    def forget_sessions(self) -> None:
        """Sessions are lost (as after a long outage): the next RESUME is refused with
        INVALID_SESSION, the client identifies anew, and missed events are not replayed."""
        self._sessions += 1
        self._session = f"fake-session-{self._sessions}"
        self._events.clear()

    def next_id(self, at: datetime | None = None) -> int:
        """A new snowflake: made now (always above the last one), or at ``at``."""
        if at is not None:
            self._last_id += 1
            return snowflake(at, self._last_id)
        self._last_id = max(self._last_id + 1, snowflake(datetime.now(UTC)))
        return self._last_id

    async def message_create(
        self,
        content: str,
        *,
        author: dict[str, Any] | None = None,
        channel_id: int = CHANNEL_ID,
        guild: bool = True,
        mentions: list[dict[str, Any]] | None = None,
        roles: list[int] | None = None,
        mention_roles: list[int] | None = None,
        reference: dict[str, Any] | None = None,
        files: dict[str, bytes] | None = None,
        dispatch: bool = True,
        at: datetime | None = None,
    ) -> int:
        """Dispatch MESSAGE_CREATE as Discord would; returns the message id. With
        ``dispatch=False`` the message is only stored, as if sent while the bot was away
        (``at``: written then)."""
        message_id = self.next_id(at)
        attachments = []
        for name, data in (files or {}).items():
            file_id = str(self.next_id())
            self.files[file_id] = data
            url = f"http://127.0.0.1:{self.port}/attachments/{file_id}/{name}"
            attachments.append(
                {
                    "id": file_id,
                    "filename": name,
                    "size": len(data),
                    "url": url,
                    "proxy_url": url,
                    "content_type": "text/plain",
                }
            )
        data: dict[str, Any] = {
            "id": str(message_id),
            "channel_id": str(channel_id),
            "author": author or user(111, "alice"),
            "content": content,
            "timestamp": snowflake_time(message_id),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": mentions or [],
            "mention_roles": [str(r) for r in mention_roles or []],
            "attachments": attachments,
            "embeds": [],
            "pinned": False,
            "type": 0,
        }
        if guild:
            data["guild_id"] = str(GUILD_ID)
            data["member"] = {
                "roles": [str(r) for r in roles or []],
                "joined_at": TIMESTAMP,
                "deaf": False,
                "mute": False,
                "flags": 0,
            }
        if reference is not None:
            data["type"] = 19
            data["message_reference"] = {
                "message_id": reference["id"],
                "channel_id": reference["channel_id"],
                **({"guild_id": str(GUILD_ID)} if guild else {}),
            }
            # As Discord: the replied-to message comes along, but not what it replies to.
            data["referenced_message"] = {
                k: v for k, v in reference.items() if k != "referenced_message"
            }
        self.received[message_id] = data
        if dispatch:
            await self.dispatch("MESSAGE_CREATE", data)
        return message_id

    async def message_delete(self, message_id: int, channel_id: int = CHANNEL_ID) -> None:
        self.received.pop(message_id, None)
        self.messages.pop(message_id, None)
        ids = {"id": str(message_id), "channel_id": str(channel_id), "guild_id": str(GUILD_ID)}
        await self.dispatch("MESSAGE_DELETE", ids)

    async def slash(
        self, name: str, options: dict[str, str] | None = None, locale: str = "en-US"
    ) -> int:
        """Dispatch INTERACTION_CREATE for a slash command used by alice in the main channel."""
        interaction_id = self.next_id()
        await self.dispatch(
            "INTERACTION_CREATE",
            {
                "id": str(interaction_id),
                "application_id": str(APP_ID),
                "type": 2,
                "token": f"itoken{interaction_id}",
                "version": 1,
                "guild_id": str(GUILD_ID),
                "channel_id": str(CHANNEL_ID),
                "channel": {"id": str(CHANNEL_ID), "type": 0, "guild_id": str(GUILD_ID)},
                "member": {
                    "user": user(111, "alice"),
                    "roles": [],
                    "joined_at": TIMESTAMP,
                    "deaf": False,
                    "mute": False,
                    "flags": 0,
                    "permissions": "0",
                },
                "data": {
                    "id": str(self.next_id()),
                    "name": name,
                    "type": 1,
                    "options": [
                        {"name": k, "type": 3, "value": v} for k, v in (options or {}).items()
                    ],
                },
                "app_permissions": "0",
                "locale": locale,
                "guild_locale": "en-US",
                "entitlements": [],
                "authorizing_integration_owners": {"0": str(GUILD_ID)},
                "context": 0,
                "attachment_size_limit": 8388608,
            },
        )
        return interaction_id

    def posted(self, channel_id: int = CHANNEL_ID) -> list[Request]:
        path = f"/channels/{channel_id}/messages"
        return [r for r in self.requests if r.method == "POST" and r.path == path]

    def edits(self) -> list[Request]:
        return [r for r in self.requests if r.method == "PATCH" and "/messages/" in r.path]

    def contents(self, channel_id: int = CHANNEL_ID) -> list[str]:
        """The current text of every message the bot has in a channel, oldest first."""
        return [
            m["content"]
            for m in sorted(self.messages.values(), key=lambda m: int(m["id"]))
            if m["channel_id"] == str(channel_id) and m["author"]["id"] == str(BOT_ID)
        ]

    # -- gateway -----------------------------------------------------------------------------

    def _guild(self) -> dict[str, Any]:
        def text_channel(channel_id: int, name: str) -> dict[str, Any]:
            return {
                "id": str(channel_id),
                "type": 0,
                "name": name,
                "position": 0,
                "guild_id": str(GUILD_ID),
                "permission_overwrites": [],
                "nsfw": False,
                "parent_id": None,
            }

        role = {
            "id": str(GUILD_ID),
            "name": "@everyone",
            "permissions": "1024",
            "position": 0,
            "color": 0,
            "hoist": False,
            "managed": False,
            "mentionable": False,
        }
        return {
            "id": str(GUILD_ID),
            "name": "Fake guild",
            "icon": None,
            "owner_id": "111",
            "unavailable": False,
            "member_count": 2,
            "large": False,
            "features": [],
            "emojis": [],
            "stickers": [],
            "roles": [
                role,
                {**role, "id": str(ROLE_ID), "name": "friends", "position": 1},
                {
                    **role,
                    "id": str(BOT_ROLE_ID),
                    "name": "beseda",
                    "position": 2,
                    "managed": True,
                    "tags": {"bot_id": str(BOT_ID)},
                },
            ],
            "channels": [
                text_channel(CHANNEL_ID, "general"),
                text_channel(OTHER_CHANNEL_ID, "random"),
            ],
            "threads": [
                {
                    "id": str(THREAD_ID),
                    "type": 11,
                    "name": "a thread",
                    "guild_id": str(GUILD_ID),
                    "parent_id": str(CHANNEL_ID),
                    "owner_id": "111",
                    "message_count": 0,
                    "member_count": 1,
                    "rate_limit_per_user": 0,
                    "thread_metadata": {
                        "archived": False,
                        "auto_archive_duration": 1440,
                        "archive_timestamp": TIMESTAMP,
                        "locked": False,
                    },
                }
            ],
            "members": [
                {
                    "user": self.bot,
                    "roles": [str(BOT_ROLE_ID)],
                    "joined_at": TIMESTAMP,
                    "deaf": False,
                    "mute": False,
                    "flags": 0,
                }
            ],
            "voice_states": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
        }

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._ws = ws
        hello: dict[str, Any] = {"heartbeat_interval": 41250}
        if self.broken_hellos:
            self.broken_hellos -= 1
            hello = {}
        await ws.send_str(json.dumps({"op": HELLO, "d": hello}))
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                break
            payload = json.loads(msg.data)
            op = payload["op"]
            self.sent_ops.append(op)
            if op == HEARTBEAT:
                await ws.send_str(json.dumps({"op": HEARTBEAT_ACK}))
            elif op == IDENTIFY:
                if payload["d"]["token"] != TOKEN:
                    await ws.close(code=4004, message=b"Authentication failed.")
                    break
                if payload["d"]["intents"] & MESSAGE_CONTENT and not self.message_content_allowed:
                    await ws.close(code=4014, message=b"Disallowed intent(s).")
                    break
                self.identifies += 1
                await self._identified()
            elif op == RESUME:
                d = payload["d"]
                if d["token"] != TOKEN or d["session_id"] != self._session:
                    await ws.send_str(json.dumps({"op": INVALID_SESSION, "d": False}))
                    continue
                self.resumes += 1
                for missed in self._events:
                    if missed["s"] > (d["seq"] or 0):
                        await ws.send_str(json.dumps(missed))
                self._seq += 1
                await ws.send_str(
                    json.dumps({"op": DISPATCH, "t": "RESUMED", "s": self._seq, "d": {}})
                )
                self._ready.set()
            await self._notify()
        return ws

    async def _attachment(self, request: web.Request) -> web.Response:
        content = self.files.get(request.match_info["id"])
        if content is None:
            return web.Response(status=404)
        return web.Response(body=content, content_type="application/octet-stream")

    async def _identified(self) -> None:
        await self.dispatch(
            "READY",
            {
                "v": 10,
                "user": self.bot,
                "guilds": [{"id": str(GUILD_ID), "unavailable": True}],
                "session_id": self._session,
                "resume_gateway_url": self.gateway_url,
                "application": {"id": str(APP_ID), "flags": 0},
            },
        )
        await self.dispatch("GUILD_CREATE", self._guild())
        self._ready.set()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- REST --------------------------------------------------------------------------------

    async def _rest(self, request: web.Request) -> web.Response:
        path = "/" + request.match_info["tail"]
        body: Any = None
        if request.can_read_body:
            raw = await request.read()
            if request.content_type == "application/json":
                body = json.loads(raw)
            elif request.content_type.startswith("multipart/"):
                body = {"multipart": raw.decode("utf-8", "replace")}
        self.requests.append(Request(request.method, path, body, dict(request.query)))
        response = self._respond(request, path, body)
        await self._notify()
        return response

    def _respond(self, request: web.Request, path: str, body: Any) -> web.Response:
        # Interaction callbacks and follow-ups authenticate by the interaction token instead.
        by_token = path.startswith(("/interactions/", "/webhooks/"))
        if not by_token and request.headers.get("Authorization") != f"Bot {TOKEN}":
            return _json({"message": "401: Unauthorized", "code": 0}, 401)
        for failure in self.failures:
            if failure.method == request.method and re.fullmatch(failure.pattern, path):
                failure.times -= 1
                if failure.times <= 0:
                    self.failures.remove(failure)
                return _json(failure.body, failure.status, failure.headers)
        if request.method == "GET":
            if match := re.fullmatch(r"/channels/(\d+)/messages", path):
                return _json(self._history(int(match[1]), request.query))
            if match := re.fullmatch(r"/channels/(\d+)", path):
                return self._channel(int(match[1]))
        return self._route(request.method, path, body)

    def _history(self, channel_id: int, query: Mapping[str, str]) -> list[dict[str, Any]]:
        """GET /channels/{id}/messages: up to ``limit`` messages next to ``after`` (or
        before ``before``, or the newest), newest first, as Discord answers."""
        limit = int(query.get("limit", "50"))
        messages = sorted(
            (
                m
                for m in [*self.received.values(), *self.messages.values()]
                if m["channel_id"] == str(channel_id)
            ),
            key=lambda m: int(m["id"]),
        )
        if "after" in query:
            chosen = [m for m in messages if int(m["id"]) > int(query["after"])][:limit]
        elif "before" in query:
            chosen = [m for m in messages if int(m["id"]) < int(query["before"])][-limit:]
        else:
            chosen = messages[-limit:]
        return chosen[::-1]

    def _channel(self, channel_id: int) -> web.Response:
        """GET /channels/{id}: the direct-message channel (guild channels come with the
        guild; a DM channel is fetched when it is not cached)."""
        if channel_id != DM_CHANNEL_ID:
            return _json({"message": "Unknown Channel", "code": 10003}, 404)
        return _json({"id": str(DM_CHANNEL_ID), "type": 1, "recipients": [user(111, "alice")]})

    def _route(self, method: str, path: str, body: Any) -> web.Response:  # noqa: PLR0911, PLR0912
        if (method, path) == ("GET", "/gateway/bot"):
            return _json(
                {
                    "url": self.gateway_url,
                    "shards": 1,
                    "session_start_limit": {
                        "total": 1000,
                        "remaining": 999,
                        "reset_after": 0,
                        "max_concurrency": 1,
                    },
                }
            )
        if (method, path) == ("GET", "/users/@me"):
            return _json(self.bot)
        if (method, path) == ("GET", "/oauth2/applications/@me"):
            return _json(
                {
                    "id": str(APP_ID),
                    "name": "beseda",
                    "description": "",
                    "icon": None,
                    "bot_public": False,
                    "bot_require_code_grant": False,
                    "owner": user(111, "alice"),
                    "verify_key": "0" * 64,
                    "flags": 0,
                }
            )
        if method == "PUT" and path == f"/applications/{APP_ID}/commands":
            return _json(
                [
                    {**c, "id": str(self.next_id()), "application_id": str(APP_ID), "version": "1"}
                    for c in body
                ]
            )
        if match := re.fullmatch(r"/channels/(\d+)/typing", path):
            return web.Response(status=204)
        if method == "GET" and (match := re.fullmatch(r"/channels/(\d+)/messages/(\d+)", path)):
            found = self.messages.get(int(match[2])) or self.received.get(int(match[2]))
            if found is None or found["channel_id"] != match[1]:
                return _json({"message": "Unknown Message", "code": 10008}, 404)
            return _json({k: v for k, v in found.items() if k != "referenced_message"})
        if method == "POST" and (match := re.fullmatch(r"/channels/(\d+)/messages", path)):
            return _json(self._store(int(match[1]), body))
        if method == "PATCH" and (match := re.fullmatch(r"/channels/(\d+)/messages/(\d+)", path)):
            message = self.messages.get(int(match[2]))
            if message is None:
                return _json({"message": "Unknown Message", "code": 10008}, 404)
            content = body.get("content", message["content"])
            message.update(content=content, edited_timestamp=TIMESTAMP)
            return _json(message)
        if method == "GET" and (match := re.fullmatch(r"/channels/(\d+)/messages/(\d+)", path)):
            found = self.received.get(int(match[2])) or self.messages.get(int(match[2]))
            if found is None or found["channel_id"] != match[1]:
                return _json({"message": "Unknown Message", "code": 10008}, 404)
            return _json(found)
        if method == "DELETE" and (match := re.fullmatch(r"/channels/(\d+)/messages/(\d+)", path)):
            self.messages.pop(int(match[2]), None)
            return web.Response(status=204)
        if method == "POST" and (
            match := re.fullmatch(r"/interactions/(\d+)/([^/]+)/callback", path)
        ):
            kind = body["type"] if isinstance(body, dict) else 5
            return _json(
                {
                    "interaction": {
                        "id": match[1],
                        "type": 2,
                        "response_message_loading": kind == 5,
                        "response_message_ephemeral": False,
                    },
                    "resource": {"type": kind},
                }
            )
        if method == "POST" and (match := re.fullmatch(rf"/webhooks/{APP_ID}/([^/]+)", path)):
            return _json(self._store(CHANNEL_ID, body, webhook=True))
        if method == "PATCH" and (
            match := re.fullmatch(rf"/webhooks/{APP_ID}/([^/]+)/messages/(\d+)", path)
        ):
            message = self.messages[int(match[2])]
            message.update(content=body.get("content", message["content"]))
            return _json(message)
        return _json({"message": "404: Not Found", "code": 0}, 404)

    def _store(self, channel_id: int, body: Any, *, webhook: bool = False) -> dict[str, Any]:
        message_id = self.next_id()
        message: dict[str, Any] = {
            "id": str(message_id),
            "channel_id": str(channel_id),
            "author": self.bot,
            "content": body.get("content") or "",
            "timestamp": snowflake_time(message_id),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "pinned": False,
            "type": 19 if body.get("message_reference") else 0,
            "webhook_id": str(APP_ID) if webhook else None,
        }
        if channel_id != DM_CHANNEL_ID:
            message["guild_id"] = str(GUILD_ID)
        if ref := body.get("message_reference"):
            message["message_reference"] = ref
        self.messages[message_id] = message
        return message


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # discord.py parses JSON only when content-type is exactly application/json (no charset).
    return web.Response(
        body=json.dumps(data).encode(),
        status=status,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
