"""Retrieval metrics in the image-text sense, and the efficiency measures of docs/method.md.

All values are fractions in [0, 1] (the CLI may print percentages):

- "R@k": the share of queries with at least one relevant item in the top k. This is what
  image-text papers call recall; ir_measures calls it `Success@k` (its own `R@k` divides by
  the number of relevant items, which differs for image -> text with ~5 captions per image).
- "MRR@10": mean reciprocal rank of the first relevant item within the top 10 (`RR@10`).
- FLOPs: Σ over terms of (share of queries using the term) × (share of documents using it).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np

METRIC_KEYS = ("R@1", "R@5", "R@10", "MRR@10")

Qrels = dict[str, dict[str, int]]


def image_text_qrels(caption_image: Mapping[str, str], images: Iterable[str]) -> tuple[Qrels, Qrels]:
    """Relevance both ways: text -> image (each caption's one image) and image -> text (each
    image's captions, about five). Only the given images are judged."""
    images = set(images)
    t2i: Qrels = {c: {i: 1} for c, i in caption_image.items() if i in images}
    i2t: Qrels = {i: {} for i in images}
    for c, i in caption_image.items():
        if i in i2t:
            i2t[i][c] = 1
    return t2i, i2t


def retrieval_metrics(run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]]) -> dict[str, float]:
    """R@1/5/10 and MRR@10 of a run, averaged over every query in `qrels`.

    A query of `qrels` that is absent from the run counts as 0 (ir_measures alone would skip
    it); queries of the run without relevance judgements are ignored.
    """
    import ir_measures
    from ir_measures import RR, Success

    measures = {Success @ 1: "R@1", Success @ 5: "R@5", Success @ 10: "R@10", RR @ 10: "MRR@10"}
    queries = [q for q, rel in qrels.items() if any(v > 0 for v in rel.values())]
    if not queries:
        return {k: 0.0 for k in METRIC_KEYS}
    totals = dict.fromkeys(METRIC_KEYS, 0.0)
    clean_run = {q: {d: float(s) for d, s in docs.items()} for q, docs in run.items() if q in qrels and docs}
    for m in ir_measures.iter_calc(list(measures), qrels, clean_run):
        totals[measures[m.measure]] += float(m.value)
    return {k: v / len(queries) for k, v in totals.items()}


def topk_metrics(hits) -> dict[str, float]:
    """The same metrics from a (queries x k>=10) boolean matrix: is the item at rank r relevant?

    The fast path for evaluation on the device; `retrieval_metrics` is its reference.
    """
    import torch

    hits = torch.as_tensor(hits).bool()
    if hits.shape[0] == 0:
        return {k: 0.0 for k in METRIC_KEYS}
    out = {f"R@{k}": hits[:, :k].any(dim=1).float().mean().item() for k in (1, 5, 10)}
    h10 = hits[:, :10]
    first_rank = h10.float().argmax(dim=1).float() + 1  # argmax finds the first True
    out["MRR@10"] = torch.where(h10.any(dim=1), 1.0 / first_rank, torch.zeros_like(first_rank)).mean().item()
    return out


def _as_binary_usage(matrix: Any) -> tuple[np.ndarray, int]:
    """Per-column count of rows with a non-zero weight, and the number of rows."""
    try:
        import scipy.sparse as sp
    except ImportError:  # pragma: no cover - scipy is a dependency
        sp = None
    if sp is not None and sp.issparse(matrix):
        csc = sp.csc_matrix(matrix)
        csc.eliminate_zeros()
        return np.diff(csc.indptr).astype(np.float64), csc.shape[0]
    if hasattr(matrix, "detach"):
        import torch

        t = matrix.detach()
        if t.is_sparse or t.layout in (torch.sparse_csr, torch.sparse_csc):
            t = t.to_dense()
        return (t != 0).sum(dim=0).double().cpu().numpy(), int(t.shape[0])
    arr = np.asarray(matrix)
    return (arr != 0).sum(axis=0).astype(np.float64), int(arr.shape[0])


def flops_from_counts(q_counts: np.ndarray, n_queries: int, d_counts: np.ndarray, n_docs: int) -> float:
    """FLOPs from per-term usage counts (lets evaluation accumulate them chunk by chunk)."""
    if n_queries == 0 or n_docs == 0:
        return 0.0
    return float(np.dot(np.asarray(q_counts, np.float64) / n_queries, np.asarray(d_counts, np.float64) / n_docs))


def flops(query_matrix: Any, doc_matrix: Any) -> float:
    """Expected number of multiplications per query-document pair (docs/method.md's FLOPs).

    Accepts numpy arrays, torch tensors (dense or sparse) and scipy sparse matrices (rows =
    vectors, columns = vocabulary terms).
    """
    qc, nq = _as_binary_usage(query_matrix)
    dc, nd = _as_binary_usage(doc_matrix)
    if qc.shape != dc.shape:
        raise ValueError(f"query and document matrices have {qc.shape[0]} and {dc.shape[0]} columns")
    return flops_from_counts(qc, nq, dc, nd)


def mean_nonzeros(matrix: Any) -> float:
    """Mean number of non-zero weights per row."""
    counts, n = _as_binary_usage(matrix)
    return float(counts.sum() / n) if n else 0.0


def sparse_dicts_to_csr(vectors: list[dict[str, float]], terms: list[str]):
    """{term: weight} maps as a scipy CSR matrix over `terms` (unknown terms raise KeyError)."""
    import scipy.sparse as sp

    index = {t: i for i, t in enumerate(terms)}
    indptr, cols, vals = [0], [], []
    for vec in vectors:
        for t, w in vec.items():
            cols.append(index[t])
            vals.append(w)
        indptr.append(len(cols))
    return sp.csr_matrix((np.asarray(vals, np.float32), np.asarray(cols, np.int64), np.asarray(indptr)),
                         shape=(len(vectors), len(terms)))
