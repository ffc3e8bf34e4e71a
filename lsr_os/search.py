"""Weighted term queries against `rank_features`: building, (m)search, hits -> runs, explain.

A query is `bool.should` of one `rank_feature` clause per query term, with the `linear`
function and `boost` = the query weight, so a document's score is the dot product of the
query with the document's stored (9-bit) weights. The number of clauses is capped at the
cluster's `indices.query.bool.max_clause_count` by keeping the heaviest query terms.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from opensearchpy import OpenSearch
from opensearchpy.exceptions import NotFoundError, TransportError

from lsr_os.dense_files import select_splits
from lsr_os.errors import ClusterError, DataError
from lsr_os.index import SPARSE_FIELD
from lsr_os.sparse import SparseVector, clean, prune, quantize
from lsr_os.vocab import feature_to_term, term_to_feature

log = logging.getLogger(__name__)

DEFAULT_MAX_CLAUSES = 1024  # OpenSearch 3.x default of indices.query.bool.max_clause_count
MAX_CLAUSE_SETTING = "indices.query.bool.max_clause_count"
# Fields a hit shows besides its score; `sparse` is left out of responses unless explaining.
DISPLAY_FIELDS = ["id", "dataset", "split", "image", "image_id", "caption", "terms"]

Run = dict[str, dict[str, float]]


def max_clause_count(client: OpenSearch) -> int:
    """The cluster's max clause count (persistent, transient or default), else 1024."""
    try:
        body = client.cluster.get_settings(include_defaults=True, flat_settings=True)
    except TransportError as exc:
        log.warning("cannot read %s (HTTP %s); assuming %d", MAX_CLAUSE_SETTING, exc.status_code,
                    DEFAULT_MAX_CLAUSES)
        return DEFAULT_MAX_CLAUSES
    for level in ("transient", "persistent", "defaults"):
        value = body.get(level, {}).get(MAX_CLAUSE_SETTING)
        if value is not None:
            return int(value)
    return DEFAULT_MAX_CLAUSES


def split_filters(spec: str | None) -> list[dict]:
    """The filter clauses that keep documents of the selected splits (`select_splits`: "train"
    includes restval); none for every split."""
    wanted = select_splits(spec)
    return [] if wanted is None else [{"terms": {"split": sorted(wanted)}}]


def prepare_query(vector: SparseVector, max_terms: int, vocabulary=None) -> SparseVector:
    """Clean a query vector and keep its `max_terms` heaviest terms.

    With a `vocabulary`, terms outside it are dropped (logged); a query left with no term
    raises DataError, because it would silently match nothing.
    """
    if not vector:
        raise DataError("empty query: it has no terms")
    cleaned = clean(vector)
    if vocabulary is not None:
        unknown = [t for t in cleaned if t not in vocabulary]
        if unknown:
            log.warning("dropping %d query terms that are not in the vocabulary: %s", len(unknown),
                        ", ".join(map(repr, unknown[:10])))
            cleaned = {t: w for t, w in cleaned.items() if t in vocabulary}
    if not cleaned:
        raise DataError("the query has no known term with a positive, finite weight")
    if max_terms < 1:
        raise DataError(f"max query terms must be >= 1, not {max_terms}")
    kept = prune(cleaned, top_k=max_terms)
    if len(kept) < len(cleaned):
        log.info("query capped from %d to its %d heaviest terms", len(cleaned), len(kept))
    return kept


def build_query(vector: SparseVector, size: int = 10, filters: Sequence[dict] = (),
                with_vectors: bool = False, with_source: bool = True) -> dict:
    """The search body for a prepared query vector (see `prepare_query`).

    `filters` are extra non-scoring clauses (e.g. `{"term": {"split": "test"}}`); each counts
    against the max clause count, so callers cap the terms at max - len(filters).
    `with_vectors` returns the documents' sparse vectors too (for explain); `with_source=False`
    returns ids and scores only, which is all a run needs and spares the node parsing `_source`.
    """
    should = [{"rank_feature": {"field": f"{SPARSE_FIELD}.{term_to_feature(t)}", "linear": {}, "boost": w}}
              for t, w in vector.items()]
    query: dict = {"bool": {"should": should}}
    if filters:  # with a filter, should clauses turn optional unless one must match
        query["bool"].update(filter=list(filters), minimum_should_match=1)
    source = {"includes": DISPLAY_FIELDS + ([SPARSE_FIELD] if with_vectors else [])} if with_source else False
    return {"size": size, "query": query, "_source": source, "track_total_hits": False}


def search(client: OpenSearch, index: str, body: dict) -> tuple[list[dict], int]:
    """One search; returns (hits, server milliseconds). Names the index in errors."""
    try:
        resp = client.search(index=index, body=body)
    except NotFoundError as exc:
        raise ClusterError(f"no index or alias {index} on the cluster; ingest it first with `lsr-os ingest`") from exc
    except TransportError as exc:
        raise ClusterError(f"search on {index} failed: HTTP {exc.status_code} {_error_text(exc.info)}") from exc
    return resp["hits"]["hits"], int(resp.get("took", 0))


def _error_text(info) -> str:
    if isinstance(info, dict):
        err = info.get("error", info)
        if isinstance(err, dict):
            root = (err.get("root_cause") or [{}])[0]
            return f"{err.get('type')}: {root.get('reason') or err.get('reason')}"
        return str(err)
    return str(info)


@dataclass
class BatchTiming:
    """Timing of a stream of queries: server `took` per query and client wall time per batch."""

    took_ms: list[int]
    wall_s: float
    queries: int


def msearch(client: OpenSearch, index: str, queries: Iterable[tuple[str, dict]], batch_size: int = 64,
            progress: bool | None = None, desc: str = "search") -> Iterator[tuple[str, list[dict], int]]:
    """Run (qid, body) queries with `_msearch` in batches; yields (qid, hits, took ms) in order."""
    from tqdm.auto import tqdm

    batch: list[tuple[str, dict]] = []
    with tqdm(unit="q", desc=desc, disable=None if progress is None else not progress, dynamic_ncols=True) as bar:
        for item in queries:
            batch.append(item)
            if len(batch) >= batch_size:
                yield from _msearch_batch(client, index, batch)
                bar.update(len(batch))
                batch = []
        if batch:
            yield from _msearch_batch(client, index, batch)
            bar.update(len(batch))


def _msearch_batch(client: OpenSearch, index: str, batch: list[tuple[str, dict]]):
    lines: list[dict] = []
    for _, body in batch:
        lines.append({"index": index})
        lines.append(body)
    try:
        resp = client.msearch(body=lines)
    except NotFoundError as exc:
        raise ClusterError(f"no index or alias {index} on the cluster; ingest it first with `lsr-os ingest`") from exc
    except TransportError as exc:
        raise ClusterError(f"_msearch on {index} failed: HTTP {exc.status_code} {_error_text(exc.info)}") from exc
    for (qid, _), answer in zip(batch, resp["responses"]):
        if "error" in answer:
            raise ClusterError(f"query {qid} on {index} failed: HTTP {answer.get('status')} "
                               f"{_error_text(answer)}")
        yield qid, answer["hits"]["hits"], int(answer.get("took", 0))


def search_run(client: OpenSearch, index: str, queries: Iterable[tuple[str, SparseVector]], k: int = 10,
               max_terms: int | None = None, filters: Sequence[dict] = (), batch_size: int = 64,
               progress: bool | None = None, desc: str = "search") -> tuple[Run, BatchTiming]:
    """Search many query vectors and collect a run {qid: {doc id: score}} plus timings."""
    cap = (max_terms or max_clause_count(client)) - len(filters)
    bodies = ((qid, build_query(prepare_query(vec, cap), k, filters, with_source=False)) for qid, vec in queries)
    run: Run = {}
    took: list[int] = []
    t0 = time.perf_counter()
    for qid, hits, ms in msearch(client, index, bodies, batch_size, progress, desc):
        run[qid] = {h["_id"]: float(h["_score"]) for h in hits}
        took.append(ms)
    return run, BatchTiming(took, time.perf_counter() - t0, len(took))


def explain_hit(query: SparseVector, hit: dict) -> list[dict]:
    """The matching terms of a hit (returned with `with_vectors`): query weight, stored document
    weight (9-bit, as OpenSearch scores it) and contribution, heaviest first; they sum to the score."""
    doc = (hit.get("_source") or {}).get(SPARSE_FIELD) or {}
    rows = []
    for feature, weight in doc.items():
        term = feature_to_term(feature)
        if term in query:
            stored = float(quantize(weight))
            rows.append({"term": term, "query_weight": query[term], "doc_weight": stored,
                         "contribution": query[term] * stored})
    return sorted(rows, key=lambda r: -r["contribution"])


def write_trec(path: str | Path, run: Run, name: str) -> None:
    """A TREC run file: `qid Q0 docid rank score name`, best first per query."""
    with Path(path).open("w", encoding="utf-8") as handle:
        for qid, docs in run.items():
            ranked = sorted(docs.items(), key=lambda ds: (-ds[1], ds[0]))
            for rank, (doc, score) in enumerate(ranked, 1):
                handle.write(f"{qid} Q0 {doc} {rank} {score:.6f} {name}\n")


# --------------------------------------------------------------------------- queries from models


def read_query_image(path: str | Path):
    """Open a query image, with a clear error when it cannot be read as an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError as exc:
        raise DataError(f"query image {path} does not exist") from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"cannot read query image {path}: {exc}") from exc


def encode_query(model: str, head_path: str, text: str | None = None, image: str | Path | None = None,
                 expand: bool = True, device: str | None = None) -> SparseVector:
    """Turn a text (or an image) into a sparse query: the dense encoder, then the sparse head.

    `expand=False` keeps only the text's own tokens (the paper's no-expansion mode).
    """
    if (text is None) == (image is None):
        raise DataError("give a query text or a query image, not both")
    if text is not None and not text.strip():
        raise DataError("empty query: give some text")
    picture = read_query_image(image) if image is not None else None
    from lsr_os.models import load_encoder
    from lsr_os.models.head import load_head

    head = load_head(head_path)
    encoder = load_encoder(model, device=device)
    if picture is not None:
        return head.encode_images(encoder.encode_images([picture]))[0]
    vector = head.encode_captions(encoder.encode_texts([text]), [text], expand=expand)[0]
    if not vector:
        raise DataError(f"the query {text!r} has no known token with a positive weight")
    return vector


# --------------------------------------------------------------------------- one search, as the CLI runs it


def parse_vector_json(value: str) -> SparseVector:
    """A {term: weight} query from inline JSON or a JSON file (also {"vector": {...}})."""
    inline = value.lstrip()[:1] in ("{", "[", '"') or value.strip() in ("", "null", "true", "false")
    if inline:
        text, where = value, "--vector-json"
    else:
        try:
            text, where = Path(value).read_bytes().decode("utf-8"), f"--vector-json {value}"
        except OSError as exc:
            raise DataError(f"--vector-json {value}: not inline JSON (which starts with {{) and not a readable "
                            f"file ({exc.strerror})") from exc
        except UnicodeDecodeError as exc:
            raise DataError(f"--vector-json {value}: not UTF-8 text (byte at offset {exc.start})") from exc
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    if isinstance(obj, dict) and isinstance(obj.get("vector"), dict):  # a sparse record ("vector" is also a term)
        obj = obj["vector"]
    if not isinstance(obj, dict) or not all(isinstance(w, (int, float)) and not isinstance(w, bool)
                                            for w in obj.values()):
        raise DataError(f'{where} must be an object of term: weight (or {{"vector": {{...}}}}), '
                        f"not {type(obj).__name__ if not isinstance(obj, dict) else 'one with non-numeric weights'}")
    return {str(t): float(w) for t, w in obj.items()}


@dataclass
class SearchResult:
    """One search as shown to a user: rows (rank, id, score, display fields[, matches]) and the DSL."""

    index: str
    took_ms: int
    query: SparseVector
    hits: list[dict]
    dsl: dict
    explain: bool

    def to_dict(self) -> dict:
        return {"index": self.index, "took_ms": self.took_ms, "query": self.query, "hits": self.hits,
                **({"dsl": self.dsl} if self.explain else {})}


def run_search(cluster, text: str | None = None, image: str | Path | None = None, vector_json: str | None = None,
               model: str | None = None, head: str | Path | None = None, expand: bool = True,
               collection: str | None = None, index: str | None = None, prefix: str = "lsr", k: int = 10,
               max_terms: int | None = None, split: str | None = None, explain: bool = False) -> SearchResult:
    """Search with exactly one of a text, an image or a raw `vector_json` query.

    The query is built and checked before the cluster is contacted, so empty queries, queries
    with no known term and unreadable images fail without a request. `cluster` is a
    `ClusterConfig` (connected only then) or a client. The collection defaults to images for
    text and vector queries, captions for an image query; `split` filters documents.
    """
    from lsr_os.config import ClusterConfig, connect
    from lsr_os.errors import ConfigError
    from lsr_os.vocab import Vocabulary

    if sum(x is not None for x in (text, image, vector_json)) != 1:
        raise ConfigError("give one query: TEXT, --image FILE or --vector-json")
    if text is not None and not text.strip():
        raise DataError("empty query: give some text")
    if image is not None:
        read_query_image(image)  # a clear error before any model loads
    if vector_json is not None:
        query, vocab = parse_vector_json(vector_json), Vocabulary.default()
    else:
        if not model or not head:
            raise ConfigError("text and image queries need --model and --head (or use --vector-json)")
        query = encode_query(model, str(head), text=text, image=image, expand=expand)
        vocab = None
    prepare_query(query, len(query) or 1, vocab)  # empty or unknown-only queries fail before connecting
    index = index or f"{prefix}-{collection or ('captions' if image is not None else 'images')}"
    client = connect(cluster) if isinstance(cluster, ClusterConfig) else cluster
    filters = split_filters(split)
    query = prepare_query(query, (max_terms or max_clause_count(client)) - len(filters), vocab)
    body = build_query(query, k, filters, with_vectors=explain)
    hits, took = search(client, index, body)
    rows = []
    for rank, hit in enumerate(hits, 1):
        src = hit.get("_source", {})
        row = {"rank": rank, "id": hit["_id"], "score": hit["_score"],
               **{f: src[f] for f in ("image", "caption", "image_id", "split") if f in src}}
        if explain:
            row["matches"] = explain_hit(query, hit)
        rows.append(row)
    return SearchResult(index, took, query, rows, body, explain)
