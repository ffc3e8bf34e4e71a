"""Evaluation through the cluster, checked against exact in-memory scoring of the same queries.

Both directions of a split: text -> image (each caption a query, its image relevant) and
image -> text (each image a query, its ~5 captions relevant). The cluster answers through
`_msearch`; the exact reference scores the same (capped) queries against the same documents
in a scipy CSR matrix whose weights are truncated to the 9 significant bits `rank_features`
stores (`sparse.quantize`), so the two should rank alike up to float summation order.
"""

from __future__ import annotations

import json
import logging
import time
from array import array
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Iterable

import numpy as np
import scipy.sparse as sp

from lsr_os.engines.base.base import Engine
from lsr_os.splits import split_label
from lsr_os.errors import ConfigError, DataError
from lsr_os.metrics import Qrels, image_text_qrels
from lsr_os.records import RecordSource, read_split
from lsr_os.search import (Run, prepare_query, search_run, split_filters, stable_preference,
                           write_trec)
from lsr_os.sparse import SparseVector, clean, prune, quantize

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- exact scoring


class ExactScorer:
    """Documents as a term x document CSR matrix (9-bit weights) for exact dot-product top-k."""

    def __init__(self, docs: Iterable[tuple[str, SparseVector]], quantized: bool = True):
        self.ids: list[str] = []
        self.term_ids: dict[str, int] = {}
        rows, cols, vals = array("q"), array("q"), array("f")
        for doc_id, vector in docs:
            d = len(self.ids)
            self.ids.append(doc_id)
            for term, weight in vector.items():
                if weight > 0:
                    rows.append(self.term_ids.setdefault(term, len(self.term_ids)))
                    cols.append(d)
                    vals.append(weight)
        weights = np.frombuffer(vals, dtype=np.float32)
        if quantized:
            weights = quantize(weights)
        self.matrix = sp.csr_matrix((weights, (np.frombuffer(rows, np.int64), np.frombuffer(cols, np.int64))),
                                    shape=(len(self.term_ids), len(self.ids)), dtype=np.float32)
        self.matrix.sum_duplicates()

    def __len__(self) -> int:
        return len(self.ids)

    def _terms(self, query: SparseVector):
        """The matrix rows of the query's known terms, and their weights."""
        pairs = [(self.term_ids[t], w) for t, w in query.items() if t in self.term_ids]
        rows = np.fromiter((r for r, _ in pairs), np.int64, len(pairs))
        return rows, np.fromiter((w for _, w in pairs), np.float32, len(pairs))

    def scores(self, query: SparseVector) -> np.ndarray:
        """Scores of every document (0 where no term matches)."""
        rows, weights = self._terms(query)
        if not len(rows):
            return np.zeros(len(self.ids), dtype=np.float32)
        return np.asarray(self.matrix[rows].T @ weights).ravel()

    def topk(self, query: SparseVector, k: int = 10) -> dict[str, float]:
        """The k best matching documents (score > 0), best first; ties by document order."""
        s = self.scores(query)
        candidates = np.flatnonzero(s > 0)
        if len(candidates) > k:
            part = np.argpartition(-s[candidates], k - 1)[:k]
            candidates = candidates[part]
        order = candidates[np.lexsort((candidates, -s[candidates]))]
        return {self.ids[i]: float(s[i]) for i in order}

    @cached_property
    def _positions(self) -> dict[str, int]:
        return {d: i for i, d in enumerate(self.ids)}

    def index_of(self, doc_id: str) -> int:
        """The column of a document (for scoring a run's hits exactly)."""
        return self._positions[doc_id]

    def scores_of(self, query: SparseVector, doc_ids: list[str]) -> np.ndarray:
        """Exact scores of the given documents only (0 where no term matches)."""
        rows, weights = self._terms(query)
        if not len(rows) or not doc_ids:
            return np.zeros(len(doc_ids), dtype=np.float32)
        cols = [self.index_of(d) for d in doc_ids]
        return np.asarray(self.matrix[rows][:, cols].T @ weights).ravel()

    def run(self, queries: Iterable[tuple[str, SparseVector]], k: int = 10) -> tuple[Run, list[float]]:
        """A run over many queries, and the seconds each query took."""
        run: Run = {}
        seconds: list[float] = []
        for qid, vector in queries:
            t0 = time.perf_counter()
            run[qid] = self.topk(vector, k)
            seconds.append(time.perf_counter() - t0)
        return run, seconds


# --------------------------------------------------------------------------- parity


def topk_overlap(a: dict[str, float], b: dict[str, float], k: int = 10) -> float:
    """|top-k(a) ∩ top-k(b)| / min(k, |top-k(b)|): b is the reference; 1.0 when both are empty."""
    ta = set(sorted(a, key=lambda d: -a[d])[:k])
    tb = set(sorted(b, key=lambda d: -b[d])[:k])
    if not tb:
        return 1.0 if not ta else 0.0
    return len(ta & tb) / min(k, len(tb))


# Relative: float32 sums of tens of terms in two orders differ by up to a few 1e-6; distinct
# 9-bit-weighted dot products rarely come this close.
TIE_TOLERANCE = 1e-4


def tie_aware_overlap(run: Run, exact: Run, scorer: ExactScorer, queries: dict[str, SparseVector],
                      k: int = 10) -> float:
    """Mean share of a run's top k whose exact score reaches the exact k-th score (within
    `TIE_TOLERANCE`); `exact` is `scorer`'s own run of `queries`, so only the run's hits are scored.

    Documents tied at rank k are equally right answers: with 9-bit weights exact ties are common
    in a large collection, and the engine breaks them by its copy's document order (which differs
    between a primary and its replica), the exact scorer by its own. Scores that differ by float32
    summation order only (the engine and scipy add the terms in different orders) are ties too."""
    shares = []
    for qid, hits in run.items():
        reference = list(exact.get(qid, {}).values())[:k]  # best first; only documents that match
        if not reference:
            shares.append(1.0)
            continue
        floor = min(reference) * (1 - TIE_TOLERANCE)
        scores = scorer.scores_of(queries[qid], list(hits)[:k])
        shares.append(int((scores >= floor).sum()) / len(reference))
    return float(np.mean(shares)) if shares else 1.0


def parity(cluster: Run, exact: Run, k: int = 10) -> dict[str, float]:
    """Agreement of the cluster's run with the exact one.

    - top{k}_overlap: mean share of the exact top k that the cluster's top k holds.
    - kendall_tau: mean Kendall tau-b between the two scores of the documents both top k share
      (queries with at least 2 shared documents whose scores are not all tied).
    - exact_top{k}_share: share of queries whose top k sets are identical.
    """
    from scipy.stats import kendalltau

    overlaps, taus, identical = [], [], 0
    for qid, ref in exact.items():
        got = cluster.get(qid, {})
        ov = topk_overlap(got, ref, k)
        overlaps.append(ov)
        identical += ov == 1.0
        shared = [d for d in sorted(ref, key=lambda d: -ref[d])[:k] if d in got]
        if len(shared) >= 2:
            tau = kendalltau([got[d] for d in shared], [ref[d] for d in shared]).statistic
            if np.isfinite(tau):
                taus.append(float(tau))
    n = len(overlaps)
    return {f"top{k}_overlap": float(np.mean(overlaps)) if n else 1.0,
            "kendall_tau": float(np.mean(taus)) if taus else 1.0,
            f"identical_top{k}_share": identical / n if n else 1.0, "queries": n}


def latency_summary(seconds: list[float]) -> dict[str, float]:
    """Mean, p50 and p99 in milliseconds."""
    if not seconds:
        return {"mean_ms": 0.0, "p50_ms": 0.0, "p99_ms": 0.0, "n": 0}
    ms = np.asarray(seconds, dtype=np.float64) * 1000
    return {"mean_ms": float(ms.mean()), "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "n": int(len(ms))}


# --------------------------------------------------------------------------- data of a split


@dataclass
class SplitData:
    """The sparse vectors of one split's images and captions, and relevance both ways."""

    images: dict[str, SparseVector]
    captions: dict[str, SparseVector]
    qrels_t2i: Qrels
    qrels_i2t: Qrels
    caption_texts: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, source: RecordSource) -> "SplitData":
        """Both collections of a source opened on the split (`SourceOptions.split`)."""
        part = read_split(source)
        t2i, i2t = image_text_qrels(part.caption_image, part.images)
        return cls(part.images, part.captions, t2i, i2t, part.caption_texts)

    def pruned(self, top_k: int | None = None, threshold: float = 0.0) -> "SplitData":
        """The same hygiene and pruning `lsr-os ingest` applies, so memory scores what the index holds."""
        if top_k is None and threshold <= 0:
            return self
        images = {i: prune(clean(v), top_k, threshold) for i, v in self.images.items()}
        captions = {c: prune(clean(v), top_k, threshold) for c, v in self.captions.items()}
        return SplitData(images, captions, self.qrels_t2i, self.qrels_i2t, self.caption_texts)


def split_filter(engine: Engine, index: str, n_docs: int, split: str | None) -> list[dict]:
    """The filter that restricts `index` to the evaluated documents, checking their number."""
    from lsr_os.index import require_index

    total = require_index(engine, index)
    if total == n_docs:
        return []
    filters = split_filters(split)
    in_split = engine.count(index, {"bool": {"filter": filters}}) if filters else total
    if in_split != n_docs:
        raise DataError(f"{index} holds {total} documents, {in_split} of split {split_label(split)}, but the source "
                        f"holds {n_docs}: ingest the same source, or evaluate the split it holds")
    return filters


# --------------------------------------------------------------------------- evaluation


def dense_runs(dense_dir: str | Path, data: SplitData, k: int = 10) -> dict[str, Run]:
    """The frozen dense teacher's runs on the split (cosine of its normalised vectors)."""
    from lsr_os.dense_files import IMG_FILE, TEXT_FILE, read_embeddings

    dense_dir = Path(dense_dir)
    img, txt = read_embeddings(dense_dir / IMG_FILE), read_embeddings(dense_dir / TEXT_FILE)
    image_ids, caption_ids = list(data.images), list(data.captions)
    scores = txt.take(caption_ids) @ img.take(image_ids).T

    def top(matrix: np.ndarray, qids: list[str], dids: list[str]) -> Run:
        kk = min(k, matrix.shape[1])
        part = np.argpartition(-matrix, kk - 1, axis=1)[:, :kk]
        return {q: {dids[j]: float(matrix[r, j]) for j in part[r]} for r, q in enumerate(qids)}

    return {"t2i": top(scores, caption_ids, image_ids), "i2t": top(scores.T, image_ids, caption_ids)}


def sparsity(queries: dict[str, SparseVector], docs: dict[str, SparseVector]) -> dict[str, float]:
    """The paper's efficiency figures for one direction: FLOPs (expected multiplications per
    query-document pair, docs/method.md) and the mean number of terms of a query and of a document."""
    from lsr_os.metrics import flops, mean_nonzeros, sparse_dicts_to_csr

    terms = sorted({t for v in queries.values() for t in v} | {t for v in docs.values() for t in v})
    q = sparse_dicts_to_csr(list(queries.values()), terms)
    d = sparse_dicts_to_csr(list(docs.values()), terms)
    return {"flops": flops(q, d), "query_terms": mean_nonzeros(q), "document_terms": mean_nonzeros(d)}


def words_kept(words: dict[str, dict[str, list[str]]], queries: dict[str, SparseVector]) -> float:
    """The query side of "do the terms speak the user's words": the mean over queries of the share
    of the text's content words (`words`: each query's `vocab.content_words`) with a weight in the
    query (any of its pieces)."""
    shares = []
    for qid, pieces_of in words.items():
        if pieces_of:
            vector = queries.get(qid, {})
            shares.append(sum(any(p in vector for p in pieces) for pieces in pieces_of.values()) / len(pieces_of))
    return float(np.mean(shares)) if shares else 0.0


def _direction(engine: Engine, name: str, queries: dict[str, SparseVector], docs: dict[str, SparseVector],
               scorer: ExactScorer, index: str, qrels: Qrels, filters: list[dict], cap: int, k: int, batch_size: int, progress: bool | None,
               first_terms: int | None, window: int) -> tuple[dict, Run, Run]:
    """One set of queries through the cluster and exactly: (report section, cluster run, exact run)."""
    from lsr_os.metrics import retrieval_metrics

    prepared: dict[str, SparseVector] = {}
    for qid, vector in queries.items():
        try:
            prepared[qid] = prepare_query(vector, cap - len(filters))
        except DataError:  # no usable term: it retrieves nothing and counts as a miss
            continue
    # One preference for the whole evaluation: on a healthy cluster a second run is identical.
    cluster_run, timing = search_run(engine, index, prepared.items(), k, cap, filters, batch_size, progress,
                                     desc=f"{name} via {index}", first_terms=first_terms, window=window,
                                     preference=stable_preference("evaluate"))
    exact_run, exact_s = scorer.run(prepared.items(), k)
    section = {
        "queries": len(queries), "queries_without_terms": len(queries) - len(prepared), "documents": len(scorer),
        "cluster": {"metrics": retrieval_metrics(cluster_run, qrels),
                    "latency_took": latency_summary([t / 1000 for t in timing.took_ms]),
                    "qps_msearch": timing.queries / timing.wall_s if timing.wall_s else 0.0},
        "exact": {"metrics": retrieval_metrics(exact_run, qrels), "latency": latency_summary(exact_s)},
        "parity": {**parity(cluster_run, exact_run, k),
                   f"top{k}_overlap_ties": tie_aware_overlap(cluster_run, exact_run, scorer, prepared, k)},
        "sparsity": sparsity(prepared, docs),
    }
    return section, cluster_run, exact_run


def evaluate(engine: Engine, images_index: str, captions_index: str, data: SplitData, split: str = "test",
             k: int = 10, batch_size: int = 64, max_terms: int | None = None, out_dir: str | Path | None = None,
             dense_dir: str | Path | None = None, progress: bool | None = None, first_terms: int | None = None,
             window: int = 100, mode: str | None = None, text_queries: dict[str, dict[str, SparseVector]] | None = None,
             tokenizer=None) -> dict:
    """Both directions through the cluster and exactly in memory; metrics, parity, latency, sparsity.

    `first_terms`/`window`: two-phase search through the cluster (see `search.build_query`); the
    exact reference always scores the full query, so parity shows what the setting costs.
    `mode` names how `data.captions` were encoded (the text -> image queries, and the captions the
    image -> text direction finds); `text_queries` are more text -> image query sets by mode
    ("expanded", "own-tokens", "inference-free"), each reported beside it under "t2i_modes"; with `tokenizer` and the captions'
    texts, each mode's share of content words kept (`words_kept`).

    Writes `<direction>.<system>.trec` run files and `report.json` into `out_dir` when given.
    """
    from lsr_os.metrics import retrieval_metrics
    from lsr_os.vocab import content_words

    cap = max_terms or engine.max_clause_count
    teacher = dense_runs(dense_dir, data, k) if dense_dir else None
    report: dict = {"split": split, "k": k, "max_query_terms": cap, "first_terms": first_terms,
                    "window": window if first_terms else None, "indices": {"images": images_index,
                                                                                  "captions": captions_index}}
    runs: dict[str, Run] = {}
    options = dict(cap=cap, k=k, batch_size=batch_size, progress=progress, first_terms=first_terms, window=window)
    if mode is not None and mode in (text_queries or {}):
        raise ConfigError(f"the captions' own mode {mode!r} cannot be one of the other query sets too")
    words = ({qid: content_words(text, tokenizer) for qid, text in data.caption_texts.items()}
             if tokenizer is not None else {})
    for name, queries, docs, index, qrels in (("t2i", data.captions, data.images, images_index, data.qrels_t2i),
                                              ("i2t", data.images, data.captions, captions_index, data.qrels_i2t)):
        filters = split_filter(engine, index, len(docs), split)
        scorer = ExactScorer(docs.items())
        sets = {mode or "given": queries, **((text_queries or {}) if name == "t2i" else {})}
        for set_name, query_set in sets.items():
            label = name if query_set is queries else f"{name}-{set_name}"
            section, cluster_run, exact_run = _direction(engine, label, query_set, docs, scorer, index, qrels,
                                                         filters, **options)
            if name == "t2i" and words:
                section["words_kept"] = words_kept(words, query_set)
            runs[f"{label}.cluster"], runs[f"{label}.exact"] = cluster_run, exact_run
            if query_set is queries:
                if teacher is not None:
                    section["dense"] = {"metrics": retrieval_metrics(teacher[name], qrels)}
                    runs[f"{name}.dense"] = teacher[name]
                report[name] = {**section, **({"mode": mode} if mode and name == "t2i" else {})}
            if name == "t2i" and (mode or text_queries):
                report.setdefault("t2i_modes", {})[set_name] = section
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name, run in runs.items():
            write_trec(out / f"{name}.trec", run, name.replace(".", "-"))
        (out / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
        report["out_dir"] = str(out)
    return report


def text_query_modes(source: RecordSource, data: SplitData) -> tuple[str | None, dict[str, dict[str, SparseVector]]]:
    """How the source encoded its captions, and the text -> image queries of the other modes it can
    make cheaply: the other model mode from dense files (the same dense caption vectors through the
    head), and the inference-free queries when the head has query weights."""
    from lsr_os import static_query
    from lsr_os.records import DenseSource

    head = source.head_path
    if head is None:
        return None, {}
    expand = source.opts.expand
    mode = "expanded" if expand else "own-tokens"
    extra: dict[str, dict[str, SparseVector]] = {}
    texts = data.caption_texts
    if isinstance(source, DenseSource) and texts:
        from lsr_os.dense_files import TEXT_FILE, read_embeddings

        ids = [c for c in data.captions if c in texts]
        dense = read_embeddings(source.dense_dir / TEXT_FILE).take(ids)
        vectors = source.head().encode_captions(dense, [texts[c] for c in ids], expand=not expand)
        extra["own-tokens" if expand else "expanded"] = dict(zip(ids, vectors))
    if static_query.has_query_weights(head) and texts:
        # a caption without a text or without a weighted word retrieves nothing: a miss
        qids = [c for c in data.captions if c in texts]
        queries = static_query.StaticQueryEncoder.from_head(head).encode_each([texts[c] for c in qids])
        extra["inference-free"] = {qid: {} for qid in data.captions} | dict(zip(qids, queries))
    return mode, extra


def evaluate_source(engine: Engine, source: RecordSource, split: str = "test", images_index: str = "lsr-images",
                    captions_index: str = "lsr-captions", top_k: int | None = None, threshold: float = 0.0,
                    **options) -> dict:
    """`lsr-os evaluate`: the split's records from `source` (opened on `split`), pruned as the ingest
    pruned them, evaluated against both indices (see `evaluate` for `options`); with dense files
    behind the source, the dense teacher's figures too; with a head, every text query mode it can
    make (`text_query_modes`). The indices are checked before any model or file is loaded."""
    from lsr_os.index import require_index
    from lsr_os.static_query import tokenizer_dir
    from lsr_os.vocab import fast_tokenizer

    for index in (images_index, captions_index):
        require_index(engine, index)
    data = SplitData.load(source).pruned(top_k, threshold)
    mode, extra = text_query_modes(source, data)
    head = source.head_path
    tokenizer = fast_tokenizer(tokenizer_dir(head) if head else None)
    return evaluate(engine, images_index, captions_index, data, split, dense_dir=source.dense_dir, mode=mode,
                    text_queries=extra, tokenizer=tokenizer, **options)
