"""Where a query's server time goes, on an index `bench/serving.py` built and kept.

Two views, on each index given:

- without profiling (interleaved query by query, `took` of each body): the library's body (hits'
  display fields from `_source`) vs the same query returning ids and scores only (no fetch of
  `_source`), and a query cut to its 16 heaviest terms returning ids only: the differences are
  the fetch phase's cost and the matching's;
- the engine's `profile: true` breakdown (medians): query phase, collectors, fetch. Profiling
  swaps Lucene's bulk scorers for instrumented ones, so its query times are several times the
  unprofiled `took`; its fetch time and the proportions are what it tells.

The engine (OpenSearch or Elasticsearch) is told from the cluster at --url.

    python -m bench.serving_profile --index bench-1000000 --index bench-1000000-novec --name serving_1m_profile
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from bench.harness import md_table, write_results
from bench.serving import interleaved, queries
from lsr_os.config import ClusterConfig, split_urls
from lsr_os.engines import connect
from lsr_os.engines.base.base import Engine
from lsr_os.search import build_query, prepare_query


def unprofiled(engine: Engine, index: str, qs: list, rounds: int) -> dict:
    ops = engine.ops
    bodies = {
        "library body (display fields from _source)": [build_query(ops, prepare_query(v, 1024), 10) for _, v in qs],
        "ids and scores only (no _source fetch)": [build_query(ops, prepare_query(v, 1024), 10, with_source=False)
                                                   for _, v in qs],
        "16 heaviest terms, ids and scores only": [build_query(ops, prepare_query(v, 16), 10, with_source=False)
                                                   for _, v in qs],
    }

    def system(name):
        def call(i):
            t0 = time.perf_counter()
            resp = engine.search(index, bodies[name][i])
            return time.perf_counter() - t0, resp["took"] / 1000
        return call

    systems = {name: system(name) for name in bodies}
    for i in range(min(20, len(qs))):
        for fn in systems.values():
            fn(i)
    return interleaved(systems, len(qs), rounds)


def profiled(engine: Engine, index: str, qs: list) -> dict:
    rows = []
    for _, vector in qs:
        body = build_query(engine.ops, prepare_query(vector, 1024), 10)
        body["profile"] = True
        resp = engine.search(index, body)
        shard = resp["profile"]["shards"][0]
        search = shard["searches"][0]
        fetch = shard.get("fetch", [])
        fetch = fetch if isinstance(fetch, list) else [fetch]
        breakdown = search["query"][0]["breakdown"]
        rows.append({"took_ms": resp["took"], "query_ms": sum(q["time_in_nanos"] for q in search["query"]) / 1e6,
                     "collectors_ms": sum(c["time_in_nanos"] for c in search["collector"]) / 1e6,
                     "fetch_ms": sum(f.get("time_in_nanos", 0) for f in fetch) / 1e6,
                     "rewrite_ms": search["rewrite_time"] / 1e6,
                     "score_ms": breakdown.get("score", 0) / 1e6, "next_doc_ms": breakdown.get("next_doc", 0) / 1e6,
                     "create_weight_ms": breakdown.get("create_weight", 0) / 1e6})
    return {key: statistics.median(r[key] for r in rows) for key in rows[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", action="append", required=True, help="An index or alias (repeatable).")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0, help="The seed bench/serving.py used (queries use seed + 1).")
    ap.add_argument("--url", default=None, help="OpenSearch or Elasticsearch URL [default: OPENSEARCH_URL, "
                                                "ELASTICSEARCH_URL or localhost:9200]")
    ap.add_argument("--name", default="serving_profile")
    args = ap.parse_args()
    url = args.url or os.environ.get("OPENSEARCH_URL") or os.environ.get("ELASTICSEARCH_URL")
    engine = connect(ClusterConfig(urls=split_urls(url), timeout=600))
    qs = queries(args.queries, args.seed + 1)
    load0 = os.getloadavg()
    results = {name: {"unprofiled": unprofiled(engine, name, qs, args.rounds), "profiled": profiled(engine, name, qs[:50])}
               for name in args.index}
    results["engine"] = f"{engine.display_name} {engine.version}"
    results["load_avg_before_after"] = [load0, os.getloadavg()]
    rows = []
    for name in args.index:
        for body, row in results[name]["unprofiled"].items():
            rows.append({"index": name, "body": body, "took p50 ms": row["took"]["p50_ms"],
                         "took mean ms": row["took"]["mean_ms"], "wall p50 ms": row["wall"]["p50_ms"]})
    prows = [{"index": name, **{k: v for k, v in results[name]["profiled"].items()}} for name in args.index]
    summary = (f"{results['engine']}; {args.queries} queries of bench/serving.py (10-80 terms), interleaved, {args.rounds} rounds; load "
               f"average {load0[0]:.1f} before, {os.getloadavg()[0]:.1f} after.\n\n" + md_table(rows, list(rows[0]))
               + "\n\nProfiled (`profile: true`, medians of 50 queries; profiling replaces the bulk scorers, so "
                 "its query times are not the unprofiled ones):\n\n" + md_table(prows, list(prows[0])))
    print(write_results(args.name, {"args": vars(args), **results}, summary))


if __name__ == "__main__":
    main()
