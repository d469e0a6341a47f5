"""Retrieval quality on a file of questions: recall@1/@3 and MRR by source document.

The questions file (used by ``python -m agent search --eval`` and bench/retrieval.py) is a
JSON list of objects:

- ``question`` (text, required): what a user would ask;
- ``source`` (text, required): the document that answers it, as ``search`` names it (the
  path relative to the documents folder, e.g. ``manuals/router.pdf``);
- ``lang`` (optional): ``"<question language>-<document language>"``, e.g. ``"ru-en"`` for a
  Russian question about an English document. Questions whose two languages differ count
  as cross-language;
- any other key (``page``, ``evidence``, ...) is ignored.

The list may also be the ``questions`` of an object, one object per line (JSON Lines), or
a single question object.
A source is matched to the index as a person would name it (:func:`match_sources`): by the
end of its path (``open.2.txt`` for ``man2/open.2.txt``), with Windows separators, as an
absolute path inside the documents folder, in either Unicode form of its letters. A source
that names no indexed document, or several, is an error, not a silent miss: a typo would
otherwise read as bad retrieval.

A question is answered at rank r when its source is the r-th distinct document among the
ranked chunks; recall@k is the share answered at rank k or better, MRR the mean of 1/r.
"""

from __future__ import annotations

import json
import re
import statistics
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Ranked source names for a question, best first (duplicates allowed: the first counts).
Search = Callable[[str], Awaitable[Sequence[str]]]


class QuestionsFileError(ValueError):
    """A questions file that cannot be used; the message says where and why."""


@dataclass(frozen=True, slots=True)
class Question:
    question: str
    source: str
    lang: str = ""

    @property
    def cross(self) -> bool | None:
        """Whether question and document differ in language; None when not said."""
        langs = self.lang.split("-")
        return langs[0] != langs[1] if len(langs) == 2 and all(langs) else None


def load_questions(path: Path) -> list[Question]:
    try:
        raw = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise QuestionsFileError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise QuestionsFileError(f"{path}: not a UTF-8 text file: {exc}") from None
    data = _parse(path, raw)
    if isinstance(data, dict) and "questions" in data:
        data = data["questions"]
    elif isinstance(data, dict) and "question" in data:  # one question (a JSON Lines line)
        data = [data]
    if not isinstance(data, list) or not data:
        raise QuestionsFileError(f"{path}: expected a non-empty JSON list of questions")
    found = []
    for n, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise QuestionsFileError(f"{path}: entry {n} is not an object")
        values = {key: entry.get(key, "") for key in ("question", "source", "lang")}
        for key, value in values.items():
            if not isinstance(value, str) or (key != "lang" and not value.strip()):
                raise QuestionsFileError(f"{path}: entry {n}: {key!r} must be a non-empty text")
        # "RU-EN", "ru_en" and "ru → en" all mean "ru-en".
        lang = "-".join(re.findall(r"[^\W\d_]+", values["lang"].lower()))
        found.append(Question(values["question"], values["source"], lang))
    return found


def _parse(path: Path, raw: str) -> object:
    """The file's JSON: one document, or (JSON Lines) one object per non-empty line."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        lines = [line for line in raw.splitlines() if line.strip()]
        if len(lines) > 1:
            try:
                return [json.loads(line) for line in lines]
            except json.JSONDecodeError:
                pass
        raise QuestionsFileError(f"{path}: not a JSON file: {exc}") from None


def match_sources(
    questions: Sequence[Question], indexed: Collection[str], root: Path | None = None
) -> list[Question]:
    """``questions`` with each source named as the index names it (see the module doc).

    ``root``: the documents folder, for absolute paths. Raises :class:`QuestionsFileError`
    (without the file's name: the caller adds it) naming every source that matches no
    indexed document or several, with what the index calls its documents.
    """
    if not indexed:
        raise QuestionsFileError(
            "the index has no documents to measure (run `python -m agent ingest` first)"
        )
    exact = {_plain(name): name for name in indexed}
    by_file: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for plain, name in exact.items():
        by_file[plain.rsplit("/", 1)[-1]].append((plain, name))
    base = None
    if root is not None:
        base = unicodedata.normalize("NFC", root.resolve().as_posix()).rstrip("/") + "/"
    matched, problems = [], []
    for n, question in enumerate(questions):
        wanted = _plain(question.source, base)
        found = exact.get(wanted)
        candidates = [found] if found else _by_tail(wanted, by_file)
        if len(candidates) == 1:
            matched.append(Question(question.question, candidates[0], question.lang))
        elif candidates:
            shown = ", ".join(sorted(candidates)[:5])
            problems.append(f"entry {n}: {question.source!r} matches several documents: {shown}")
        else:
            problems.append(f"entry {n}: {question.source!r} is not in the index")
    if problems:
        example = min(indexed)
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise QuestionsFileError(
            f"{len(problems)} of {len(questions)} questions name no single indexed document:\n  "
            + "\n  ".join(problems[:10])
            + more
            + f"\n({len(indexed)} documents are indexed, named by their path under the "
            f"documents folder, e.g. {example!r})"
        )
    return matched


def _by_tail(wanted: str, by_file: dict[str, list[tuple[str, str]]]) -> list[str]:
    """Indexed names whose path ends with ``wanted`` ("open.2.txt") or that ``wanted`` ends
    with (the path under another folder than the documents folder)."""
    return [
        name
        for plain, name in by_file.get(wanted.rsplit("/", 1)[-1], [])
        if plain.endswith("/" + wanted) or wanted.endswith("/" + plain)
    ]


def _plain(name: str, base: str | None = None) -> str:
    """A document name compared as the index writes it: NFC letters, "/" between folders,
    relative to the folder ``base`` ("/.../documents/") when it is an absolute path in it."""
    text = unicodedata.normalize("NFC", name.strip()).replace("\\", "/")
    if base is not None and text.startswith("/"):
        text = text.removeprefix(base)
    while text.startswith("./"):
        text = text[2:]
    return text.lstrip("/")


@dataclass(frozen=True, slots=True)
class Scores:
    count: int
    recall_at_1: float
    recall_at_3: float
    mrr: float


@dataclass(slots=True)
class Report:
    """Each question's rank (None: not found), and the documents wrongly ranked first."""

    ranks: list[tuple[Question, int | None]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    # Wrong documents in a question's top 3, counted over questions: a "hub" that comes
    # back for many unrelated questions shows up here.
    intruders: Counter[str] = field(default_factory=Counter)

    def scores(self, group: str = "all") -> Scores | None:
        ranks = [r for q, r in self.ranks if _in_group(q, group)]
        if not ranks:
            return None
        n = len(ranks)
        return Scores(
            n,
            sum(1 for r in ranks if r == 1) / n,
            sum(1 for r in ranks if r is not None and r <= 3) / n,
            sum(1 / r for r in ranks if r is not None) / n,
        )

    def groups(self) -> list[str]:
        pairs = sorted({q.lang for q, _ in self.ranks if q.cross is not None})
        return ["all", "same", "cross", *pairs]

    def lines(self) -> list[str]:
        """key=value lines: overall, same-language and cross-language, per language pair."""
        out = []
        for group in self.groups():
            scores = self.scores(group)
            if scores is None:
                continue
            suffix = "" if group == "all" else f"_{group.replace('-', '_')}"
            out += [
                f"questions{suffix}={scores.count}",
                f"recall_at_1{suffix}={scores.recall_at_1:.3f}",
                f"recall_at_3{suffix}={scores.recall_at_3:.3f}",
                f"mrr{suffix}={scores.mrr:.3f}",
            ]
        if self.seconds:
            out.append(f"median_search_ms={statistics.median(self.seconds) * 1000:.1f}")
        if self.intruders:
            source, times = self.intruders.most_common(1)[0]
            out.append(f"top_intruder={source} ({times} questions)")
        return out


def _in_group(question: Question, group: str) -> bool:
    if group == "all":
        return True
    if group in {"same", "cross"}:
        return question.cross is (group == "cross")
    return question.lang == group


def rank(sources: Sequence[str], source: str) -> int | None:
    distinct = list(dict.fromkeys(sources))
    return distinct.index(source) + 1 if source in distinct else None


async def evaluate(
    search: Search, questions: Sequence[Question], clock: Callable[[], float] | None = None
) -> Report:
    report = Report()
    for question in questions:
        started = clock() if clock else 0.0
        sources = await search(question.question)
        if clock:
            report.seconds.append(clock() - started)
        report.ranks.append((question, rank(sources, question.source)))
        top = list(dict.fromkeys(sources))[:3]
        report.intruders.update(s for s in top if s != question.source)
    return report
