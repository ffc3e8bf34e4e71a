"""lsr_os.fusion on hand-made collections whose fused rankings are worked out by hand.

Four documents, one query term x (weights exact in 9 bits) and 2-d unit dense vectors:

    doc   sparse s   cos with the query (1, 0)
    a     3          0     (0, 1)
    b     2          0.6   (0.6, 0.8)
    c     1          0.8   (0.8, 0.6)
    d     0 (no x)   1     (1, 0)
"""

from __future__ import annotations

import numpy as np
import pytest

from lsr_os.errors import ConfigError, DataError
from lsr_os.evaluate import ExactScorer
from lsr_os.fusion import Fusion, HybridScorer, fuse, query_scale

DOCS = {"a": {"x": 3.0}, "b": {"x": 2.0}, "c": {"x": 1.0}, "d": {"y": 1.0}}
DENSE = {"a": [0.0, 1.0], "b": [0.6, 0.8], "c": [0.8, 0.6], "d": [1.0, 0.0]}
QUERY, QUERY_DENSE = {"x": 1.0}, np.array([1.0, 0.0])


@pytest.fixture(scope="module")
def scorer() -> HybridScorer:
    return HybridScorer(DOCS, {d: np.array(v) for d, v in DENSE.items()})


def ranking(scorer: HybridScorer, fusion: Fusion, k: int = 10) -> list[str]:
    return list(scorer.topk(QUERY, QUERY_DENSE, fusion, k))


def test_rescore_sees_only_the_sparse_window(scorer):
    # a=0.5: a 1.5, b 1.0 + 0.3 = 1.3, c 0.5 + 0.4 = 0.9; d matches no term, so it is never a candidate
    assert ranking(scorer, Fusion("rescore", 0.5, window=2)) == ["a", "b"]
    assert ranking(scorer, Fusion("rescore", 0.5, window=3)) == ["a", "b", "c"]
    # a=0.2: a 0.6, b 0.4 + 0.48 = 0.88, c 0.2 + 0.64 = 0.84
    hits = scorer.topk(QUERY, QUERY_DENSE, Fusion("rescore", 0.2, window=3))
    assert list(hits) == ["b", "c", "a"]
    assert hits["b"] == pytest.approx(0.88, abs=1e-6)
    # (1 + cos) / 2: b 0.4 + 0.8 * 0.8 = 1.04, c 0.2 + 0.8 * 0.9 = 0.92, a 0.6 + 0.8 * 0.5 = 1.0
    assert ranking(scorer, Fusion("rescore", 0.2, window=3, dense="half")) == ["b", "a", "c"]


def test_union_adds_the_dense_top_n_and_scores_the_rest_sparse_only(scorer):
    # N=1: the dense top 1 is d, (1 + 1) / 2 = 1 -> 0.8; a, b, c get no dense part: 0.6, 0.4, 0.2
    hits = scorer.topk(QUERY, QUERY_DENSE, Fusion("union", 0.2, window=1, dense="half"))
    assert list(hits) == ["d", "a", "b", "c"]
    assert [round(v, 6) for v in hits.values()] == [0.8, 0.6, 0.4, 0.2]
    # N=2: c joins the dense list, 0.2 + 0.8 * 0.9 = 0.92
    assert ranking(scorer, Fusion("union", 0.2, window=2, dense="half")) == ["c", "d", "a", "b"]
    assert ranking(scorer, Fusion("union", 0.2, window=2, dense="half"), k=2) == ["c", "d"]


def test_minmax_normalises_each_list_and_breaks_ties_by_id(scorer):
    # sparse list (a 3, b 2) -> a 1, b 0; dense list (d 1, c 0.8) -> d 1, c 0; a and d tie at 0.5
    hits = scorer.topk(QUERY, QUERY_DENSE, Fusion("minmax", 0.5, window=2))
    assert list(hits) == ["a", "d", "b", "c"]
    assert list(hits.values()) == [0.5, 0.5, 0.0, 0.0]


def test_rrf_sums_reciprocal_ranks(scorer):
    # sparse list a, b, c; dense list d, c, b: b and c both 1/62 + 1/63, a and d 1/61
    hits = scorer.topk(QUERY, QUERY_DENSE, Fusion("rrf", window=3))
    assert list(hits) == ["b", "c", "a", "d"]
    assert hits["b"] == pytest.approx(1 / 62 + 1 / 63) and hits["a"] == pytest.approx(1 / 61)


def test_query_scales():
    q = {"x": 3.0, "y": 4.0}
    assert query_scale(q, "none") == 1.0
    assert query_scale(q, "l2") == pytest.approx(1 / 5)
    assert query_scale(q, "l1") == pytest.approx(1 / 7)
    with pytest.raises(ConfigError, match="scale 'max'"):
        query_scale(q, "max")


def test_the_scale_multiplies_the_sparse_score():
    # s = 3 (a) against 1 (b); scaled by 1/||q||_2 = 1/5 the dense part wins: a 0.5 * 0.6 = 0.3 + 0,
    # b 0.5 * 0.2 + 0.5 * 1 = 0.6
    scorer = HybridScorer({"a": {"x": 1.0}, "b": {"x": 1 / 3}}, {"a": np.array([0.0, 1.0]), "b": np.array([1.0, 0.0])})
    q = {"x": 3.0, "y": 4.0}
    assert list(scorer.topk(q, np.array([1.0, 0.0]), Fusion("rescore", 0.5, scale="none"))) == ["a", "b"]
    assert list(scorer.topk(q, np.array([1.0, 0.0]), Fusion("rescore", 0.5, scale="l2"))) == ["b", "a"]


def test_ties_go_to_the_lower_id_whatever_the_insertion_order():
    docs = {"z": {"x": 1.0}, "m": {"x": 1.0}, "b": {"x": 1.0}}
    dense = {d: np.array([1.0, 0.0]) for d in docs}
    scorer = HybridScorer(docs, dense)
    # the window of 2 takes the two lowest ids among three equal scores
    assert list(scorer.topk({"x": 1.0}, np.array([1.0, 0.0]), Fusion("rescore", 0.5, window=2))) == ["b", "m"]
    assert list(scorer.topk({"x": 1.0}, np.array([0.0, 1.0]), Fusion("union", 0.5, window=1, dense="half"))) == \
        ["b", "m", "z"]


def test_the_extreme_weights_are_the_two_sides(scorer):
    # a = 1: the sparse ranking (d matches nothing); a = 0 over the union: the dense ranking
    assert ranking(scorer, Fusion("rescore", 1.0, window=10)) == list(ExactScorer(DOCS.items()).topk(QUERY))
    assert ranking(scorer, Fusion("union", 0.0, window=10, dense="half")) == ["d", "c", "b", "a"]


def test_a_query_without_terms_is_found_by_the_dense_side_only(scorer):
    assert scorer.topk({}, QUERY_DENSE, Fusion("rescore", 0.5)) == {}
    assert list(scorer.topk({}, QUERY_DENSE, Fusion("union", 0.5, window=2, dense="half"))) == ["d", "c"]


def test_run_matches_the_vectorised_fuse_on_random_collections():
    rng = np.random.default_rng(7)
    terms = [f"t{i}" for i in range(12)]
    docs = {f"d{i:02d}": {t: float(rng.integers(1, 8)) for t in rng.choice(terms, 3, replace=False)}
            for i in range(40)}
    dense = {d: rng.standard_normal(5) for d in docs}
    queries = [(f"q{i}", {t: float(rng.integers(1, 4)) for t in rng.choice(terms, 2, replace=False)},
                rng.standard_normal(5)) for i in range(15)]
    scorer = HybridScorer(docs, dense)
    for fusion in (Fusion("rescore", 0.3, 5, "l2"), Fusion("union", 0.7, 5, "l1", "half"),
                   Fusion("minmax", 0.4, 8), Fusion("rrf", window=8)):
        run = scorer.run(queries, fusion, k=6)
        for qid, q, v in queries:
            expected = brute_force(docs, dense, q, v, fusion, 6)
            assert list(run[qid]) == [d for d, _ in expected], (fusion.label, qid)
            assert list(run[qid].values()) == pytest.approx([s for _, s in expected])


def brute_force(docs, dense, q, v, fusion: Fusion, k: int) -> list[tuple[str, float]]:
    """The same fusion written out document by document, in plain Python, for the check above."""
    from lsr_os.sparse import quantize

    unit = v / np.linalg.norm(v)
    s = {d: sum(float(quantize(np.float32(w))) * q.get(t, 0.0) for t, w in vec.items()) for d, vec in docs.items()}
    c = {d: float(np.dot(unit, x / np.linalg.norm(x))) for d, x in dense.items()}
    scale = query_scale(q, fusion.scale)
    a, n = fusion.weight, fusion.window
    sparse_list = sorted((d for d in docs if s[d] > 0), key=lambda d: (-s[d], d))[:n]
    dense_list = sorted(docs, key=lambda d: (-c[d], d))[:n]
    form = (lambda x: (1 + x) / 2) if fusion.dense == "half" else (lambda x: x)
    if fusion.method == "rescore":
        fused = {d: a * s[d] * scale + (1 - a) * form(c[d]) for d in sparse_list}
    elif fusion.method == "union":
        fused = {d: a * s[d] * scale + (1 - a) * (form(c[d]) if d in dense_list else 0.0)
                 for d in docs if s[d] > 0 or d in dense_list}
    elif fusion.method == "minmax":
        def norm(scores, members):
            lo, hi = min(scores[d] for d in members), max(scores[d] for d in members)
            return {d: (scores[d] - lo) / (hi - lo) if hi > lo else 1.0 for d in members}
        ns, nd = norm(s, sparse_list), norm(c, dense_list)
        fused = {d: a * ns.get(d, 0.0) + (1 - a) * nd.get(d, 0.0) for d in set(sparse_list) | set(dense_list)}
    else:
        fused = {d: sum(1 / (fusion.rrf_k + lst.index(d) + 1) for lst in (sparse_list, dense_list) if d in lst)
                 for d in set(sparse_list) | set(dense_list)}
    return sorted(fused.items(), key=lambda item: (-item[1], item[0]))[:k]


def test_fuse_returns_padding_where_candidates_run_out():
    top, scores = fuse(np.array([[2.0, 0.0, 1.0]]), np.zeros((1, 3)), Fusion("rescore", 0.5), k=3)
    assert top.tolist() == [[0, 2, -1]] and scores[0, 2] == -np.inf


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "linear"}, "fusion method 'linear'"), ({"weight": 1.5}, r"weight must lie in \[0, 1\]"),
    ({"window": 0}, "window must be >= 1"), ({"dense": "dot"}, "dense score 'dot'"), ({"rrf_k": 0}, "rrf k"),
])
def test_bad_settings_are_one_line_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Fusion(**kwargs)


def test_bad_vectors_are_errors_naming_the_document(scorer):
    with pytest.raises(DataError, match="document 'b' has a sparse vector but no dense one"):
        HybridScorer({"a": {"x": 1.0}, "b": {"x": 1.0}}, {"a": np.ones(2)})
    with pytest.raises(DataError, match="document 'a' has a zero"):
        HybridScorer({"a": {"x": 1.0}}, {"a": np.zeros(2)})
    with pytest.raises(DataError, match="dense query vectors have 3 dimensions, the documents 2"):
        scorer.topk(QUERY, np.ones(3), Fusion())
