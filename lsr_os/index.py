"""Index lifecycle and bulk ingest of sparse vectors into OpenSearch `rank_features` fields.

A collection (images or captions) is served under an alias. Every load builds a new
versioned index `<alias>-v<UTC timestamp>` with refresh off (replicas: see `ingest`), streams the
documents in with `helpers.streaming_bulk`, checks the exact count, restores the settings of
`mappings/<collection>.json`, and only then swaps the alias: what is already served is never
touched by a load that fails. A load that stops halfway leaves its index marked `loading` in
the index's `_meta`; the next run for the same alias and source resumes into it, and since
document ids are the records' ids, re-sent documents overwrite themselves instead of
duplicating.
"""

from __future__ import annotations

import collections
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Collection, Iterable, Iterator

from opensearchpy import OpenSearch, helpers
from opensearchpy.exceptions import NotFoundError, RequestError, TransportError

from lsr_os.errors import ClusterError, ConfigError, DataError
from lsr_os.sparse import SparseRecord, clean, prune
from lsr_os.vocab import term_to_feature

log = logging.getLogger(__name__)

COLLECTIONS = ("images", "captions")
SPARSE_FIELD = "sparse"
META_KEY = "lsr_os"
VERSION_SEP = "-v"


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


def to_document(record: SparseRecord, top_terms: int = 16, prune_top_k: int | None = None,
                threshold: float = 0.0) -> dict:
    """The OpenSearch document of a record: hygiene, pruning, feature names, top terms, metadata.

    Weights that are not finite or not > 0 are dropped (rank_features cannot store them);
    `terms` keeps the `top_terms` heaviest readable terms for filters and Dashboards.
    """
    vector = prune(clean(record.vector), prune_top_k, threshold)
    ranked = sorted(vector.items(), key=lambda tw: (-tw[1], tw[0]))
    doc = dict(record.meta)
    doc["id"] = record.id
    doc["terms"] = [t for t, _ in ranked[:top_terms]]
    doc[SPARSE_FIELD] = {term_to_feature(t): w for t, w in ranked}
    return doc


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


# --------------------------------------------------------------------------- index lifecycle


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
    docs_before: int = 0
    already_indexed: int = 0  # ids the resumed index held, not loaded again
    count: int = 0
    resumed: bool = False
    replaced: list[str] = field(default_factory=list)
    not_swapped: str | None = None  # why the alias was left as it was (see `swap_refusal`)
    failures_file: str | None = None
    seconds: float = 0.0

    @property
    def docs_per_s(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "docs_per_s": round(self.docs_per_s, 1)}


def _now_tag() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S%f")


def _versions(client: OpenSearch, alias: str) -> dict[str, dict]:
    """Versioned indices of `alias`: name -> {"meta": _meta.lsr_os, "aliased": bool}."""
    try:
        mappings = client.indices.get_mapping(index=f"{alias}{VERSION_SEP}*", expand_wildcards="open")
    except NotFoundError:
        return {}
    aliased = set(_aliased(client, alias))
    out = {}
    for name, body in mappings.items():
        meta = (body.get("mappings", {}).get("_meta") or {}).get(META_KEY)
        if meta and meta.get("alias") == alias:
            out[name] = {"meta": meta, "aliased": name in aliased}
    return out


def _aliased(client: OpenSearch, alias: str) -> list[str]:
    """The indices `alias` points to (none when it does not exist)."""
    body = client.indices.get_alias(name=alias, ignore=404)
    return [] if body.get("status") == 404 and "error" in body else list(body)


def serving_source(client: OpenSearch, alias: str) -> str | None:
    """The `source` of the complete index that `alias` serves, if any (lets callers skip a reload)."""
    for info in _versions(client, alias).values():
        if info["aliased"] and info["meta"].get("state") == "complete":
            return info["meta"].get("source")
    return None


def _check_sparse_mapping(client: OpenSearch, index: str) -> None:
    """Fail clearly when `index` does not map `sparse` as rank_features (e.g. a template won)."""
    props = client.indices.get_mapping(index=index)[index]["mappings"].get("properties", {})
    kind = props.get(SPARSE_FIELD, {}).get("type")
    if kind != "rank_features":
        raise ClusterError(f"index {index} maps {SPARSE_FIELD!r} as {kind or 'nothing'}, not rank_features "
                           f"(an index template may override mappings/); fix the template or choose another name")


def _guard_name(client: OpenSearch, alias: str) -> None:
    """The alias name must not be a concrete index (a mapping conflict we refuse to touch)."""
    if client.indices.exists(index=alias) and not client.indices.exists_alias(name=alias):
        props = client.indices.get_mapping(index=alias)[alias]["mappings"].get("properties", {})
        kind = props.get(SPARSE_FIELD, {}).get("type")
        detail = (f"its {SPARSE_FIELD!r} field is {kind}, which conflicts with rank_features" if kind not in
                  (None, "rank_features") else "lsr-os serves collections through aliases")
        raise ClusterError(f"{alias} is an existing index, not an alias ({detail}); "
                           f"delete it or ingest under another --index name")


def default_replicas(client: OpenSearch) -> int:
    """1 replica when the cluster has 2+ data nodes (a node can be lost), else 0."""
    return 1 if len(client.nodes.info(node_id="data:true", metric="_none").get("nodes", {})) > 1 else 0


def prepare_index(client: OpenSearch, alias: str, collection: str, source: str,
                  fresh: bool = False, shards: int | None = None, replicas: int = 0) -> tuple[str, bool]:
    """The index to load into: a pending one of the same source (resume) or a new one.

    Returns (index name, resumed). Pending indices of another source, or all of them with
    `fresh`, are deleted: they were never served. `shards` overrides the mapping's; the
    `replicas` exist during the load already, so losing a node mid-load loses no document.
    """
    _guard_name(client, alias)
    for name, info in sorted(_versions(client, alias).items()):
        meta = info["meta"]
        if meta.get("state") != "loading" or info["aliased"]:
            continue
        if not fresh and meta.get("source") == source and meta.get("collection") == collection:
            _check_sparse_mapping(client, name)
            log.info("resuming the unfinished load into %s", name)
            return name, True
        log.warning("deleting unfinished index %s (source %s)", name, meta.get("source"))
        client.indices.delete(index=name)
    body = load_mapping(collection)
    body["settings"].setdefault("index", {}).update({"refresh_interval": "-1", "number_of_replicas": replicas})
    if shards is not None:
        body["settings"]["index"]["number_of_shards"] = shards
    body["mappings"]["_meta"] = {META_KEY: {"alias": alias, "collection": collection, "source": source,
                                            "state": "loading", "started": _now_tag()}}
    name = f"{alias}{VERSION_SEP}{_now_tag()}"
    try:
        client.indices.create(index=name, body=body)
    except RequestError as exc:
        raise ClusterError(f"cannot create index {name}: {exc.error} ({exc.info})") from exc
    _check_sparse_mapping(client, name)
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


def finish_index(client: OpenSearch, alias: str, index: str, collection: str, keep_old: bool = False,
                 replicas: int | None = None) -> list[str]:
    """Restore serving settings, mark the index complete, swap the alias; returns the replaced indices.

    The replaced indices are deleted (unless `keep_old`) only once the alias is read back
    pointing at `index` alone.
    """
    settings = load_mapping(collection)["settings"].get("index", {})
    client.indices.put_settings(index=index, body={"index": {
        "refresh_interval": settings.get("refresh_interval", "1s"),
        "number_of_replicas": settings.get("number_of_replicas", 1) if replicas is None else replicas,
    }})
    meta = _versions(client, alias).get(index, {}).get("meta", {})
    meta.update(state="complete", finished=_now_tag())
    client.indices.put_mapping(index=index, body={"_meta": {META_KEY: meta}})
    old = [i for i in _aliased(client, alias) if i != index]
    actions: list[dict] = [{"remove": {"index": i, "alias": alias}} for i in old]
    actions.append({"add": {"index": index, "alias": alias}})
    client.indices.update_aliases(body={"actions": actions})
    now = _aliased(client, alias)
    if now != [index]:
        raise ClusterError(f"alias {alias} points to {', '.join(now) or 'nothing'} after the swap, not {index}; "
                           f"nothing was deleted")
    log.info("alias %s -> %s (was %s)", alias, index, ", ".join(old) or "nothing")
    if not keep_old:
        for i in old:
            client.indices.delete(index=i, ignore_unavailable=True)
    return old


# --------------------------------------------------------------------------- bulk load


class _Failures:
    """The failures file: one JSON object a line (id, where, status, reason), opened lazily."""

    def __init__(self, path: Path | None):
        self.path = path
        self.count = 0
        self._handle = None
        if path is not None and path.exists():
            path.unlink()  # a listing belongs to one run; a re-run lists what still fails

    def add(self, doc_id: str | None, where: str | None, status: Any, reason: str) -> None:
        self.count += 1
        log.debug("failed %s (%s): %s", doc_id or where, status, reason)
        if self.path is None:
            return
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self.path.open("a", encoding="utf-8")
        self._handle.write(json.dumps({"id": doc_id, "where": where, "status": status, "reason": reason},
                                      ensure_ascii=False) + "\n")
        self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()


def _reason(info: dict) -> str:
    err = info.get("error")
    if isinstance(err, dict):
        caused = err.get("caused_by", {})
        text = f"{err.get('type')}: {err.get('reason')}"
        return text + (f" ({caused.get('type')}: {caused.get('reason')})" if caused else "")
    return str(err)


def ingest(client: OpenSearch, records: Iterable[SparseRecord] | RecordsAfter, alias: str, collection: str, *,
           source: str, fresh: bool = False, keep_old: bool = False, chunk_size: int = 500,
           max_chunk_bytes: int = 10 * 2**20, retry: RetryPolicy = RetryPolicy(), prune_top_k: int | None = None,
           threshold: float = 0.0, top_terms: int = 16, failures_path: str | Path | None = None,
           read_errors: list[tuple[str, str]] | None = None, total: int | None = None,
           progress: bool | None = None, shards: int | None = None, replicas: int | None = None,
           allow_empty: bool = False, max_failed: int | None = None) -> IngestReport:
    """Stream `records` into a new (or resumed) versioned index of `alias`, check, then swap.

    `source` names the input (a path, a model): a later run with the same source resumes an
    unfinished index, and ids that index already holds are not loaded again: `records` is either
    an iterable (filtered by id) or a `RecordsAfter` function that skips them itself, before any
    encoding. `read_errors` is filled by the record reader (`read_jsonl(on_error=...)`)
    while the stream is consumed, with (where, reason) or (id, where, status, reason) entries;
    they are listed in the failures file too. Memory
    stays bounded by one bulk chunk: nothing keeps the collection. `replicas` None: 1 on a
    cluster of 2+ data nodes, else 0 (`default_replicas`). The alias moves only when the new
    index is a sound replacement (`swap_refusal`: `allow_empty`, `max_failed`); otherwise the
    report's `not_swapped` says why, and the index stays unfinished, so the same command resumes it.
    """
    from tqdm.auto import tqdm

    if chunk_size < 1 or max_chunk_bytes < 1024:
        raise ConfigError("chunk size must be >= 1 document and >= 1 KiB")
    if replicas is None:
        replicas = default_replicas(client)
    index, resumed = prepare_index(client, alias, collection, source, fresh, shards, replicas)
    report = IngestReport(alias=alias, index=index, collection=collection, resumed=resumed)
    client.indices.refresh(index=index)
    report.docs_before = int(client.count(index=index)["count"])
    done = indexed_ids(client, index) if report.docs_before else frozenset()
    report.already_indexed = len(done)
    todo = records(done) if callable(records) else (r for r in records if r.id not in done)
    if total is not None:
        total = max(0, total - len(done))
    failures = _Failures(Path(failures_path) if failures_path else None)
    report.failures_file = str(failures_path) if failures_path else None
    in_flight: collections.deque = collections.deque()
    # progress None: tqdm decides (off when stderr is not a terminal).
    bar = tqdm(total=total, unit="doc", desc=f"ingest {alias}", disable=None if progress is None else not progress,
               dynamic_ncols=True)
    reported_read_errors = 0

    def flush_read_errors() -> None:
        nonlocal reported_read_errors
        if read_errors is not None:
            for entry in read_errors[reported_read_errors:]:
                if len(entry) == 4:  # (id, where, status, reason) of an item the reader skipped
                    failures.add(*entry)
                else:
                    failures.add(None, entry[0], "unreadable", entry[1])
            reported_read_errors = len(read_errors)

    def actions() -> Iterator[dict]:
        for record in todo:
            report.read += 1
            flush_read_errors()
            try:
                doc = to_document(record, top_terms, prune_top_k, threshold)
            except ValueError as exc:
                failures.add(record.id, None, "invalid", str(exc))
                bar.update(1)
                continue
            if not doc[SPARSE_FIELD]:  # it would match nothing, ever: a failure, not a silent document
                failures.add(record.id, None, "invalid", "no term with a finite weight > 0 (after pruning)")
                bar.update(1)
                continue
            action = {"_op_type": "index", "_index": index, "_id": record.id, "_source": doc}
            in_flight.append(action)
            report.sent += 1
            yield action

    def settle(ok: bool, item: dict, action: dict, retry_later: list[dict]) -> None:
        _, info = next(iter(item.items()))
        if ok:
            report.indexed += 1
            report.created += info.get("result") == "created"
            bar.update(1)
        elif retry.retryable(info.get("status")):
            retry_later.append(action)
        else:
            failures.add(action["_id"], None, info.get("status"), _reason(info))
            bar.update(1)

    def resend(batch: list[dict]) -> None:
        for attempt in range(1, retry.max_attempts + 1):
            wait = retry.delay(attempt)
            log.warning("re-sending %d documents in %.1fs (attempt %d of %d)", len(batch), wait, attempt,
                        retry.max_attempts)
            time.sleep(wait)
            still: list[dict] = []
            last_status: Any = None
            for action, (ok, item) in zip(batch, _bulk(client, batch, chunk_size, max_chunk_bytes)):
                settle(ok, item, action, still)
                if not ok:
                    last_status = next(iter(item.values())).get("status")
            if not still:
                return
            batch = still
        raise ClusterError(f"{len(batch)} documents kept failing with HTTP {last_status} after "
                           f"{retry.max_attempts} attempts; {report.indexed} were indexed into {index}. "
                           f"Run the same command again to resume.")

    t0 = time.perf_counter()
    try:
        retry_later: list[dict] = []
        for ok, item in _bulk(client, actions(), chunk_size, max_chunk_bytes):
            settle(ok, item, in_flight.popleft(), retry_later)
            if len(retry_later) >= chunk_size:
                resend(retry_later)
                retry_later = []
        if retry_later:
            resend(retry_later)
        flush_read_errors()
    finally:
        bar.close()
        failures.close()
    report.failed = failures.count
    client.indices.refresh(index=index)
    report.count = int(client.count(index=index)["count"])
    report.seconds = time.perf_counter() - t0
    _check_count(report)
    report.not_swapped = swap_refusal(report, _aliased(client, alias), allow_empty, max_failed)
    if report.not_swapped:
        log.warning("ingest %s: not swapped: %s", alias, report.not_swapped)
        return report
    report.replaced = finish_index(client, alias, index, collection, keep_old, replicas)
    log.info("ingest %s: %s", alias, report.to_dict())
    return report


def indexed_ids(client: OpenSearch, index: str) -> frozenset[str]:
    """The ids `index` holds (a resumed load skips them); one scroll over ids only, no sources."""
    hits = helpers.scan(client, index=index, query={"_source": False}, size=5000)
    return frozenset(hit["_id"] for hit in hits)


def _bulk(client: OpenSearch, actions: Iterable[dict], chunk_size: int, max_chunk_bytes: int):
    """streaming_bulk yielding one (ok, item) per action, in order; never raises per document."""
    return helpers.streaming_bulk(client, actions, chunk_size=chunk_size, max_chunk_bytes=max_chunk_bytes,
                                  raise_on_error=False, raise_on_exception=False, max_retries=0,
                                  yield_ok=True)


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


def read_sparse_jsonl(path: str | Path, errors: list[tuple[str, str]]) -> Iterator[SparseRecord]:
    """Records of a sparse JSONL file; malformed lines go to `errors` as (file:line, reason)."""
    from lsr_os.sparse import read_jsonl

    return read_jsonl(path, on_error=lambda where, reason: errors.append((where, reason)))


def count_lines(path: str | Path) -> int:
    """Non-empty lines of a file (the progress bar's total), streamed."""
    try:
        with Path(path).open("rb") as handle:
            return sum(1 for line in handle if line.strip())
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from exc


def source_of(path: str | Path) -> str:
    """A resume key for a file: its absolute path, size and modification time."""
    p = Path(path).resolve()
    st = p.stat()
    return f"{p}:{st.st_size}:{int(st.st_mtime)}"


# --------------------------------------------------------------------------- housekeeping


def list_collections(client: OpenSearch, pattern: str = "*") -> list[dict]:
    """Every lsr-os index matching `pattern`: alias, index, state, docs, size, served or not."""
    try:
        mappings = client.indices.get_mapping(index=pattern, expand_wildcards="open")
    except NotFoundError:
        return []
    out = []
    for name, body in mappings.items():
        meta = (body.get("mappings", {}).get("_meta") or {}).get(META_KEY)
        if not meta:
            continue
        out.append({"alias": meta.get("alias"), "index": name, "collection": meta.get("collection"),
                    "state": meta.get("state"), "source": meta.get("source")})
    if not out:
        return out
    stats = {row["index"]: row for row in client.cat.indices(index=",".join(r["index"] for r in out),
                                                              format="json", bytes="b")}
    for row in out:
        row["served"] = bool(row["alias"]) and row["index"] in _aliased(client, row["alias"])
        row["docs"] = int(stats.get(row["index"], {}).get("docs.count") or 0)
        row["bytes"] = int(stats.get(row["index"], {}).get("store.size") or 0)
    return sorted(out, key=lambda r: (r["alias"] or "", r["index"]))


def delete_collection(client: OpenSearch, alias: str) -> list[str]:
    """Delete the alias and every versioned index built for it; returns the deleted indices."""
    names = sorted(_versions(client, alias))
    if not names:
        raise ClusterError(f"no lsr-os collection named {alias} (see `lsr-os collections list`)")
    for name in names:
        client.indices.delete(index=name, ignore_unavailable=True)
    return names


def require_index(client: OpenSearch, name: str) -> int:
    """The document count of the alias or index `name`; a clear error when it does not exist."""
    try:
        return int(client.count(index=name)["count"])
    except NotFoundError as exc:
        raise ClusterError(f"no index or alias {name} on the cluster; ingest it first with `lsr-os ingest`") from exc
    except TransportError as exc:
        raise ClusterError(f"cannot count {name}: HTTP {exc.status_code} {exc.error}") from exc



# --------------------------------------------------------------------------- records from dense files


def dense_records(dense_dir: str | Path, head, collection: str, splits: Iterable[str] | None = None,
                  batch_size: int = 256, expand: bool = True,
                  skip: Collection[str] = frozenset()) -> Iterator[SparseRecord]:
    """Sparse records of one collection, encoded batch by batch from the authors' dense layout.

    `head` is a loaded sparse head (`lsr_os.models.head.load_head`). Metadata (split, image
    file name, caption, image id) comes from `dataset_meta.json`. Only one batch of sparse
    vectors exists at a time. Ids in `skip` (already indexed) are not encoded.
    """
    from lsr_os.dense_files import IMG_FILE, META_FILE, TEXT_FILE, DatasetMeta, read_embeddings

    if collection not in COLLECTIONS:
        raise ConfigError(f"unknown collection {collection!r}; choose one of {', '.join(COLLECTIONS)}")
    dense_dir = Path(dense_dir)
    meta = DatasetMeta.load(dense_dir / META_FILE)
    wanted = set(splits) if splits else None
    rows: list[tuple[str, dict, str | None]] = []  # (id, metadata, caption text)
    for img in meta.images:
        if wanted is not None and img["split"] not in wanted:
            continue
        base = {"dataset": meta.name or None, "split": img["split"], "image": img.get("filename")}
        base = {k: v for k, v in base.items() if v is not None}
        if collection == "images":
            rows.append((str(img["imgid"]), base, None))
        else:
            for s in img.get("sentences", []):
                rows.append((str(s["sentid"]), {**base, "image_id": str(img["imgid"]), "caption": s["raw"]},
                             s["raw"]))
    if not rows:
        raise DataError(f"{dense_dir / META_FILE} has no {collection} in split(s) {sorted(wanted or [])}")
    rows = [r for r in rows if r[0] not in skip]
    emb = read_embeddings(dense_dir / (IMG_FILE if collection == "images" else TEXT_FILE))
    for start in range(0, len(rows), batch_size):
        part = rows[start:start + batch_size]
        dense = emb.take([r[0] for r in part])
        texts = [r[2] for r in part] if collection == "captions" else None
        vectors = head.encode(dense, texts=texts, expand=expand or collection == "images")
        for (rid, meta_row, _), vector in zip(part, vectors):
            yield SparseRecord(rid, vector, dict(meta_row))


# --------------------------------------------------------------------------- what ingest reads


# Given the ids an index already holds, the records still to load (lazily): a resumed load of an
# expensive source (a dataset encoded on the fly) skips those ids before computing anything.
RecordsAfter = Callable[[frozenset[str]], Iterable[SparseRecord]]


@dataclass
class RecordStream:
    """One collection's input: its records (see `RecordsAfter`), the resume key, the size when
    known, and the list of skipped items (see `ingest`'s `read_errors`) that the reader fills
    while it is consumed."""

    records: RecordsAfter
    source: str
    total: int | None
    read_errors: list[tuple]


class IngestInput:
    """Where `lsr-os ingest` reads its records: a sparse JSONL file, dense files plus a head, or a
    dataset (Karpathy JSON + image root, or captions file) encoded on the fly by a dense encoder
    (GPU when present) and a head. Options are checked here, before anything is loaded or any
    cluster contacted; models and the dataset load once, on the first `stream`."""

    def __init__(self, sparse_file: str | Path | None = None, dense_dir: str | Path | None = None,
                 head: str | Path | None = None, model: str | None = None, data: str | Path | None = None,
                 images: str | Path | None = None, captions: str | Path | None = None,
                 splits: Iterable[str] = (), batch_size: int = 64, text_batch_size: int = 256, workers: int = 0,
                 device: str | None = None):
        from_dataset = data is not None or captions is not None
        if sum((sparse_file is not None, dense_dir is not None, from_dataset)) != 1:
            raise ConfigError("give one input: --sparse FILE, --dense DIR with --head, or a dataset "
                              "(--data KARPATHY.json --images ROOT, or --captions FILE) with --model and --head")
        if dense_dir is not None and head is None:
            raise ConfigError("--dense needs --head (a sparse head checkpoint)")
        if from_dataset and (model is None or head is None):
            raise ConfigError("a dataset input needs --model (dense encoder) and --head (sparse head)")
        if model is not None and not from_dataset:
            raise ConfigError("--model encodes a dataset: give --data KARPATHY.json --images ROOT or --captions FILE")
        if images is not None and not from_dataset:
            raise ConfigError("--images is the image root of a dataset input (--data or --captions)")
        self.sparse_file = Path(sparse_file) if sparse_file is not None else None
        self.dense_dir = Path(dense_dir) if dense_dir is not None else None
        self.head_path = Path(head) if head is not None else None
        self.model, self.data, self.images, self.captions = model, data, images, captions
        self.splits = tuple(splits)
        self.batch_size, self.text_batch_size, self.workers, self.device = batch_size, text_batch_size, workers, device
        self._head = self._encoder = self._dataset = None

    def collections(self, requested: Iterable[str] = (), alias: str | None = None) -> tuple[str, ...]:
        """The collections to load: `requested`, else both (a sparse file holds exactly one)."""
        requested = tuple(requested)
        if self.sparse_file is not None and len(requested) != 1:
            raise ConfigError("--sparse loads one collection: add --collection images or --collection captions")
        chosen = requested or COLLECTIONS
        if alias and len(chosen) > 1:
            raise ConfigError("--index names one alias: give one --collection with it")
        return chosen

    def _loaded_head(self):
        if self._head is None:
            from lsr_os.models.head import load_head

            self._head = load_head(self.head_path)
        return self._head

    def _split_key(self) -> str:
        """The splits' part of a resume key: a load of other splits must not resume this one."""
        return "split=" + (",".join(sorted(self.splits)) or "all")

    def stream(self, collection: str) -> RecordStream:
        """The records of one collection, with the source key that makes a re-run resume."""
        errors: list[tuple] = []
        if self.sparse_file is not None:
            path = self.sparse_file
            return RecordStream(lambda done: (r for r in read_sparse_jsonl(path, errors) if r.id not in done),
                                source_of(path), count_lines(path), errors)
        if self.dense_dir is not None:
            head, dense_dir, splits = self._loaded_head(), self.dense_dir, self.splits or None

            def records(done: frozenset[str]) -> Iterator[SparseRecord]:
                return dense_records(dense_dir, head, collection, splits, skip=done)

            source = "|".join((source_of(self.dense_dir / "dataset_meta.json"), str(self.head_path.resolve()),
                               self._split_key(), collection))
            return RecordStream(records, source, None, errors)
        return self._dataset_stream(collection, errors)

    def _dataset_stream(self, collection: str, errors: list[tuple]) -> RecordStream:
        from lsr_os.data import Failure, load_dataset
        from lsr_os.encode import dataset_records
        from lsr_os.models.dense import load_encoder

        if collection not in COLLECTIONS:
            raise ConfigError(f"unknown collection {collection!r}; choose one of {', '.join(COLLECTIONS)}")
        if self._dataset is None:
            self._dataset = load_dataset(data=self.data, images=self.images, captions=self.captions,
                                         split=",".join(self.splits) or None)
            self._encoder = load_encoder(self.model, device=self.device)
        dataset = self._dataset
        # Rows of the dataset file that could not be read are listed with each collection.
        errors.extend((None, f.source or f.id, "unreadable", f.reason) for f in dataset.failures)

        def on_failure(f: Failure) -> None:
            errors.append((f.id, f.source, "unreadable" if f.what == "image" else "invalid", f.reason))

        encoder, head = self._encoder, self._loaded_head()

        def records(done: frozenset[str]) -> Iterator[SparseRecord]:
            return dataset_records(encoder, head, dataset, collection, on_failure, self.batch_size,
                                   self.text_batch_size, self.workers, skip=done)

        model = Path(self.model).expanduser()
        parts = [source_of(self.data or self.captions), str(dataset.root.resolve()),
                 str(model.resolve()) if model.exists() else self.model, str(self.head_path.resolve()),
                 self._split_key(), collection]
        total = len(dataset.images) if collection == "images" else len(dataset.captions)
        return RecordStream(records, "|".join(parts), total, errors)


def ingest_inputs(client: OpenSearch, inputs: IngestInput, collections: Iterable[str], alias: str | None = None,
                  prefix: str = "lsr", failures_path: str | Path | None = None, **options) -> Iterator[IngestReport]:
    """Load each collection of `inputs` (see `ingest` for `options`); yields one report per collection.

    The alias is `alias` or `<prefix>-<collection>`; failures go to `ingest-failures-<alias>.jsonl`,
    or to `failures_path` (with `-<collection>` before its suffix when several collections load, so
    the second does not overwrite the first).
    """
    collections = tuple(collections)
    for collection in collections:
        name = alias or default_alias(collection, prefix)
        failures = Path(failures_path or f"ingest-failures-{name}.jsonl")
        if failures_path is not None and len(collections) > 1:
            failures = failures.with_name(f"{failures.stem}-{collection}{failures.suffix}")
        stream = inputs.stream(collection)
        yield ingest(client, stream.records, name, collection, source=stream.source, failures_path=failures,
                     read_errors=stream.read_errors, total=stream.total, **options)
