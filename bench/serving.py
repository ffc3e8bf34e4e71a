"""Serving benchmark: OpenSearch rank_features vs exact in-memory scoring of the same queries.

Synthetic sparse collections of a realistic shape (50-300 terms a document, Zipf-like term
use over the 30,522-term vocabulary; queries of 10-80 terms) at the sizes given. For each
size, in one run: bulk-ingest docs/s and the client's peak memory; OpenSearch latency
(p50/p95/p99) and QPS with one client and several; exact scipy-CSR scoring of the same
queries (the baseline); top-10 overlap of the two. Every index is separate and deleted at the
end.

    python -m bench.serving --sizes 10000,100000 --queries 300 --clients 1,4
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import resource
import time
from typing import Iterator

import numpy as np

from bench.harness import md_table, percentiles, write_results
from lsr_os import index as ix
from lsr_os.config import ClusterConfig, connect, split_urls
from lsr_os.evaluate import ExactScorer, parity
from lsr_os.search import build_query, prepare_query
from lsr_os.sparse import RecordStream, SparseRecord
from lsr_os.vocab import Vocabulary

BLOCK = 1000


def zipf_sampler(n_terms: int, seed: int, exponent: float = 1.0, offset: float = 10.0):
    """Term popularity ∝ 1/(rank+offset)^exponent, over a seeded permutation of the vocabulary."""
    rng = np.random.default_rng([seed, 999])
    order = rng.permutation(n_terms)
    p = 1.0 / (np.arange(n_terms) + offset) ** exponent
    return order, np.cumsum(p / p.sum())


def draw_vector(rng, order, cdf, terms, n: int, lo: float, hi: float) -> dict[str, float]:
    """n distinct terms drawn by popularity, weights log-uniform in [lo, hi]."""
    picked: set[int] = set()
    while len(picked) < n:
        picked.update(np.searchsorted(cdf, rng.random(2 * (n - len(picked)))).tolist())
    ids = list(picked)[:n]
    weights = np.exp(rng.uniform(np.log(lo), np.log(hi), n))
    return {terms[order[min(i, len(order) - 1)]]: float(w) for i, w in zip(ids, weights)}


def documents(n_docs: int, terms: list[str], seed: int) -> Iterator[SparseRecord]:
    """The collection, regenerated identically on every call (streams; nothing is kept)."""
    order, cdf = zipf_sampler(len(terms), seed)
    for block in range(0, n_docs, BLOCK):
        rng = np.random.default_rng([seed, block])
        for d in range(block, min(n_docs, block + BLOCK)):
            yield SparseRecord(f"d{d}", draw_vector(rng, order, cdf, terms, int(rng.integers(50, 301)), 0.01, 3.0))


def queries(n: int, terms: list[str], seed: int) -> list[tuple[str, dict[str, float]]]:
    order, cdf = zipf_sampler(len(terms), seed)
    rng = np.random.default_rng([seed, 12345])
    return [(f"q{i}", draw_vector(rng, order, cdf, terms, int(rng.integers(10, 81)), 0.05, 2.5)) for i in range(n)]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cluster_latency(client, index: str, bodies: list[tuple[str, dict]], clients: int) -> dict:
    """Per-query latency (client wall) and QPS with `clients` concurrent searchers."""

    def one(item):
        qid, body = item
        t0 = time.perf_counter()
        resp = client.search(index=index, body=body)
        return qid, time.perf_counter() - t0, resp

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, bodies))
    wall = time.perf_counter() - t0
    run = {qid: {h["_id"]: float(h["_score"]) for h in resp["hits"]["hits"]} for qid, _, resp in results}
    return {"latency": percentiles([s for _, s, _ in results]), "qps": len(bodies) / wall, "run": run,
            "took": percentiles([resp["took"] / 1000 for _, _, resp in results])}


def bench_size(client, n_docs: int, n_queries: int, clients_list: list[int], terms: list[str], seed: int) -> dict:
    alias = f"bench-serving-{n_docs}"
    row: dict = {"docs": n_docs, "queries": n_queries, "loadavg_start": os.getloadavg()}
    try:
        rss0 = peak_rss_mib()
        stream = RecordStream.of(documents(n_docs, terms, seed), f"bench:{n_docs}:{seed}", n_docs)
        report = ix.ingest(client, stream, alias, "images", ix.IngestOptions(fresh=True))
        row.update(ingest_docs_per_s=report.docs_per_s, ingest_s=report.seconds, count=report.count,
                   client_peak_rss_mib=peak_rss_mib(), client_peak_rss_before_mib=rss0)
        client.indices.forcemerge(index=alias, max_num_segments=1, request_timeout=1800)
        qs = queries(n_queries, terms, seed + 1)
        bodies = [(qid, build_query(prepare_query(v, 1024), 10, with_source=False)) for qid, v in qs]
        cluster_latency(client, alias, bodies[: min(50, len(bodies))], 1)  # warm-up
        for c in clients_list:
            res = cluster_latency(client, alias, bodies, c)
            row[f"os_c{c}"] = {"latency": res["latency"], "took": res["took"], "qps": res["qps"]}
            if c == clients_list[0]:
                os_run = res["run"]
        t0 = time.perf_counter()
        scorer = ExactScorer((r.id, r.vector) for r in documents(n_docs, terms, seed))
        row["exact_build_s"] = time.perf_counter() - t0
        scorer.run(qs[:20], 10)  # warm-up
        exact_run, exact_s = scorer.run(qs, 10)
        row["exact"] = {"latency": percentiles(exact_s), "qps": len(qs) / sum(exact_s)}
        row["parity"] = parity(os_run, exact_run, 10)
        row["loadavg_end"] = os.getloadavg()
    finally:
        client.indices.delete(index=f"{alias}*", ignore_unavailable=True, expand_wildcards="all")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000", help="Comma-separated collection sizes.")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--clients", default="1,4", help="Concurrent searchers, comma-separated (first: parity run).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--url", default=None, help="Cluster URL [default: OPENSEARCH_URL or localhost:9200].")
    ap.add_argument("--name", default="serving", help="Results file name under bench/results/.")
    args = ap.parse_args()

    client = connect(ClusterConfig(urls=split_urls(args.url or os.environ.get("OPENSEARCH_URL")), timeout=120))
    terms = Vocabulary.default().terms
    clients_list = [int(c) for c in args.clients.split(",")]
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        row = bench_size(client, n, args.queries, clients_list, terms, args.seed)
        rows.append(row)
        print(row, flush=True)
    table = []
    for r in rows:
        one = r[f"os_c{clients_list[0]}"]
        t = {"docs": r["docs"], "load avg": r["loadavg_start"][0], "ingest docs/s": r["ingest_docs_per_s"], "client peak RSS MiB": r["client_peak_rss_mib"],
             "OS p50 ms": one["latency"]["p50_ms"], "OS p95 ms": one["latency"]["p95_ms"],
             "OS p99 ms": one["latency"]["p99_ms"], "OS QPS (1)": one["qps"],
             "exact p50 ms": r["exact"]["latency"]["p50_ms"], "exact p99 ms": r["exact"]["latency"]["p99_ms"],
             "exact QPS": r["exact"]["qps"], "p50 ratio OS/exact": one["latency"]["p50_ms"] / r["exact"]["latency"]["p50_ms"],
             "top-10 overlap": r["parity"]["top10_overlap"]}
        for c in clients_list[1:]:
            t[f"OS QPS ({c})"] = r[f"os_c{c}"]["qps"]
            t[f"OS p50 ms ({c})"] = r[f"os_c{c}"]["latency"]["p50_ms"]
        table.append(t)
    columns = list(table[0]) if table else []
    summary = (f"One local OpenSearch node (1 GiB heap) and the client on the same machine. {args.queries} queries "
               f"(10-80 terms) per size, docs of 50-300 terms, Zipf-like term use over {len(terms)} terms. "
               "OS latency is client wall time per search (one index, 1 shard, force-merged to 1 segment); "
               "exact is single-threaded scipy CSR scoring of the same queries over 9-bit weights. "
               "The machine is shared: see each row's loadavg in the JSON.\n\n"
               + md_table(table, columns))
    path = write_results(args.name, {"rows": rows, "args": vars(args)}, summary)
    print(f"results: {path}")


if __name__ == "__main__":
    main()
