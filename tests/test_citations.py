"""The sources line under answers that used the retrieved documents."""

from __future__ import annotations

from dataclasses import dataclass

from agent.prompt.citations import sources_line, with_sources


@dataclass(frozen=True)
class Chunk:
    label: str
    text: str


ZORBEL = Chunk("zorbel.md", "The Zorbel station was founded in 1987 by the engineer Miriam Okafor.")
PUMPS = Chunk("pumps.pdf, p. 2", "The valve code of pump P-9 is 7741. Check it every month.")
BORSCHT = Chunk("борщ.txt", "Борщ варят из свёклы, капусты и картофеля; подают со сметаной.")
QUESTION = "Who founded the Zorbel station?"


def test_an_answer_repeating_a_name_from_a_chunk_names_that_chunk() -> None:
    line = sources_line("It was Okafor.", QUESTION, [PUMPS, ZORBEL])
    assert line == "Sources: [2] zorbel.md"


def test_numbers_and_two_ordinary_words_count_too() -> None:
    assert sources_line("The code is 7741.", "What is the code?", [PUMPS]) == (
        "Sources: [1] pumps.pdf, p. 2"
    )
    answer = "You should check the valve every month."
    assert sources_line(answer, "How often?", [PUMPS]) == "Sources: [1] pumps.pdf, p. 2"


def test_words_of_the_question_alone_do_not_make_a_source() -> None:
    assert sources_line("The Zorbel station? I do not know.", QUESTION, [ZORBEL]) == ""
    assert sources_line("Hello! How can I help you today?", "hi", [ZORBEL, PUMPS]) == ""


def test_the_models_own_markers_keep_the_prompts_numbers() -> None:
    line = sources_line("Founded long ago [2].", QUESTION, [PUMPS, ZORBEL, BORSCHT])
    assert line == "Sources: [2] zorbel.md"
    assert sources_line("See [7].", QUESTION, [ZORBEL]) == ""  # no such source


def test_russian_answers_get_a_russian_line_and_case_endings_match() -> None:
    answer = "Борщ готовят из свёклы и капусты, подают со сметаной."
    assert sources_line(answer, "Как варить борщ?", [ZORBEL, BORSCHT]) == (
        "Источники: [2] борщ.txt"
    )


def test_with_sources_appends_the_line_or_nothing() -> None:
    assert with_sources("It was Miriam Okafor.", QUESTION, [ZORBEL]) == (
        "It was Miriam Okafor.\n\nSources: [1] zorbel.md"
    )
    assert with_sources("No idea.", QUESTION, [ZORBEL]) == "No idea."
    assert with_sources("It was Okafor.", QUESTION, []) == "It was Okafor."
