"""Unit tier for lsr_os.evaluate: exact scoring, parity figures, split loading."""

import numpy as np
import pytest

from lsr_os import evaluate as ev
from lsr_os.errors import DataError
from lsr_os.sparse import SparseRecord, dot, quantize, write_jsonl


def _random_docs(rng, n, terms, per_doc):
    return {f"d{i}": {terms[j]: float(rng.uniform(0.01, 3.0)) for j in rng.choice(len(terms), per_doc, replace=False)}
            for i in range(n)}


def test_exact_scorer_equals_brute_force_dot_product_on_9_bit_weights():
    rng = np.random.default_rng(3)
    terms = [f"t{i}" for i in range(200)] + [".", "##s", "[UNK]", "日本"]
    docs = _random_docs(rng, 300, terms, 25)
    scorer = ev.ExactScorer(docs.items())
    stored = {d: {t: float(quantize(w)) for t, w in v.items()} for d, v in docs.items()}
    for _ in range(20):
        query = {terms[j]: float(rng.uniform(0.1, 2.0)) for j in rng.choice(len(terms), 15, replace=False)}
        query["not-in-any-doc"] = 1.0
        top = scorer.topk(query, 10)
        brute = sorted(((dot(query, v), d) for d, v in stored.items()), key=lambda x: (-x[0], x[1]))
        brute = [(s, d) for s, d in brute if s > 0][:10]
        assert list(top) == [d for _, d in brute]
        assert [top[d] for _, d in brute] == pytest.approx([s for s, _ in brute], rel=1e-5)


def test_exact_scorer_returns_only_matching_documents():
    scorer = ev.ExactScorer([("a", {"x": 1.0}), ("b", {"y": 2.0})])
    assert scorer.topk({"x": 1.0}, 10) == {"a": 1.0}
    assert scorer.topk({"z": 1.0}, 10) == {}


def test_parity_figures():
    exact = {"q1": {f"d{i}": 10.0 - i for i in range(10)}, "q2": {"a": 2.0, "b": 1.0}}
    same = ev.parity(exact, exact)
    assert same["top10_overlap"] == 1.0 and same["kendall_tau"] == pytest.approx(1.0)
    cluster = {"q1": {**{f"d{i}": 10.0 - i for i in range(9)}, "other": 0.5}, "q2": {"b": 2.0, "a": 1.0}}
    p = ev.parity(cluster, exact)
    assert p["top10_overlap"] == pytest.approx((0.9 + 1.0) / 2)
    assert p["identical_top10_share"] == 0.5
    assert p["kendall_tau"] == pytest.approx((1.0 + -1.0) / 2)
    assert ev.topk_overlap({}, {}) == 1.0


def test_tie_aware_overlap_counts_documents_tied_at_rank_k_as_right():
    scorer = ev.ExactScorer([("a", {"x": 3.0}), ("b", {"x": 2.0}), ("c", {"x": 2.0}), ("d", {"x": 1.0})])
    q = {"q": {"x": 1.0}}
    assert scorer.topk(q["q"], 2) == {"a": 3.0, "b": 2.0}
    exact2, exact10 = scorer.run(q.items(), 2)[0], scorer.run(q.items(), 10)[0]
    assert ev.topk_overlap({"a": 3.0, "c": 2.0}, {"a": 3.0, "b": 2.0}, 2) == 0.5  # a tie swapped: a miss
    assert ev.tie_aware_overlap({"q": {"a": 3.0, "c": 2.0}}, exact2, scorer, q, 2) == 1.0  # ... but equally right
    assert ev.tie_aware_overlap({"q": {"a": 3.0, "d": 1.0}}, exact2, scorer, q, 2) == 0.5
    # fewer matches than k: every matching document is right, and the share is over those
    assert ev.tie_aware_overlap({"q": {"b": 2.0, "c": 2.0, "a": 3.0}}, exact10, scorer, q, 10) == 0.75
    assert ev.tie_aware_overlap({"q": {}}, scorer.run([("q", {"nothing": 1.0})], 10)[0], scorer,
                                {"q": {"nothing": 1.0}}, 10) == 1.0


def test_sparsity_figures_hand_computed():
    queries = {"q1": {"dog": 1.0, "run": 2.0}, "q2": {"dog": 0.5}}  # usage: dog 1, run 1/2
    docs = {"a": {"dog": 1.0, "cat": 1.0}, "b": {"cat": 2.0}, "c": {"run": 1.0, "dog": 3.0, "sky": 1.0}}
    # doc usage: dog 2/3, run 1/3; FLOPs = 1 * 2/3 + 1/2 * 1/3
    assert ev.sparsity(queries, docs) == pytest.approx({"flops": 2 / 3 + 1 / 6, "query_terms": 1.5,
                                                        "document_terms": 2.0})


def test_latency_summary_in_milliseconds():
    lat = ev.latency_summary([0.001] * 98 + [0.1, 0.2])
    assert lat["p50_ms"] == pytest.approx(1.0) and lat["n"] == 100 and lat["p99_ms"] > 50


def test_split_data_from_a_sparse_folder_uses_the_records_split_and_image_id(tmp_path):
    from lsr_os.records import SourceOptions, open_source

    images = [SparseRecord("1", {"dog": 1.0}, {"split": "test"}), SparseRecord("2", {"cat": 1.0}, {"split": "train"})]
    caps = [SparseRecord("10", {"dog": 1.0}, {"split": "test", "image_id": "1"}),
            SparseRecord("11", {"puppy": 1.0}, {"split": "test", "image_id": "1"}),
            SparseRecord("20", {"cat": 1.0}, {"split": "train", "image_id": "2"})]
    write_jsonl(tmp_path / "images.jsonl", images)
    write_jsonl(tmp_path / "captions.jsonl", caps)
    data = ev.SplitData.load(open_source(SourceOptions(sparse=tmp_path, split="test")))
    assert list(data.images) == ["1"] and list(data.captions) == ["10", "11"]
    assert data.qrels_t2i == {"10": {"1": 1}, "11": {"1": 1}} and data.qrels_i2t == {"1": {"10": 1, "11": 1}}
    with pytest.raises(DataError, match="0 images"):
        ev.SplitData.load(open_source(SourceOptions(sparse=tmp_path, split="val")))
    write_jsonl(tmp_path / "captions.jsonl", [SparseRecord("10", {"dog": 1.0}, {"split": "test"})])
    with pytest.raises(DataError, match="caption 10 has no image_id"):
        ev.SplitData.load(open_source(SourceOptions(sparse=tmp_path, split="test")))

