"""bench/jsinfo.py: the held-out set is built as its documentation says (two tiny clones)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import jsinfo

RU = (
    "# Массивы\n\nМассивы хранят упорядоченные коллекции значений, и у них есть особые методы "
    "для вставки и удаления элементов.\n\n```js\nlet a = [];\n\nЭта строка внутри кода не "
    "вопрос, хотя она длинная и похожа на обычное предложение.\n```\n"
)
EN = (
    "# Arrays\n\nArrays keep ordered collections of values, and they have special methods "
    "to insert and remove elements.\n\n```js\nlet a = [];\n\nThis line inside the code is not "
    "a question, though it is long and looks like an ordinary sentence.\n\n```\n"
)
TASK_RU = "Напишите функцию, которая возвращает сумму всех элементов массива чисел.\n"
TASK_EN = "Write a function that returns the sum of all the elements of an array of numbers.\n"


def clone(root: Path, article: str, task: str, *, extra: str | None = None) -> Path:
    (root / "1-js" / "04-array" / "1-sum").mkdir(parents=True)
    (root / "1-js" / "04-array" / "article.md").write_text(article, encoding="utf-8")
    (root / "1-js" / "04-array" / "1-sum" / "task.md").write_text(task, encoding="utf-8")
    (root / "README.md").write_text("not a document of the set", encoding="utf-8")
    if extra:  # a page one translation has and the other lacks
        (root / "1-js" / extra).mkdir()
        (root / "1-js" / extra / "article.md").write_text(article, encoding="utf-8")
    return root


def test_each_document_once_in_its_language_and_questions_from_both_versions(
    tmp_path: Path,
) -> None:
    ru = clone(tmp_path / "ru", RU, TASK_RU, extra="99-only-ru")
    en = clone(tmp_path / "en", EN, TASK_EN)
    questions_path = jsinfo.build(ru, en, tmp_path / "out")

    docs = tmp_path / "out" / "docs"
    built = sorted(p.relative_to(docs).as_posix() for p in docs.rglob("*.md"))
    # Only pages both translations have, and only the set's kinds of file.
    assert built == ["1-js/04-array/1-sum/task.md", "1-js/04-array/article.md"]
    article = "1-js/04-array/article.md"
    lang = jsinfo.language(article)
    source = {"ru": RU, "en": EN}[lang]
    assert (docs / article).read_text(encoding="utf-8") == source

    questions = json.loads(questions_path.read_text(encoding="utf-8"))
    other = "en" if lang == "ru" else "ru"
    # One question per article from each version; tasks get none; code is never asked.
    assert [q["lang"] for q in questions] == [f"{other}-{lang}", f"{lang}-{lang}"]
    assert {q["source"] for q in questions} == {article}
    asked = {"ru": "Массивы хранят", "en": "Arrays keep"}
    for q in questions:
        assert q["question"].startswith(asked[q["lang"].split("-")[0]])


def test_sentences_are_prose_outside_code() -> None:
    assert jsinfo.sentences(EN) == [
        "Arrays keep ordered collections of values, and they have special methods to insert "
        "and remove elements."
    ]
    assert (
        jsinfo.sentences(
            "Too short.\n\n- A list item that is long enough to be a sentence "
            "of the set, but it is a list."
        )
        == []
    )


def test_clones_without_common_pages_are_refused(tmp_path: Path) -> None:
    (tmp_path / "ru").mkdir()
    (tmp_path / "en").mkdir()
    with pytest.raises(SystemExit, match="no common articles"):
        jsinfo.build(tmp_path / "ru", tmp_path / "en", tmp_path / "out")
