"""`lsr-os serve`: the search application. Warm models, a JSON API, a web page, image thumbnails.

One long-running process keeps the dense encoder and the sparse head loaded (on the GPU when
there is one) and answers text, image and raw-vector queries over the cluster's collections; with
a head that has query weights and no model, it answers text queries inference-free (no model):

    POST /search    a query -> hits with their matched terms (as `lsr-os search --explain`)
    POST /encode    a query -> the sparse query vector and the exact DSL that /search sends
    GET  /media/P   an image file under the image root (thumbnails; Dashboards' Url format)
    GET  /healthz   cluster, collections, models, device, batching
    GET  /          the web page; /docs the OpenAPI page

Concurrency: the event loop never runs a model or a cluster call (an inference-free text is a
tokenizer call and a table lookup: encoded on the loop, it never waits for the model thread).
Queries that arrive together are encoded in one model call (`Batcher`: one model thread, a maximum batch, a bounded wait for
queries on their way); a bounded number of queries may wait for the model, beyond which the
server answers 503. Cluster calls run on a small thread pool over the synchronous client
(thread-safe, pooled connections).
Every bad input is a 4xx JSON error `{"error": "..."}` that names what was wrong.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import io
import json
import logging
import os
import socket
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Callable, Literal
from urllib.parse import quote

import orjson
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from lsr_os import __version__
from lsr_os.engines.base.base import Engine
from lsr_os.errors import (AccessDenied, ClusterError, CollectionMissing, ConfigError, DataError, EngineError,
                           LsrOsError, ModelError, NoAnswer)
from lsr_os.search import QueryEncoder, Searcher, expansion_only, images_root, split_terms, stable_preference
from lsr_os.static_query import QueryWeightsMissing
from lsr_os.sparse import SparseVector, numeric_weights
from lsr_os.vocab import Vocabulary

log = logging.getLogger(__name__)

MAX_K = 100  # hits per query: a page of thumbnails, not a bulk export (use `lsr-os evaluate` for runs)
MAX_TEXT = 2000  # characters of a text query; the model reads far fewer tokens
COLLECTIONS = ("images", "captions")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"})
FORM_OVERHEAD = 64 * 1024  # multipart boundaries and the small fields beside an image upload
IMAGE_CACHE = "public, max-age=3600"


@dataclass
class ServeConfig:
    """What `lsr-os serve` serves and how much it accepts. With `head` alone (query weights needed)
    it answers text queries inference-free; without either, vector queries only. The image root is
    `images`, else the one recorded at ingest of `<prefix>-images`, else the `demo` folder's world
    when the collections are the demo's (`search.images_root`); without one, hits carry no image URL."""

    prefix: str = "lsr"
    model: str | None = None
    head: str | Path | None = None
    images: Path | None = None
    demo: Path | None = None  # the folder of `lsr-os demo`: its world holds the images of its collections
    device: str | None = None
    max_batch: int = 32  # queries per model call; 1 turns dynamic batching off
    batch_wait_ms: float = 2.0  # how long a query waits for others to share its model call
    max_pending: int = 256  # queries waiting for the model; one more gets 503
    max_upload_bytes: int = 10 * 2**20
    max_pixels: int = 50_000_000  # decoded size of an uploaded image (decompression bombs)
    cluster_threads: int = 8  # within the engine client's pooled connections per node (config.POOL_MAXSIZE)
    # torch's CPU threads (process-wide); None keeps torch's default (one per core). On a CPU the
    # model shares the cores with the HTTP server and the cluster client: see bench/serve.py.
    torch_threads: int | None = None

    def __post_init__(self) -> None:
        if self.model is not None and self.head is None:
            raise ConfigError("--model needs --head (the head turns the model's vectors into terms); --head alone "
                              "answers text queries inference-free when it has query weights")
        if self.head is not None:
            QueryEncoder(self.model, self.head).mode()  # a head alone without query weights: the error says so
        if self.images is not None and not Path(self.images).is_dir():
            raise ConfigError(f"--images {self.images}: not a folder")
        if self.max_batch < 1 or self.max_pending < 1 or self.batch_wait_ms < 0:
            raise ConfigError("--max-batch and --max-pending must be >= 1 and --batch-wait-ms >= 0")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ConfigError(f"--torch-threads must be >= 1, not {self.torch_threads}")


class ApiError(Exception):
    """A request the server refuses: an HTTP status and a message naming what was wrong."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Overloaded(Exception):
    """The batcher already holds its maximum of waiting queries."""


class Arrival:
    """A query on its way to a `Batcher` (see `Batcher.arrival`); closed once, when it is
    submitted or when its request ends without reaching the model."""

    def __init__(self, batcher: "Batcher"):
        self.batcher, self.open = batcher, True
        batcher.arriving += 1

    def close(self) -> None:
        if self.open:
            self.open = False
            self.batcher.arriving -= 1
            self.batcher._arrived.set()


# --------------------------------------------------------------------------- dynamic batching


class Batcher:
    """Requests that arrive together share one call of `fn` (a list of items -> a list of results,
    an exception in place of an item's result fails that item alone).

    While `fn` runs, the next batch gathers. A batch waits for more queries only while others are
    on their way (an `Arrival` taken when a request starts and closed when it is submitted: being
    read or decoded), and at most `max_wait_s`; a lone query never waits. `fn` runs on `executor`
    (one thread: the models), never on the event loop. At most `max_pending` items wait or run;
    `submit` raises `Overloaded` beyond that.
    """

    def __init__(self, fn: Callable[[list], list], executor: ThreadPoolExecutor, max_batch: int,
                 max_wait_s: float, max_pending: int):
        self.fn, self.executor = fn, executor
        self.max_batch, self.max_wait_s, self.max_pending = max_batch, max_wait_s, max_pending
        self.pending = self.arriving = 0
        self.batches = self.items = self.largest = 0
        self._queue: deque[tuple[Any, asyncio.Future]] = deque()
        self._wake, self._arrived = asyncio.Event(), asyncio.Event()
        self._task: asyncio.Task | None = None

    def arrival(self) -> "Arrival":
        """Announce a query on its way to `submit`: batches formed meanwhile may wait for it."""
        return Arrival(self)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="lsr-os batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for _, future in self._queue:
            future.cancel()
        self._queue.clear()

    async def submit(self, item, arrival: "Arrival | None" = None):
        """The result of `fn` for `item`, once its batch has run; `arrival` is the query's announcement."""
        if arrival is not None:
            arrival.close()
        if self.pending >= self.max_pending:
            raise Overloaded(f"the server is busy: {self.pending} queries already wait for the model "
                             f"(--max-pending {self.max_pending}); try again shortly")
        future = asyncio.get_running_loop().create_future()
        self.pending += 1
        self._queue.append((item, future))
        self._wake.set()
        try:
            return await future
        finally:
            self.pending -= 1

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            deadline = loop.time() + self.max_wait_s
            while len(self._queue) < self.max_batch and self.arriving > 0 and loop.time() < deadline:
                self._arrived.clear()  # set by every arrival that closes: submitted or given up
                try:
                    await asyncio.wait_for(self._arrived.wait(), deadline - loop.time())
                except asyncio.TimeoutError:
                    break
            batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
            if not self._queue:
                self._wake.clear()
            batch = [(item, future) for item, future in batch if not future.done()]  # clients gone
            if not batch:
                continue
            try:
                results = await loop.run_in_executor(self.executor, self.fn, [item for item, _ in batch])
            except Exception as exc:  # the whole call failed: every query of the batch gets the error
                results = [exc] * len(batch)
            self.batches, self.items = self.batches + 1, self.items + len(batch)
            self.largest = max(self.largest, len(batch))
            for (_, future), result in zip(batch, results):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    def stats(self) -> dict:
        return {"max_batch": self.max_batch, "wait_ms": self.max_wait_s * 1000, "max_pending": self.max_pending,
                "pending": self.pending, "arriving": self.arriving, "batches": self.batches, "queries": self.items, "largest_batch": self.largest}


# --------------------------------------------------------------------------- requests and responses


class SearchRequest(BaseModel):
    """One query: exactly one of `text`, `vector` or (multipart) `image`."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(None, max_length=MAX_TEXT, description="A text query (text -> images by default).")
    vector: dict[str, float] | None = Field(None, description="A raw sparse query {term: weight}; needs no model.")
    collection: Literal["images", "captions"] | None = Field(
        None, description="images or captions [default: images for text and vector queries, captions for an image].")
    k: int = Field(10, ge=1, le=MAX_K, description="Number of hits.")
    split: str | None = Field(None, max_length=200,
                              description="Only documents of these splits, comma-separated ('train' includes restval).")
    mode: Literal["auto", "expanded", "own-tokens", "inference-free"] = Field(
        "auto", description="How a text becomes a query: expanded (model + head), own-tokens (model + head, the text's "
                            "own word pieces), inference-free (the head's query weights, no model); auto: expanded "
                            "when the server has a model, else inference-free. Text queries only.")
    expand: bool = Field(True, description="false: the text keeps its own word pieces (mode own-tokens).")
    session: str | None = Field(
        None, max_length=64, pattern=r"^[A-Za-z0-9_-]+$",
        description="Any id of the user's session (letters, digits, - and _): its searches go to the same shard "
                    "copies, so hits tied on score keep their order from one search to the next.")


class MatchedTerm(BaseModel):
    term: str
    query_weight: float
    doc_weight: float
    contribution: float


class Hit(BaseModel):
    rank: int
    id: str
    score: float
    label: str = Field(description="The caption of a caption hit, the image path of an image hit.")
    image_url: str | None = Field(description="The hit's image (a caption: the image it describes) under /media/.")
    terms: list[MatchedTerm] = Field(description="Matched terms, heaviest contribution first; they sum to the score.")
    split: str | None = None
    image: str | None = None
    image_id: str | None = None
    caption: str | None = None


class QueryTerms(BaseModel):
    text: str | None
    own: dict[str, float] = Field(description="The query's own terms (a text's word pieces), heaviest first.")
    expansion: dict[str, float] = Field(description="Terms the model added, heaviest first.")


MODE_FIELD = Field(description="The query mode that answered a text (expanded, own-tokens, inference-free); "
                               "expanded for an image, vector for a raw vector.")
WARNINGS_FIELD = Field(description="What to know before trusting the hits, e.g. a text searched by its "
                                   "expansion alone (none of its own word pieces has a weight).")


class SearchResponse(BaseModel):
    collection: str
    took_ms: int
    mode: str = MODE_FIELD
    query: QueryTerms
    warnings: list[str] = WARNINGS_FIELD
    hits: list[Hit]


class EncodeResponse(BaseModel):
    collection: str
    mode: str = MODE_FIELD
    query: QueryTerms
    warnings: list[str] = WARNINGS_FIELD
    vector: dict[str, float] = Field(description="The query as /search sends it: cleaned and capped.")
    dsl: dict = Field(description="The exact search body /search sends (paste into Dev Tools: GET <collection>/_search).")


class ErrorBody(BaseModel):
    error: str


@dataclass
class Query:
    """A request, parsed and checked, before encoding."""

    request: SearchRequest
    image: bytes | None = None

    @property
    def kind(self) -> str:
        return "image" if self.image is not None else "text" if self.request.text is not None else "vector"


@dataclass
class Plan:
    """An encoded query, ready to search."""

    alias: str
    vector: SparseVector
    own: frozenset[str]
    text: str | None
    vocabulary: Vocabulary | None
    mode: str


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(x) for x in err["loc"]) or "body"
        parts.append(f"unknown field {where!r}" if err["type"] == "extra_forbidden" else f"{where}: {err['msg']}")
    return "; ".join(parts)


def decode_image(data: bytes, max_pixels: int):
    """An uploaded image as RGB (`data.load_image`, the size checked from the header before any pixel
    is decoded, so a decompression bomb costs nothing); ApiError naming what is wrong with it."""
    from lsr_os.data import ImageLoadError, ImageTooLarge, load_image

    if not data:
        raise ApiError(400, "image: the upload is empty (0 bytes)")
    try:
        return load_image(io.BytesIO(data), max_pixels)
    except ImageTooLarge as exc:
        raise ApiError(413, f"image: {exc.size}, more than this server's limit of {exc.limit:,} pixels "
                            f"(--max-image-mpix)") from None
    except ImageLoadError as exc:
        raise ApiError(400, f"image: {exc}") from None


# --------------------------------------------------------------------------- the service


class SearchService:
    """Everything a request needs: the searcher, the warm models behind the batcher, the thread
    pools. The HTTP layer (`create_app`) only parses requests and shapes responses."""

    def __init__(self, engine: Engine, config: ServeConfig):
        self.engine, self.config, self.urls = engine, config, engine.config.urls
        self.searcher = Searcher(engine)
        self.vocabulary = Vocabulary.default()
        self.queries = QueryEncoder(config.model, config.head, config.device) if config.head is not None else None
        self.modes = self.queries.modes if self.queries is not None else ()
        self.device: str | None = None
        self.ready = False  # the query weights and models loaded and warm (load_models)
        self.model_pool = ThreadPoolExecutor(1, thread_name_prefix="lsr-os-model")
        self.io_pool = ThreadPoolExecutor(config.cluster_threads, thread_name_prefix="lsr-os-io")
        self.batcher = Batcher(self._encode_batch, self.model_pool, config.max_batch, config.batch_wait_ms / 1000,
                               config.max_pending)
        self.image_root = self._image_root()
        # the images' `text` field folded from other query weights than the head's (read once: open_service)
        self.text_field_stale: list[str] = []

    def alias(self, collection: str) -> str:
        return f"{self.config.prefix}-{collection}"

    def _image_root(self) -> Path | None:
        """The image root of the collections (see ServeConfig); the cluster is asked only without --images."""
        from lsr_os.index import image_root

        recorded = None
        if self.config.images is None:
            try:
                recorded = image_root(self.engine, self.alias("images"))
            except EngineError as exc:  # not fatal: the collection may be loaded later
                log.warning("cannot read the image root of %s: %s", self.alias("images"), exc)
        root = images_root(self.alias("images"), recorded, self.config.images, self.config.demo)
        return root.resolve() if root is not None else None

    @property
    def summary(self) -> str:
        """What the server answers, from which engine, in a few words (its startup line)."""
        engine = f"{self.engine.display_name} {self.engine.version}"
        if not self.modes:
            return f"{engine}; vector queries only"
        return (f"{engine}; text queries {', '.join(self.modes)}"
                + (f"; model on {self.device}" if self.device else "; no model"))

    # ---------------------------------------------------------------- models (model thread only)

    def load_models(self) -> None:
        """Load the query weights, the encoder and the head once and run one query through each
        (first-call costs); then every mode the server offers is ready."""
        if self.queries is None or self.ready:
            return
        if "inference-free" in self.modes:
            self.queries.encode_texts(["warm up the lookup"], "inference-free")
        if self.config.model:
            if self.config.torch_threads is not None:
                import torch

                torch.set_num_threads(self.config.torch_threads)
            self.device = str(self.queries.encoder.device)
            self.queries.encode_texts(["warm up the model"], "expanded")
        self.ready = True
        log.info("ready: modes %s (model %s on %s, head %s)", ", ".join(self.modes), self.config.model, self.device,
                 self.config.head)

    def _encode_batch(self, items: list[tuple]) -> list:
        """Items ("text", text, mode) or ("image", PIL image) -> (vector, own terms) or the item's
        error: the texts of one mode are one model call (`QueryEncoder.encode_texts`, which checks
        and tokenises each once, so a bad text fails alone), the images another."""
        results: list = [None] * len(items)
        groups: dict[str, list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault(item[2] if item[0] == "text" else "image", []).append(i)
        for key, index in groups.items():
            try:
                if key == "image":
                    encoded = [(v, frozenset()) for v in self.queries.images([items[i][1] for i in index])]
                else:
                    encoded = self.queries.encode_texts([items[i][1] for i in index], key)
            except LsrOsError as exc:
                encoded = [exc] * len(index)
            except Exception as exc:  # a model failing is the server's fault, not the query's
                log.exception("the model failed on a batch of %d %s queries", len(index), key)
                encoded = [ModelError(f"the model failed: {type(exc).__name__}: {exc}")] * len(index)
            for i, result in zip(index, encoded):
                results[i] = result
        return results

    # ---------------------------------------------------------------- queries

    async def _io(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.io_pool, functools.partial(fn, *args))

    async def plan(self, query: Query, arrival: Arrival | None = None) -> Plan:
        """Encode a checked query for its collection: model queries through the batcher, an
        inference-free text here on the loop; the query's `arrival` closes when it reaches the
        batcher or cannot (vector and inference-free queries, errors)."""
        req = query.request
        alias = self.alias(req.collection or ("captions" if query.kind == "image" else "images"))
        try:
            if query.kind != "text" and req.mode != "auto":
                raise ApiError(400, "mode is for text queries: an image query always runs the model (expanded), "
                                    "a vector is searched as given")
            if query.kind == "vector":
                return Plan(alias, req.vector, frozenset(req.vector), None, self.vocabulary, "vector")
            if query.kind == "image":
                if not self.config.model:
                    raise ApiError(400, "image queries run the dense model, and this server has none: start it with "
                                        "--model and --head (or --demo); send a text or vector query instead")
                mode, item = "expanded", ("image", await self._io(decode_image, query.image, self.config.max_pixels))
            else:
                if self.queries is None:
                    raise ApiError(400, "text queries need a model or a head with query weights: this server was "
                                        "started with neither (--model and --head, --head alone, or --demo); send "
                                        "a vector query instead")
                if not req.text.strip():
                    raise ApiError(400, "text: empty query, give some text")
                try:
                    mode = self.queries.mode(req.mode, req.expand)
                except (ConfigError, QueryWeightsMissing) as exc:
                    raise ApiError(400, str(exc)) from None
                if mode == "inference-free":  # microseconds: no need of the model thread
                    encoded = self.queries.encode_texts([req.text], mode)[0]
                    if isinstance(encoded, DataError):
                        raise ApiError(400, str(encoded))
                    return Plan(alias, *encoded, req.text, None, mode)
                item = ("text", req.text, mode)
            try:
                vector, own = await self.batcher.submit(item, arrival)
            except Overloaded as exc:
                raise ApiError(503, str(exc)) from None
        finally:
            if arrival is not None:
                arrival.close()
        return Plan(alias, vector, own, req.text, None, mode)

    async def search(self, query: Query, arrival: Arrival | None = None) -> dict:
        plan = await self.plan(query, arrival)
        result = await self._io(self._search, plan, query.request.k, query.request.split, query.request.session)
        result.text, result.own, result.mode = plan.text, plan.own, plan.mode
        return {"collection": plan.alias, "took_ms": result.took_ms, "mode": plan.mode,
                "query": {"text": plan.text, **result.query_terms()}, "warnings": result.warnings,
                "hits": [self._hit(row) for row in result.hits]}

    def _search(self, plan: Plan, k: int, split: str | None, session: str | None):
        try:
            return self.searcher.search(plan.alias, plan.vector, k, split, explain=True, vocabulary=plan.vocabulary,
                                        preference=stable_preference(f"session-{session}") if session else None)
        except DataError as exc:
            raise ApiError(400, str(exc)) from None
        except ClusterError as exc:
            raise self._cluster_error(exc) from None

    async def encode(self, query: Query, arrival: Arrival | None = None) -> dict:
        plan = await self.plan(query, arrival)
        return await self._io(self._encode_dsl, plan, query.request.k, query.request.split)

    def _encode_dsl(self, plan: Plan, k: int, split: str | None) -> dict:
        """The body `Searcher.search` sends for the same query (explain on, as /search asks)."""
        try:
            vector, dsl = self.searcher.body(plan.vector, k, split, explain=True, vocabulary=plan.vocabulary)
        except DataError as exc:
            raise ApiError(400, str(exc)) from None
        return {"collection": plan.alias, "mode": plan.mode, "query": {"text": plan.text, **split_terms(vector, plan.own)},
                "warnings": expansion_only(plan.text, vector, plan.own), "vector": vector, "dsl": dsl}

    def _hit(self, row: dict) -> dict:
        image = row.get("image")
        url = f"/media/{quote(image)}" if image and self.image_root is not None else None
        return {"rank": row["rank"], "id": row["id"], "score": row["score"], "label": row["label"], "image_url": url,
                "terms": row["matches"], **{f: row[f] for f in ("split", "image", "image_id", "caption") if f in row}}

    def _cluster_error(self, exc: ClusterError) -> ApiError:
        """404 for a collection the cluster lacks (naming those it serves), 503 when the cluster is
        gone or overloaded, 502 for any other refusal."""
        if isinstance(exc, CollectionMissing):
            return ApiError(404, str(exc))
        cause = exc if isinstance(exc, EngineError) else exc.__cause__
        if isinstance(cause, NoAnswer):
            return ApiError(503, f"the cluster at {', '.join(self.urls) or 'its URL'} cannot be reached: {exc}")
        status = cause.status if isinstance(cause, EngineError) else None
        if isinstance(status, int) and (status == 429 or status >= 500):
            return ApiError(503, str(exc))
        return ApiError(502, str(exc))

    # ---------------------------------------------------------------- health

    def health(self) -> dict:
        """Cluster reachable, collections present (documents), models loaded, device, batching."""
        cluster: dict = {"urls": list(self.urls), "engine": self.engine.display_name, "reachable": False}
        try:
            self.engine.health()
            cluster.update(reachable=True, version=self.engine.version)
        except AccessDenied as exc:  # it answered: a read-only user may search but not read cluster health
            cluster.update(reachable=True, version=self.engine.version, health=str(exc)[:500])
        except EngineError as exc:
            cluster["error"] = f"{type(exc).__name__}: {exc}"[:500]
        collections = {}
        for name in COLLECTIONS:
            entry: dict = {"alias": self.alias(name), "documents": None}
            if cluster["reachable"]:
                try:
                    entry["documents"] = self.searcher.require(entry["alias"])
                except ClusterError as exc:
                    entry["error"] = str(exc)
            collections[name] = entry
        collections["images"]["text_field_stale"] = self.text_field_stale
        models = None
        if self.queries is not None:
            models = {"model": self.config.model, "head": str(self.config.head), "loaded": self.ready,
                      "device": self.device, "modes": list(self.modes)}
        ok = cluster["reachable"] and all(c["documents"] is not None for c in collections.values()) and (
            models is None or models["loaded"])
        return {"ok": ok, "cluster": cluster, "collections": collections, "models": models,
                "images": str(self.image_root) if self.image_root else None, "batching": self.batcher.stats()}

    # ---------------------------------------------------------------- images

    def image_file(self, path: str) -> tuple[Path, os.stat_result]:
        """The file (and its stat) of an image path under the image root; ApiError 404 for anything else."""
        from lsr_os.data import ImageLoadError, resolve_image

        if self.image_root is None:
            raise ApiError(404, "this server has no image root: start it with --images ROOT (or --demo)")
        try:
            full = resolve_image(self.image_root, path)
        except ImageLoadError:
            raise ApiError(404, f"no image {path!r} under the image root") from None
        if full.suffix.lower() not in IMAGE_SUFFIXES or not full.is_file():
            raise ApiError(404, f"no image {path!r} under the image root")
        return full, full.stat()

    def close(self) -> None:
        self.model_pool.shutdown(wait=False, cancel_futures=True)
        self.io_pool.shutdown(wait=False, cancel_futures=True)


# --------------------------------------------------------------------------- the HTTP layer


class _BodyLimit:
    """Refuse request bodies over `limit` bytes: at once from Content-Length, else while reading."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _json_asgi(send, 413, f"the request body is {int(declared):,} bytes, more than this "
                                               f"server's limit of {self.limit:,} (--max-upload-mb)")
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise ApiError(413, f"the request body is more than this server's limit of {self.limit:,} bytes "
                                    f"(--max-upload-mb)")
            return message

        return await self.app(scope, limited, send)


async def _json_asgi(send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _request_schema() -> dict:
    """The two request bodies /search and /encode take, for the OpenAPI page."""
    schema = SearchRequest.model_json_schema()
    form = {"type": "object", "required": ["image"], "properties": {
        "image": {"type": "string", "format": "binary", "description": "An image query (image -> captions by default)."},
        **{k: v for k, v in schema["properties"].items() if k not in ("vector",)}}}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema},
                                                          "multipart/form-data": {"schema": form}}}}


ERRORS = {status: {"model": ErrorBody, "description": text} for status, text in (
    (400, "Bad input: the message names the field and what is wrong"), (404, "No such collection on the cluster"),
    (413, "Upload or decoded image too large"), (415, "Neither JSON nor a multipart form"),
    (502, "The cluster refused the query"), (503, "Cluster unreachable or overloaded (429, 5xx), or too many queries waiting"))}


def create_app(service: SearchService) -> FastAPI:
    """The FastAPI application over `service`; models load (once) when it starts."""
    @asynccontextmanager
    async def lifespan(app):
        await asyncio.get_running_loop().run_in_executor(service.model_pool, service.load_models)
        service.batcher.start()
        try:
            yield
        finally:
            await service.batcher.stop()

    app = FastAPI(title="lsr-os", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Multimodal learned sparse retrieval over OpenSearch or Elasticsearch: text -> images, "
                              "image -> captions, raw sparse vectors. The web page is at `/`.")
    app.state.service = service
    app.add_middleware(_BodyLimit, limit=service.config.max_upload_bytes + FORM_OVERHEAD)

    def error(status: int, message: str):
        return JSONResponse({"error": message}, status_code=status)

    def answer(payload: dict) -> Response:
        # orjson: the standard encoder took a fifth of the event loop's time on 10 hits with their terms
        return Response(orjson.dumps(payload), media_type="application/json")

    @app.exception_handler(ApiError)
    async def api_error(request, exc: ApiError):
        return error(exc.status, str(exc))

    @app.exception_handler(LsrOsError)
    async def library_error(request, exc: LsrOsError):
        return error(400 if isinstance(exc, (DataError, ConfigError)) else 500, str(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        return error(exc.status_code, str(exc.detail))

    async def read_query(request: Request) -> Query:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        image = None
        if kind == "application/json":
            try:
                fields = json.loads(await request.body())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ApiError(400, f"the body is not valid JSON: {exc}") from None
            if not isinstance(fields, dict):
                raise ApiError(400, f"the body must be a JSON object, not {type(fields).__name__}")
        elif kind in ("multipart/form-data", "application/x-www-form-urlencoded"):
            form = await request.form(max_files=1, max_fields=16)
            fields = {}
            for name, value in form.multi_items():
                if isinstance(value, UploadFile):
                    if name != "image":
                        raise ApiError(400, f"unknown file field {name!r}: upload the query image as 'image'")
                    image = await value.read(service.config.max_upload_bytes + 1)
                    if len(image) > service.config.max_upload_bytes:
                        raise ApiError(413, f"image: the upload is more than this server's limit of "
                                            f"{service.config.max_upload_bytes:,} bytes (--max-upload-mb)")
                elif name == "vector":
                    try:
                        fields[name] = json.loads(value)
                    except json.JSONDecodeError as exc:
                        raise ApiError(400, f"vector: not valid JSON: {exc}") from None
                else:
                    fields[name] = value
        else:
            raise ApiError(415, f"send JSON (application/json) or a form (multipart/form-data, with the query image "
                                f"as 'image'), not {kind or 'a body without a content type'}")
        if fields.get("vector") is not None:  # before pydantic, which would take "1.5" or true as a number
            numeric_weights(fields["vector"], "vector")
        try:
            req = SearchRequest.model_validate(fields)
        except ValidationError as exc:
            raise ApiError(400, _validation_message(exc)) from None
        given = [name for name, present in (("text", req.text is not None), ("vector", req.vector is not None),
                                            ("image", image is not None)) if present]
        if len(given) != 1:
            raise ApiError(400, "give exactly one query: text, vector or image" +
                           (f" (got {' and '.join(given)})" if given else ""))
        return Query(req, image)

    async def queried(request: Request, action):
        """`action` on the request's query; from its first byte until it reaches the model (or
        fails), the batcher knows a query is on its way."""
        arrival = service.batcher.arrival()
        try:
            return await action(await read_query(request), arrival)
        finally:
            arrival.close()

    post = {"responses": ERRORS, "openapi_extra": _request_schema()}

    @app.post("/search", response_model=SearchResponse, summary="Search a collection", **post)
    async def search(request: Request):
        """A text query searches the images, an uploaded image the captions (or the `collection` given);
        a text in `mode` inference-free and a `vector` need no model. The response says which mode
        answered; each hit lists its matched terms and their contributions."""
        return answer(await queried(request, service.search))

    @app.post("/encode", response_model=EncodeResponse, summary="A query's sparse vector and search DSL", **post)
    async def encode(request: Request):
        """The sparse query vector and the exact body that /search sends for the same request."""
        return answer(await queried(request, service.encode))

    # /media/, not /images/: a collection's paths often start with images/ (the demo's do), which
    # the route would repeat (/images/images/...)
    @app.get("/media/{path:path}", summary="An image under the image root",
             responses={200: {"content": {"image/*": {}}}, 304: {"description": "Not modified"}, 404: ERRORS[404]})
    async def image(path: str, request: Request):
        """A hit's image (its `image` field), resolved under the server's image root only: paths that leave
        it are 404."""
        full, stat = await service._io(service.image_file, path)
        response = FileResponse(full, stat_result=stat, headers={"Cache-Control": IMAGE_CACHE})
        if request.headers.get("if-none-match") == response.headers["etag"]:
            return Response(status_code=304, headers={"ETag": response.headers["etag"], "Cache-Control": IMAGE_CACHE})
        return response

    @app.get("/healthz", summary="Cluster, collections, models, device")
    async def healthz():
        """200 when the cluster answers, both collections exist and the models are loaded; else 503."""
        report = await service._io(service.health)
        return JSONResponse(report, status_code=200 if report["ok"] else 503)

    static = Path(__file__).parent / "static"
    index_html = (static / "index.html").read_text(encoding="utf-8")  # read once, not on the event loop per request

    @app.get("/", include_in_schema=False)
    async def page():
        return HTMLResponse(index_html, headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=static), name="static")
    swagger = _swagger_assets()
    if swagger is not None:
        app.mount("/docs-assets", StaticFiles(directory=swagger), name="docs-assets")

        @app.get("/docs", include_in_schema=False)
        async def docs():
            return get_swagger_ui_html(openapi_url=app.openapi_url, title="lsr-os API",
                                       swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                       swagger_css_url="/docs-assets/swagger-ui.css",
                                       swagger_favicon_url="/docs-assets/favicon-32x32.png")
    return app


def _swagger_assets() -> Path | None:
    """Swagger UI's files as the swagger-ui-py package ships them, so /docs works offline."""
    spec = find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        log.warning("swagger-ui-py is not installed: no /docs page (the schema is still at /openapi.json)")
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "static"


# --------------------------------------------------------------------------- running it


def listen(host: str, port: int) -> socket.socket:
    """Bind the server's socket first (a taken port fails before any model loads)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on such sockets, and without it a
    # response's body waits ~40 ms for the ACK of its headers (Nagle + delayed ACK)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}"
                          + (" (another server uses it; give --port)" if exc.errno == errno.EADDRINUSE else "")) from None
    sock.listen(2048)
    return sock


def open_service(cluster, config: ServeConfig) -> SearchService:
    """Connect, check the collections (a missing one is logged, not fatal: it may be loaded later)
    and load the models, so every failure a user can fix shows before the server starts."""
    from lsr_os.config import ClusterConfig
    from lsr_os.engines import connect

    engine = connect(cluster) if isinstance(cluster, ClusterConfig) else cluster
    service = SearchService(engine, config)
    for name in COLLECTIONS:
        try:
            service.searcher.require(service.alias(name))
        except ClusterError as exc:
            log.warning("%s", exc)
    if config.head is not None:
        from lsr_os.search import text_field_warnings

        service.text_field_stale = text_field_warnings(engine, service.alias("images"), config.head)
        for line in service.text_field_stale:
            log.warning("%s", line)
    service.model_pool.submit(service.load_models).result()
    return service


def run(service: SearchService, sock: socket.socket, access_log: bool = False) -> None:
    """Serve until interrupted (SIGINT/SIGTERM), on an already bound socket."""
    import uvicorn

    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(create_app(service), host=host, port=port, log_config=None, access_log=access_log,
                            timeout_graceful_shutdown=5)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        service.close()
