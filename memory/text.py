"""Text that every store, encoder and driver accepts: valid Unicode, no NUL characters.

Python strings may hold lone UTF-16 surrogates (U+D800–U+DFFF): ``json.loads`` turns a
``"\\ud800"`` escape into one, and command-line arguments carry undecodable bytes as
surrogates (``surrogateescape``). They cannot be encoded as UTF-8, so the SQLite and
PostgreSQL drivers, Chroma, llama.cpp's tokenizer and stdout all fail on them. They are the
only code points a ``str`` can hold that UTF-8 cannot encode, so replacing them is all that
"valid" takes; a correctly paired surrogate (two halves of one character) is joined into the
character it spells.

JSON from outside (a chat platform's API) is read with :func:`loads_valid`, so that no such
string gets into a program at all.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, overload

REPLACEMENT = "\ufffd"
_SURROGATE = re.compile("[\ud800-\udfff]")
# A \uD800-\uDFFF escape in JSON text: a surrogate half, paired or not.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_SURROGATE_ESCAPE_BYTES = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def valid_text(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD (paired halves joined)."""
    if text.isascii() or _SURROGATE.search(text) is None:
        return text
    # UTF-16 keeps the halves as code units; decoding pairs them up and turns the lone
    # ones into U+FFFD.
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


@overload
def storable(value: str, limit: int | None = None) -> str: ...
@overload
def storable(value: None, limit: int | None = None) -> None: ...
def storable(value: str | None, limit: int | None = None) -> str | None:
    """Valid text without NUL characters (PostgreSQL refuses them, SQLite keeps them), cut to
    ``limit`` characters: the same on every database, whoever wrote it."""
    if value is None:
        return None
    value = valid_text(value).replace("\x00", "")
    return value if limit is None else value[:limit]


def valid_json(value: Any) -> Any:
    """A decoded JSON value with every string (keys too) made valid."""
    if isinstance(value, str):
        return valid_text(value)
    if isinstance(value, list):
        return [valid_json(item) for item in value]
    if isinstance(value, Mapping):
        return {valid_text(str(k)): valid_json(v) for k, v in value.items()}
    return value


def has_surrogate_escape(raw: str | bytes) -> bool:
    """Whether JSON text holds a surrogate escape (only then can a decoded string be invalid:
    UTF-8 itself cannot carry a surrogate)."""
    if isinstance(raw, bytes):
        return _SURROGATE_ESCAPE_BYTES.search(raw) is not None
    return _SURROGATE_ESCAPE.search(raw) is not None


def loads_valid(raw: str | bytes) -> Any:
    """``json.loads`` with every string valid (lone surrogate escapes become U+FFFD)."""
    value = json.loads(raw)
    return valid_json(value) if has_surrogate_escape(raw) else value
