"""Serving benchmark: the query path and the ingest path against their raw baselines, and query
settings against exact scoring, on a synthetic collection of up to 1,000,000 documents.

One size per run (documents of 50-300 terms with Zipf-like term use over the 30,522-term
vocabulary; queries of 10-80 terms), everything compared in the same run, interleaved query by
query (the order of the systems rotates) over several rounds:

- query overhead: the raw `search` of a body through the engine's own client (opensearch-py's
  or elasticsearch-py's) vs the library building and sending that same body (`Searcher.search`,
  what `lsr-os serve` calls; `run_search`, what the CLI calls), the server's `took`, and exact
  scipy-CSR scoring (`ExactScorer`) of the same queries;
- the CLI as a process (`lsr-os search --vector-json`) vs a bare Python process that imports
  the engine's client and sends the same request, plus the CLI's import profile (`-X importtime`);
- ingest: `lsr-os ingest --sparse` (a process reading JSONL) vs the best of several raw
  `helpers.parallel_bulk`/`streaming_bulk` loads (the engine's client's helpers) of the same
  prepared documents into the same mapping and load settings, on a slice of the collection,
  alternating;
- query settings (two-phase search, query pruning) on the served index, document pruning
  (`--top-k`, `--threshold`) on extra indices, shards (1 vs 2, by `_split`), and the vector
  left out of `_source` (size and speed): server took p50/p90 and top-10 overlap with exact
  scoring of the full query over the unpruned documents.

Indices are kept and reused across runs (`bench-<docs>...`; --drop removes them at the end):
the 1M collection is loaded once. The load average is sampled through the run. The engine
(OpenSearch or Elasticsearch) is told from the cluster at --url.

    python -m bench.serving --docs 100000 --name serving_100k
    python -m bench.serving --docs 1000000 --doc-pruning "" --name serving_1m
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from importlib import import_module
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import scipy.sparse as sp

from bench.harness import RESULTS, md_table, percentiles, write_results
from lsr_os import index as ix
from lsr_os.config import ClusterConfig, split_urls
from lsr_os.engines import connect
from lsr_os.engines.base.base import Engine
from lsr_os.evaluate import ExactScorer, parity, tie_aware_overlap
from lsr_os.search import Searcher, build_query, prepare_query, run_search
from lsr_os.sparse import RecordStream, SparseRecord, quantize, write_jsonl
from lsr_os.vocab import Vocabulary

ROOT = Path(__file__).resolve().parents[1]
BLOCK = 1000
K = 10


# --------------------------------------------------------------------------- the synthetic collection


def zipf_sampler(n_terms: int, seed: int, exponent: float = 1.0, offset: float = 10.0):
    """Term popularity ∝ 1/(rank+offset)^exponent, over a seeded permutation of the vocabulary."""
    rng = np.random.default_rng([seed, 999])
    order = rng.permutation(n_terms)
    p = 1.0 / (np.arange(n_terms) + offset) ** exponent
    return order, np.cumsum(p / p.sum())


def draw_ids(rng, order, cdf, n: int, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """n distinct term ids drawn by popularity, weights log-uniform in [lo, hi]."""
    picked: set[int] = set()
    while len(picked) < n:
        picked.update(np.searchsorted(cdf, rng.random(2 * (n - len(picked)))).tolist())
    ranks = np.minimum(np.fromiter(picked, np.int64, len(picked))[:n], len(order) - 1)
    return order[ranks], np.exp(rng.uniform(np.log(lo), np.log(hi), n))


def doc_blocks(n_docs: int, seed: int) -> Iterator[list[tuple[np.ndarray, np.ndarray]]]:
    """The collection as blocks of (term ids, weights), regenerated identically on every call."""
    order, cdf = zipf_sampler(len(Vocabulary.default()), seed)
    for block in range(0, n_docs, BLOCK):
        rng = np.random.default_rng([seed, block])
        yield [draw_ids(rng, order, cdf, int(rng.integers(50, 301)), 0.01, 3.0)
               for _ in range(block, min(n_docs, block + BLOCK))]


def documents(n_docs: int, seed: int) -> Iterator[SparseRecord]:
    """The collection's records (streamed; nothing is kept)."""
    terms = np.asarray(Vocabulary.default().terms, dtype=object)
    d = 0
    for block in doc_blocks(n_docs, seed):
        for ids, weights in block:
            yield SparseRecord(f"d{d}", dict(zip(terms[ids].tolist(), weights.tolist())))
            d += 1


def queries(n: int, seed: int) -> list[tuple[str, dict[str, float]]]:
    terms = Vocabulary.default().terms
    order, cdf = zipf_sampler(len(terms), seed)
    rng = np.random.default_rng([seed, 12345])
    out = []
    for i in range(n):
        ids, weights = draw_ids(rng, order, cdf, int(rng.integers(10, 81)), 0.05, 2.5)
        out.append((f"q{i}", {terms[t]: float(w) for t, w in zip(ids, weights)}))
    return out


class BlockScorer(ExactScorer):
    """`ExactScorer` built straight from the generator's id arrays (int32, no per-term Python
    work), so 1M documents x 175 terms fit in a few GiB; scoring is ExactScorer's own."""

    def __init__(self, n_docs: int, seed: int):
        terms = Vocabulary.default().terms
        indptr, cols, vals = [0], [], []
        for block in doc_blocks(n_docs, seed):
            for ids, weights in block:
                cols.append(ids.astype(np.int32))
                vals.append(weights.astype(np.float32))
                indptr.append(indptr[-1] + len(ids))
        docs = sp.csr_matrix((quantize(np.concatenate(vals)), np.concatenate(cols), np.asarray(indptr, np.int64)),
                             shape=(n_docs, len(terms)))
        self.ids = [f"d{d}" for d in range(n_docs)]
        self.term_ids = {t: i for i, t in enumerate(terms)}
        self.matrix = docs.T.tocsr()

    def index_of(self, doc_id: str) -> int:
        return int(doc_id[1:])


# --------------------------------------------------------------------------- measuring


class LoadSampler:
    """The 1-minute load average, sampled every few seconds in the background."""

    def __init__(self, every_s: float = 5.0):
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every_s,), daemon=True)
        self._thread.start()

    def _run(self, every_s: float) -> None:
        while not self._stop.wait(0 if not self.samples else every_s):
            self.samples.append((time.time(), os.getloadavg()[0]))

    def between(self, t0: float, t1: float) -> dict:
        xs = [v for t, v in self.samples if t0 <= t <= t1] or [os.getloadavg()[0]]
        return {"min": min(xs), "mean": round(statistics.fmean(xs), 2), "max": max(xs), "n": len(xs)}

    def stop(self) -> None:
        self._stop.set()


def phase(sampler: LoadSampler, fn: Callable[[], dict]) -> dict:
    """Run one part of the bench; its result gets the wall time and load average it ran under."""
    t0 = time.time()
    out = fn()
    out["phase"] = {"seconds": round(time.time() - t0, 1), "load_avg_1m": sampler.between(t0, time.time())}
    print(json.dumps(out, default=str), flush=True)
    return out


def interleaved(systems: dict[str, Callable[[int], float | tuple[float, float]]], n: int, rounds: int) -> dict:
    """Call every system once per item, the systems' order rotating, for `rounds` rounds; each call
    returns seconds (or (seconds, server seconds)). Returns per-system latency summaries."""
    names = list(systems)
    wall: dict[str, list[float]] = {s: [] for s in names}
    took: dict[str, list[float]] = {s: [] for s in names}
    for r in range(rounds):
        for i in range(n):
            shift = (i + r) % len(names)
            for name in names[shift:] + names[:shift]:
                got = systems[name](i)
                if isinstance(got, tuple):
                    wall[name].append(got[0])
                    took[name].append(got[1])
                else:
                    wall[name].append(got)
    return {s: {"wall": percentiles(wall[s]), **({"took": percentiles(took[s])} if took[s] else {})} for s in names}


# --------------------------------------------------------------------------- indices


def ensure_index(engine: Engine, alias: str, n_docs: int, seed: int, sampler: LoadSampler, merge: bool = True,
                 **options) -> dict:
    """The bench index `alias` (loaded by `ix.ingest`, force-merged unless `merge` is off), reused
    when it already serves the same collection; returns what the load did (or that it was reused)."""
    key = options if merge else {**options, "merge": False}
    source = f"bench:{n_docs}:{seed}:{json.dumps(key, sort_keys=True)}"
    if ix.serving_source(engine, alias) == source and engine.count(alias) > 0:
        return {"alias": alias, "reused": True, **index_stats(engine, alias)}

    def load() -> dict:
        stream = RecordStream.of(documents(n_docs, seed), source, n_docs)
        report = ix.ingest(engine, stream, alias, "images", ix.IngestOptions(force_merge=merge, progress=False,
                                                                             **options),
                           failures_path=Path(tempfile.gettempdir()) / f"{alias}-failures.jsonl")
        if report.not_swapped or report.failed:
            raise RuntimeError(f"bench load of {alias} failed: {report.to_dict()}")
        return {"alias": alias, "reused": False, "report": report.to_dict(), **index_stats(engine, alias)}

    return phase(sampler, load)


def index_stats(engine: Engine, name: str) -> dict:
    """Documents, segments and store bytes of an index."""
    stats = engine.stats(name, metric="docs,store,segments")["_all"]["primaries"]
    return {"docs": stats["docs"]["count"], "store_bytes": stats["store"]["size_in_bytes"],
            "segments": stats["segments"]["count"]}


def split_index(engine: Engine, alias: str, shards: int, sampler: LoadSampler) -> str:
    """A copy of `alias`'s index with `shards` primaries (`_split`), force-merged; reused."""
    target = f"{alias}-{shards}sh"
    if engine.exists(target):
        return target

    def split() -> dict:
        (source,) = engine.alias_targets(alias)
        engine.put_index_settings(source, {"index.blocks.write": True})
        try:
            with engine.errors():  # the one call lsr-os itself never makes: the same on both clients
                engine.client.indices.split(index=source, target=target, body={"settings": {
                    "index.number_of_shards": shards, "index.number_of_replicas": 0, "index.blocks.write": None}})
            engine.health(target, wait_for_status="green", wait_s=3600)
            engine.force_merge(target, 1, timeout=ix.MERGE_TIMEOUT_S)
        finally:
            engine.put_index_settings(source, {"index.blocks.write": None})
        return {"split": target, **index_stats(engine, target)}

    phase(sampler, split)
    return target


# --------------------------------------------------------------------------- the parts of the bench


def query_overhead(engine: Engine, index: str, qs: list, scorer: ExactScorer, rounds: int) -> dict:
    """The engine's own client's search vs Searcher.search vs run_search (same body), server took,
    exact CSR."""
    searcher = Searcher(engine)
    searcher.clause_cap  # read once, as a serving process does before its first query
    vjson = [json.dumps(v) for _, v in qs]
    bodies = [searcher.search(index, v, K).dsl for _, v in qs]  # exactly what the library sends

    def raw(i):
        t0 = time.perf_counter()
        resp = engine.client.search(index=index, body=bodies[i])
        return time.perf_counter() - t0, resp["took"] / 1000

    def library(i):
        t0 = time.perf_counter()
        searcher.search(index, qs[i][1], K)
        return time.perf_counter() - t0

    def cli_call(i):
        t0 = time.perf_counter()
        run_search(engine, vector_json=vjson[i], index=index, k=K)
        return time.perf_counter() - t0

    def exact(i):
        t0 = time.perf_counter()
        scorer.topk(qs[i][1], K)
        return time.perf_counter() - t0

    systems = {"raw client.search": raw, "Searcher.search": library, "run_search": cli_call, "exact CSR": exact}
    for i in range(min(30, len(qs))):  # warm-up: caches, JIT, connections
        for fn in systems.values():
            fn(i)
    out = interleaved(systems, len(qs), rounds)
    base = out["raw client.search"]["wall"]["p50_ms"]
    ratios = {name: out[name]["wall"]["p50_ms"] / base for name in ("Searcher.search", "run_search", "exact CSR")}
    return {"systems": out, "p50_ratio_to_raw": ratios}


BARE = """import json, sys
from {package} import {client} as Client
body = json.load(open(sys.argv[1]))
resp = Client([sys.argv[2]]).search(index=sys.argv[3], body=body)
print(json.dumps([h["_id"] for h in resp["hits"]["hits"]]))
"""


def client_package(engine: Engine) -> str:
    """The package of the engine's own client (opensearchpy, elasticsearch)."""
    return type(engine.client).__module__.split(".")[0]


def cli_process(engine: Engine, index: str, qs: list, n: int, rounds: int, workdir: Path) -> dict:
    """`lsr-os search --vector-json FILE --json` as a process vs a bare process of the engine's own
    client sending the body the CLI sends; interleaved; plus the CLI's slowest imports."""
    url = engine.config.urls[0]
    searcher = Searcher(engine)
    bare = BARE.format(package=client_package(engine), client=type(engine.client).__name__)
    files = []
    for qid, vector in qs[:n]:
        vec, body = workdir / f"{qid}.json", workdir / f"{qid}.body.json"
        vec.write_text(json.dumps(vector))
        body.write_text(json.dumps(searcher.search(index, vector, K).dsl))
        files.append((vec, body))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def run(cmd):
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
        if done.returncode != 0:
            raise RuntimeError(f"{cmd[:4]} failed: {done.stderr[-500:]}")
        return time.perf_counter() - t0

    cli = [sys.executable, str(ROOT / "cli.py"), "search", "--url", url, "--index", index, "--json", "--vector-json"]
    systems = {"bare client process": lambda i: run([sys.executable, "-c", bare, str(files[i][1]), url, index]),
               "lsr-os search --vector-json": lambda i: run(cli + [str(files[i][0])])}
    out = interleaved(systems, len(files), rounds)
    ratio = out["lsr-os search --vector-json"]["wall"]["p50_ms"] / out["bare client process"]["wall"]["p50_ms"]
    prof = subprocess.run([sys.executable, "-X", "importtime", *cli[1:], str(files[0][0])], capture_output=True,
                          text=True, env=env, cwd=ROOT)
    imports = []
    for line in prof.stderr.splitlines():
        if line.startswith("import time:") and "|" in line and "cumulative" not in line:
            _, cum, name = line[len("import time:"):].split("|")
            if len(name) - len(name.lstrip()) == 1:  # a top-level import (nested ones are indented)
                imports.append((name.strip(), int(cum) / 1000))
    top = sorted(imports, key=lambda x: -x[1])[:12]
    return {"systems": out, "p50_ratio": ratio, "top_level_imports_ms": top,
            "total_import_ms": round(sum(ms for _, ms in imports), 1), "client": client_package(engine)}


def orjson_serializer(engine: Engine) -> Any:
    """The engine's client's JSON serializer with orjson's dumps (a raw load's best client setting)."""
    import orjson

    if client_package(engine) == "elasticsearch":
        from elasticsearch.serializer import OrjsonSerializer

        return OrjsonSerializer()  # elasticsearch-py ships one
    from opensearchpy.serializer import JSONSerializer

    class Serializer(JSONSerializer):
        def dumps(self, data):
            return data if isinstance(data, str) else orjson.dumps(data).decode()

    return Serializer()


# The raw loads' client options, as each client names them: a 300 s timeout, 16 pooled connections.
RAW_CLIENT_OPTIONS = {"opensearchpy": {"timeout": 300, "pool_maxsize": 16},
                      "elasticsearch": {"request_timeout": 300, "connections_per_node": 16}}


def ingest_ratio(engine: Engine, n_docs: int, seed: int, slice_docs: int, rounds: int, workdir: Path) -> dict:
    """`lsr-os ingest --sparse` (a process) vs raw helpers loads of the same prepared documents,
    through the engine's own client and its helpers."""
    url = engine.config.urls[0]
    package = client_package(engine)
    helpers = import_module(f"{package}.helpers")
    records = list(documents(min(n_docs, slice_docs), seed))
    path = workdir / "slice.jsonl"
    write_jsonl(path, records)
    prepared = [(r.id, ix.to_document(r, escape_names=engine.features.escapes_feature_names)) for r in records]
    del records
    options = RAW_CLIENT_OPTIONS[package]
    clients = {"json": type(engine.client)([url], **options),
               "orjson": type(engine.client)([url], **options, serializer=orjson_serializer(engine))}
    target = "bench-ingest-raw"

    def raw(kind: str, chunk: int, threads: int, serializer: str) -> float:
        client = clients[serializer]
        engine.delete_indices(target, missing_ok=True)
        body = engine.ops.collection_body(ix.load_mapping("images"))
        body["settings"]["index"].update({**ix.LOAD_SETTINGS, "number_of_replicas": 0})
        actions = ({"_index": target, "_id": i, "_source": d} for i, d in prepared)
        t0 = time.perf_counter()  # from creating the index to a refreshed count, as lsr-os does
        client.indices.create(index=target, body=body)
        if kind == "parallel_bulk":
            results = helpers.parallel_bulk(client, actions, thread_count=threads, chunk_size=chunk,
                                            queue_size=threads)
        else:
            results = helpers.streaming_bulk(client, actions, chunk_size=chunk)
        ok = sum(1 for good, _ in results if good)
        client.indices.refresh(index=target)
        seconds = time.perf_counter() - t0
        if ok != len(prepared) or client.count(index=target)["count"] != len(prepared):
            raise RuntimeError("raw load lost documents")
        return len(prepared) / seconds

    def ours(concurrency: int, chunk: int) -> float:
        engine.delete_indices("bench-ingest-lsr*", missing_ok=True)
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, str(ROOT / "cli.py"), "ingest", "--url", url, "--sparse", str(path),
                               "--collection", "images", "--index", "bench-ingest-lsr", "--fresh", "--json",
                               "--concurrency", str(concurrency), "--chunk-docs", str(chunk),
                               "--failures", str(workdir / "failures.jsonl")],
                              capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
        seconds = time.perf_counter() - t0
        if done.returncode != 0:
            raise RuntimeError(f"lsr-os ingest failed: {done.stderr[-800:]}")
        if json.loads(done.stdout)["count"] != len(prepared):
            raise RuntimeError("lsr-os ingest lost documents")
        return len(prepared) / seconds

    raw_configs = {f"{k} chunk {c} x{t} {s}": (k, c, t, s) for k, c, t, s in [
        ("streaming_bulk", 500, 1, "json"), ("streaming_bulk", 500, 1, "orjson"),
        ("parallel_bulk", 500, 2, "json"), ("parallel_bulk", 500, 2, "orjson"),
        ("parallel_bulk", 500, 4, "orjson"), ("parallel_bulk", 1000, 2, "orjson"),
        ("parallel_bulk", 1000, 4, "orjson")]}
    our_configs = {f"lsr-os --concurrency {c} --chunk-docs {n}": (c, n) for c, n in [(2, 500), (4, 500), (2, 1000),
                                                                                     (4, 1000)]}
    sweep = {}
    for name, cfg in raw_configs.items():
        sweep[name] = raw(*cfg)
    for name, cfg in our_configs.items():
        sweep[name] = ours(*cfg)
    best_raw = max(raw_configs, key=lambda n: sweep[n])
    default = f"lsr-os --concurrency {ix.IngestOptions.concurrency} --chunk-docs {ix.IngestOptions.chunk_docs}"
    rates: dict[str, list[float]] = {best_raw: [], default: []}
    for r in range(rounds):
        for name in ([best_raw, default] if r % 2 == 0 else [default, best_raw]):
            rates[name].append(raw(*raw_configs[name]) if name == best_raw else ours(*our_configs[name]))
    engine.delete_indices([target, "bench-ingest-lsr*"], missing_ok=True)
    for client in clients.values():
        client.close()
    med = {name: statistics.median(v) for name, v in rates.items()}
    return {"docs": len(prepared), "sweep_docs_per_s": sweep, "best_raw": best_raw, "lsr_os": default,
            "rounds_docs_per_s": rates, "median_docs_per_s": med, "ratio": med[default] / med[best_raw]}


def settings_table(engine: Engine, index: str, qs: list, exact_run: dict, settings: dict[str, dict], rounds: int,
                   cap: int, scorer: ExactScorer) -> dict:
    """Server took and client wall per query setting (interleaved), and top-10 overlap with the
    exact run of the full queries. Bodies as the library sends them (the hits' display fields)."""
    bodies = {name: [build_query(engine.ops, prepare_query(v, opts.get("max_terms", cap)), K,
                                 first_terms=opts.get("first_terms"), window=opts.get("window", 100))
                     for _, v in qs] for name, opts in settings.items()}
    runs: dict[str, dict] = {name: {} for name in settings}

    def system(name):
        def call(i):
            t0 = time.perf_counter()
            resp = engine.search(index, bodies[name][i])
            wall = time.perf_counter() - t0
            runs[name][qs[i][0]] = {h["_id"]: h["_score"] for h in resp["hits"]["hits"]}
            return wall, resp["took"] / 1000
        return call

    systems = {name: system(name) for name in settings}
    for i in range(min(20, len(qs))):
        for fn in systems.values():
            fn(i)
    out = interleaved(systems, len(qs), rounds)
    full = out[next(iter(settings))]["took"]
    prepared = {qid: prepare_query(v, cap) for qid, v in qs}
    for name in settings:
        out[name]["parity"] = parity(runs[name], exact_run, K)
        out[name]["parity"]["top10_overlap_ties"] = tie_aware_overlap(runs[name], exact_run, scorer, prepared, K)
        out[name]["took_p50_ratio"] = out[name]["took"]["p50_ms"] / full["p50_ms"] if full["p50_ms"] else None
        out[name]["took_mean_ratio"] = out[name]["took"]["mean_ms"] / full["mean_ms"] if full["mean_ms"] else None
    return out


# --------------------------------------------------------------------------- the run


QUERY_SETTINGS = {
    "full query": {},
    "max-terms 32": {"max_terms": 32},
    "max-terms 24": {"max_terms": 24},
    "max-terms 16": {"max_terms": 16},
    "first-terms 8, window 400": {"first_terms": 8, "window": 400},
    "first-terms 16, window 100": {"first_terms": 16, "window": 100},
    "first-terms 16, window 400": {"first_terms": 16, "window": 400},
    "first-terms 16, window 1000": {"first_terms": 16, "window": 1000},
    "first-terms 24, window 400": {"first_terms": 24, "window": 400},
    "first-terms 24, window 1000": {"first_terms": 24, "window": 1000},
}


def parse_doc_pruning(spec: str) -> dict[str, dict]:
    """"top_k=128,threshold=0.05" -> {"top-k 128": {"top_k": 128}, "threshold 0.05": {...}}."""
    out = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        key, value = part.split("=")
        out[f"{key.replace('_', '-')} {value}"] = {key: int(value) if key == "top_k" else float(value)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=100_000, help="Collection size.")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3, help="Rounds of the interleaved query comparisons.")
    ap.add_argument("--settings-rounds", type=int, default=2, help="Rounds of the settings tables.")
    ap.add_argument("--cli-queries", type=int, default=20, help="Queries run as CLI and bare processes (per round).")
    ap.add_argument("--ingest-docs", type=int, default=100_000, help="Slice loaded by the ingest comparison (0: skip).")
    ap.add_argument("--ingest-rounds", type=int, default=3)
    ap.add_argument("--doc-pruning", default="top_k=128,top_k=64,threshold=0.05",
                    help="Document pruning indices to build and compare (empty: none).")
    ap.add_argument("--shards", type=int, default=2, help="Also compare an index split to this many shards (1: no).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--url", default=None, help="Cluster URL, OpenSearch or Elasticsearch (told from its answer) "
                                                "[default: OPENSEARCH_URL, ELASTICSEARCH_URL or localhost:9200].")
    ap.add_argument("--force-merge", action=argparse.BooleanOptionalAction, default=True,
                    help="Force-merge the bench indices after loading (off: a quick check that the bench runs).")
    ap.add_argument("--name", default="serving", help="Results file name.")
    ap.add_argument("--out", default=str(RESULTS), help="Results folder [default: bench/results].")
    ap.add_argument("--drop", action="store_true", help="Delete the bench indices at the end.")
    args = ap.parse_args()

    url = split_urls(args.url or os.environ.get("OPENSEARCH_URL") or os.environ.get("ELASTICSEARCH_URL"))[0]
    engine = connect(ClusterConfig(urls=(url,), timeout=600))
    sampler = LoadSampler()
    t_start = time.time()
    n, seed = args.docs, args.seed
    results: dict = {"docs": n, "args": vars(args), "node": node_facts(engine)}
    alias = f"bench-{n}"
    merge = args.force_merge
    results["index"] = ensure_index(engine, alias, n, seed, sampler, merge, shards=1)
    results["index_novec"] = ensure_index(engine, f"{alias}-novec", n, seed, sampler, merge, shards=1,
                                          exclude_vectors=True)
    qs = queries(args.queries, seed + 1)

    t0 = time.perf_counter()
    scorer = BlockScorer(n, seed)
    results["exact_build_s"] = time.perf_counter() - t0
    cap = Searcher(engine).clause_cap
    exact_run, _ = scorer.run([(q, prepare_query(v, cap)) for q, v in qs], K)

    results["query_overhead"] = phase(sampler, lambda: query_overhead(engine, alias, qs, scorer, args.rounds))
    with tempfile.TemporaryDirectory() as tmp:
        results["cli_process"] = phase(sampler, lambda: cli_process(engine, alias, qs, args.cli_queries, args.rounds,
                                                                    Path(tmp)))
    results["query_settings"] = phase(sampler, lambda: settings_table(engine, alias, qs, exact_run, QUERY_SETTINGS,
                                                                      args.settings_rounds, cap, scorer))
    # Index variants, each with the full query and the best query setting that keeps overlap >= 0.99:
    best = best_setting(results["query_settings"])
    variants = {"1 shard, vector in _source": alias, "1 shard, vector left out of _source": f"{alias}-novec"}
    if args.shards > 1:
        variants[f"{args.shards} shards (split), vector in _source"] = split_index(engine, alias, args.shards, sampler)
    for label, options in parse_doc_pruning(args.doc_pruning).items():
        info = ensure_index(engine, f"{alias}-{label.replace(' ', '')}", n, seed, sampler, merge, shards=1,
                            **options)
        variants[f"1 shard, documents pruned: {label}"] = info["alias"]
    results["variants"] = {}
    for label, index in variants.items():
        settings = {"full query": {}, best: QUERY_SETTINGS[best]} if best != "full query" else {"full query": {}}
        row = phase(sampler, lambda: settings_table(engine, index, qs, exact_run, settings, args.settings_rounds, cap,
                                                    scorer))
        results["variants"][label] = {"index": index, **index_stats(engine, index), "settings": row}
    if args.ingest_docs:
        with tempfile.TemporaryDirectory() as tmp:
            results["ingest"] = phase(sampler, lambda: ingest_ratio(engine, n, seed, args.ingest_docs, args.ingest_rounds,
                                                                     Path(tmp)))
    sampler.stop()
    results["load_avg_1m_whole_run"] = sampler.between(t_start, time.time())
    if args.drop:
        engine.delete_indices(f"{alias}*", missing_ok=True)
    path = write_results(args.name, results, summary(results, best), Path(args.out))
    print(f"results: {path}")


def node_facts(engine: Engine) -> dict:
    """Engine, version, nodes, heaps and processors of the cluster (not from `GET /`, which
    Elasticsearch's test distribution refuses)."""
    with engine.errors():
        nodes = engine.client.nodes.info(metric="jvm,os")["nodes"]
    return {"engine": engine.display_name, "version": engine.version, "nodes": len(nodes),
            "heap_max_bytes": [n["jvm"]["mem"]["heap_max_in_bytes"] for n in nodes.values()],
            "processors": [n["os"].get("allocated_processors") for n in nodes.values()]}


def best_setting(table: dict) -> str:
    """The query setting with the lowest server p50 (then mean) whose tie-aware top-10 overlap
    is >= 0.99 (the full query when none is)."""
    good = [name for name, row in table.items()
            if name in QUERY_SETTINGS and row["parity"]["top10_overlap_ties"] >= 0.99] or ["full query"]
    return min(good, key=lambda name: (table[name]["took"]["p50_ms"], table[name]["took"]["mean_ms"]))


def summary(r: dict, best: str) -> str:
    """The markdown tables of one run."""
    n = r["docs"]
    qo, cp = r["query_overhead"], r["cli_process"]
    lines = [f"{n:,} synthetic documents (50-300 terms, Zipf-like term use over 30,522 terms), {r['args']['queries']} "
             f"queries of 10-80 terms; one local {r['node']['engine']} {r['node']['version']} node "
             f"({r['node']['heap_max_bytes'][0] / 2**30:.0f} GiB heap) and the client on the same 2 cores. "
             f"Compared systems are interleaved query by query ({r['args']['rounds']} rounds; settings tables "
             f"{r['args']['settings_rounds']}). Load average (1 min) over the whole run: "
             f"{r['load_avg_1m_whole_run']['min']:.1f}-{r['load_avg_1m_whole_run']['max']:.1f} "
             f"(mean {r['load_avg_1m_whole_run']['mean']:.1f}); each part's is in the JSON.", ""]
    rows = []
    for name, row in qo["systems"].items():
        rows.append({"path": name, "p50 ms": row["wall"]["p50_ms"], "p90 ms": row["wall"]["p90_ms"],
                     "p50 / raw": row["wall"]["p50_ms"] / qo["systems"]["raw client.search"]["wall"]["p50_ms"]})
    took = qo["systems"]["raw client.search"]["took"]
    rows.insert(1, {"path": "server took (of the raw search)", "p50 ms": took["p50_ms"], "p90 ms": took["p90_ms"]})
    for name, row in cp["systems"].items():
        rows.append({"path": f"{name} (as a process)", "p50 ms": row["wall"]["p50_ms"], "p90 ms": row["wall"]["p90_ms"],
                     "p50 / raw": ""})
    lines += ["### Query path (load avg %.1f)" % qo["phase"]["load_avg_1m"]["mean"], "",
              md_table(rows, ["path", "p50 ms", "p90 ms", "p50 / raw"]), "",
              f"Goals: library p50 <= 1.1x raw: Searcher.search {qo['p50_ratio_to_raw']['Searcher.search']:.3f}x, "
              f"run_search {qo['p50_ratio_to_raw']['run_search']:.3f}x; CLI process <= 2x a bare {cp['client']} "
              f"process: {cp['p50_ratio']:.2f}x. The CLI's imports ({cp['total_import_ms']:.0f} ms in all): "
              + ", ".join(f"{name} {ms:.0f} ms" for name, ms in cp["top_level_imports_ms"][:6]) + ".", ""]
    rows = []
    for name, row in r["query_settings"].items():
        if name == "phase":
            continue
        rows.append({"setting": name, "took p50 ms": row["took"]["p50_ms"], "took p90 ms": row["took"]["p90_ms"],
                     "took mean ms": row["took"]["mean_ms"], "p50 / full": row["took_p50_ratio"],
                     "mean / full": row["took_mean_ratio"], "wall p50 ms": row["wall"]["p50_ms"],
                     "top-10 overlap": row["parity"]["top10_overlap"],
                     "overlap, ties counted": row["parity"]["top10_overlap_ties"]})
    lines += ["### Query settings vs exact scoring (load avg %.1f)" % r["query_settings"]["phase"]["load_avg_1m"]["mean"], "",
              md_table(rows, list(rows[0])), "",
              "Overlap: the share of the exact top 10 (full query, unpruned documents) in the setting's top 10; "
              "ties counted: the share of the setting's top 10 whose exact score reaches the exact 10th score "
              "(documents tied at rank 10 are equally right; with 9-bit weights exact ties are common, and the "
              "engine and the exact scorer break them by different document orders). Server took is whole "
              "milliseconds, so the mean is given too.", "",
              f"Fastest setting with a tie-counted top-10 overlap >= 0.99: **{best}**.", ""]
    rows = []
    for label, v in r["variants"].items():
        for name, row in v["settings"].items():
            if name == "phase":
                continue
            rows.append({"index": label, "query": name, "store MiB": v["store_bytes"] / 2**20,
                         "took p50 ms": row["took"]["p50_ms"], "took p90 ms": row["took"]["p90_ms"],
                         "wall p50 ms": row["wall"]["p50_ms"], "top-10 overlap": row["parity"]["top10_overlap"],
                         "overlap, ties counted": row["parity"]["top10_overlap_ties"]})
    lines += ["### Index variants (each compared within its own interleaved run)", "",
              md_table(rows, list(rows[0])), ""]
    if "ingest" in r:
        g = r["ingest"]
        rows = [{"load": name, "docs/s": rate} for name, rate in sorted(g["sweep_docs_per_s"].items(), key=lambda x: -x[1])]
        lines += [f"### Ingest ({g['docs']:,} documents; load avg {g['phase']['load_avg_1m']['mean']:.1f})", "",
                  f"Alternating rounds, medians: `{g['lsr_os']}` (a process reading sparse JSONL) "
                  f"{g['median_docs_per_s'][g['lsr_os']]:,.0f} docs/s vs the best raw load, `{g['best_raw']}` "
                  f"(prepared documents in memory) {g['median_docs_per_s'][g['best_raw']]:,.0f} docs/s: "
                  f"**{g['ratio']:.2f}x**. The one-pass sweep that chose the best raw load:", "",
                  md_table(rows, ["load", "docs/s"]), ""]
    idx = r["index"]
    if not idx.get("reused"):
        rep = idx["report"]
        lines += [f"The served index was loaded by `ix.ingest` at {rep['docs_per_s']:,.0f} docs/s "
                  f"({rep['seconds']:.0f} s, documents generated in the same process), force-merged in "
                  f"{rep['merge_seconds']:.0f} s."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
