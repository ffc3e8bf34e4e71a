"""Collections' mappings, index lifecycle, and bulk ingest of sparse records, on either engine.

A collection (images or captions) is served under an alias. Every load builds a new versioned
index `<alias>-v<UTC timestamp>` with refresh off, loads it (prepare -> load -> check -> swap):

- prepare: a new index with `mappings/<collection>.json`, or the unfinished one of the same
  source, resumed (the ids it holds are not produced again); an images index also gets the
  `text` field of the lsr-os plugin when the head has query weights and the cluster
  runs the plugin (`text_folding`);
- load: each record is checked and turned into a document before anything is sent (a record
  the engine could not take is listed, never sent), then bulk requests of bounded size go out,
  several at a time; 429/5xx and lost connections are retried with backoff, a request the
  cluster refuses as a whole is split until the one document at fault is found;
- check: the index holds exactly what it held plus what this run created;
- swap: only to a sound replacement (`swap_refusal`), restoring the serving settings first and
  deleting the old index only after the alias is read back.

What is already served is never touched by a load that fails or is refused. Document ids are
the records' ids, so a re-sent document overwrites itself instead of duplicating. This module
takes any stream of `SparseRecord`s (lsr_os.records makes them) and knows nothing of models.
"""

from __future__ import annotations

import json
import logging
import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import resources
from operator import itemgetter
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import orjson
from lsr_os import plugin, static_query
from lsr_os.config import CHUNK_DOCS, CONCURRENCY
from lsr_os.engines.base.base import Engine
from lsr_os.engines.base.operations import SPARSE_FIELD
from lsr_os.errors import BadRequest, ClusterError, ConfigError, DataError, EngineError, ModelError, NotFound
from lsr_os.failures import Failure, FailureLog
from lsr_os.sparse import RecordStream, SparseRecord, SparseVector, clean, heaviest_first, prune
from lsr_os.vocab import feature_to_term, term_to_feature

log = logging.getLogger(__name__)

COLLECTIONS = ("images", "captions")
META_KEY = "lsr_os"
VERSION_SEP = "-v"
# Limits of the engine that a document must respect, checked before it is sent:
MAX_ID_BYTES = 512  # both engines refuse the whole bulk request over a longer _id
MAX_TERM_BYTES = 32766  # Lucene's longest term ("immense term")
# Lucene adds up a field's term frequencies in an int; a FeatureField's frequency is its weight's
# float32 bits >>> 15, so a vector whose frequencies sum past 2^31 - 1 cannot be indexed ("too
# many tokens"). Any vector within the 30,522-term vocabulary stays below it.
MAX_FIELD_FREQ = 2**31 - 1
MERGE_TIMEOUT_S = 6 * 3600  # a force-merge answers when it is done: 1M documents take minutes here


def load_mapping(collection: str) -> dict:
    """Settings and mappings of a collection, from the packaged `mappings/<collection>.json`."""
    if collection not in COLLECTIONS:
        raise ConfigError(f"unknown collection {collection!r}; choose one of {', '.join(COLLECTIONS)}")
    text = resources.files("lsr_os.mappings").joinpath(f"{collection}.json").read_text(encoding="utf-8")
    return json.loads(text)


def default_alias(collection: str, prefix: str = "lsr") -> str:
    """The alias a collection is served under: `<prefix>-<collection>`."""
    return f"{prefix}-{collection}"


# --------------------------------------------------------------------------- documents


class InvalidRecord(ValueError):
    """A record that cannot become a document; the message is the failure's reason."""


def to_document(record: SparseRecord, top_terms: int = 16, top_k: int | None = None,
                threshold: float = 0.0, folding: plugin.Folding | None = None, escape_names: bool = True) -> dict:
    """The document of a record: checks, hygiene, pruning, feature names, top terms.

    Weights that are not finite or not > 0 are dropped (no sparse field can store them); a
    record left with no term, or over one of the engine's limits, raises InvalidRecord. `terms`
    keeps the `top_terms` heaviest readable terms for filters and Dashboards. With `folding`,
    the document gets the plugin's `text` field, folded from the vector as `sparse` stores it
    (after hygiene and pruning), so a `match` on it scores what the sparse query scores
    (none when no term of the vector has a query weight). This runs once per
    document on the load's critical path (client and node share the CPU on a small machine), so
    the common case, a vector that is already clean, costs a few passes in C and no per-term
    Python work. `escape_names`: the engine's `features.escapes_feature_names` (OpenSearch's
    `rank_feature` query cannot name a term with a dot unless it is escaped).
    """
    rid = record.id
    if len(rid) > MAX_ID_BYTES // 4 and len(rid.encode("utf-8")) > MAX_ID_BYTES:
        raise InvalidRecord(f"id is {len(rid.encode('utf-8'))} bytes; the engine takes at most {MAX_ID_BYTES}")
    vector = clean(record.vector)
    if top_k is not None or threshold > 0:
        vector = prune(vector, top_k, threshold)
    if not vector:
        raise InvalidRecord("no term with a finite weight > 0" + (" after pruning" if record.vector else ""))
    names = "\x00".join(vector) if escape_names else ""  # one scan in C finds whether any term needs escaping
    sparse = {term_to_feature(t): w for t, w in vector.items()} if "." in names or "%" in names else dict(vector)
    if max(map(len, sparse)) > MAX_TERM_BYTES // 4:  # only then can a feature name be too many bytes
        for feature in sparse:
            if len(feature.encode("utf-8")) > MAX_TERM_BYTES:
                raise InvalidRecord(f"term {(feature_to_term(feature) if escape_names else feature)[:20]!r}... is {len(feature.encode('utf-8'))} "
                                    f"bytes; Lucene takes at most {MAX_TERM_BYTES}")
    if len(sparse) > _SAFE_TERMS:
        _check_field_freq(vector)
    doc = dict(record.meta)
    doc["id"] = rid
    doc["terms"] = _heaviest(vector, top_terms)
    doc[SPARSE_FIELD] = sparse
    if folding is not None:
        try:
            text = folding.text(vector, rid)
        except DataError as exc:
            raise InvalidRecord(str(exc)) from None
        if text:
            doc[plugin.FIELD] = text
    return doc


# A FeatureField's stored frequency is at most (largest float32 bits) >>> 15 = 65,279, so a vector of
# up to this many terms cannot pass Lucene's per-field limit (the whole vocabulary, 30,522, cannot).
_SAFE_TERMS = MAX_FIELD_FREQ // (0x7F7FFFFF >> 15)


def _check_field_freq(vector: SparseVector) -> None:
    import numpy as np

    weights = np.fromiter(vector.values(), dtype=np.float32, count=len(vector))
    freq = int((weights.view(np.int32) >> 15).astype(np.int64).sum())
    if freq > MAX_FIELD_FREQ:
        raise InvalidRecord(f"{len(vector)} terms: their weights exceed Lucene's per-field limit "
                            f"(sum of stored frequencies {freq} > {MAX_FIELD_FREQ}); prune with --top-k")


def _heaviest(vector: SparseVector, n: int) -> list[str]:
    """The n heaviest terms, heaviest first (ties by term)."""
    if n <= 0:
        return []
    top = sorted(vector.items(), key=itemgetter(1), reverse=True)  # a C sort: cheaper than heapq's nlargest
    if len(top) > n and top[n][1] == top[n - 1][1]:  # a tie across the cut: the terms decide
        top = heaviest_first(top)
    return [t for t, _ in heaviest_first(top[:n])]


# --------------------------------------------------------------------------- retries


@dataclass(frozen=True)
class RetryPolicy:
    """When and how long to wait before re-sending documents the cluster could not take.

    429 (queue full), 5xx and connection failures (status "N/A") are transient: they are
    re-sent with exponential backoff. Anything else (a 400 mapping rejection) is final.
    """

    max_attempts: int = 8
    initial_backoff: float = 0.5
    max_backoff: float = 30.0

    def retryable(self, status: Any) -> bool:
        if not isinstance(status, int):
            return True  # no HTTP answer at all: connection refused, reset, timed out
        return status == 429 or 500 <= status <= 599

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt` (1-based)."""
        if attempt < 1:
            raise ValueError("attempt numbers start at 1")
        return min(self.max_backoff, self.initial_backoff * 2 ** (attempt - 1))


# --------------------------------------------------------------------------- a load


@dataclass(frozen=True)
class IngestOptions:
    """How a load runs and when its result is served."""

    fresh: bool = False  # start a new index instead of resuming an unfinished one
    keep_old: bool = False  # keep the replaced index
    allow_empty: bool = False  # serve an index with no documents
    max_failed: int | None = None  # failed records that still allow a swap (None: see swap_refusal)
    chunk_docs: int = CHUNK_DOCS  # documents per bulk request
    chunk_bytes: int = 10 * 2**20  # most bytes per bulk request
    concurrency: int = CONCURRENCY  # bulk requests in flight
    retry: RetryPolicy = RetryPolicy()
    top_k: int | None = None  # keep each document's k heaviest terms
    threshold: float = 0.0  # drop weights <= this
    top_terms: int = 16  # readable terms kept in the `terms` keyword field
    shards: int | None = None  # primary shards [default: `default_shards`]
    replicas: int | None = None  # None: 1 on a cluster of 2+ data nodes, else 0
    exclude_vectors: bool = False  # leave the sparse vector out of _source (see `prepare_index`)
    force_merge: bool = False  # merge to one segment before serving (a one-off load)
    text_field: bool | None = None  # the images' `text` field (see `text_folding`); None: when it can be built
    text_scale: int | float = plugin.DEFAULT_SCALE  # folded weights are kept to 0.5 / text_scale
    progress: bool | None = None  # None: a bar when stderr is a terminal

    def check(self) -> None:
        if self.chunk_docs < 1 or self.chunk_bytes < 1024:
            raise ConfigError("chunk size must be >= 1 document and >= 1 KiB")
        if self.concurrency < 1:
            raise ConfigError("concurrency must be >= 1")
        if not self.text_scale > 0:
            raise ConfigError(f"--text-scale must be > 0, not {self.text_scale}")


@dataclass
class IngestReport:
    """What a load did; `count` is the final number of documents in the index."""

    alias: str
    index: str
    collection: str
    read: int = 0
    sent: int = 0
    indexed: int = 0
    created: int = 0
    failed: int = 0
    failed_by_what: dict[str, int] = field(default_factory=dict)
    docs_before: int = 0
    already_indexed: int = 0  # ids the resumed index held, not loaded again
    count: int = 0
    resumed: bool = False
    replaced: list[str] = field(default_factory=list)
    not_swapped: str | None = None  # why the alias was left as it was (see `swap_refusal`)
    failures_file: str | None = None
    shards: int = 0
    text_field: bool = False  # the index has the plugin's `text` field
    text_field_off: str | None = None  # why an images index has none
    seconds: float = 0.0  # the load, from the first record read to the count check
    merge_seconds: float = 0.0  # the force-merge, when asked for

    @property
    def docs_per_s(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "docs_per_s": round(self.docs_per_s, 1)}


# --------------------------------------------------------------------------- index lifecycle


def _now_tag() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S%f")


def _versions(engine: Engine, alias: str) -> dict[str, dict]:
    """Versioned indices of `alias`: name -> {"meta": _meta.lsr_os, "aliased": bool}."""
    mappings = engine.mappings(f"{alias}{VERSION_SEP}*")
    if not mappings:
        return {}
    aliased = set(engine.alias_targets(alias))
    out = {}
    for name, body in mappings.items():
        meta = (body.get("_meta") or {}).get(META_KEY)
        if meta and meta.get("alias") == alias:
            out[name] = {"meta": meta, "aliased": name in aliased}
    return out


def serving_source(engine: Engine, alias: str) -> str | None:
    """The `source` of the complete index that `alias` serves, if any (lets callers skip a reload)."""
    for info in _versions(engine, alias).values():
        if info["aliased"] and info["meta"].get("state") == "complete":
            return info["meta"].get("source")
    return None


def image_root(engine: Engine, name: str) -> Path | None:
    """The image root recorded at ingest (`_meta.lsr_os.images`) of the alias or index `name`: the
    folder its documents' `image` paths are under; None when its source had none (sparse records,
    dense files), or when the indices behind an alias disagree."""
    roots = {(body.get("_meta") or {}).get(META_KEY, {}).get("images") for body in engine.mappings(name).values()}
    roots.discard(None)
    return Path(roots.pop()) if len(roots) == 1 else None


def _check_sparse_mapping(engine: Engine, index: str) -> None:
    """Fail clearly when `index` does not map `sparse` as the engine's sparse type (e.g. a template won)."""
    wanted = engine.features.sparse_field_type
    kind = engine.mappings(index).get(index, {}).get("properties", {}).get(SPARSE_FIELD, {}).get("type")
    if kind != wanted:
        raise ClusterError(f"index {index} maps {SPARSE_FIELD!r} as {kind or 'nothing'}, not {wanted} "
                           f"(an index template may override mappings/); fix the template or choose another name")


def _guard_name(engine: Engine, alias: str) -> None:
    """The alias name must not be a concrete index (a mapping conflict we refuse to touch)."""
    if engine.exists(alias) and not engine.is_alias(alias):
        wanted = engine.features.sparse_field_type
        kind = engine.mappings(alias).get(alias, {}).get("properties", {}).get(SPARSE_FIELD, {}).get("type")
        detail = (f"its {SPARSE_FIELD!r} field is {kind}, which conflicts with {wanted}" if kind not in
                  (None, wanted) else "lsr-os serves collections through aliases")
        raise ClusterError(f"{alias} is an existing index, not an alias ({detail}); "
                           f"delete it or ingest under another --index name")


def default_replicas(nodes: int) -> int:
    """1 replica when the cluster has 2+ data nodes (a node can be lost), else 0."""
    return 1 if nodes > 1 else 0


# OpenSearch's sizing guidance keeps a shard between 10 and 50 GB; the bytes a document takes
# were measured on bench/serving.py's 1M collection (175 terms a document on average, force-merged:
# 4,442 MiB with the vector in _source, 643 MiB without).
SHARD_BYTES = 30 * 2**30
DOC_BYTES = {False: 4700, True: 700}  # by exclude_vectors: the vector in _source or not


def default_shards(docs: int | None, nodes: int, exclude_vectors: bool = False) -> int:
    """Primary shards of a new index when --shards is not given: one per data node (each node
    then holds a primary and searches its part of every query in parallel), more when the
    collection's estimated size would put over SHARD_BYTES in a shard. A collection of unknown
    size gets one per data node: one node gets one shard up to ~6.8M documents (~46M without the
    vector in _source). A second shard on one 2-core node made 1M queries faster only when the
    machine was otherwise idle (server mean 1.9 vs 2.4 ms at load ~1; 3.4 vs 3.1 ms at load ~3,
    bench/results/serving_1m.md): it buys one query's latency with the cores other queries need,
    so it is left to --shards."""
    size = 0 if docs is None else docs * DOC_BYTES[exclude_vectors]
    return max(1, nodes, math.ceil(size / SHARD_BYTES))


def text_folding(engine: Engine, alias: str, collection: str, head: str | Path | None,
                 options: IngestOptions = IngestOptions()) -> tuple[plugin.Folding | None, str | None]:
    """Whether the new index of `alias` gets the plugin's `text` field: (its folding, None), or
    (None, why not). Captions never get it, nor does a load with `text_field=False`. Otherwise it
    needs `head` with query weights, the head's vocabulary the plugin's, and the plugin on every
    node; by default a load without one of them goes on without the field and logs why (a warning
    when the head has query weights, so the user expected it), while `text_field=True` makes it an
    error. A load that would replace a served index having the field with one lacking it is
    refused unless `text_field=False` says so: typed-text search would vanish from under its users.
    Every check runs before any index is created."""
    if collection != "images":
        return None, None
    if options.text_field is False:
        return None, "--no-text-field"
    expected = False
    if head is None:
        why = "no head names the query weights (with --sparse records, --head HEAD names them)"
    elif not static_query.has_query_weights(head):
        why = (f"the head {head} has no query weights (add them with "
               f"`{static_query.ADD_COMMAND.format(head=head)}`)")
    elif not engine.features.has_lsr_os_plugin:
        why, expected = "the cluster has no lsr-os plugin (on every node)", True
    else:
        try:
            return plugin.Folding.from_head(head, options.text_scale), None
        except ModelError as exc:
            why, expected = str(exc), True
    if options.text_field:
        raise ConfigError(f"--text-field: {alias} cannot get its {plugin.FIELD!r} field: {why}")
    served = [name for name, info in _versions(engine, alias).items()
              if info["aliased"] and info["meta"].get("text_field")]
    if served:
        raise ConfigError(f"{alias} serves {', '.join(served)}, whose {plugin.FIELD!r} field ranks typed text in the "
                          f"cluster, but the new index would have none: {why}; pass --no-text-field to replace it "
                          f"without one")
    if expected:  # the head has query weights: its inference-free search works from outside the cluster
        log.warning("ingest %s: %s: typed-text search in the cluster is off; lsr-os search --mode inference-free "
                    "works anyway", alias, why)
    else:
        log.info("ingest %s: %s: typed-text search in the cluster is off", alias, why)
    return None, why


# While an index loads it is not searched, so it is not refreshed, and its translog is fsynced every
# few seconds instead of at every bulk request; `finish_index` flushes and restores the serving values.
LOAD_SETTINGS = {"refresh_interval": "-1", "translog.durability": "async"}
SERVING_SETTINGS = {"refresh_interval": "1s", "translog.durability": "request"}  # unless the mapping says


def filters_vectors(engine: Engine, exclude_vectors: bool) -> bool:
    """Whether a load asked to leave the vectors out of `_source` filters them out in its mapping.

    Not on an engine that keeps them out by itself (`vectors_only_on_request`: Elasticsearch 9.2
    stores none in `_source` and rebuilds them from the field for a search that asks, filter or
    not): there the filter would change nothing but leave a `_recovery_source` that a force-merge
    must wait out (`_await_retention_leases`; the merge of 20k documents took 51 s instead of
    1.5 s here), and would mark an unfinished index as unlike one loaded without the option.
    """
    return exclude_vectors and not engine.features.vectors_only_on_request


def prepare_index(engine: Engine, alias: str, collection: str, source: str,
                  fresh: bool = False, shards: int | None = None, replicas: int = 0,
                  exclude_vectors: bool = False, nodes: int | None = None,
                  images: str | Path | None = None, text: plugin.Folding | None = None) -> tuple[str, bool]:
    """The index to load into: a pending one of the same source (resume) or a new one.

    Returns (index name, resumed). Pending indices of another source (or built with the other
    `exclude_vectors`, or another `text` folding: a resumed load never mixes documents with and
    without the field, or folded from other weights), or all of them with `fresh`, are deleted:
    they were never served. `text`: the plugin's `text` field and its settings, recorded as
    `_meta.lsr_os.text_field` (the vocabulary's and the query weights' SHA-256, the scale).
    `shards` overrides the mapping's; the `replicas` exist during the load already, so losing a
    node mid-load loses no document. `exclude_vectors` keeps the sparse vector out of `_source`
    (see `filters_vectors`): the index is much smaller (the postings hold what search needs, and
    explain reads the engine's own explanation), but a reindex from the cluster alone can no longer
    rebuild the vectors; snapshots still hold everything, as they copy the index files. `nodes`:
    the data nodes, when the caller has already asked. `images`: the collection's image root,
    recorded as `_meta.lsr_os.images` (absolute) so that whoever shows the hits can find their files.
    """
    _guard_name(engine, alias)
    exclude_vectors = filters_vectors(engine, exclude_vectors)
    for name, info in sorted(_versions(engine, alias).items()):
        meta = info["meta"]
        if meta.get("state") != "loading" or info["aliased"]:
            continue
        if (not fresh and meta.get("source") == source and meta.get("collection") == collection
                and bool(meta.get("exclude_vectors")) == exclude_vectors
                and (text.folds_like(meta.get("text_field")) if text else meta.get("text_field") is None)):
            _check_sparse_mapping(engine, name)
            log.info("resuming the unfinished load into %s", name)
            return name, True
        log.warning("deleting unfinished index %s (source %s)", name, meta.get("source"))
        engine.delete_indices(name)
    body = engine.ops.collection_body(load_mapping(collection))
    if text:
        body = plugin.with_text_field(body, text.vocab_sha256, text.scale)
    body["settings"].setdefault("index", {}).update({**LOAD_SETTINGS, "number_of_replicas": replicas})
    if shards is not None:
        body["settings"]["index"]["number_of_shards"] = shards
    if exclude_vectors:
        body["mappings"].setdefault("_source", {}).setdefault("excludes", []).append(SPARSE_FIELD)
    body["mappings"]["_meta"] = {META_KEY: {"alias": alias, "collection": collection, "source": source,
                                            "state": "loading", "started": _now_tag(),
                                            **({"exclude_vectors": True} if exclude_vectors else {}),
                                            **({"images": str(Path(images).resolve())} if images else {}),
                                            **({"text_field": text.meta()} if text else {})}}
    name = f"{alias}{VERSION_SEP}{_now_tag()}"
    # Replicas protect the load only once they are started (in sync with their primary): a node
    # lost while a replica still recovers takes the shard's only valid copy with it.
    if replicas and nodes is None:
        nodes = engine.data_nodes()
    copies = min(replicas + 1, max(1, nodes)) if replicas else 1
    try:
        created = engine.create_index(name, body, wait_for_active_shards=copies)
    except BadRequest as exc:
        raise ClusterError(f"cannot create index {name}: {exc} ({exc.info})") from exc
    if not created.get("shards_acknowledged", True):
        log.warning("%s: not every shard copy started within the create timeout; loading anyway", name)
    _check_sparse_mapping(engine, name)
    return name, False


def swap_refusal(report: "IngestReport", served: list[str], allow_empty: bool = False,
                 max_failed: int | None = None) -> str | None:
    """Why the loaded index must not be served, or None when it is a sound replacement.

    An index with no documents is never swapped in unless `allow_empty`. `max_failed` bounds the
    records that may fail; None means 0 when `served` (the alias already serves something: any
    failure keeps the old collection) and no bound for a first load.
    """
    now = f"{report.alias} still serves {', '.join(served)}" if served else f"{report.alias} serves nothing yet"
    if report.count == 0 and not allow_empty:
        return (f"{report.index} holds no documents ({report.failed} records failed), so {now}; "
                f"pass --allow-empty to serve an empty collection")
    limit = (0 if served else None) if max_failed is None else max_failed
    if limit is not None and report.failed > limit:
        return (f"{report.failed} records failed (limit {limit}{' when replacing a served collection' if served and max_failed is None else ''}), "
                f"so {now}; {report.index} keeps the {report.count} documents loaded and is resumed by the same "
                f"command once the input is fixed, or pass --max-failed {report.failed} to serve it as it is")
    return None


def finish_index(engine: Engine, alias: str, index: str, collection: str, keep_old: bool = False,
                 replicas: int | None = None) -> list[str]:
    """Restore serving settings, mark the index complete, swap the alias; returns the replaced indices.

    The replaced indices are deleted (unless `keep_old`) only once the alias is read back
    pointing at `index` alone.
    """
    settings = load_mapping(collection)["settings"].get("index", {})
    engine.put_index_settings(index, {"index": {
        **{key: settings.get(key, value) for key, value in SERVING_SETTINGS.items()},
        "number_of_replicas": settings.get("number_of_replicas", 1) if replicas is None else replicas,
    }})
    meta = _versions(engine, alias).get(index, {}).get("meta", {})
    meta.update(state="complete", finished=_now_tag())
    engine.put_meta(index, {META_KEY: meta})
    old = [i for i in engine.alias_targets(alias) if i != index]
    actions: list[dict] = [{"remove": {"index": i, "alias": alias}} for i in old]
    actions.append({"add": {"index": index, "alias": alias}})
    engine.update_aliases(actions)
    now = engine.alias_targets(alias)
    if now != [index]:
        raise ClusterError(f"alias {alias} points to {', '.join(now) or 'nothing'} after the swap, not {index}; "
                           f"nothing was deleted")
    log.info("alias %s -> %s (was %s)", alias, index, ", ".join(old) or "nothing")
    if not keep_old and old:
        engine.delete_indices(old, missing_ok=True)
    return old


# --------------------------------------------------------------------------- bulk load


@dataclass
class _Doc:
    """One document on its way: id and its two NDJSON lines, serialised once."""

    id: str
    lines: bytes


@dataclass
class Outcome:
    """What became of one document: indexed (created or updated) or failed with a reason."""

    id: str
    ok: bool
    created: bool = False
    reason: str = ""


def _json_default(value: Any) -> Any:
    """Numpy scalars (in metadata a caller built) as their Python values; nothing else."""
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "shape", None) == ():
        return item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _reason(error: Any) -> str:
    if isinstance(error, dict):
        caused = error.get("caused_by") or {}
        text = f"{error.get('type')}: {error.get('reason')}"
        return text + (f" ({caused.get('type')}: {caused.get('reason')})" if caused else "")
    return str(error)


def _chunks(docs: Iterable[_Doc], max_docs: int, max_bytes: int) -> Iterator[list[_Doc]]:
    chunk: list[_Doc] = []
    size = 0
    for doc in docs:
        if chunk and (len(chunk) >= max_docs or size + len(doc.lines) > max_bytes):
            yield chunk
            chunk, size = [], 0
        chunk.append(doc)
        size += len(doc.lines)
    if chunk:
        yield chunk


class BulkLoader:
    """Bulk requests into one index, a few in flight, with the retry policy; one `Outcome` a document.

    A document the cluster answers 429/5xx for, or a request that got no answer, is re-sent
    with backoff (`RetryPolicy`) until it succeeds or the attempts run out (ClusterError: the
    load stops, and a re-run resumes). A request refused as a whole (400, 413: one document in it
    is at fault) is split in halves until that document fails alone and the others are indexed.
    """

    def __init__(self, engine: Engine, index: str, retry: RetryPolicy = RetryPolicy(),
                 chunk_docs: int = CHUNK_DOCS, chunk_bytes: int = 10 * 2**20, concurrency: int = CONCURRENCY):
        self.engine, self.index, self.retry = engine, index, retry
        self.chunk_docs, self.chunk_bytes, self.concurrency = chunk_docs, chunk_bytes, concurrency
        self._action = b'{"index":{"_index":' + orjson.dumps(index) + b',"_id":'

    def doc(self, doc_id: str, source: dict) -> _Doc:
        """A document's action and source lines, serialised once (orjson: UTF-8, no NaN; a value
        JSON cannot hold raises InvalidRecord)."""
        try:
            body = orjson.dumps(source, default=_json_default)
        except TypeError as exc:
            raise InvalidRecord(f"a field cannot be written as JSON: {exc}") from None
        return _Doc(doc_id, b"".join((self._action, orjson.dumps(doc_id), b"}}\n", body, b"\n")))

    def load(self, docs: Iterable[_Doc]) -> Iterator[Outcome]:
        """Outcomes of every document, chunk by chunk in the order sent."""
        pending: list[Future] = []
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="bulk")
        try:
            for chunk in _chunks(docs, self.chunk_docs, self.chunk_bytes):
                pending.append(pool.submit(self._settle, chunk))
                while len(pending) >= self.concurrency:
                    yield from pending.pop(0).result()
            while pending:
                yield from pending.pop(0).result()
        finally:
            # On an error or an interrupt, chunks not yet sent are dropped (a re-run resumes) and
            # the requests already in flight are waited for, so the index holds what it will hold
            # when this returns: a count taken then is final.
            pool.shutdown(wait=True, cancel_futures=True)

    def _settle(self, chunk: list[_Doc]) -> list[Outcome]:
        """Final outcomes of a chunk, after its retries and splits."""
        done: list[Outcome] = []
        todo, attempt = chunk, 0
        while todo:
            retry_later: list[_Doc] = []
            last = None
            for outcome, doc, status in self._send(todo):
                if outcome is not None:
                    done.append(outcome)
                else:
                    retry_later.append(doc)
                    last = status
            if not retry_later:
                break
            attempt += 1
            if attempt > self.retry.max_attempts:
                raise ClusterError(f"{len(retry_later)} documents kept failing with HTTP {last} after "
                                   f"{self.retry.max_attempts} retries; what was indexed stays in {self.index}. "
                                   f"Run the same command again to resume.")
            wait = self.retry.delay(attempt)
            log.warning("re-sending %d documents in %.1fs (HTTP %s; retry %d of %d)", len(retry_later), wait, last,
                        attempt, self.retry.max_attempts)
            time.sleep(wait)
            todo = retry_later
        return done

    def _send(self, docs: list[_Doc]) -> Iterator[tuple[Outcome | None, _Doc, Any]]:
        """(outcome, doc, status) per document of one request; outcome None: retry the document."""
        try:
            resp = self.engine.bulk(b"".join(d.lines for d in docs),
                                    filter_path="errors,items.*.status,items.*.result,items.*.error")
        except EngineError as exc:
            status = "N/A" if exc.status is None else exc.status
            if self.retry.retryable(exc.status):
                yield from ((None, d, status) for d in docs)
            elif len(docs) == 1:
                yield Outcome(docs[0].id, False, reason=f"HTTP {status} {_reason(_error_of(exc))}"), docs[0], None
            else:  # one document spoils the request for all: find it, index the rest
                half = len(docs) // 2
                yield from self._send(docs[:half])
                yield from self._send(docs[half:])
            return
        for doc, item in zip(docs, resp.get("items", [])):
            info = next(iter(item.values()))
            status = info.get("status")
            if isinstance(status, int) and status < 300:
                yield Outcome(doc.id, True, info.get("result") == "created"), doc, status
            elif self.retry.retryable(status):
                yield None, doc, status
            else:
                yield Outcome(doc.id, False, reason=f"HTTP {status} {_reason(info.get('error'))}"), doc, status


def _error_of(exc: EngineError) -> Any:
    info = exc.info
    if info is None:
        return str(exc)
    return info.get("error", info) if isinstance(info, dict) else info


def ingest(engine: Engine, stream: RecordStream, alias: str, collection: str,
           options: IngestOptions = IngestOptions(), failures_path: str | Path | None = None,
           images: str | Path | None = None, head: str | Path | None = None) -> IngestReport:
    """Load a collection's record stream into a new (or resumed) versioned index of `alias`, check, swap.

    `stream.source` is the resume key: a later run with the same key resumes an unfinished
    index, and the ids that index holds are not produced again. Memory stays bounded by the
    chunks in flight. The alias moves only to a sound replacement (`swap_refusal`); otherwise the
    report's `not_swapped` says why and the index stays unfinished, so the same command resumes it.

    The translog is fsynced every few seconds during the load (`LOAD_SETTINGS`), not per request:
    the index is flushed to disk before it is counted, and a node that dies mid-load and loses
    its last seconds shows up as missing documents, which the count check refuses (the same
    command then resumes and re-sends them), so nothing acknowledged reaches the alias unless it
    is on disk. `images`: the image root the records' `image` paths are under (see `prepare_index`).
    `head`: the head folder whose query weights an images index's `text` field folds in (see
    `text_folding`: by default the field is there when it can be built).
    """
    options.check()
    engine.check_may_write(alias)
    return _ingest(engine, stream, alias, collection, options, failures_path, images,
                   text_folding(engine, alias, collection, head, options))


def _ingest(engine: Engine, stream: RecordStream, alias: str, collection: str, options: IngestOptions,
            failures_path: str | Path | None, images: str | Path | None,
            text: tuple[plugin.Folding | None, str | None]) -> IngestReport:
    """`ingest` once the `text` field is decided (`text_folding`)."""
    folding, why_off = text
    nodes = engine.data_nodes()
    replicas = default_replicas(nodes) if options.replicas is None else options.replicas
    shards = options.shards or default_shards(stream.total, nodes, options.exclude_vectors)
    index, resumed = prepare_index(engine, alias, collection, stream.source, options.fresh, shards, replicas,
                                   options.exclude_vectors, nodes, images, folding)
    report = IngestReport(alias=alias, index=index, collection=collection, resumed=resumed, shards=shards,
                          text_field=folding is not None, text_field_off=why_off)
    if resumed:  # the index keeps the shards it was made with
        report.shards = int(engine.index_setting(index, "index.number_of_shards"))
    engine.refresh(index)
    report.docs_before = engine.count(index)
    done = indexed_ids(engine, index) if report.docs_before else frozenset()
    report.already_indexed = len(done)
    t0 = time.perf_counter()
    with FailureLog(failures_path) as failures:
        report.failures_file = str(failures_path) if failures_path else None
        _load(engine, stream, index, done, options, failures, report, folding)
        report.failed, report.failed_by_what = failures.count, dict(failures.by_what)
    engine.flush(index)
    engine.refresh(index)
    report.count = engine.count(index)
    report.seconds = time.perf_counter() - t0
    _check_count(report)
    report.not_swapped = swap_refusal(report, engine.alias_targets(alias), options.allow_empty, options.max_failed)
    if report.not_swapped:
        log.warning("ingest %s: not swapped: %s", alias, report.not_swapped)
        return report
    if options.force_merge:
        t1 = time.perf_counter()
        if filters_vectors(engine, options.exclude_vectors) or folding:  # a filtered _source
            _await_retention_leases(engine, index)
        engine.force_merge(index, 1, timeout=MERGE_TIMEOUT_S)
        report.merge_seconds = time.perf_counter() - t1
    report.replaced = finish_index(engine, alias, index, collection, options.keep_old, replicas)
    log.info("ingest %s: %s", alias, report.to_dict())
    return report


def _await_retention_leases(engine: Engine, index: str, timeout_s: float = 120.0) -> None:
    """Wait until every shard's retention leases cover all its operations (they sync every 30 s).

    With `_source` filtered, each document's full source also lives in `_recovery_source` until
    no retention lease needs it; a merge drops it only then. A force-merge right after a load
    would otherwise keep the vectors the index was meant to leave out (measured at 100k documents:
    451 MiB, and 68 MiB once the leases had caught up).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        shards = engine.stats(index, level="shards",
                              filter_path="indices.*.shards.*.seq_no,indices.*.shards.*.retention_leases")
        copies = [c for body in shards.get("indices", {}).values() for cs in body["shards"].values() for c in cs]
        if all(lease["retaining_seq_no"] > c["seq_no"]["max_seq_no"]
               for c in copies for lease in c["retention_leases"]["leases"]):
            return
        if time.monotonic() > deadline:
            log.warning("retention leases of %s still lag after %.0fs: the merge keeps some recovery sources",
                        index, timeout_s)
            return
        time.sleep(1.0)


PROGRESS_STEP = 250  # documents indexed between progress updates


def _load(engine: Engine, stream: RecordStream, index: str, done: frozenset[str], options: IngestOptions,
          failures: FailureLog, report: IngestReport, folding: plugin.Folding | None = None) -> None:
    """Send every record not yet `done`; bad records and refused documents go to `failures`."""
    from tqdm.auto import tqdm

    escape = engine.features.escapes_feature_names
    loader = BulkLoader(engine, index, options.retry, options.chunk_docs, options.chunk_bytes, options.concurrency)
    total = None if stream.total is None else max(0, stream.total - len(done))
    with tqdm(total=total, unit="doc", desc=f"ingest {index}", dynamic_ncols=True,
              disable=None if options.progress is None else not options.progress) as bar:
        def failed(failure: Failure) -> None:
            failures.add(failure)
            bar.update(1)

        def docs() -> Iterator[_Doc]:
            for record in stream.records(done, failed):
                report.read += 1
                try:
                    doc = loader.doc(record.id, to_document(record, options.top_terms, options.top_k,
                                                            options.threshold, folding, escape))
                except InvalidRecord as exc:
                    failed(Failure("record", record.id, index, str(exc)))
                    continue
                report.sent += 1
                yield doc

        shown = 0  # the bar moves a chunk at a time: one document at a time would show a rate of
        for outcome in loader.load(docs()):  # one document over the first request's whole wait
            if outcome.ok:
                report.indexed += 1
                report.created += outcome.created
                if report.indexed - shown >= PROGRESS_STEP:
                    bar.update(report.indexed - shown)
                    shown = report.indexed
            else:
                failed(Failure("document", outcome.id, index, outcome.reason))
        bar.update(report.indexed - shown)


def indexed_ids(engine: Engine, index: str) -> frozenset[str]:
    """The ids `index` holds (a resumed load skips them); one scroll over ids only, no sources."""
    return frozenset(engine.ids(index))


def _check_count(report: IngestReport) -> None:
    """The index must hold what it held before plus every document this run created.

    A bulk request re-sent after a lost connection or node (by the client's transport or by
    our retries) may have been applied the first time: its documents then answer "updated"
    though this run created them. So the count may exceed before + created, by at most the
    documents that answered "updated"; fewer than before + created means documents were lost.
    """
    low, high = report.docs_before + report.created, report.docs_before + report.indexed
    if not low <= report.count <= high:
        expected = str(low) if low == high else f"{low} to {high}"
        raise ClusterError(f"{report.index} holds {report.count} documents, expected {expected} "
                           f"({report.docs_before} before this run + {report.created} created"
                           f"{f', {report.indexed - report.created} updated' if high > low else ''}); "
                           f"the alias {report.alias} was not switched. Run the same command again to resume.")
    if not report.resumed and report.indexed != report.created:
        log.warning("%d documents of %s answered 'updated': an id seen earlier in the input (the later line "
                    "won), or a bulk request re-sent after a lost connection", report.indexed - report.created,
                    report.alias)


def ingest_collections(engine: Engine, streams: Callable[[str], RecordStream], collections: Iterable[str],
                       options: IngestOptions = IngestOptions(), alias: str | None = None, prefix: str = "lsr",
                       failures_path: str | Path | None = None, images: str | Path | None = None,
                       head: str | Path | None = None) -> Iterator[IngestReport]:
    """Load each collection (its stream from `streams(collection)`); one report per collection.

    Every stream is asked for, and every alias name checked, before the first index is created:
    a source checks its inputs when asked for a stream (lsr_os.records), so a bad head, model,
    file or image root fails before anything exists on the cluster. The alias is `alias` (one
    collection only) or `<prefix>-<collection>`; failures go to `ingest-failures-<alias>.jsonl`,
    or to `failures_path` (with `-<collection>` before its suffix when several collections load,
    so the second does not overwrite the first). `images`: the collections' image root, recorded
    in each index's `_meta` (see `prepare_index`). `head`: whose query weights the images' `text`
    field folds in (`text_folding`, decided before anything is created too).

    When every image of the run failed and the empty images collection was not served, the
    captions are not loaded: their report says why (`not_swapped`, with no index), since captions
    served without their images are a collection nobody asked for; `allow_empty` serves both.
    """
    options.check()
    collections = tuple(collections)
    if alias and len(collections) > 1:
        raise ConfigError("--index names one alias: give one --collection with it")
    names = {collection: alias or default_alias(collection, prefix) for collection in collections}
    opened = {collection: streams(collection) for collection in collections}
    for name in names.values():
        engine.check_may_write(name)
        _guard_name(engine, name)
    texts = {collection: text_folding(engine, names[collection], collection, head, options)
             for collection in collections}
    no_images = None
    for collection in collections:
        name = names[collection]
        if collection == "captions" and no_images:
            log.warning("ingest %s: not loaded: %s", name, no_images)
            yield IngestReport(alias=name, index="", collection=collection, not_swapped=no_images)
            continue
        failures = Path(failures_path or f"ingest-failures-{name}.jsonl")
        if failures_path is not None and len(collections) > 1:
            failures = failures.with_name(f"{failures.stem}-{collection}{failures.suffix}")
        report = _ingest(engine, opened[collection], name, collection, options, failures, images, texts[collection])
        if collection == "images" and report.not_swapped and report.count == 0 and report.failed:
            no_images = (f"not loaded, since every image of this run failed ({report.failed} failures, listed in "
                         f"{report.failures_file}) and its captions would be served without them; fix the images "
                         f"and run the same command again, or pass --allow-empty to serve both")
        yield report


# The apps whose saved objects lsr-os writes, and the packaged file (for the prefix `lsr`) of each.
DASHBOARD_APPS = {"opensearch-dashboards": "dashboards.ndjson", "kibana": "kibana.ndjson"}


def dashboards_objects(prefix: str = "lsr", app: str = "opensearch-dashboards") -> str:
    """Saved objects (NDJSON) for the collections of `prefix` that `app` (opensearch-dashboards or
    kibana) imports: a data view (index pattern) and a saved search per collection, from the
    packaged `mappings/dashboards.ndjson` or `mappings/kibana.ndjson` (written for the prefix
    `lsr`, each in its app's saved-object format) with their ids, titles and references renamed."""
    if app not in DASHBOARD_APPS:
        raise ConfigError(f"no saved objects for {app!r}: choose one of {', '.join(DASHBOARD_APPS)}")
    text = resources.files("lsr_os.mappings").joinpath(DASHBOARD_APPS[app]).read_text(encoding="utf-8")
    lines = []
    for line in text.splitlines():
        if not line.strip():
            continue
        obj = json.loads(line)
        obj["id"] = _with_prefix(obj["id"], prefix)
        for ref in obj.get("references", []):
            ref["id"] = _with_prefix(ref["id"], prefix)
        if obj["type"] == "index-pattern":
            obj["attributes"]["title"] = _with_prefix(obj["attributes"]["title"], prefix)
        elif prefix != "lsr":
            obj["attributes"]["title"] = obj["attributes"]["title"].replace("lsr-os ", f"lsr-os {prefix} ", 1)
        lines.append(json.dumps(obj, ensure_ascii=False))
    return "\n".join(lines) + "\n"


def _with_prefix(name: str, prefix: str) -> str:
    return f"{prefix}-{name[len('lsr-'):]}" if name.startswith("lsr-") else name


# --------------------------------------------------------------------------- housekeeping


def list_collections(engine: Engine, pattern: str = "*", head: str | Path | None = None) -> list[dict]:
    """Every lsr-os index matching `pattern`: alias, index, state, docs, size, served or not, its
    `text_field` (what `_meta` records of the plugin's field, None without one) and
    `text_field_stale`: why that field ranks by other query weights than `head`'s (by default the
    head folder it was folded from, as it is now), None when it does not (`plugin.stale_text_field`)."""
    out = []
    for name, body in engine.mappings(pattern).items():
        meta = (body.get("_meta") or {}).get(META_KEY)
        if not meta:
            continue
        out.append({"alias": meta.get("alias"), "index": name, "collection": meta.get("collection"),
                    "state": meta.get("state"), "source": meta.get("source"), "text_field": meta.get("text_field"),
                    "text_field_stale": plugin.stale_text_field(name, meta.get("text_field"), head)})
    if not out:
        return out
    stats = {row["index"]: row for row in engine.cat_indices(",".join(r["index"] for r in out))}
    loading = [r["index"] for r in out if r["state"] == "loading"]
    # A loading index has refresh off, so its searchable count lags: report what it has indexed.
    indexing = engine.stats(",".join(loading), metric="indexing")["indices"] if loading else {}
    for row in out:
        row["served"] = bool(row["alias"]) and row["index"] in engine.alias_targets(row["alias"])
        row["docs"] = int(stats.get(row["index"], {}).get("docs.count") or 0)
        if row["index"] in indexing:
            row["docs"] = max(row["docs"], int(indexing[row["index"]]["primaries"]["indexing"]["index_total"]))
        row["bytes"] = int(stats.get(row["index"], {}).get("store.size") or 0)
    return sorted(out, key=lambda r: (r["alias"] or "", r["index"]))


def stale_text_fields(engine: Engine, name: str, head: str | Path) -> list[str]:
    """`plugin.stale_text_field` against `head` of each index the alias or index `name` resolves
    to (one `_mapping` request): what a search with `head` should tell its user."""
    found = engine.mappings(name)
    said = (plugin.stale_text_field(name if len(found) == 1 else index,
                                    ((body.get("_meta") or {}).get(META_KEY) or {}).get("text_field"), head)
            for index, body in sorted(found.items()))
    return [line for line in said if line]


def delete_collection(engine: Engine, alias: str) -> list[str]:
    """Delete the alias and every versioned index built for it; returns the deleted indices."""
    names = sorted(_versions(engine, alias))
    if not names:
        raise ClusterError(f"no lsr-os collection named {alias} (see `lsr-os collections list`)")
    engine.delete_indices(names, missing_ok=True)
    return names


def require_index(engine: Engine, name: str) -> int:
    """The document count of the alias or index `name`; a clear error when it does not exist."""
    try:
        return engine.count(name)
    except NotFound as exc:
        raise ClusterError(f"no index or alias {name} on the cluster; ingest it first with `lsr-os ingest`") from exc
    except EngineError as exc:
        raise ClusterError(f"cannot count {name}: {exc}") from exc
