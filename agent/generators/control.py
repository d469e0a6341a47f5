"""Only the chat template may write control tokens.

A message that contains ``<|im_end|>\\n<|im_start|>system`` must not become a system turn.
Locally, the rendered prompt is split into the template's own text, tokenised with
``special=True`` so its markers become control tokens, and the messages' text (user turns,
names, summaries, document chunks, memories, lore: everything that reaches a message's
``content``), tokenised with ``special=False`` so any marker in it stays plain text.

The split comes from rendering the template once more with a placeholder for every content:
the text between the placeholders is the template's. It is trusted only when putting the real
contents back into that skeleton gives exactly the prompt the template renders; otherwise (a
template that rewrites contents in ways other than trimming) the contents are neutralised
with :func:`neutralise` and the prompt is tokenised as a whole.

For a remote server, which renders the template itself, :func:`neutralise` is applied to every
message's content before it is sent.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import replace

from agent.generators.base import ChatMessage

# A placeholder per message: private-use code points that no real text in a prompt carries
# (contents are checked for them below).
_OPEN, _CLOSE = "\ue000", "\ue001"
_PLACEHOLDER = re.compile(f"{_OPEN}(\\d+){_CLOSE}")

# Control-token spellings of the chat templates in common use: ChatML and most recent models'
# <|...|> tokens (Qwen, Llama 3, Phi, SmolLM), Gemma's turn markers, Llama 2 / Mistral's
# [INST] and <<SYS>>, and the sentence markers <s>, </s>, <bos>, <eos>.
CONTROL_PATTERN = re.compile(
    r"<\|[A-Za-z0-9_./:-]{1,40}\|>"
    r"|</?(?:start_of_turn|end_of_turn|bos|eos|pad|unk|s)>"
    r"|\[/?INST\]|<</?SYS>>"
)
# U+2060 WORD JOINER: invisible, and no tokenizer's control token contains it.
_JOINER = "\u2060"


def neutralise(text: str) -> str:
    """``text`` with every control-token spelling broken by an invisible word joiner after
    its first character, so no tokenizer or template reads it as a marker."""
    return CONTROL_PATTERN.sub(lambda m: m.group(0)[0] + _JOINER + m.group(0)[1:], text)


def neutralised(messages: Sequence[ChatMessage]) -> list[ChatMessage]:
    """The messages with their contents neutralised (for servers that apply the template)."""
    return [replace(m, content=neutralise(m.content)) for m in messages]


Render = Callable[[Sequence[ChatMessage]], str]
Tokenize = Callable[[str, bool], list[int]]


def split_prompt(render: Render, messages: Sequence[ChatMessage]) -> list[tuple[str, bool]]:
    """The rendered prompt as ``(text, is_template)`` pieces, in order.

    Joining the texts gives exactly ``render(messages)``. Pieces marked as template may be
    tokenised with control tokens; the others must not be.
    """
    prompt = render(messages)
    if any(_OPEN in m.content or _CLOSE in m.content for m in messages):
        return [(render(neutralised(messages)), True)]
    skeleton = render([replace(m, content=f"{_OPEN}{i}{_CLOSE}") for i, m in enumerate(messages)])
    pieces = _fill(skeleton, [m.content for m in messages], prompt)
    if pieces is None:
        return [(render(neutralised(messages)), True)]
    return pieces


def prompt_tokens(render: Render, tokenize: Tokenize, messages: Sequence[ChatMessage]) -> list[int]:
    """The prompt's tokens with control tokens only where the template wrote them.

    ``tokenize(text, special)`` must not add a BOS token (templates write their own)."""
    tokens: list[int] = []
    for text, is_template in split_prompt(render, messages):
        if text:
            tokens.extend(tokenize(text, is_template))
    return tokens


def _fill(skeleton: str, contents: list[str], prompt: str) -> list[tuple[str, bool]] | None:
    """The prompt cut where the skeleton's placeholders are, or None when it does not fit.

    Each content is placed as it is or trimmed (templates often write ``content | trim``),
    whichever the rendered prompt holds there. A placeholder the template repeats (a copied
    message) makes it give up; one it drops is fine.
    """
    pieces: list[tuple[str, bool]] = []
    seen: set[int] = set()
    at = 0  # in the skeleton
    pos = 0  # in the prompt
    for match in _PLACEHOLDER.finditer(skeleton):
        index = int(match.group(1))
        if index in seen or index >= len(contents):
            return None
        seen.add(index)
        template = skeleton[at : match.start()]
        if not prompt.startswith(template, pos):
            return None
        pos += len(template)
        pieces.append((template, True))
        following = _PLACEHOLDER.split(skeleton[match.end() :], maxsplit=1)[0]
        for content in dict.fromkeys((contents[index], contents[index].strip())):
            if prompt.startswith(content + following, pos):
                break
        else:
            return None
        pieces.append((content, False))
        pos += len(content)
        at = match.end()
    if prompt[pos:] != skeleton[at:]:
        return None
    pieces.append((skeleton[at:], True))
    return pieces
