"""The console adapter: chat in a terminal, or answer one message per line from a pipe."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import TextIO

from agent.events import Inbound, channel_key
from agent.i18n import detect
from agent.ports import ReplyTarget

log = logging.getLogger(__name__)

QUIT_WORDS = frozenset({"/quit", "/exit"})

with contextlib.suppress(ImportError):
    # Line editing and history for input(); it also puts the prompt on stdout, not stderr.
    import readline  # noqa: F401


class ConsoleReply:
    """Streams tokens to a text stream as they arrive."""

    def __init__(self, out: TextIO, err: TextIO, prefix: str | Callable[[], str]) -> None:
        self._out = out
        self._err = err
        # A callable is asked when the first words are shown: by then the persona that
        # answers has been chosen (after a `!persona`, it is another than the last one).
        self._prefix = prefix
        self._shown = False
        self._streamed: list[str] = []

    async def push(self, delta: str) -> None:
        if not self._shown:
            delta = delta.lstrip()
            if not delta:
                return
            self._out.write(self._label())
            self._shown = True
        self._streamed.append(delta)
        self._out.write(delta)
        self._out.flush()

    async def finish(self, text: str) -> None:
        if not self._shown:  # nothing was streamed (a non-streaming backend): show it whole
            self._out.write(self._label() + text)
        else:  # what the stream did not show: e.g. the sources line added after generation
            streamed = "".join(self._streamed).rstrip()
            if text.startswith(streamed):
                rest = text[len(streamed) :]
            elif streamed.endswith(text):  # the core took a copied "Name:" off the front
                rest = ""
            else:
                rest = "\n" + text
            self._out.write(rest)
        self._out.write("\n")
        self._out.flush()

    def _label(self) -> str:
        return self._prefix() if callable(self._prefix) else self._prefix

    async def fail(self, notice: str) -> None:
        if self._shown:
            self._out.write("\n")
            self._out.flush()
        self._err.write(notice + "\n")
        self._err.flush()


class ConsoleAdapter:
    """Interactive chat when stdin is a terminal; one message per line otherwise."""

    def __init__(
        self,
        *,
        channel: str,
        user_name: str,
        assistant_name: str,
        stdin: TextIO,
        stdout: TextIO,
        stderr: TextIO,
        interactive: bool,
        speaker: Callable[[str], str | None] | None = None,
        russian_hint: str | None = None,
    ) -> None:
        self.channel_key = channel_key("console", channel)
        self._user = user_name
        self._assistant = assistant_name
        # The name of the persona answering in a channel (Core.speaker), if known.
        self._speaker = speaker
        self._in = stdin
        self._out = stdout
        self._err = stderr
        self._interactive = interactive
        # Shown once, before the first Russian message is answered (the bundled model does
        # not speak Russian: the hint names the command that gets one that does).
        self._russian_hint = russian_hint
        self._lines: asyncio.Queue[str | None] = asyncio.Queue()
        self._want_line = threading.Event()
        self._stopped = asyncio.Event()
        self._reading = False

    @property
    def name(self) -> str:
        return "console"

    @property
    def connected(self) -> bool:
        """Reading input (for /healthz): from run() until the input ends or stop()."""
        return self._reading and not self._stopped.is_set()

    async def open_reply(self, inbound: Inbound) -> ConsoleReply:
        err = self._err if not self._interactive else self._out
        if not self._interactive:
            return ConsoleReply(self._out, err, "")
        speaker = self._speaker

        def label() -> str:
            name = speaker(inbound.channel_key) if speaker is not None else None
            return f"{name or self._assistant}> "

        return ConsoleReply(self._out, err, label)

    async def reopen(
        self, channel_key: str, platform_message_id: str | None
    ) -> ConsoleAdapter | None:
        """A message typed here before a restart: answered in this terminal, as it was."""
        del platform_message_id  # console lines have no ids; the channel is all there is
        return self if channel_key == self.channel_key else None

    def inbound(self, text: str) -> Inbound:
        return Inbound(
            platform="console",
            channel_key=self.channel_key,
            author_id=self._user,
            author_name=self._user,
            text=text,
            is_direct=True,
            # Whoever types at the console runs the process: admin commands are theirs.
            is_admin=True,
        )

    async def run(self, submit: Callable[[Inbound, ReplyTarget], Awaitable[object]]) -> None:
        loop = asyncio.get_running_loop()
        # A daemon thread, so a read blocked on the terminal never holds up the exit.
        threading.Thread(target=self._read_lines, args=(loop,), daemon=True).start()
        if self._interactive:
            self._out.write(
                f"Beseda console chat on channel {self.channel_key}. "
                "Type a message; /quit or Ctrl-D to leave.\n"
            )
        stopped = asyncio.ensure_future(self._stopped.wait())
        self._reading = True
        try:
            while not self._stopped.is_set():
                self._want_line.set()
                line = await self._lines.get()
                if line is None:
                    break
                text = line.strip()
                if not text:
                    continue
                if self._interactive and text in QUIT_WORDS:
                    break
                self._hint(text)
                try:
                    reply = await submit(self.inbound(text), self)
                except Exception:  # told already (e.g. the database is full); next line
                    log.exception("could not take a message on %s", self.channel_key)
                    continue
                if isinstance(reply, asyncio.Future):
                    # The next prompt appears only after the answer (or a stop).
                    await asyncio.wait([reply, stopped], return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._reading = False
            stopped.cancel()

    def _hint(self, text: str) -> None:
        if self._russian_hint and detect(text) == "ru":
            where = self._out if self._interactive else self._err
            where.write(self._russian_hint + "\n")
            where.flush()
            self._russian_hint = None

    def _read_lines(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            self._want_line.wait()
            self._want_line.clear()
            try:
                if self._interactive:
                    line: str | None = input(f"{self._user}> ")
                else:
                    line = self._in.readline() or None
            except EOFError:
                line = None
            except (OSError, ValueError):  # stdin closed under us
                line = None
            if loop.is_closed():
                return
            loop.call_soon_threadsafe(self._lines.put_nowait, line)
            if line is None:
                return

    async def stop(self) -> None:
        self._stopped.set()
        self._lines.put_nowait(None)
