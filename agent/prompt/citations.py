"""Sources under an answer: which retrieved documents it drew on, numbered as in the prompt.

The prompt numbers the retrieved chunks ``[1]``, ``[2]`` … and asks the model to cite them, but
the person reading the answer never sees that numbering, and small models rarely cite at all.
So Beseda ends an answer that used the documents with a line naming them:

    Sources: [1] zorbel.md; [2] handbook.pdf, p. 4

A chunk is listed when the model cited its number, or when the answer repeats words of the
chunk that the question did not contain: two ordinary words, or one name or number (what an
answer typically takes from a document). Answers that do not use the documents get no line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Protocol

from agent.i18n import Lang, detect
from agent.i18n import catalog as texts

# Words an answer must share with a chunk (beyond the question's) for the chunk to be listed.
MIN_SHARED_WORDS = 2
# Compared by their first letters, so that Russian case endings still match
# ("Окафор" / "Окафора"); shorter words are too common to tell anything.
STEM_LETTERS = 5
MIN_WORD_LETTERS = 4
WORD = re.compile(r"\w+", re.UNICODE)
# Common words that say nothing about where an answer came from (English and Russian).
_STOPWORD_LIST = """
    about above after again also because been before being below between both cannot could
    does doing down during each from further have having here into itself just more most
    other over same should some such than that their them then there these they this those
    through under until very were what when where which while whom with would your yours
    answer question source sources document think know
    было были быть будет если есть именно какой когда который может можно между нужно
    очень потому после перед почему также только тогда чтобы этого этой этот этом этих
    ответ вопрос источник документ знаю думаю
"""
STOPWORDS = frozenset(_STOPWORD_LIST.split())
MARKER = re.compile(r"\[(\d{1,2})\]")


class Source(Protocol):
    @property
    def label(self) -> str: ...

    @property
    def text(self) -> str: ...


def sources_line(
    answer: str, question: str, sources: Sequence[Source], lang: Lang | None = None
) -> str:
    """The "Sources: …" line for ``answer``, or "" when it used none of ``sources``; in
    ``lang`` (the core passes the message's, agent/i18n), else in the answer's language."""
    if not sources or not answer.strip():
        return ""
    cited = {int(n) for n in MARKER.findall(answer)}
    answer_words = _stems(answer) - _stems(question)
    used = [
        (number, source)
        for number, source in enumerate(sources, 1)
        if number in cited or _draws_on(answer_words, source.text)
    ]
    if not used:
        return ""
    # The same file can hold several chunks: each keeps its prompt number, as the model cites.
    listed = "; ".join(f"[{number}] {source.label}" for number, source in used)
    return f"{texts.SOURCES(lang or detect(answer) or 'en')} {listed}"


def with_sources(
    answer: str, question: str, sources: Sequence[Source], lang: Lang | None = None
) -> str:
    """``answer`` followed by its sources line (if any), as it is shown and stored."""
    line = sources_line(answer, question, sources, lang)
    return f"{answer}\n\n{line}" if line else answer


def _draws_on(answer_words: set[str], chunk: str) -> bool:
    shared = answer_words & _stems(chunk)
    return len(shared) >= MIN_SHARED_WORDS or bool(shared & _names_and_numbers(chunk))


def _names_and_numbers(text: str) -> set[str]:
    """Stems of capitalised words inside sentences (names, places) and of numbers."""
    found = []
    for match in WORD.finditer(text):
        word = match.group()
        before = text[: match.start()].rstrip()
        if word.isdigit() or (word[0].isupper() and before and before[-1] not in ".!?#:\n"):
            found.append(word.lower())
    return set(_stem_words(found))


def _stems(text: str) -> set[str]:
    return set(_stem_words(WORD.findall(text.lower())))


def _stem_words(words: Iterable[str]) -> Iterable[str]:
    for word in words:
        if len(word) >= MIN_WORD_LETTERS and not word.isdigit() and word not in STOPWORDS:
            yield word[:STEM_LETTERS]
        elif word.isdigit() and len(word) >= 2:  # years, amounts: distinctive facts
            yield word
