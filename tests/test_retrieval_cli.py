"""ingest, search and chat over documents, in subprocesses, with the real default embedder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import write_config
from tests.test_cli import beseda
from tests.test_documents import write_pdf

pytestmark = [pytest.mark.slow]

FACT = (
    "The Zorbel research station was founded in 1987 by the engineer Miriam Okafor. "
    "Its radio call sign is KX-417."
)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    docs = tmp_path / "documents"
    docs.mkdir()
    (docs / "zorbel.md").write_text(f"# Zorbel station\n\n{FACT}\n", encoding="utf-8")
    (docs / "борщ.txt").write_text(
        "Борщ варят из свёклы, капусты и картофеля; подают со сметаной.\n", encoding="utf-8"
    )
    write_pdf(docs / "pumps.pdf", ["Pump maintenance.", "The valve code of pump P-9 is 7741."])
    return write_config(tmp_path / "beseda.toml", documents={"path": docs.as_posix()})


def test_ingest_search_json_and_incremental_rerun(config: Path) -> None:
    first = beseda(config, "ingest")
    assert "3 added, 0 updated, 0 unchanged, 0 removed, 0 failed" in first.stdout
    assert "ingest" in first.stderr  # the progress bar
    found = json.loads(beseda(config, "search", "--json", "How to cook borscht?").stdout)
    assert found[0]["source"] == "борщ.txt"
    assert found[0]["page"] is None
    assert set(found[0]) == {"source", "page", "score", "text"}
    # In rank order: documents by the hybrid ranking, each chunk with its cosine similarity.
    assert all(-1.0 <= chunk["score"] <= 1.0 for chunk in found)
    pdf = json.loads(beseda(config, "search", "--json", "код клапана насоса P-9").stdout)
    assert (pdf[0]["source"], pdf[0]["page"]) == ("pumps.pdf", 2)
    text = beseda(config, "search", "who founded Zorbel station").stdout
    assert text.startswith("[1] zorbel.md  score ")
    again = beseda(config, "ingest")
    assert "0 added, 0 updated, 3 unchanged, 0 removed, 0 failed" in again.stdout


def test_corrupt_file_is_reported_and_the_rest_indexed(config: Path) -> None:
    (config.parent / "documents" / "broken.pdf").write_bytes(b"%PDF-1.4 not really")
    result = beseda(config, "ingest", check=False)
    assert result.returncode == 1
    assert "skipped broken.pdf" in result.stdout
    assert "3 added" in result.stdout


@pytest.mark.model
def test_chat_answers_from_a_document(config: Path) -> None:
    beseda(config, "ingest")
    answer = beseda(config, "chat", "Who founded the Zorbel research station?").stdout
    # SmolLM2-135M cannot know this name: it comes from the retrieved document, which the
    # answer names (the model's own [1] or Beseda's attribution, agent/prompt/citations.py).
    assert "Okafor" in answer
    assert "Sources: [1] zorbel.md" in answer
    shown = json.loads(beseda(config, "prompt", "--json", "Who founded Zorbel station?").stdout)
    assert "[1] (zorbel.md) # Zorbel station" in shown["messages"][-1]["content"]
    # A message that retrieves nothing: the old volatile block is gone, and the inspector
    # reports the previous exchange shifted over it, apart from the common prefix.
    thanks = json.loads(beseda(config, "prompt", "--json", "Thanks, goodbye!").stdout)
    assert "Zorbel station" not in thanks["messages"][-1]["content"]
    reuse = thanks["reuse"]
    assert reuse["shifted_tokens"] > 20
    assert (
        reuse["prefix_tokens"] + reuse["shifted_tokens"] + reuse["evaluated_tokens"]
        == (thanks["tokens"])
    )


def test_eval_runs_a_questions_file_in_one_process(config: Path) -> None:
    beseda(config, "ingest")
    questions = config.parent / "questions.json"
    questions.write_text(
        json.dumps(
            [
                {"question": "How to cook borscht?", "source": "борщ.txt", "lang": "en-ru"},
                {
                    "question": "Кто основал станцию Зорбел?",
                    # As a person may name it: the absolute path.
                    "source": (config.parent / "documents" / "zorbel.md").as_posix(),
                    "lang": "ru-en",
                },
                {
                    "question": "What is the valve code of pump P-9?",
                    "source": "pumps.pdf",
                    "lang": "en-en",
                },
            ],
            ensure_ascii=False,
        ),
        encoding="utf-8",
    )
    figures = dict(
        line.split("=", 1)
        for line in beseda(config, "search", "--eval", str(questions)).stdout.split()
        if "=" in line
    )
    assert figures["questions"] == "3"
    assert figures["recall_at_3"] == "1.000"
    assert figures["questions_cross"] == "2"
    assert "recall_at_3_cross" in figures
    assert "mrr" in figures
    questions.write_text('[{"question": "no source"}]', encoding="utf-8")
    bad = beseda(config, "search", "--eval", str(questions), check=False)
    assert bad.returncode == 1
    assert "entry 0: 'source' must be a non-empty text" in bad.stdout
    # A source the index does not hold is an error, not a question counted as missed.
    questions.write_text('[{"question": "pump?", "source": "pump.pdf"}]', encoding="utf-8")
    unknown = beseda(config, "search", "--eval", str(questions), check=False)
    assert unknown.returncode == 1
    assert "entry 0: 'pump.pdf' is not in the index" in unknown.stdout
    assert "recall_at_3" not in unknown.stdout
