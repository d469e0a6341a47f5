"""Rolling summaries of the turns evicted from the history window, in the conversation's
language."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from agent.generators.base import ChatMessage, Generator, SamplingParams
from agent.i18n import Lang, detect
from agent.prompt.speakers import label_of
from memory.records import StoredMessage

# (system instruction, heading of the previous summary, heading of the new turns, request)
_INSTRUCTIONS = {
    "en": (
        "You summarise conversations. Write a short summary, in English, of the conversation "
        "you are given: a few sentences that keep names, facts, numbers, decisions and open "
        "questions. Do not add anything that was not said.",
        "Summary so far:",
        "New part of the conversation:",
        "Write the updated summary.",
    ),
    "ru": (
        "Ты кратко пересказываешь разговоры. Напиши по-русски краткое содержание разговора: "
        "несколько предложений, в которых сохранены имена, факты, числа, решения и открытые "
        "вопросы. Не добавляй ничего, чего не было сказано.",
        "Краткое содержание до этого:",
        "Новая часть разговора:",
        "Напиши обновлённое краткое содержание.",
    ),
}


def dominant_language(texts: Sequence[str]) -> Lang:
    """``"ru"`` when Cyrillic letters outnumber Latin ones, else ``"en"`` (agent/i18n)."""
    return detect("\n".join(texts)) or "en"


def summary_prompt(
    previous: str | None, turns: Sequence[StoredMessage], assistant_name: str
) -> list[ChatMessage]:
    language = dominant_language([t.text for t in turns])
    system, previous_heading, new_heading, request = _INSTRUCTIONS[language]
    lines = [
        f"{assistant_name if t.role == 'assistant' else (label_of(t) or 'user')}: {t.text}"
        for t in turns
    ]
    parts = [f"{previous_heading}\n{previous}"] if previous else []
    parts += [f"{new_heading}\n" + "\n".join(lines), request]
    return [ChatMessage("system", system), ChatMessage("user", "\n\n".join(parts))]


async def summarize(
    generator: Generator,
    previous: str | None,
    turns: Sequence[StoredMessage],
    *,
    assistant_name: str,
    max_tokens: int,
) -> str:
    """The updated summary. Turns that do not fit one prompt are summarised in chunks."""
    params = SamplingParams(temperature=0.0, repeat_penalty=1.1, max_tokens=max_tokens)
    room = generator.n_ctx - max_tokens - 16
    summary = previous
    remaining = list(turns)
    while remaining:
        base = generator.count_prompt_tokens(summary_prompt(summary, [], assistant_name))
        size, used = 0, base
        while size < len(remaining):
            used += generator.count_tokens(remaining[size].text) + 8
            if used > room and size > 0:
                break
            size += 1
        chunk = [_fit(generator, turn, room - base) for turn in remaining[:size]]
        remaining = remaining[size:]
        stream = generator.stream(summary_prompt(summary, chunk, assistant_name), params)
        summary = "".join([piece async for piece in stream]).strip() or summary
    return summary or ""


def _fit(generator: Generator, turn: StoredMessage, room: int) -> StoredMessage:
    """A single turn too long for a summary prompt keeps only its beginning."""
    if generator.count_tokens(turn.text) + 8 <= room:
        return turn
    keep = max(1, len(turn.text) * max(room - 8, 1) // max(generator.count_tokens(turn.text), 1))
    return replace(turn, text=turn.text[:keep] + " […]")
