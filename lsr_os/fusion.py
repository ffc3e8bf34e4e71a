"""Hybrid retrieval's exact reference: each document's sparse and dense score, fused.

A search cluster has to fuse in ONE request, and the clusters lsr-os serves limit which fusions
that allows (issue 27): Elasticsearch's integration-test distribution sums a query's score and a
`knn` score (no normalisation, no `rrf`/`linear` retrievers); OpenSearch's local node has no k-NN
plugin, so it can only rescore the sparse candidates with an exact dense score. Per-query min-max
normalisation needs both lists' extremes before any document is scored, so neither cluster can do
it in one request. This module computes, in memory and exactly, the two fusions a cluster can
compute (`rescore`, `union`) and the two it cannot (`minmax`, `rrf`, kept to measure what the
cluster-side ones give up), so that a cluster's hybrid run can be checked against it.

Scores: the sparse score is `ExactScorer`'s (documents' weights truncated to the 9 bits the index
stores); the dense score is the cosine of normalised float32 vectors. The fused score is computed
in float64. Ties go by document id (as strings): scores first, then the lower id, in every list
and in the fused top k, so a run is reproducible whatever order the documents came in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from lsr_os.errors import ConfigError, DataError
from lsr_os.evaluate import ExactScorer
from lsr_os.search import Run
from lsr_os.sparse import SparseVector

METHODS = ("rescore", "union", "minmax", "rrf")
# What the client multiplies the sparse score by; it knows the query vector before the request.
SCALES = ("none", "l2", "l1")
# How the dense score enters the sum: the cosine, or (1 + cos) / 2, which is the score a `knn`
# query reports on both engines (Elasticsearch dot_product/cosine, OpenSearch cosinesimil).
DENSE_SCORES = ("cos", "half")


@dataclass(frozen=True)
class Fusion:
    """One way of fusing; see `fuse` for what each method computes and why.

    `weight` is the sparse share a (the dense share is 1 - a; `rrf` has none); `window` is N, the
    length of the candidate lists; `scale` rescales the sparse score by the query alone
    (`query_scale`; `rescore` and `union` only: `minmax` is scale-free); `dense` is the dense
    score's form (`rescore` and `union`)."""

    method: str = "rescore"
    weight: float = 0.5
    window: int = 100
    scale: str = "none"
    dense: str = "cos"
    rrf_k: int = 60

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"fusion method {self.method!r} is not one of {', '.join(METHODS)}")
        if not 0.0 <= self.weight <= 1.0:
            raise ConfigError(f"fusion weight must lie in [0, 1] (the sparse share), got {self.weight}")
        if self.window < 1:
            raise ConfigError(f"fusion window must be >= 1, got {self.window}")
        if self.scale not in SCALES:
            raise ConfigError(f"fusion scale {self.scale!r} is not one of {', '.join(SCALES)}")
        if self.dense not in DENSE_SCORES:
            raise ConfigError(f"dense score {self.dense!r} is not one of {', '.join(DENSE_SCORES)}")
        if self.rrf_k < 1:
            raise ConfigError(f"rrf k must be >= 1, got {self.rrf_k}")

    @property
    def label(self) -> str:
        """A short name with only the settings the method reads."""
        if self.method == "rrf":
            return f"rrf k={self.rrf_k} N={self.window}"
        if self.method == "minmax":
            return f"minmax a={self.weight:g} N={self.window}"
        return f"{self.method} a={self.weight:g} N={self.window} scale={self.scale} dense={self.dense}"


def query_scale(vector: SparseVector, scale: str) -> float:
    """The multiplier of a query's sparse scores: 1, 1 / ||q||_2 or 1 / ||q||_1.

    Sparse scores grow with the query's weights while a cosine stays in [-1, 1], so an unscaled
    weighted sum lets long or heavy queries drown the dense part. Only the query is known before
    the request, so only it can rescale (as the sparse query's boost)."""
    if scale not in SCALES:
        raise ConfigError(f"fusion scale {scale!r} is not one of {', '.join(SCALES)}")
    if scale == "none":
        return 1.0
    weights = np.fromiter(vector.values(), np.float64, len(vector))
    norm = float(np.sqrt((weights ** 2).sum())) if scale == "l2" else float(np.abs(weights).sum())
    return 1.0 / norm if norm > 0 else 1.0


def _ranked(scores: np.ndarray, eligible: np.ndarray, n: int) -> np.ndarray:
    """Each row's n best eligible columns, best first (higher score, then lower column); -1 pads
    a row with fewer. Columns are in id order (`HybridScorer`), so ties go to the lower id."""
    keyed = np.where(eligible, -scores, np.inf)
    order = np.argsort(keyed, axis=1, kind="stable")[:, :n]
    return np.where(np.take_along_axis(eligible, order, axis=1), order, -1)


def _mask(lists: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Boolean (queries x documents): which documents each row's list (-1 padded) holds."""
    mask = np.zeros(shape, dtype=bool)
    rows, cols = np.nonzero(lists >= 0)
    mask[rows, lists[rows, cols]] = True
    return mask


def _minmax(scores: np.ndarray, member: np.ndarray) -> np.ndarray:
    """Scores min-max normalised over each row's members, 0 elsewhere; a row whose members all
    score alike gets 1 for each (each is its list's best)."""
    lo = np.where(member, scores, np.inf).min(axis=1, keepdims=True)
    hi = np.where(member, scores, -np.inf).max(axis=1, keepdims=True)
    span = hi - lo
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.where(span > 0, (scores - lo) / np.where(span > 0, span, 1.0), 1.0)
    return np.where(member, norm, 0.0)


def _reciprocal_ranks(lists: np.ndarray, shape: tuple[int, int], k: int) -> np.ndarray:
    """1 / (k + rank) of each document in each row's list (rank from 1), 0 where absent."""
    out = np.zeros(shape)
    rows, cols = np.nonzero(lists >= 0)
    out[rows, lists[rows, cols]] = 1.0 / (k + cols + 1)
    return out


def fuse(sparse: np.ndarray, dense: np.ndarray, fusion: Fusion, k: int = 10,
         sparse_scale: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The fused top k of each query: (column indices, fused scores), rows best first, padded
    with -1 and -inf where a query has fewer than k candidates.

    `sparse`, `dense`: (queries x documents) sparse scores (0 where no term matches: the document
    is no sparse candidate) and cosines; columns in id order, so ties go to the lower id.
    `sparse_scale`: each query's `query_scale` for `fusion.scale` (ones when not given).
    With a = `fusion.weight`, N = `fusion.window`, s the scaled sparse score, d the dense score
    (cos or (1 + cos) / 2):

    - rescore: the sparse top N, each scored a*s + (1-a)*d, best k kept. The one fusion both
      clusters can serve with sparse candidates alone: the sparse query with boost a*scale, and a
      rescore of its top N (window_size N, query_weight 1, rescore_query_weight 1-a) by a query
      scoring the document's dense similarity (the lsr-os plugin's, or painless over the stored
      vector on OpenSearch). A relevant document outside the sparse top N is never seen.
    - union: every sparse match and the dense top N, scored a*s + (1-a)*d where d counts only for
      the dense top N (0 elsewhere, and s is 0 for a document that matches no term): what
      Elasticsearch sums for a request with `query` (boost a*scale) and `knn` (k = N, boost 1-a,
      its score (1 + cos) / 2), and OpenSearch with the k-NN plugin for a bool `should` of the
      two. The sparse side has no window (the engine scores every match), so N is the `knn` k
      alone; a relevant document found by neither side's scoring is still never seen.
    - minmax: the sparse top N and the dense top N, each list min-max normalised over itself, a
      document absent from a list scoring 0 there, summed a / 1-a (OpenSearch's hybrid query with
      a normalization processor; the issue's first probe). Needs both lists' extremes first, so
      no cluster here serves it in one request: it measures what the cluster-side fusions lose.
    - rrf: the same two lists, each document scored sum 1 / (rrf_k + rank). Rank-only, so scale-
      and weight-free; for comparison too (the probe found it adds nothing over sparse).
    """
    if sparse.shape != dense.shape or sparse.ndim != 2:
        raise DataError(f"sparse scores {sparse.shape} and dense scores {dense.shape} must be one "
                        f"(queries x documents) shape")
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    shape = sparse.shape
    a, n = fusion.weight, fusion.window
    s = sparse.astype(np.float64)
    c = dense.astype(np.float64)
    matches = s > 0
    if fusion.method in ("rescore", "union"):
        if sparse_scale is not None:
            s = s * np.asarray(sparse_scale, np.float64).reshape(-1, 1)
        d = (1.0 + c) / 2.0 if fusion.dense == "half" else c
        if fusion.method == "rescore":
            eligible = _mask(_ranked(s, matches, n), shape)
            fused = a * s + (1 - a) * d
        else:
            in_dense = _mask(_ranked(c, np.ones(shape, bool), n), shape)
            eligible = matches | in_dense
            fused = a * s + (1 - a) * np.where(in_dense, d, 0.0)
    else:
        sparse_list = _ranked(s, matches, n)
        dense_list = _ranked(c, np.ones(shape, bool), n)
        in_sparse, in_dense = _mask(sparse_list, shape), _mask(dense_list, shape)
        eligible = in_sparse | in_dense
        if fusion.method == "minmax":
            fused = a * _minmax(s, in_sparse) + (1 - a) * _minmax(c, in_dense)
        else:
            fused = (_reciprocal_ranks(sparse_list, shape, fusion.rrf_k)
                     + _reciprocal_ranks(dense_list, shape, fusion.rrf_k))
    top = _ranked(fused, eligible, k)
    scores = np.where(top >= 0, np.take_along_axis(fused, np.maximum(top, 0), axis=1), -np.inf)
    return top, scores


BATCH_CELLS = 2_000_000


class HybridScorer:
    """One collection's documents, scored sparse (`ExactScorer`) and dense (normalised float32),
    for exact hybrid top-k runs; columns in id order so ties go to the lower id."""

    def __init__(self, docs: Mapping[str, SparseVector], dense: Mapping[str, np.ndarray]):
        ids = sorted(docs)
        missing = [d for d in ids if d not in dense]
        if missing:
            raise DataError(f"document {missing[0]!r} has a sparse vector but no dense one "
                            f"({len(missing)} of {len(ids)} documents lack one)")
        self.sparse = ExactScorer((d, docs[d]) for d in ids)
        self.ids = self.sparse.ids
        self.dense = _unit_rows(np.stack([np.asarray(dense[d], np.float32) for d in ids]) if ids
                                else np.zeros((0, 0), np.float32), ids, "document")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.dense.shape[1])

    def scores(self, queries: Sequence[tuple[SparseVector, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        """(queries x documents) sparse scores and cosines of the given (sparse, dense) queries."""
        sparse = np.stack([self.sparse.scores(q) for q, _ in queries]) if queries else np.zeros((0, len(self)))
        vectors = np.stack([np.asarray(v, np.float32) for _, v in queries]) if queries else np.zeros((0, self.dim))
        if vectors.shape[1] != self.dim:
            raise DataError(f"dense query vectors have {vectors.shape[1]} dimensions, the documents {self.dim}")
        return sparse, _unit_rows(vectors, [str(i) for i in range(len(vectors))], "query") @ self.dense.T

    def run(self, queries: Iterable[tuple[str, SparseVector, np.ndarray]], fusion: Fusion, k: int = 10) -> Run:
        """Each query's fused top k ({query id: {document id: fused score}}, best first); `queries`
        are (id, prepared sparse vector, dense vector), scored a batch at a time (about
        `BATCH_CELLS` query-document scores, so a large collection takes few queries at once)."""
        batch = max(1, BATCH_CELLS // max(1, len(self)))
        run: Run = {}
        chunk: list[tuple[str, SparseVector, np.ndarray]] = []
        for item in queries:
            chunk.append(item)
            if len(chunk) == batch:
                run.update(self._run(chunk, fusion, k))
                chunk = []
        if chunk:
            run.update(self._run(chunk, fusion, k))
        return run

    def topk(self, sparse: SparseVector, dense: np.ndarray, fusion: Fusion, k: int = 10) -> dict[str, float]:
        """One query's fused top k, best first."""
        return self._run([("q", sparse, dense)], fusion, k)["q"]

    def _run(self, chunk: list[tuple[str, SparseVector, np.ndarray]], fusion: Fusion, k: int) -> Run:
        s, c = self.scores([(q, v) for _, q, v in chunk])
        scale = np.array([query_scale(q, fusion.scale) for _, q, _ in chunk])
        top, fused = fuse(s, c, fusion, k, scale)
        return to_run([qid for qid, _, _ in chunk], top, fused, self.ids)


def to_run(qids: Sequence[str], top: np.ndarray, scores: np.ndarray, ids: Sequence[str]) -> Run:
    """`fuse`'s output as a run, padding dropped."""
    return {qid: {ids[j]: float(v) for j, v in zip(row, vals) if j >= 0}
            for qid, row, vals in zip(qids, top, scores)}


def _unit_rows(vectors: np.ndarray, ids: Sequence[str], what: str) -> np.ndarray:
    """Rows scaled to unit length; a zero or non-finite row is an error naming it."""
    if not len(vectors):
        return vectors.astype(np.float32)
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1)
    bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
    if len(bad):
        raise DataError(f"{what} {ids[bad[0]]!r} has a zero or non-finite dense vector: it has no direction to score")
    return (vectors / norms[:, None]).astype(np.float32)
