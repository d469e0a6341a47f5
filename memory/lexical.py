"""Lexical search for documents: Russian and English Snowball stems, BM25, and query words
carried into the other language by their multilingual embedding neighbours.

Measured on the man-page benchmark (bench/retrieval.py), BM25 over stems finds the right
document for a same-language question far more often than the embedder alone (recall@3 0.84
against 0.64) but never across languages. Every word of the index vocabulary is embedded
once with the document embedder (multilingual: "каталог" lands next to "directory"), so a
question's words are translated into their nearest words of the other script, and BM25
then finds documents in both languages.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import numpy.typing as npt
import Stemmer

Vectors = npt.NDArray[np.float32]

_WORD = re.compile(r"\w+")
_CYRILLIC = re.compile(r"[а-яё]")
_CYRILLIC_RUN = re.compile(r"[а-яё]+")
_LATIN_RUN = re.compile(r"[a-z]+")
_LETTERS = re.compile(r"[a-zа-яё]{3,}")
# Words too common to carry meaning in a query or to be worth translating.
STOPWORDS = frozenset(
    (  # noqa: SIM905 - 200 words one a line would hide the list
        "a about after all also an and any are as at be been before being but by can "
        "could do does did doing each either else for from had has have how however i if "
        "in into is it its itself just may me might more most must my no nor not now of "
        "off on once one only or other our out over own same shall should so some such "
        "than that the their them then there these they this those through to too under "
        "until up upon very was we were what when where whether which while who whom why "
        "will with within without would yes you your "
        "а без более бы был была были было быть в вам вас весь во вот все всё всего всех "
        "вы где да даже для до его её ее если есть ещё еще же за здесь и из или им их к "
        "как какая какие какой каким каков когда кто ли либо лишь мне можно мы на над нам "
        "нас не него нее неё нет ни них но ну о об однако он она они оно от по под при "
        "про с со так также такой там то тогда того тоже той только том ты у уже хотя "
        "чего чей чем что чтобы чьё эта эти это этого этой этом этот я "
    ).split()
)
# BM25's usual constants.
K1 = 1.2
B = 0.75
# A query word is carried over to up to this many words of the other language, each as
# close to it as this (cosine of the embedder) and within MARGIN of its best match.
NEIGHBOURS = 3
MIN_SIMILARITY = 0.6
MARGIN = 0.1
# Translations remembered (then forgotten all at once: a few MB at most).
REMEMBERED = 20_000
# A query's words carried over are its first this many (a question has at most a few dozen;
# a 20,000-character message of made-up words would embed 2,700 of them, a second of CPU).
MAX_QUERY_WORDS = 64

_stemmers = {"ru": Stemmer.Stemmer("russian"), "en": Stemmer.Stemmer("english")}


def is_cyrillic(word: str) -> bool:
    return _CYRILLIC.search(word) is not None


def stem(word: str) -> str:
    return str(_stemmers["ru" if is_cyrillic(word) else "en"].stemWord(word))


def terms(text: str) -> list[str]:
    """The stems of ``text``'s words, stopwords left out, in order."""
    return [stem(w) for w in _WORD.findall(text.lower()) if w not in STOPWORDS]


def query_words(text: str) -> list[str]:
    """The words of a query worth translating: letters only, three or more, the first
    MAX_QUERY_WORDS distinct ones."""
    words = dict.fromkeys(w for w in _LETTERS.findall(text.lower()) if w not in STOPWORDS)
    return list(words)[:MAX_QUERY_WORDS]


def language(text: str) -> str:
    """``ru`` or ``en`` by the letters of ``text``: a Russian page quotes Latin names and code,
    so Cyrillic counts from 30 % of the letters."""
    lower = text.lower()
    # Runs of letters, not letters one by one: a third of the time (every chunk is looked
    # at when the copy is built).
    cyrillic = sum(map(len, _CYRILLIC_RUN.findall(lower)))
    latin = sum(map(len, _LATIN_RUN.findall(lower)))
    return "ru" if cyrillic > 0.3 * (cyrillic + latin) else "en"


def vocabulary(texts: Iterable[str]) -> list[str]:
    """One word per stem that occurs at least twice in ``texts``: its most frequent form.
    (A word seen once translates nothing useful; the other forms of a stem would take the
    places of other neighbours, and Russian has many. Both halve the vocabulary.)"""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(_LETTERS.findall(text.lower()))
    best: dict[str, tuple[int, str]] = {}
    stems: Counter[str] = Counter()
    for word, n in counts.items():
        if word in STOPWORDS:
            continue
        root = stem(word)
        stems[root] += n
        if root not in best or n > best[root][0]:
            best[root] = (n, word)
    return sorted(best[root][1] for root, n in stems.items() if n >= 2)


class BM25:
    """Okapi BM25 over a fixed list of chunks; each term's contribution is precomputed, so a
    query is a few indexed additions (a millisecond at 10,000 chunks)."""

    def __init__(self, chunks: Sequence[Sequence[str]]) -> None:
        self.size = len(chunks)
        lengths = np.array([len(c) for c in chunks], dtype=np.float32)
        average = float(lengths.mean()) if len(chunks) else 1.0
        postings: dict[str, tuple[list[int], list[int]]] = {}
        for n, chunk in enumerate(chunks):
            for term, count in Counter(chunk).items():
                rows, counts = postings.setdefault(term, ([], []))
                rows.append(n)
                counts.append(count)
        self._postings: dict[str, tuple[npt.NDArray[np.int64], Vectors]] = {}
        for term, (rows, counts) in postings.items():
            index = np.array(rows, dtype=np.int64)
            tf = np.array(counts, dtype=np.float32)
            idf = math.log(1 + (self.size - len(rows) + 0.5) / (len(rows) + 0.5))
            norm = K1 * (1 - B + B * lengths[index] / max(average, 1.0))
            self._postings[term] = (index, (idf * tf * (K1 + 1) / (tf + norm)).astype(np.float32))

    @classmethod
    def restore(
        cls,
        size: int,
        terms: Sequence[str],
        starts: npt.NDArray[np.int64],
        rows: npt.NDArray[np.int64],
        contributions: Vectors,
    ) -> BM25:
        """The index :meth:`export` gave (ValueError when the parts do not fit together)."""
        bounds = np.asarray(starts, dtype=np.int64)
        if (
            len(bounds) != len(terms) + 1
            or len(rows) != len(contributions)
            or (len(rows) and (bounds[-1] != len(rows) or rows.min() < 0 or rows.max() >= size))
        ):
            raise ValueError("BM25 postings that do not fit together")
        index = cls([])
        index.size = size
        index._postings = {
            term: (rows[bounds[n] : bounds[n + 1]], contributions[bounds[n] : bounds[n + 1]])
            for n, term in enumerate(terms)
        }
        return index

    def export(self) -> tuple[list[str], npt.NDArray[np.int64], npt.NDArray[np.int64], Vectors]:
        """The postings as flat arrays: terms, where each term's rows start (and the end),
        the rows, each row's contribution."""
        terms = list(self._postings)
        postings = [self._postings[t] for t in terms]
        starts = np.cumsum([0] + [len(rows) for rows, _ in postings], dtype=np.int64)
        if not postings:
            return terms, starts, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        rows = np.concatenate([rows for rows, _ in postings]).astype(np.int64)
        contributions = np.concatenate([c for _, c in postings]).astype(np.float32)
        return terms, starts, rows, contributions

    def __contains__(self, term: str) -> bool:
        return term in self._postings

    def scores(self, weighted: Mapping[str, float]) -> Vectors:
        """Each chunk's score for terms weighted by ``weighted`` (0 where none occurs)."""
        total = np.zeros(self.size, dtype=np.float32)
        for term, weight in weighted.items():
            found = self._postings.get(term)
            if found is not None:
                total[found[0]] += weight * found[1]
        return total


class Translator:
    """The index vocabulary with one unit vector per word, by script: a word is carried to
    its nearest words of the other script (remembered: chat repeats its words)."""

    def __init__(self, words: Sequence[str], vectors: Vectors) -> None:
        matrix = np.asarray(vectors, dtype=np.float32)
        matrix = unit(matrix.reshape(len(words), -1)) if len(words) else matrix
        self._scripts: dict[bool, tuple[tuple[str, ...], Vectors]] = {}
        for cyrillic in (True, False):
            picked = [n for n, w in enumerate(words) if is_cyrillic(w) == cyrillic]
            self._scripts[cyrillic] = (tuple(words[n] for n in picked), matrix[picked])
        self._known: dict[str, dict[str, float]] = {}

    def translate(self, words: Sequence[str], vectors: Vectors) -> dict[str, float]:
        """Stems of the other script's nearest words to each of ``words`` (whose embeddings
        are ``vectors``), weighted by their similarity."""
        found: dict[str, float] = {}
        for word, vector in zip(words, vectors, strict=True):
            carried = self._known.get(word)
            if carried is None:
                carried = self._neighbours(word, vector)
                if len(self._known) >= REMEMBERED:
                    self._known.clear()
                self._known[word] = carried
            for term, score in carried.items():
                found[term] = max(found.get(term, 0.0), score)
        return found

    def _neighbours(self, word: str, vector: Vectors) -> dict[str, float]:
        names, matrix = self._scripts[not is_cyrillic(word)]
        if not names:
            return {}
        query = unit(np.asarray(vector, dtype=np.float32).reshape(1, -1))[0]
        row = matrix @ query
        top = np.argpartition(-row, min(NEIGHBOURS, len(row) - 1))[:NEIGHBOURS]
        best = float(row[top].max())
        carried: dict[str, float] = {}
        for index in top.tolist():
            score = float(row[index])
            if score >= MIN_SIMILARITY and score >= best - MARGIN:
                term = stem(names[index])
                carried[term] = max(carried.get(term, 0.0), score)
        return carried


def unit(matrix: Vectors) -> Vectors:
    """``matrix``'s rows scaled to unit length (a new array)."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return (matrix / np.where(norms > 0, norms, 1)).astype(np.float32)
