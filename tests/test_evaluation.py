"""The questions file of `search --eval`: what a person writes by hand is read as meant, and a
source the index does not hold is an error, not a silent miss."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest

from memory.evaluation import Question, QuestionsFileError, load_questions, match_sources

INDEXED = {"man2/open.2.txt", "man3/open.3.txt", "guides/ёлка.txt", "a/readme.md", "b/readme.md"}


def sources(questions: list[Question]) -> list[str]:
    return [q.source for q in questions]


def ask(*names: str) -> list[Question]:
    return [Question(f"question {n}", name) for n, name in enumerate(names)]


def test_a_source_is_found_as_a_person_names_it(tmp_path: Path) -> None:
    decomposed = unicodedata.normalize("NFD", "ёлка.txt")  # how macOS writes "й", "ё"
    assert decomposed != "ёлка.txt"
    questions = ask(
        "man2/open.2.txt",  # as `search` names it
        "open.2.txt",  # the file's name alone, one document has it
        "man2\\open.2.txt",  # Windows separators
        "./man3/open.3.txt",
        (tmp_path / "docs" / "man3" / "open.3.txt").as_posix(),  # absolute, in the folder
        "/elsewhere/ingested/man3/open.3.txt",  # absolute, another ingested folder
        decomposed,
        " guides/ёлка.txt ",
    )
    assert sources(match_sources(questions, INDEXED, tmp_path / "docs")) == [
        "man2/open.2.txt",
        "man2/open.2.txt",
        "man2/open.2.txt",
        "man3/open.3.txt",
        "man3/open.3.txt",
        "man3/open.3.txt",
        "guides/ёлка.txt",
        "guides/ёлка.txt",
    ]


def test_an_absolute_path_in_the_documents_folder_names_one_document(tmp_path: Path) -> None:
    indexed = {"readme.md", "a/readme.md"}
    docs = tmp_path / "docs"
    # Its tail alone would fit both; inside the folder it is exactly one of them.
    inside = ask((docs / "a" / "readme.md").as_posix(), (docs / "readme.md").as_posix())
    assert sources(match_sources(inside, indexed, docs)) == ["a/readme.md", "readme.md"]
    with pytest.raises(QuestionsFileError, match="matches several documents"):
        match_sources(inside[:1], indexed)


def test_unknown_and_ambiguous_sources_are_all_named() -> None:
    questions = ask("man2/open.2.txt", "opne.2.txt", "readme.md", "pen.2.txt", "open.2")
    with pytest.raises(QuestionsFileError) as caught:
        match_sources(questions, INDEXED)
    message = str(caught.value)
    assert message.startswith("4 of 5 questions name no single indexed document")
    assert "entry 1: 'opne.2.txt' is not in the index" in message
    assert "entry 2: 'readme.md' matches several documents: a/readme.md, b/readme.md" in message
    # A name is matched whole: "pen.2.txt" is not the end of "open.2.txt".
    assert "entry 3: 'pen.2.txt' is not in the index" in message
    assert "entry 4: 'open.2' is not in the index" in message
    assert "5 documents are indexed" in message


def test_many_unknown_sources_are_counted_not_all_listed() -> None:
    with pytest.raises(QuestionsFileError) as caught:
        match_sources(ask(*(f"missing-{n}.txt" for n in range(25))), INDEXED)
    message = str(caught.value)
    assert "entry 9: 'missing-9.txt'" in message
    assert "missing-10.txt" not in message
    assert "... and 15 more" in message


def test_an_empty_index_says_to_ingest_first() -> None:
    with pytest.raises(QuestionsFileError, match="run `python -m agent ingest` first"):
        match_sources(ask("open.2.txt"), set())


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "questions.json"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_list_an_object_with_questions_and_json_lines_are_read(tmp_path: Path) -> None:
    entries = [
        {"question": "Как открыть файл?", "source": "open.2.txt", "lang": "RU_EN"},
        {"question": "How to open a file?", "source": "open.2.txt", "lang": "en → en"},
    ]
    expected = [
        Question("Как открыть файл?", "open.2.txt", "ru-en"),
        Question("How to open a file?", "open.2.txt", "en-en"),
    ]
    as_list = json.dumps(entries, ensure_ascii=False)
    assert load_questions(write(tmp_path, as_list)) == expected
    assert load_questions(write(tmp_path, json.dumps({"questions": entries}))) == expected
    lines = "\n".join(json.dumps(e, ensure_ascii=False) for e in entries)
    assert load_questions(write(tmp_path, lines + "\n\n")) == expected
    assert load_questions(write(tmp_path, json.dumps(entries[1]))) == expected[1:]
    # A byte-order mark (Windows editors write one) is not an error.
    assert load_questions(write(tmp_path, "\ufeff" + as_list)) == expected
    assert expected[0].cross is True
    assert expected[1].cross is False


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("[{", "not a JSON file"),
        ('{"question": "a"}\n{', "not a JSON file"),
        ("[]", "expected a non-empty JSON list of questions"),
        ('{"items": []}', "expected a non-empty JSON list of questions"),
        ('["a question"]', "entry 0 is not an object"),
        ('[{"question": "a", "source": 7}]', "entry 0: 'source' must be a non-empty text"),
    ],
)
def test_a_file_that_cannot_be_used_says_why(tmp_path: Path, text: str, error: str) -> None:
    with pytest.raises(QuestionsFileError, match=error):
        load_questions(write(tmp_path, text))


def test_a_file_that_is_not_text_says_so(tmp_path: Path) -> None:
    path = tmp_path / "questions.json"
    path.write_bytes(b"\xff\xfe[\x00{\x00")
    with pytest.raises(QuestionsFileError, match="not a UTF-8 text file"):
        load_questions(path)
