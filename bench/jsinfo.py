"""A held-out retrieval set: the JavaScript tutorial javascript.info, in Russian and English.

    python bench/jsinfo.py --ru RU_DIR --en EN_DIR --out DIR   # build; prints the questions file

RU_DIR and EN_DIR are clones of https://github.com/javascript-tutorial/ru.javascript.info and
https://github.com/javascript-tutorial/en.javascript.info (CC BY-NC-SA: the text is not kept
in this repository; this script builds the set from the clones). ``bench/retrieval.py
--jsinfo RU_DIR EN_DIR`` builds it and runs it through Beseda.

Why a second set: the ranking's settings (memory/docsearch.py) were chosen on the man pages
(bench/mancorpus.py). This set was not used for that, so it tells whether they carry over to
other documents: Markdown articles, exercises and their solutions (hundreds of near
neighbours: "the same kind of document"), code in every page.

The corpus: every article, task, solution and chapter index that both translations have at
the same path, each in one language only (chosen by a hash of its path, about half and half).
The questions, one pair per article: a sentence of the *other* language's version of the
article (a translator's rendering of a passage of the indexed page: a cross-language question)
and a sentence of the indexed version itself (copied: an easy same-language question, a check
more than a measure). Sentences are prose of 90 to 220 characters outside code, chosen with a
fixed seed. Many are generic ("Let's see an example first."), so not every question can be
answered: the set compares configurations, it is not an absolute measure.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import sys
from pathlib import Path

KINDS = frozenset({"article.md", "task.md", "solution.md", "index.md"})
SEED = 23


def documents(root: Path) -> set[str]:
    """The set's kind of files under a clone, as paths relative to it."""
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*.md")
        if p.name in KINDS and ".git" not in p.parts
    }


def language(path: str) -> str:
    """The language a document goes into the corpus in."""
    return "ru" if int(hashlib.sha256(path.encode()).hexdigest(), 16) % 2 else "en"


def sentences(markdown: str) -> list[str]:
    """Prose sentences of 90 to 220 characters: no code, headings, lists, tables or links."""
    text = re.sub(r"```.*?```", "", markdown, flags=re.DOTALL)
    found = []
    for block in re.split(r"\n\s*\n", text):
        paragraph = " ".join(block.split())
        if not paragraph or paragraph[0] in "#|<>-*!`[0123456789":
            continue
        if "`" in paragraph or "](" in paragraph:
            continue
        for sentence in re.split(r"(?<=[.!?])\s+", paragraph):
            if 90 <= len(sentence) <= 220 and sentence[0].isupper():
                found.append(sentence)
    return found


def build(ru: Path, en: Path, out: Path) -> Path:
    """Write the corpus into ``out/docs`` and the questions to ``out/questions.json``."""
    roots = {"ru": ru, "en": en}
    common = sorted(documents(ru) & documents(en))
    if not common:
        raise SystemExit(f"jsinfo: no common articles under {ru} and {en}: are they the clones?")
    rng = random.Random(SEED)
    questions = []
    for path in common:
        lang = language(path)
        other = "en" if lang == "ru" else "ru"
        target = out / "docs" / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(read(roots[lang] / path), encoding="utf-8")
        if not path.endswith("article.md"):
            continue
        for asked in (other, lang):
            candidates = sentences(read(roots[asked] / path))
            if candidates:
                question = rng.choice(candidates)
                questions.append({"question": question, "source": path, "lang": f"{asked}-{lang}"})
    path = out / "questions.json"
    path.write_text(json.dumps(questions, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def read(path: Path) -> str:
    return path.read_bytes().decode("utf-8", "replace")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ru", type=Path, help="clone of ru.javascript.info")
    parser.add_argument("--en", type=Path, help="clone of en.javascript.info")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not (args.ru and args.en and args.out):
        # `make bench` runs every script here without arguments.
        print("jsinfo: skipped: needs --ru, --en (clones of the two tutorials) and --out")
        return 0
    print(build(args.ru, args.en, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
