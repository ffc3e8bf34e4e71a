"""Image-text retrieval metrics and efficiency measures against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from lsr_os.metrics import flops, mean_nonzeros, retrieval_metrics, sparse_dicts_to_csr, topk_metrics


def _run(ranked: dict[str, list[str]]) -> dict[str, dict[str, float]]:
    return {q: {d: float(len(docs) - r) for r, d in enumerate(docs)} for q, docs in ranked.items()}


def test_text_to_image_hand_computed():
    qrels = {"c1": {"i1": 1}, "c2": {"i2": 1}, "c3": {"i3": 1}, "c4": {"i4": 1}}
    run = _run({
        "c1": ["i1", "i2", "i3"],                                       # rank 1
        "c2": ["i1", "i3", "i4", "i5", "i2"],                           # rank 5
        "c3": ["i1", "i2", "i4", "i5", "i6", "i7", "i3"],               # rank 7
        # c4 has no results at all: it counts as a miss, not as absent
    })
    m = retrieval_metrics(run, qrels)
    assert m["R@1"] == pytest.approx(1 / 4)
    assert m["R@5"] == pytest.approx(2 / 4)
    assert m["R@10"] == pytest.approx(3 / 4)
    assert m["MRR@10"] == pytest.approx((1 + 1 / 5 + 1 / 7 + 0) / 4)


def test_image_to_text_with_five_relevant_captions_is_success_not_recall():
    caps = [f"c{i}" for i in range(5)]
    qrels = {"img1": {c: 1 for c in caps}, "img2": {f"d{i}": 1 for i in range(5)}}
    run = _run({
        "img1": ["x1", "c3", "x2", "x3", "x4", "x5", "c0"],  # first relevant at rank 2
        "img2": ["x1", "x2", "x3", "x4", "x5", "x6", "x7", "x8", "x9", "x10", "d0"],  # rank 11: outside
    })
    m = retrieval_metrics(run, qrels)
    # share of queries with >= 1 relevant caption in the top k (ir_measures' R@5 would give 0.1)
    assert m == pytest.approx({"R@1": 0.0, "R@5": 0.5, "R@10": 0.5, "MRR@10": (1 / 2 + 0) / 2})
    assert all(0.0 <= v <= 1.0 for v in m.values())


def test_topk_fast_path_agrees_with_ir_measures():
    rng = np.random.default_rng(0)
    n_q, n_d = 40, 30
    scores = rng.standard_normal((n_q, n_d))
    gold = rng.integers(0, n_d, n_q)
    qrels = {f"q{q}": {f"d{gold[q]}": 1} for q in range(n_q)}
    run = {f"q{q}": {f"d{d}": float(scores[q, d]) for d in np.argsort(-scores[q])[:10]} for q in range(n_q)}
    top = torch.as_tensor(scores).topk(10, dim=1).indices
    fast = topk_metrics(top == torch.as_tensor(gold)[:, None])
    assert fast == pytest.approx(retrieval_metrics(run, qrels), abs=1e-6)


def test_flops_and_mean_nonzeros_hand_computed():
    q = np.array([[1.0, 0, 2, 0], [0, 0, 3, 0]])          # term usage: 1/2, 0, 1, 0
    d = np.array([[1.0, 1, 1, 0], [0, 1, 0, 0], [0, 0, 5, 1]])  # term usage: 1/3, 2/3, 2/3, 1/3
    want = 0.5 * (1 / 3) + 1 * (2 / 3)
    for qm, dm in [(q, d), (torch.tensor(q), torch.tensor(d)), (sp.csr_matrix(q), sp.csr_matrix(d)),
                   (torch.tensor(q).to_sparse(), torch.tensor(d).to_sparse_csr())]:
        assert flops(qm, dm) == pytest.approx(want)
    assert mean_nonzeros(q) == pytest.approx(1.5) and mean_nonzeros(sp.csr_matrix(d)) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="columns"):
        flops(q, d[:, :3])


def test_sparse_dicts_to_csr():
    m = sparse_dicts_to_csr([{"b": 2.0}, {}, {"a": 1.0, "c": 3.0}], ["a", "b", "c"])
    np.testing.assert_array_equal(m.toarray(), [[0, 2, 0], [0, 0, 0], [1, 0, 3]])
