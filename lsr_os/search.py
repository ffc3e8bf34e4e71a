"""Weighted term queries against the sparse field: building, (m)search, hits -> runs, explain.

A query's score is the dot product of the query with each document's stored (9-bit) weights:
the engine's operations write it (`rank_feature` clauses on OpenSearch, the `sparse_vector` query
on Elasticsearch); everything around it is the same on both. The number of query terms is capped
at the cluster's max clause count by keeping the heaviest.
"""

from __future__ import annotations

import functools
import json
import logging
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from lsr_os.engines.base.base import Engine, error_text
from lsr_os.engines.base.operations import BaseOperations
from lsr_os.errors import ClusterError, CollectionMissing, ConfigError, DataError, EngineError, NotFound
from lsr_os.splits import select_splits
from lsr_os.sparse import SparseVector, clean, heaviest_first, numeric_weights, prune
from lsr_os.vocab import content_tokens, fast_tokenizer

log = logging.getLogger(__name__)

# Fields a hit shows besides its score; `sparse` is left out of responses unless explaining.
DISPLAY_FIELDS = ["id", "dataset", "split", "image", "image_id", "caption", "terms"]

Run = dict[str, dict[str, float]]


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


def build_query(ops: BaseOperations, vector: SparseVector, size: int = 10, filters: Sequence[dict] = (),
                with_vectors: bool = False, with_source: bool = True, first_terms: int | None = None,
                window: int = 100, explain: bool = False) -> dict:
    """The search body for a prepared query vector (see `prepare_query`) on the engine of `ops`.

    `filters` are extra non-scoring clauses (e.g. `{"terms": {"split": ["test"]}}`); each counts
    against the max clause count, so callers cap the terms at max - len(filters).
    `with_vectors` returns the documents' sparse vectors too; `explain` asks the engine for each
    hit's score explanation instead, which works whether or not the index keeps vectors in
    `_source` (see `explain_hit`); `with_source=False` returns ids and scores only, which is all a
    run needs and spares the node parsing `_source`.
    Two-phase search: with `first_terms`, the query matches with its heaviest `first_terms` terms
    only, and the top `window` documents are rescored with the full query (their score is then
    the full dot product), which trades a little recall for fewer postings to walk.
    """
    first = vector if first_terms is None or len(vector) <= first_terms else prune(vector, first_terms)
    query = ops.sparse_query(first)
    if filters:  # the filters only select: the sparse query alone scores
        query = {"bool": {"must": [query], "filter": list(filters)}}
    source = ops.source_filter(DISPLAY_FIELDS, with_vectors) if with_source else False
    body = {"size": size, "query": query, "_source": source, "track_total_hits": False}
    if explain:
        body["explain"] = True
    if first is not vector:
        body["rescore"] = {"window_size": max(window, size), "query": {
            "rescore_query": ops.sparse_query(vector), "query_weight": 0.0,
            "rescore_query_weight": 1.0}}
    return body


# A search that some shard failed to answer (a node leaving, a copy relocating) comes back with the
# other shards' hits only: a wrong top k, not an error (or, when every shard failed, a 5xx). It is
# sent again after these pauses, while the cluster moves the shard to a live copy, and fails if it
# is still incomplete.
PARTIAL_RETRY_S = (0.5, 1.0, 2.0)


def _all_shards_failed(status: int | None, info) -> bool:
    """Whether an error is every shard failing at once (a search that met a node as it left, before
    the cluster knew): the same passing state as a partial answer, so it is retried alike."""
    err = info.get("error") if isinstance(info, dict) else None
    return (isinstance(status, int) and status >= 500 and isinstance(err, dict)
            and err.get("type") == "search_phase_execution_exception")


def _missing_shards(answer: dict) -> str | None:
    """Why an answer lacks some shards' hits, or None when every shard answered."""
    if "error" in answer:  # only `_all_shards_failed` errors get here
        return f"every shard failed ({error_text(answer)})"
    shards = answer.get("_shards") or {}
    if not shards.get("failed"):
        return None
    reasons = sorted({(f.get("reason") or {}).get("type", "?") for f in shards.get("failures", [])})
    return f"{shards['failed']} of {shards.get('total')} shards did not answer ({', '.join(reasons) or 'no reason'})"


def _until_complete(send, queries: list[tuple[str | None, dict]], index: str) -> dict[str | None, dict]:
    """{qid: answer} of `send(queries)` (answers in the queries' order); queries whose answer
    misses some shards are sent again after each pause of `PARTIAL_RETRY_S`, then fail."""
    answers: dict[str | None, dict] = {}
    todo = queries
    for pause in (*PARTIAL_RETRY_S, None):
        again = []
        for (qid, body), answer in zip(todo, send(todo)):
            missing = _missing_shards(answer)
            if missing is None:
                answers[qid] = answer
            elif pause is None:
                what = f"search on {index}" if qid is None else f"query {qid} on {index}"
                raise ClusterError(f"{what}: {missing}, {len(PARTIAL_RETRY_S)} retries later")
            else:
                again.append((qid, body))
        if not again:
            break
        log.warning("%d searches on %s came back without some shards' hits; again in %.1fs", len(again), index,
                    pause)
        time.sleep(pause)
        todo = again
    return answers


def search(engine: Engine, index: str, body: dict, preference: str | None = None) -> tuple[list[dict], int]:
    """One search; returns (hits, server milliseconds). Names the index in errors.

    `preference` (see `stable_preference`) sends the search to the same shard copies as every
    other search with the same value. An answer missing some shards is retried (`PARTIAL_RETRY_S`)."""

    def send(todo: list) -> list[dict]:
        try:
            return [engine.search(index, body, preference)]
        except NotFound as exc:
            raise ClusterError(f"no index or alias {index} on the cluster; ingest it first with `lsr-os ingest`") from exc
        except EngineError as exc:
            if _all_shards_failed(exc.status, exc.info):
                return [{"status": exc.status, **exc.info}]
            raise ClusterError(f"search on {index} failed: {exc}") from exc

    resp = _until_complete(send, [(None, body)], index)[None]
    return resp["hits"]["hits"], int(resp.get("took", 0))


@dataclass
class BatchTiming:
    """Timing of a stream of queries: server `took` per query and client wall time per batch."""

    took_ms: list[int]
    wall_s: float
    queries: int


def stable_preference(key: str) -> str:
    """A search `preference` for `key`: searches with the same key go to the same shard copies.

    Copies of a shard hold the same documents in different orders, and the engine breaks score
    ties by that order, so two searches served by different copies can disagree at the last rank.
    The cluster still spreads different keys over the copies; a lost copy is replaced by another."""
    return f"lsr-os:{key}"  # a custom preference must not start with "_"


def msearch(engine: Engine, index: str, queries: Iterable[tuple[str, dict]], batch_size: int = 64,
            progress: bool | None = None, desc: str = "search",
            preference: str | None = None) -> Iterator[tuple[str, list[dict], int]]:
    """Run (qid, body) queries with `_msearch` in batches; yields (qid, hits, took ms) in order."""
    from tqdm.auto import tqdm

    batch: list[tuple[str, dict]] = []
    with tqdm(unit="q", desc=desc, disable=None if progress is None else not progress, dynamic_ncols=True) as bar:
        for item in queries:
            batch.append(item)
            if len(batch) >= batch_size:
                yield from _msearch_batch(engine, index, batch, preference)
                bar.update(len(batch))
                batch = []
        if batch:
            yield from _msearch_batch(engine, index, batch, preference)
            bar.update(len(batch))


def _msearch_batch(engine: Engine, index: str, batch: list[tuple[str, dict]], preference: str | None):
    """One `_msearch` of the batch; queries whose answer misses some shards are sent again
    (`PARTIAL_RETRY_S`), so every answer yielded is complete. Yields in the batch's order."""

    def send(todo: list[tuple[str, dict]]) -> list[dict]:
        try:
            responses = engine.msearch(index, [body for _, body in todo], preference)
        except NotFound as exc:
            raise ClusterError(f"no index or alias {index} on the cluster; ingest it first with `lsr-os ingest`") from exc
        except EngineError as exc:
            raise ClusterError(f"_msearch on {index} failed: {exc}") from exc
        for (qid, _), answer in zip(todo, responses):
            if "error" in answer and not _all_shards_failed(answer.get("status"), answer):
                raise ClusterError(f"query {qid} on {index} failed: HTTP {answer.get('status')} "
                                   f"{error_text(answer)}")
        return responses

    answers = _until_complete(send, batch, index)
    for qid, _ in batch:
        answer = answers[qid]
        yield qid, answer["hits"]["hits"], int(answer.get("took", 0))


def search_run(engine: Engine, index: str, queries: Iterable[tuple[str, SparseVector]], k: int = 10,
               max_terms: int | None = None, filters: Sequence[dict] = (), batch_size: int = 64,
               progress: bool | None = None, desc: str = "search", first_terms: int | None = None,
               window: int = 100, preference: str | None = None) -> tuple[Run, BatchTiming]:
    """Search many query vectors and collect a run {qid: {doc id: score}} plus timings."""
    cap = (max_terms or engine.max_clause_count) - len(filters)
    bodies = ((qid, build_query(engine.ops, prepare_query(vec, cap), k, filters, with_source=False, first_terms=first_terms,
                                window=window)) for qid, vec in queries)
    run: Run = {}
    took: list[int] = []
    t0 = time.perf_counter()
    for qid, hits, ms in msearch(engine, index, bodies, batch_size, progress, desc, preference):
        run[qid] = {h["_id"]: float(h["_score"]) for h in hits}
        took.append(ms)
    return run, BatchTiming(took, time.perf_counter() - t0, len(took))


def explain_hit(ops: BaseOperations, query: SparseVector, hit: dict) -> list[dict]:
    """The matching terms of a hit: query weight, stored document weight (9-bit, as the engine
    scores it) and contribution, heaviest first; they sum to the score.

    The stored weights come from the engine's own explanation when the hit has one (a search with
    `explain`: needed when the index leaves vectors out of `_source`), else from the vector in
    `_source` (a search `with_vectors`).
    """
    rows = [{"term": term, "query_weight": query[term], "doc_weight": weight, "contribution": query[term] * weight}
            for term, weight in ops.stored_weights(hit).items() if term in query]
    return sorted(rows, key=lambda r: -r["contribution"])


def write_trec(path: str | Path, run: Run, name: str) -> None:
    """A TREC run file: `qid Q0 docid rank score name`, best first per query."""
    with Path(path).open("w", encoding="utf-8") as handle:
        for qid, docs in run.items():
            for rank, (doc, score) in enumerate(heaviest_first(docs.items()), 1):
                handle.write(f"{qid} Q0 {doc} {rank} {score:.6f} {name}\n")


# --------------------------------------------------------------------------- queries


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


# How a text becomes a query, one vocabulary (the head's) in each: the dense model and the head with
# its full expansion, the same with the text's own word pieces only, or the head's query weights
# looked up for the text's word pieces with no model at all (lsr_os.static_query).
MODES = ("expanded", "own-tokens", "inference-free")
MODEL_MODES = frozenset({"expanded", "own-tokens"})

# A text's query vector and its own terms, or the DataError of a text that cannot be searched.
Encoded = "tuple[SparseVector, frozenset[str]] | DataError"


class QueryEncoder:
    """Texts and images -> sparse query vectors, with a head and, for the model modes and images,
    a dense encoder (`model`; None: inference-free text queries only).

    The models load once, on first use, on `device` (the GPU when there is one), so a long-running
    caller (`lsr-os serve`) keeps them warm; texts are checked with the head's tokenizer alone
    (`vocab.fast_tokenizer`), before and without loading any model or importing torch.
    """

    def __init__(self, model: str | None, head: str | Path, device: str | None = None):
        self.model_name, self.head_path, self.device = model, head, device
        self._encoder = self._head = self._static = None

    @property
    def loaded(self) -> bool:
        """Whether the models are loaded (the next query costs no load)."""
        return self._encoder is not None

    @functools.cached_property
    def modes(self) -> tuple[str, ...]:
        """The modes this encoder can run: the model modes with a model, inference-free with query weights."""
        from lsr_os.static_query import has_query_weights

        return tuple(m for m in MODES if (m in MODEL_MODES and self.model_name)
                     or (m == "inference-free" and has_query_weights(self.head_path)))

    def mode(self, mode: str = "auto", expand: bool = True) -> str:
        """The mode a text query runs in. `auto`: expanded with a model (own-tokens when not
        `expand`, the `--no-expansion` shorthand), else inference-free. ConfigError for a mode that
        conflicts with `expand` or needs a model there is none of; QueryWeightsMissing (naming the
        head and the command that adds them) for inference-free from a head without query weights."""
        from lsr_os.static_query import StaticQueryEncoder

        if mode != "auto" and mode not in MODES:
            raise ConfigError(f"unknown query mode {mode!r}: auto, {', '.join(MODES)}")
        if not expand and mode not in ("auto", "own-tokens"):
            raise ConfigError(f"no expansion (--no-expansion, or \"expand\": false) is mode own-tokens; it "
                              f"conflicts with mode {mode}")
        if mode == "auto":
            mode = "own-tokens" if not expand else "expanded" if self.model_name else "inference-free"
        if mode in MODEL_MODES and not self.model_name:
            others = [m for m in self.modes if m not in MODEL_MODES]
            raise ConfigError(f"mode {mode} runs a dense model, and there is none (--model, or --demo DIR)"
                              + (f"; use mode {others[0]}" if others else ""))
        if mode not in self.modes:  # inference-free from a head without query weights: the error says so
            StaticQueryEncoder.from_head(self.head_path)
        return mode

    @property
    def head(self):
        if self._head is None:
            from lsr_os.models.head import load_head

            self._head = load_head(self.head_path).eval()
        return self._head

    @property
    def encoder(self):
        if self._encoder is None:
            if not self.model_name:
                raise ConfigError("image queries run the dense model, and there is none: give --model and --head "
                                  "(or --demo DIR)")
            from lsr_os.models import load_encoder

            self._encoder = load_encoder(self.model_name, device=self.device)
            self._head = self.head.to(self._encoder.device)
        return self._encoder

    @property
    def static(self):
        """The head's `StaticQueryEncoder` (QueryWeightsMissing when it has no query weights)."""
        if self._static is None:
            from lsr_os.static_query import StaticQueryEncoder

            self._static = StaticQueryEncoder.from_head(self.head_path)
        return self._static

    def check_text(self, text: str) -> list[str]:
        """The text's content word pieces (see `content_tokens`); DataError when it has none."""
        from lsr_os.static_query import tokenizer_dir

        return content_tokens(text, fast_tokenizer(tokenizer_dir(self.head_path)))

    def encode_texts(self, texts: Sequence[str], mode: str,
                     checked: Sequence[list[str]] | None = None) -> list[Encoded]:
        """Each text's query vector and own terms in `mode` (see `mode`), or the DataError of a
        text that cannot be searched, so one bad text of a batch fails alone; the model runs once
        for the batch. Expanded, a text's own terms are its content word pieces (`check_text`) and
        the rest is expansion; in own-tokens and inference-free modes every term is the text's own.
        `checked`: the texts' content word pieces when `check_text` has already run."""
        if mode == "inference-free":
            return [_or_error(self._inference_free, text) for text in texts]
        own = list(checked) if checked is not None else [_or_error(self.check_text, text) for text in texts]
        good = [i for i, terms in enumerate(own) if not isinstance(terms, DataError)]
        out: list = list(own)
        if good:
            batch = [texts[i] for i in good]
            dense = self.encoder.encode_texts(batch, batch_size=len(batch))
            for i, vector in zip(good, self.head.encode_captions(dense, batch, expand=mode == "expanded")):
                out[i] = (vector, frozenset(own[i]) if mode == "expanded" else frozenset(vector))
        return out

    def _inference_free(self, text: str) -> tuple[SparseVector, frozenset[str]]:
        vector = self.static.encode(text)
        return vector, frozenset(vector)

    def images(self, images: list) -> list[SparseVector]:
        """Sparse vectors of image queries (PIL images or paths): always expanded, always the model."""
        dense = self.encoder.encode_images(images, batch_size=max(1, len(images)))
        return self.head.encode_images(dense)


def _or_error(fn, *args):
    """`fn(*args)`, or the DataError it raised."""
    try:
        return fn(*args)
    except DataError as exc:
        return exc


def _one(result: Encoded) -> tuple[SparseVector, frozenset[str]]:
    if isinstance(result, DataError):
        raise result
    return result


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
    return numeric_weights(obj, where, also=' (or {"vector": {...}})')


# --------------------------------------------------------------------------- one search, as a user runs it


class Searcher:
    """The search path of one cluster: the clause cap is read once and the vocabulary loaded once,
    so each search is prepare -> one request -> rows."""

    def __init__(self, engine: Engine):
        self.engine = engine

    @classmethod
    def of(cls, engine: Engine) -> "Searcher":
        """The Searcher of `engine`, made once per engine object."""
        searcher = _SEARCHERS.get(engine)
        if searcher is None:
            searcher = _SEARCHERS[engine] = cls(engine)
        return searcher

    @property
    def clause_cap(self) -> int:
        return self.engine.max_clause_count  # read once per engine

    def require(self, index: str) -> int:
        """The documents of alias or index `index`; when it is missing, the error lists the
        collections that exist and the --prefix that reaches them."""
        try:
            return self.engine.count(index)
        except NotFound:
            pass
        except EngineError as exc:
            raise ClusterError(f"cannot count {index}: {exc}") from exc
        raise self.missing(index)

    def missing(self, index: str) -> CollectionMissing:
        """The error for a collection that does not exist: it lists those that do, and their --prefix."""
        from lsr_os.index import list_collections

        served = sorted({r["alias"] for r in list_collections(self.engine) if r["served"] and r["alias"]})
        prefixes = sorted({a.rsplit("-", 1)[0] for a in served if a.endswith(("-images", "-captions"))})
        hint = (f"; the cluster serves {', '.join(served)}"
                + (f" ({' or '.join(f'--prefix {p}' for p in prefixes)})" if prefixes else "")
                if served else "; the cluster serves no lsr-os collection yet: load one with `lsr-os ingest`")
        return CollectionMissing(f"no collection {index} on the cluster{hint}")

    def body(self, vector: SparseVector, k: int = 10, split: str | None = None, explain: bool = False,
             max_terms: int | None = None, first_terms: int | None = None, window: int = 100,
             vocabulary=None) -> tuple[SparseVector, dict]:
        """The prepared query vector and the search body `search` sends for it (see `search`)."""
        filters = split_filters(split)
        query = prepare_query(vector, max(1, len(vector)), vocabulary)  # a bad query fails before any request
        limit = (max_terms or self.clause_cap) - len(filters)
        if len(query) > limit:
            query = prepare_query(query, limit)
        return query, build_query(self.engine.ops, query, k, filters, first_terms=first_terms, window=window,
                                  explain=explain)

    def search(self, index: str, vector: SparseVector, k: int = 10, split: str | None = None,
               explain: bool = False, max_terms: int | None = None, first_terms: int | None = None,
               window: int = 100, vocabulary=None, preference: str | None = None) -> "SearchResult":
        """One query vector against `index`: the hits as rows (rank, id, score, label and the
        document's fields; with `explain`, each hit's matching terms, from the engine's explanation).
        A missing `index` raises the error of `missing`; `preference`: see `stable_preference`."""
        query, body = self.body(vector, k, split, explain, max_terms, first_terms, window, vocabulary)
        try:
            hits, took = search(self.engine, index, body, preference)
        except ClusterError as exc:
            if isinstance(exc.__cause__, NotFound):
                raise self.missing(index) from None
            raise
        rows = []
        for rank, hit in enumerate(hits, 1):
            src = hit.get("_source", {})
            row = {"rank": rank, "id": hit["_id"], "score": hit["_score"],
                   **{f: src[f] for f in ("split", "image", "image_id", "caption") if f in src}}
            row["label"] = src.get("caption") or src.get("image") or ""
            if explain:
                row["matches"] = explain_hit(self.engine.ops, query, hit)
            rows.append(row)
        return SearchResult(index, took, query, rows, body, explain)


_SEARCHERS: "weakref.WeakKeyDictionary[Engine, Searcher]" = weakref.WeakKeyDictionary()


def split_terms(query: SparseVector, own: frozenset[str]) -> dict:
    """{"own": {term: weight}, "expansion": {term: weight}} of a query, heaviest first."""
    ranked = heaviest_first(query.items())
    return {"own": {t: w for t, w in ranked if t in own}, "expansion": {t: w for t, w in ranked if t not in own}}


@dataclass
class SearchResult:
    """One search as shown to a user: the query's terms (its own and its expansion), the hits,
    and the DSL that was sent."""

    index: str
    took_ms: int
    query: SparseVector
    hits: list[dict]
    dsl: dict
    explain: bool
    text: str | None = None
    own: frozenset[str] = frozenset()  # the query's own terms (a text's tokens); the rest is expansion
    mode: str | None = None  # a text's query mode (MODES); "expanded" for an image, "vector" for a raw vector
    # the collection's: its `text` field folded from other query weights than the head in use
    collection_warnings: list[str] = field(default_factory=list)

    def query_terms(self) -> dict:
        return split_terms(self.query, self.own)

    @property
    def warnings(self) -> list[str]:
        """What a user should know before trusting the hits: a text left with none of its own
        word pieces (a word the model does not know, or terms capped away) is searched by the
        model's expansion alone; and what is wrong with the collection (`collection_warnings`)."""
        return expansion_only(self.text, self.query, self.own) + self.collection_warnings

    def to_dict(self) -> dict:
        return {"index": self.index, "took_ms": self.took_ms, "mode": self.mode,
                "query": {"text": self.text, **self.query_terms()}, "warnings": self.warnings, "hits": self.hits,
                **({"dsl": self.dsl} if self.explain else {})}


def expansion_only(text: str | None, query: SparseVector, own: frozenset[str]) -> list[str]:
    """The warning of a text query none of whose own terms is among its (prepared) terms, else none."""
    if text is None or not own or not own.isdisjoint(query):
        return []
    return [f"no word of {text!r} has a weight in its query: every hit comes from the model's expansion, so the "
            f"hits may have nothing to do with the text"]


DEMO_SEARCH_FILE = "search.json"  # what `lsr-os demo` writes for `search --demo` and `serve --demo`


def load_demo_settings(folder: str | Path) -> dict:
    """What `lsr-os demo` serves (model, head, prefix, images), from its output folder."""
    path = Path(folder) / DEMO_SEARCH_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(f"{path} does not exist: run `lsr-os demo --out {folder}` first") from exc


def images_root(index: str, recorded: Path | None, images: str | Path | None = None,
                demo: str | Path | None = None) -> Path | None:
    """Where the documents of `index` have their images: `images` when given, else the root recorded
    at ingest (`recorded`: `lsr_os.index.image_root`), else, for one of the demo's own collections,
    the demo's world; None when unknown. The demo's world is never taken for another collection
    searched with the demo's models (`--demo D --prefix mine`): its images are not there."""
    if images is not None:
        return Path(images)
    if recorded is not None:
        return recorded
    settings = load_demo_settings(demo) if demo is not None else {}
    if settings.get("images") and index in {f"{settings.get('prefix')}-{c}" for c in ("images", "captions")}:
        return Path(settings["images"])
    return None


def demo_defaults(folder: str | Path, **values) -> dict:
    """`values` (any of model, head, prefix, images) with each None one taken from the demo folder:
    the one place where a command's options meet the demo's (`--demo DIR`)."""
    settings = load_demo_settings(folder)
    filled = {}
    for name, value in values.items():
        if value is None and settings.get(name) is not None:
            value = Path(settings[name]) if name in ("head", "images") else settings[name]
        filled[name] = value
    return filled


def run_search(cluster, text: str | None = None, image: str | Path | None = None, vector_json: str | None = None,
               model: str | None = None, head: str | Path | None = None, mode: str = "auto", expand: bool = True,
               collection: str | None = None, index: str | None = None, prefix: str | None = None, k: int = 10,
               max_terms: int | None = None, split: str | None = None, explain: bool = False,
               first_terms: int | None = None, window: int = 100, device: str | None = None) -> SearchResult:
    """`lsr-os search`: exactly one of a text, an image or a raw `vector_json` query.

    A text runs in `mode` (`QueryEncoder.mode`: auto is expanded with a model, inference-free with
    only a head that has query weights; `expand=False` is own-tokens). Every check that needs no
    cluster and no model comes first: the options, the text's content words, the image, the
    vector. A vector or inference-free query is then connect -> prepare -> one search -> rows: the
    connection (the request that tells the engine), its clause cap and the vocabulary are made once
    per process, and a missing collection is diagnosed after the search fails; no model loads and
    torch is never imported. A query that runs the model checks the collection before the model
    loads, so a wrong URL or collection fails in a second, not after a model has loaded; the models
    then stay loaded for the next call in the same process. `cluster` is a `ClusterConfig` or an
    `Engine` (`demo_defaults` fills the options from `lsr-os demo`'s folder). The collection defaults to images for text and
    vector queries, captions for an image query; `split` filters documents.
    """
    from lsr_os.vocab import Vocabulary

    if sum(x is not None for x in (text, image, vector_json)) != 1:
        raise ConfigError("give one query: TEXT, --image FILE or --vector-json")
    if text is not None and not text.strip():
        raise DataError("empty query: give some text")
    picture = read_query_image(image) if image is not None else None
    vector = parse_vector_json(vector_json) if vector_json is not None else None
    if text is None and mode != "auto":
        raise ConfigError("--mode is for text queries: " + ("an image query always runs the model (expanded)"
                                                            if image is not None else "a vector is searched as given"))
    if text is not None and not head:
        raise ConfigError("text queries need --head with query weights (inference-free), or --model and --head "
                          "(or --demo DIR); or search with --vector-json")
    if image is not None and not (model and head):
        raise ConfigError("image queries run the dense model: give --model and --head (or --demo DIR)")
    own, checked = frozenset(), None
    if text is not None:  # the text first: no cluster, no model, no torch for a text that cannot be searched
        queries = _query_encoder(model, str(head), device)
        mode = queries.mode(mode, expand)
        if mode == "inference-free":
            vector, own = _one(queries.encode_texts([text], mode)[0])
        else:
            checked = queries.check_text(text)
    elif image is not None:
        queries, mode = _query_encoder(model, str(head), device), "expanded"
    else:  # a vector without a known term fails here, before the connection tells the engine
        mode, own = "vector", frozenset(vector)
        vector = prepare_query(vector, max(1, len(vector)), Vocabulary.default())
    index = index or f"{prefix or 'lsr'}-{collection or ('captions' if image is not None else 'images')}"
    searcher = Searcher.of(engine_for(cluster))
    if vector is None:  # the model's turn
        if not queries.loaded:  # fail on the collection before a model loads
            searcher.require(index)
        if text is not None:
            vector, own = _one(queries.encode_texts([text], mode, [checked])[0])
        else:
            vector = queries.images([picture])[0]
    result = searcher.search(index, vector, k, split, explain, max_terms, first_terms, window)
    result.text, result.own, result.mode = text, own, mode
    if text is not None:
        result.collection_warnings = text_field_warnings(searcher.engine, index, head)
    return result


def text_field_warnings(engine: Engine, index: str, head: str | Path) -> list[str]:
    """`index.stale_text_fields` when `head` has query weights (then the typed text's ranking in the
    cluster should be this search's); a cluster that will not show the mapping only loses the warning."""
    from lsr_os.index import stale_text_fields
    from lsr_os.static_query import has_query_weights

    if not has_query_weights(head):
        return []
    try:
        return stale_text_fields(engine, index, head)
    except EngineError as exc:
        log.info("cannot read the mapping of %s to compare its text field's weights: %s", index, exc)
        return []


def engine_for(cluster) -> Engine:
    """The engine of `cluster`, a `ClusterConfig` or already an `Engine`: one connection per
    configuration in a process, so the engine is detected and the clause cap read once."""
    from lsr_os.config import ClusterConfig

    return _connected(cluster) if isinstance(cluster, ClusterConfig) else cluster


@functools.lru_cache(maxsize=8)
def _connected(config) -> Engine:
    from lsr_os.engines import connect

    return connect(config)


@functools.lru_cache(maxsize=4)
def _query_encoder(model: str, head: str, device: str | None) -> QueryEncoder:
    """One QueryEncoder per (model, head, device) in a process: its models load once."""
    return QueryEncoder(model, head, device)
