"""The peers of the Matrix tests: a person's nio client, and the bot under test."""

from __future__ import annotations

import asyncio
import io
import itertools
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from nio import (
    AsyncClient,
    AsyncClientConfig,
    LoginResponse,
    MatrixRoom,
    RoomCreateResponse,
    RoomMessageText,
    RoomSendResponse,
    TypingNoticeEvent,
    UploadResponse,
)

from adapters.matrix import MatrixAdapter
from agent.runtime.core import Core
from tests.matrix.synapse import Synapse
from tests.support.fakes import FakeGenerator

PASSWORD = "correct horse battery staple"
WAIT = 30.0
ENCRYPTION = {
    "type": "m.room.encryption",
    "state_key": "",
    "content": {"algorithm": "m.megolm.v1.aes-sha2"},
}
_numbers = itertools.count()


def new_user(server: Synapse, name: str) -> str:
    localpart = f"{name}{next(_numbers)}"
    return str(server.register(localpart, PASSWORD)["user_id"])


async def eventually(check: Callable[[], Any], what: str, seconds: float = WAIT) -> Any:
    for _ in range(int(seconds / 0.05)):
        if result := check():
            return result
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Human:
    """A person's Matrix client: creates rooms, writes, and sees what the bot shows."""

    def __init__(self, server: Synapse, user_id: str, store: Path) -> None:
        store.mkdir(parents=True, exist_ok=True)
        self.user_id = user_id
        self.client = AsyncClient(
            server.url,
            user_id,
            store_path=str(store),
            config=AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True),
        )
        self.events: list[tuple[str, dict[str, Any]]] = []  # (room id, event source)
        self.typing: list[tuple[str, tuple[str, ...]]] = []  # (room id, who is typing)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        reply = await self.client.login(PASSWORD, device_name="human")
        assert isinstance(reply, LoginResponse), reply
        self.client.add_event_callback(self._seen, RoomMessageText)
        self.client.add_ephemeral_callback(self._typing, TypingNoticeEvent)
        self._task = asyncio.create_task(
            self.client.sync_forever(timeout=3000, full_state=True, loop_sleep_time=50)
        )

    async def _seen(self, room: MatrixRoom, event: RoomMessageText) -> None:
        self.events.append((room.room_id, event.source))

    async def _typing(self, room: MatrixRoom, event: TypingNoticeEvent) -> None:
        self.typing.append((room.room_id, tuple(event.users)))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.client.close()

    async def create_room(
        self, invite: Sequence[str], *, encrypted: bool = False, direct: bool = False
    ) -> str:
        reply = await self.client.room_create(
            invite=list(invite),
            is_direct=direct,
            initial_state=[ENCRYPTION] if encrypted else [],
        )
        assert isinstance(reply, RoomCreateResponse), reply
        return str(reply.room_id)

    async def wait_joined(self, room_id: str, user_id: str) -> None:
        def joined() -> bool:
            room = self.client.rooms.get(room_id)
            # room.users lists invited members too.
            return room is not None and user_id in room.users and user_id not in room.invited_users

        await eventually(joined, f"{user_id} in {room_id}")

    async def say(self, room_id: str, text: str, **extra: Any) -> str:
        content: dict[str, Any] = {"msgtype": "m.text", "body": text, **extra}
        reply = await self.client.room_send(
            room_id, "m.room.message", content, ignore_unverified_devices=True
        )
        assert isinstance(reply, RoomSendResponse), reply
        return str(reply.event_id)

    async def send_file(
        self, room_id: str, name: str, data: bytes, *, encrypt: bool = False, **extra: Any
    ) -> str:
        """Upload ``data`` and post it as an m.file (encrypted for an encrypted room)."""
        reply, keys = await self.client.upload(
            io.BytesIO(data), "text/plain", filename=name, encrypt=encrypt, filesize=len(data)
        )
        assert isinstance(reply, UploadResponse), reply
        content: dict[str, Any] = {"msgtype": "m.file", "body": name, "info": {"size": len(data)}}
        if encrypt:
            assert keys is not None
            content["file"] = {**keys, "url": reply.content_uri}
        else:
            content["url"] = reply.content_uri
        content.update(extra)
        sent = await self.client.room_send(
            room_id, "m.room.message", content, ignore_unverified_devices=True
        )
        assert isinstance(sent, RoomSendResponse), sent
        return str(sent.event_id)

    def from_user(self, room_id: str, sender: str) -> list[dict[str, Any]]:
        return [e for r, e in self.events if r == room_id and e["sender"] == sender]

    def shown(self, room_id: str, sender: str) -> list[dict[str, Any]]:
        """The sender's messages as a client shows them: each with its latest edit applied."""
        events = self.from_user(room_id, sender)
        originals = [e for e in events if relation_of(e).get("rel_type") != "m.replace"]
        shown = []
        for original in originals:
            edits = [e for e in events if relation_of(e).get("event_id") == original["event_id"]]
            edits = [e for e in edits if relation_of(e).get("rel_type") == "m.replace"]
            content = edits[-1]["content"]["m.new_content"] if edits else original["content"]
            extra = {"content": content, "edits": len(edits), "relation": relation_of(original)}
            shown.append({**original, **extra})
        return shown

    async def answers(self, room_id: str, bot: str, count: int) -> list[dict[str, Any]]:
        await eventually(lambda: len(self.shown(room_id, bot)) >= count, f"{count} answers")
        return self.shown(room_id, bot)

    async def expect(self, room_id: str, bot: str, bodies: list[str]) -> list[dict[str, Any]]:
        """Wait until the bot's messages, edits applied, read ``bodies``."""

        def seen() -> list[str]:
            return [m["content"]["body"] for m in self.shown(room_id, bot)]

        try:
            await eventually(lambda: seen() == bodies, f"answers {bodies}")
        except AssertionError:
            assert seen() == bodies  # shows the difference
        return self.shown(room_id, bot)


def relation_of(event: dict[str, Any]) -> dict[str, Any]:
    relation = event["content"].get("m.relates_to")
    return relation if isinstance(relation, dict) else {}


class Bot:
    def __init__(
        self, adapter: MatrixAdapter, core: Core, generator: FakeGenerator, task: asyncio.Task[None]
    ) -> None:
        self.adapter = adapter
        self.core = core
        self.generator = generator
        self.task = task
        self.user_id = adapter.user_id

    async def idle(self) -> None:
        await eventually(lambda: not self.core._workers, "the core to be idle")

    async def stop(self) -> None:
        await self.adapter.stop()
        await asyncio.wait_for(self.task, WAIT)
        assert self.adapter.client.client_session is None, "the HTTP session was left open"
        await self.core.close(1)


StartBot = Callable[..., Awaitable[Bot]]


async def room_with_bot(human: Human, bot: Bot, **create: Any) -> str:
    room_id = await human.create_room([bot.user_id], **create)
    await human.wait_joined(room_id, bot.user_id)
    return room_id


async def human_room_with_others(alice: Human, bot: Bot, humans: Any) -> str:
    """A group room (three members): not a direct room, so only addressed messages count."""
    carol = await humans("carol")
    room = await alice.create_room([bot.user_id, carol.user_id])
    await alice.wait_joined(room, bot.user_id)
    await carol.client.join(room)
    await alice.wait_joined(room, carol.user_id)
    await carol.wait_joined(room, carol.user_id)  # her client has synced the room too
    return room


def next_number() -> int:
    return next(_numbers)
