"""A loopback Telegram Bot API: the real HTTP protocol, on 127.0.0.1.

The unmodified aiogram client is pointed at it through ``[telegram] api_url``. It serves
``/bot<token>/<method>`` (form or JSON parameters, ``{"ok": …, "result": …}`` answers):
getMe, getUpdates (long polling with ``offset`` and ``timeout``; an offset confirms what is
before it), deleteWebhook and setWebhook (then updates are POSTed to the webhook with the
``X-Telegram-Bot-Api-Secret-Token`` header), sendMessage, editMessageText ("message is not
modified" for an edit that changes nothing), deleteMessage, sendChatAction, sendMessageDraft,
setMyCommands, getFile and the file download ``/file/bot<token>/<path>``. HTML is checked
like Telegram does (only its tags, balanced, entities escaped; at most 4,096 UTF-16 units
of text). Any method can be made to fail next (400, 403, 429 with
``parameters.retry_after``, 5xx) or answer bytes that are not UTF-8; an update can be
delivered as given (one aiogram cannot read). Every request is recorded.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import PurePosixPath
from typing import Any

import aiohttp
from aiohttp import web

TOKEN = "123456789:fake-telegram-token-0123456789abcdefghij"
BOT_ID = 123456789
BOT_USERNAME = "beseda_bot"
GROUP_ID = -1001000000001
OTHER_GROUP_ID = -1001000000002
FORUM_ID = -1001000000003

_TAGS = {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "a", "code", "pre"}
_TAGS |= {"blockquote", "tg-spoiler", "span", "tg-emoji"}
_STRINGS = {"text", "caption", "description", "url", "secret_token"}  # never JSON-decoded


def user(user_id: int, first: str, last: str | None = None, **extra: Any) -> dict[str, Any]:
    person = {"id": user_id, "is_bot": False, "first_name": first, **extra}
    if last:
        person["last_name"] = last
    return person


ALICE = user(111, "Alice", "Smith", username="alice")
BOB = user(222, "Bob", username="bob")
BOT = {"id": BOT_ID, "is_bot": True, "first_name": "Beseda", "username": BOT_USERNAME}


def private(person: dict[str, Any]) -> dict[str, Any]:
    return {"id": person["id"], "type": "private", "first_name": person["first_name"]}


GROUP = {"id": GROUP_ID, "type": "supergroup", "title": "Team"}
OTHER_GROUP = {"id": OTHER_GROUP_ID, "type": "group", "title": "Others"}
FORUM = {"id": FORUM_ID, "type": "supergroup", "title": "Forum", "is_forum": True}


class ApiError(Exception):
    def __init__(self, status: int, description: str, **parameters: Any) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.parameters = parameters


@dataclass
class Call:
    method: str
    params: dict[str, Any]


@dataclass
class Failure:
    method: str
    error: ApiError
    times: int = 1


@dataclass
class Sent:
    """A message of the bot's as the chat shows it now."""

    chat_id: int
    message_id: int
    text: str  # visible text (markup parsed)
    html: str | None  # what was sent with parse_mode=HTML, if it was
    reply_to: int | None
    thread_id: int | None
    edits: int = 0
    deleted: bool = False


class _Html(HTMLParser):
    """Telegram's HTML rules, as far as Beseda needs them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _TAGS:
            raise ApiError(400, f"Bad Request: can't parse entities: Unsupported start tag {tag}")
        self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open.pop() != tag:
            raise ApiError(400, f"Bad Request: can't parse entities: Unexpected end tag {tag}")

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def visible(text: str, parse_mode: str | None) -> str:
    if parse_mode is None:
        return text
    if parse_mode != "HTML":
        raise ApiError(400, f"Bad Request: unsupported parse_mode {parse_mode}")
    if re.search(r"&(?![a-zA-Z]+;|#\d+;|#x[0-9a-fA-F]+;)", text):
        raise ApiError(400, "Bad Request: can't parse entities: Unsupported entity")
    parser = _Html()
    parser.feed(text)
    parser.close()
    if parser.open:
        raise ApiError(400, "Bad Request: can't parse entities: Can't find end tag")
    return "".join(parser.text)


def utf16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def auto_entities(text: str) -> list[dict[str, Any]]:
    """What Telegram's servers mark in a person's message: a leading /command, @mentions."""
    entities = []
    if match := re.match(r"/[A-Za-z0-9_]+(@[A-Za-z0-9_]+)?", text):
        entities.append({"type": "bot_command", "offset": 0, "length": len(match.group())})
    for match in re.finditer(r"(?<![\w@])@[A-Za-z0-9_]{5,32}", text):
        offset = utf16(text[: match.start()])
        entities.append({"type": "mention", "offset": offset, "length": utf16(match.group())})
    return entities


class TelegramFake:
    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.calls: list[Call] = []
        self.failures: list[Failure] = []
        self.garbled: dict[str, int] = {}  # method -> answers left that are not UTF-8
        self.sent: dict[tuple[int, int], Sent] = {}
        self.received: dict[tuple[int, int], dict[str, Any]] = {}  # people's messages
        self.files: dict[str, tuple[str, bytes | None]] = {}  # file id -> (path, content)
        self.webhook: tuple[str, str] | None = None  # (url, secret token)
        self.deliveries: list[int] = []  # statuses the webhook answered
        self.commands: dict[str, list[dict[str, Any]]] = {}  # language -> commands
        self.confirmed = 0  # every update below this id is confirmed
        self._updates: list[dict[str, Any]] = []
        self._update_ids = itertools.count(1000)
        self._message_ids = itertools.count(1)
        self._changed = asyncio.Condition()
        self._closing = False
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None
        self.port = 0

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._api)
        app.router.add_get("/file/bot{token}/{path:.*}", self._file)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        self._closing = True
        async with self._changed:
            self._changed.notify_all()
        if self._client is not None:
            await self._client.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- test controls -----------------------------------------------------------------------

    async def wait_for(self, predicate: Callable[[], bool], seconds: float = 10) -> None:
        async def waiter() -> None:
            async with self._changed:
                await self._changed.wait_for(predicate)

        await asyncio.wait_for(waiter(), seconds)

    def fail_next(
        self, method: str, status: int, description: str, times: int = 1, **parameters: Any
    ) -> None:
        self.failures.append(Failure(method, ApiError(status, description, **parameters), times))

    def garble_next(self, method: str, times: int = 1) -> None:
        """The next answers to ``method`` are not UTF-8 (a broken proxy in front of the API)."""
        self.garbled[method] = self.garbled.get(method, 0) + times

    def calls_of(self, method: str) -> list[dict[str, Any]]:
        return [c.params for c in self.calls if c.method == method]

    def texts(self, chat_id: int) -> list[str]:
        """The bot's messages in a chat as shown now, oldest first."""
        return [s.text for s in self.sent.values() if s.chat_id == chat_id and not s.deleted]

    def shown(self, chat_id: int) -> list[Sent]:
        return [s for s in self.sent.values() if s.chat_id == chat_id and not s.deleted]

    def add_file(self, name: str, content: bytes | None) -> dict[str, Any]:
        """A document people can send; content None: the download fails (404)."""
        file_id = f"file-{len(self.files) + 1}"
        # Telegram's file paths keep only the extension of the name the person gave.
        self.files[file_id] = (f"documents/{file_id}{PurePosixPath(name).suffix}", content)
        return {
            "file_id": file_id,
            "file_unique_id": f"u{file_id}",
            "file_name": name,
            "mime_type": "text/plain",
            "file_size": len(content or b""),
        }

    async def send(
        self,
        text: str | None,
        *,
        chat: dict[str, Any] | None = None,
        author: dict[str, Any] = ALICE,
        reply_to: int | dict[str, Any] | None = None,
        thread_id: int | None = None,
        document: dict[str, Any] | None = None,
        date: float | None = None,
        quote: str | None = None,
    ) -> int:
        """A person writes: the message becomes an update (polled, or posted to the webhook)."""
        chat = chat or private(author)
        message_id = next(self._message_ids)
        message: dict[str, Any] = {
            "message_id": message_id,
            "date": int(date if date is not None else time.time()),
            "chat": chat,
            "from": author,
        }
        if text is not None:
            key = "caption" if document else "text"
            message[key] = text
            if entities := auto_entities(text):
                message["entities" if key == "text" else "caption_entities"] = entities
        if document is not None:
            message["document"] = document
        if thread_id is not None:
            message["message_thread_id"] = thread_id
            message["is_topic_message"] = True
            if reply_to is None:  # what Telegram puts into every topic message
                reply_to = self._topic_root(chat, thread_id)
        if isinstance(reply_to, int):
            reply_to = self._as_message(chat["id"], reply_to)
        if reply_to is not None:
            message["reply_to_message"] = reply_to
        if quote is not None:
            message["quote"] = {"text": quote, "position": 0}
        self.received[(chat["id"], message_id)] = message
        await self._deliver({"update_id": next(self._update_ids), "message": message})
        return message_id

    async def deliver(self, update: dict[str, Any]) -> int:
        """An update as given (fields aiogram may not read), with the next update id."""
        update_id = next(self._update_ids)
        await self._deliver({"update_id": update_id, **update})
        return update_id

    def _topic_root(self, chat: dict[str, Any], thread_id: int) -> dict[str, Any]:
        return {
            "message_id": thread_id,
            "date": int(time.time()),
            "chat": chat,
            "from": ALICE,
            "message_thread_id": thread_id,
            "forum_topic_created": {"name": "topic", "icon_color": 7322096},
        }

    def _as_message(self, chat_id: int, message_id: int) -> dict[str, Any]:
        """A message as Telegram nests it in a reply: without its own reply_to_message."""
        if (chat_id, message_id) in self.received:
            nested = dict(self.received[(chat_id, message_id)])
            nested.pop("reply_to_message", None)
            return nested
        sent = self.sent[(chat_id, message_id)]
        return {
            "message_id": message_id,
            "date": int(time.time()),
            "chat": {"id": chat_id, "type": "private" if chat_id > 0 else "supergroup"},
            "from": BOT,
            "text": sent.text,
        }

    async def _deliver(self, update: dict[str, Any]) -> None:
        if self.webhook is None:
            async with self._changed:
                self._updates.append(update)
                self._changed.notify_all()
            return
        url, secret = self.webhook
        if self._client is None:
            self._client = aiohttp.ClientSession()
        async with self._client.post(
            url, json=update, headers={"X-Telegram-Bot-Api-Secret-Token": secret}
        ) as response:
            self.deliveries.append(response.status)

    # -- the API -----------------------------------------------------------------------------

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        if request.match_info["token"] != self.token:
            return _error(ApiError(401, "Unauthorized"))
        params = await _params(request)
        async with self._changed:
            self.calls.append(Call(method, params))
            self._changed.notify_all()
        if self.garbled.get(method):
            self.garbled[method] -= 1
            return web.Response(
                body=b'{"ok": true, "result": "\xff\xfe"}', content_type="application/json"
            )
        try:
            self._maybe_fail(method)
            handler = getattr(self, f"_m_{method}", None)
            if handler is None:
                raise ApiError(404, "Not Found: method not found")
            result = await handler(params)
        except ApiError as exc:
            return _error(exc)
        async with self._changed:
            self._changed.notify_all()
        return web.json_response({"ok": True, "result": result})

    def _maybe_fail(self, method: str) -> None:
        for failure in self.failures:
            if failure.method == method and failure.times > 0:
                failure.times -= 1
                raise failure.error

    async def _file(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return web.Response(status=401)
        for path, content in self.files.values():
            if path == request.match_info["path"] and content is not None:
                return web.Response(body=content)
        return web.Response(status=404, text="Not Found")

    async def _m_getMe(self, _params: dict[str, Any]) -> dict[str, Any]:
        return {**BOT, "can_join_groups": True, "can_read_all_group_messages": False}

    async def _m_deleteWebhook(self, _params: dict[str, Any]) -> bool:
        self.webhook = None
        return True

    async def _m_setWebhook(self, params: dict[str, Any]) -> bool:
        self.webhook = (params["url"], params.get("secret_token", ""))
        return True

    async def _m_getWebhookInfo(self, _params: dict[str, Any]) -> dict[str, Any]:
        return {
            "url": self.webhook[0] if self.webhook else "",
            "has_custom_certificate": False,
            "pending_update_count": len(self._updates),
        }

    async def _m_getUpdates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        if self.webhook is not None:
            raise ApiError(409, "Conflict: can't use getUpdates method while webhook is active")
        offset = int(params.get("offset") or 0)
        deadline = time.monotonic() + float(params.get("timeout") or 0)
        async with self._changed:
            if offset:
                self.confirmed = max(self.confirmed, offset)
                self._updates = [u for u in self._updates if u["update_id"] >= offset]
            while not self._updates and not self._closing:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    await asyncio.wait_for(self._changed.wait(), left)
                except TimeoutError:
                    break
            return list(self._updates[:100])

    async def _m_sendMessage(self, params: dict[str, Any]) -> dict[str, Any]:
        chat_id = int(params["chat_id"])
        text = str(params["text"])
        shown = self._checked(text, params.get("parse_mode"))
        reply = params.get("reply_parameters") or {}
        thread = params.get("message_thread_id")
        message_id = next(self._message_ids)
        self.sent[(chat_id, message_id)] = Sent(
            chat_id,
            message_id,
            shown,
            text if params.get("parse_mode") else None,
            reply.get("message_id"),
            int(thread) if thread is not None else None,
        )
        return self._bot_message(chat_id, message_id, shown)

    async def _m_editMessageText(self, params: dict[str, Any]) -> dict[str, Any]:
        key = (int(params["chat_id"]), int(params["message_id"]))
        sent = self.sent.get(key)
        if sent is None or sent.deleted:
            raise ApiError(400, "Bad Request: message to edit not found")
        text = str(params["text"])
        shown = self._checked(text, params.get("parse_mode"))
        markup = text if params.get("parse_mode") else None
        if shown == sent.text and markup == sent.html:
            raise ApiError(
                400,
                "Bad Request: message is not modified: specified new message content and "
                "reply markup are exactly the same as a current content and reply markup "
                "of the message",
            )
        sent.text, sent.html, sent.edits = shown, markup, sent.edits + 1
        return self._bot_message(key[0], key[1], shown)

    async def _m_deleteMessage(self, params: dict[str, Any]) -> bool:
        sent = self.sent.get((int(params["chat_id"]), int(params["message_id"])))
        if sent is None or sent.deleted:
            raise ApiError(400, "Bad Request: message to delete not found")
        sent.deleted = True
        return True

    async def _m_sendChatAction(self, params: dict[str, Any]) -> bool:
        return True

    async def _m_sendMessageDraft(self, params: dict[str, Any]) -> bool:
        if int(params["chat_id"]) < 0:
            raise ApiError(400, "Bad Request: TEXTDRAFT_PEER_INVALID")
        if not int(params.get("draft_id") or 0):
            raise ApiError(400, "Bad Request: draft_id must be non-zero")
        self._checked(str(params.get("text") or ""), params.get("parse_mode"))
        return True

    async def _m_setMyCommands(self, params: dict[str, Any]) -> bool:
        self.commands[params.get("language_code") or ""] = params["commands"]
        return True

    async def _m_getFile(self, params: dict[str, Any]) -> dict[str, Any]:
        file_id = params["file_id"]
        if file_id not in self.files:
            raise ApiError(400, "Bad Request: invalid file_id")
        path, content = self.files[file_id]
        return {
            "file_id": file_id,
            "file_unique_id": f"u{file_id}",
            "file_size": len(content or b""),
            "file_path": path,
        }

    def _checked(self, text: str, parse_mode: str | None) -> str:
        shown = visible(text, parse_mode)
        if not shown.strip():
            raise ApiError(400, "Bad Request: message text is empty")
        if utf16(shown) > 4096:
            raise ApiError(400, "Bad Request: message is too long")
        return shown

    def _bot_message(self, chat_id: int, message_id: int, text: str) -> dict[str, Any]:
        chat = {"id": chat_id, "type": "private" if chat_id > 0 else "supergroup"}
        return {
            "message_id": message_id,
            "date": int(time.time()),
            "chat": chat,
            "from": BOT,
            "text": text,
        }


async def _params(request: web.Request) -> dict[str, Any]:
    """Parameters as Telegram reads them: a form (objects JSON-encoded) or a JSON body."""
    if request.content_type == "application/json":
        body = await request.json()
        return body if isinstance(body, dict) else {}
    params: dict[str, Any] = {}
    for key, value in (await request.post()).items():
        text = value if isinstance(value, str) else ""
        if key not in _STRINGS and text[:1] in "[{":
            try:
                params[key] = json.loads(text)
                continue
            except ValueError:
                pass
        params[key] = text
    return params


def _error(exc: ApiError) -> web.Response:
    body: dict[str, Any] = {
        "ok": False,
        "error_code": exc.status,
        "description": exc.description,
    }
    if exc.parameters:
        body["parameters"] = exc.parameters
    return web.json_response(body, status=exc.status)
