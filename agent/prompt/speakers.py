"""Who said what in a group chat: the names user turns carry in the prompt.

A person's display name is text from the platform, so it is sanitised before the model sees
it (:func:`clean_name`): one line, no control or invisible characters, no colon, nothing
that reads as a chat template's token or a role marker, at most ``NAME_CHARS``
characters. Two people whose names clean to the same text stay apart: the one who used it
second in the channel gets a short suffix derived from their user id (:class:`SpeakerBook`).

The label is computed once, when the turn is stored, and stored with it: a turn renders the
same for as long as it stays in the history window, which keeps the prompt's cached prefix
byte-identical.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import OrderedDict
from collections.abc import Iterable

from memory.history import HistoryStore
from memory.records import StoredMessage

NAME_CHARS = 32
# Channels whose label owners are kept in memory; past that the least recent is re-read.
MAX_CHANNELS = 2048
# Labels remembered per channel (the oldest claims are dropped first).
MAX_LABELS = 512
# Words that open a role header in chat formats ("Assistant:", "### System", "<|user|>").
ROLE_WORDS = frozenset(
    {"system", "assistant", "user", "model", "human", "ai", "bot", "developer", "tool",
     "function", "ipython", "instruction", "response", "input", "output"}
)  # fmt: skip
# Control tokens of common templates, spelled out: ChatML and Llama 3 ``<|…|>``, Gemma's
# turn markers, Llama 2's ``[INST]``/``<<SYS>>``, ``<s>``/``</s>``, ``<bos>``.
_TOKENS = re.compile(
    r"<\|[^|>]{0,40}\|>|</?(?:s|bos|eos|pad|unk)>|<(?:start|end)_of_turn>|\[/?INST\]|<</?SYS>>",
    re.IGNORECASE,
)
# Characters that template tokens and markdown headers are built from.
_MARKUP = str.maketrans(dict.fromkeys("<>[]|#`*", " "))
# Invisible letters and symbols people use as "empty" names (Hangul fillers, braille blank).
_FILLERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")
# A bare Matrix user id as a name: "@alice:example.org" reads as "@alice".
_MATRIX_ID = re.compile(r"^@([^:\s]+):\S+$")


def clean_name(name: str | None) -> str:
    """``name`` as plain text for the model, or "" when nothing readable is left."""
    if not name:
        return ""
    text = unicodedata.normalize("NFKC", name)
    text = _MATRIX_ID.sub(r"@\1", text.strip())
    text = "".join(_visible(char) for char in text)
    text = _TOKENS.sub(" ", text).translate(_MARKUP).replace(":", " ")
    text = " ".join(text.split())[:NAME_CHARS].strip()
    first = text.split(" ", 1)[0].casefold() if text else ""
    if first.strip(".,;!?-_'\"()") in ROLE_WORDS:
        # "assistant …" would read as the assistant's own turn: a handle cannot.
        text = "@" + text[: NAME_CHARS - 1]
    return text


def _visible(char: str) -> str:
    category = unicodedata.category(char)
    if category in {"Cc", "Zl", "Zp"}:  # control characters, line and paragraph breaks
        return " "
    # Cf format (zero-width, direction marks), Co private use, Cs surrogates, Cn unassigned.
    if category in {"Cf", "Co", "Cs", "Cn"} or char in _FILLERS:
        return ""
    return char


def id_suffix(author_id: str) -> str:
    """A short, stable tag from a user id, to tell two people with the same name apart."""
    return "#" + hashlib.sha256(author_id.encode("utf-8")).hexdigest()[:4]


def label_of(turn: StoredMessage) -> str | None:
    """How a stored user turn names its author: its stored label, else (a turn stored
    before labels existed) its author's name, cleaned."""
    if turn.speaker is not None:
        return turn.speaker or None
    return clean_name(turn.author_name) or None


def named(label: str | None, text: str) -> str:
    """A user turn's text as the model sees it when speaker names are on."""
    return f"{label}: {text}" if label else text


def unlabel(reply: str, labels: Iterable[str]) -> str:
    """``reply`` without a leading ``Name:`` copied from the prompt's own format.

    Small models imitate the ``Name: text`` turns and start their answer with the asker's
    name, someone else's, or their own ("Carol: I drink tea."): that would read as if the
    person had said it, and the stored reply would teach the model the habit. Only a name
    the prompt showed is taken off.
    """
    head, colon, rest = reply.partition(":")
    known = {label.casefold() for label in labels}
    if colon and rest.strip() and head.strip().casefold() in known:
        return rest.strip()
    return reply


class SpeakerBook:
    """The label each new user turn is stored with, unique per person within a channel.

    The first person to use a name in a channel keeps it; anyone else whose name cleans to
    the same text gets it with :func:`id_suffix`. A channel's claims are read from its recent
    history the first time it is seen and kept up to date in memory afterwards; checking and
    claiming happen without an ``await`` in between, so two messages arriving together
    cannot both take a name.
    """

    def __init__(self, history: HistoryStore, history_limit: int = 200) -> None:
        self._history = history
        self._limit = max(history_limit, 1)
        # channel key -> casefolded label -> author id
        self._owners: OrderedDict[str, OrderedDict[str, str]] = OrderedDict()

    async def label(self, channel_key: str, author_id: str, author_name: str) -> str:
        owners = self._owners.get(channel_key)
        if owners is None:
            turns = await self._history.conversation(channel_key, limit=self._limit)
            owners = self._owners.get(channel_key)  # filled meanwhile by another message?
            if owners is None:
                owners = _claims(turns)
                self._owners[channel_key] = owners
                while len(self._owners) > MAX_CHANNELS:
                    self._owners.popitem(last=False)
        self._owners.move_to_end(channel_key)
        base = clean_name(author_name) or f"Person {id_suffix(author_id)}"
        owner = owners.get(base.casefold())
        label = base if owner in {None, author_id} else _suffixed(base, author_id)
        owners[label.casefold()] = author_id
        owners.move_to_end(label.casefold())
        while len(owners) > MAX_LABELS:
            owners.popitem(last=False)
        return label


def _suffixed(base: str, author_id: str) -> str:
    suffix = id_suffix(author_id)
    return f"{base[: NAME_CHARS - len(suffix) - 1].rstrip()} {suffix}"


def _claims(turns: list[StoredMessage]) -> OrderedDict[str, str]:
    """Label -> author from stored turns, oldest first: the first claim of a label wins."""
    owners: OrderedDict[str, str] = OrderedDict()
    for turn in turns:
        if turn.role != "user" or not turn.author_id:
            continue
        label = label_of(turn)
        if label is not None:
            owners.setdefault(label.casefold(), turn.author_id)
    return owners
