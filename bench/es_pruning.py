"""Elasticsearch's query pruning (`sparse_vector` with `prune` and `pruning_config`) against exact
scoring, on a synthetic collection built as bench/serving.py builds it.

Pruning drops the query tokens that are frequent in the index (`tokens_freq_ratio_threshold`
times the field's average document frequency) and light in the query (below
`tokens_weight_threshold` times the heaviest query weight), so it changes results; lsr-os
scores exactly (`prune: false`) and offers pruning to no user until this says what it costs.
Every query runs exactly (the baseline), pruned with several configurations, and pruned with
Elasticsearch's rescore of the pruned tokens (`only_score_pruned_tokens`) over the top window,
interleaved query by query over several rounds. Reported: server `took` and client wall time,
and the top-10 overlap with exact in-memory scoring of the full query (ties counted as in
bench/serving.py). The index is kept and reused across runs (--drop removes it).

    python -m bench.es_pruning --docs 100000 --name es_pruning_100k
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from pathlib import Path

from bench.harness import RESULTS, md_table, write_results
from bench.serving import K, BlockScorer, LoadSampler, ensure_index, interleaved, node_facts, phase, queries
from lsr_os.config import ClusterConfig, split_urls
from lsr_os.engines import connect
from lsr_os.engines.base.base import Engine
from lsr_os.evaluate import parity, tie_aware_overlap
from lsr_os.search import build_query, prepare_query

# Elasticsearch's defaults are 5 and 0.4; the others bracket them.
PRUNING = {
    "pruned, default (5, 0.4)": {"tokens_freq_ratio_threshold": 5, "tokens_weight_threshold": 0.4},
    "pruned (10, 0.4)": {"tokens_freq_ratio_threshold": 10, "tokens_weight_threshold": 0.4},
    "pruned (5, 0.2)": {"tokens_freq_ratio_threshold": 5, "tokens_weight_threshold": 0.2},
    "pruned (3, 0.6)": {"tokens_freq_ratio_threshold": 3, "tokens_weight_threshold": 0.6},
}
RESCORED = "pruned, default, pruned tokens rescored (window 100)"
WINDOW = 100


def pruned(body: dict, config: dict, rescore: bool = False) -> dict:
    """`body` (the exact search lsr-os sends) with its sparse_vector query pruned by `config`;
    with `rescore`, the top WINDOW hits also get the pruned tokens' scores back (Elasticsearch's
    own two-phase recipe: `only_score_pruned_tokens` in a rescore query)."""
    out = copy.deepcopy(body)
    query = out["query"]["sparse_vector"]
    query.update(prune=True, pruning_config=dict(config))
    if rescore:
        again = copy.deepcopy(query)
        again["pruning_config"]["only_score_pruned_tokens"] = True
        out["rescore"] = {"window_size": WINDOW, "query": {"rescore_query": {"sparse_vector": again},
                                                           "query_weight": 1.0, "rescore_query_weight": 1.0}}
    return out


def compare(engine: Engine, index: str, qs: list, exact_run: dict, scorer: BlockScorer, cap: int,
            rounds: int) -> dict:
    """Server took and client wall per configuration (interleaved) and top-10 overlap with exact."""
    prepared = {qid: prepare_query(v, cap) for qid, v in qs}
    exact_bodies = [build_query(engine.ops, prepared[qid], K, with_source=False) for qid, _ in qs]
    bodies = {"exact (prune: false)": exact_bodies}
    bodies.update({name: [pruned(b, config) for b in exact_bodies] for name, config in PRUNING.items()})
    bodies[RESCORED] = [pruned(b, PRUNING["pruned, default (5, 0.4)"], rescore=True) for b in exact_bodies]
    runs: dict[str, dict] = {name: {} for name in bodies}

    def system(name):
        def call(i):
            t0 = time.perf_counter()
            resp = engine.search(index, bodies[name][i])
            wall = time.perf_counter() - t0
            runs[name][qs[i][0]] = {h["_id"]: h["_score"] for h in resp["hits"]["hits"]}
            return wall, resp["took"] / 1000
        return call

    systems = {name: system(name) for name in bodies}
    for i in range(min(20, len(qs))):  # warm-up: caches, connections
        for fn in systems.values():
            fn(i)
    out = interleaved(systems, len(qs), rounds)
    base = out["exact (prune: false)"]
    for name in bodies:
        out[name]["parity"] = parity(runs[name], exact_run, K)
        out[name]["parity"]["top10_overlap_ties"] = tie_aware_overlap(runs[name], exact_run, scorer, prepared, K)
        out[name]["took_mean_ratio"] = out[name]["took"]["mean_ms"] / base["took"]["mean_ms"] if base["took"]["mean_ms"] else None
        out[name]["wall_p50_ratio"] = out[name]["wall"]["p50_ms"] / base["wall"]["p50_ms"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=100_000, help="Collection size.")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3, help="Rounds of the interleaved comparison.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--url", default=None, help="Elasticsearch URL [default: ELASTICSEARCH_URL or localhost:9400].")
    ap.add_argument("--name", default="es_pruning", help="Results file name.")
    ap.add_argument("--out", default=str(RESULTS), help="Results folder [default: bench/results].")
    ap.add_argument("--drop", action="store_true", help="Delete the bench index at the end.")
    args = ap.parse_args()

    url = split_urls(args.url or os.environ.get("ELASTICSEARCH_URL") or "http://localhost:9400")[0]
    engine = connect(ClusterConfig(urls=(url,), timeout=600))
    if not engine.features.has_sparse_pruning:
        raise SystemExit(f"{engine.display_name} {engine.version} at {url} has no sparse query pruning to measure")
    sampler = LoadSampler()
    t_start = time.time()
    n, seed = args.docs, args.seed
    results: dict = {"docs": n, "args": vars(args), "node": node_facts(engine)}
    alias = f"bench-pruning-{n}"
    results["index"] = ensure_index(engine, alias, n, seed, sampler, shards=1, exclude_vectors=True)
    qs = queries(args.queries, seed + 1)
    t0 = time.perf_counter()
    scorer = BlockScorer(n, seed)
    results["exact_build_s"] = round(time.perf_counter() - t0, 1)
    cap = engine.max_clause_count
    exact_run, _ = scorer.run([(q, prepare_query(v, cap)) for q, v in qs], K)
    results["pruning"] = phase(sampler, lambda: compare(engine, alias, qs, exact_run, scorer, cap, args.rounds))
    sampler.stop()
    results["load_avg_1m_whole_run"] = sampler.between(t_start, time.time())
    results["seconds"] = round(time.time() - t_start, 1)
    if args.drop:
        engine.delete_indices(f"{alias}*", missing_ok=True)
    path = write_results(args.name, results, summary(results), Path(args.out))
    print(f"results: {path}")


def summary(r: dict) -> str:
    table = r["pruning"]
    rows = []
    for name, row in table.items():
        if name == "phase":
            continue
        rows.append({"query": name, "took p50 ms": row["took"]["p50_ms"], "took p90 ms": row["took"]["p90_ms"],
                     "took mean ms": row["took"]["mean_ms"], "took mean / exact": row["took_mean_ratio"],
                     "wall p50 ms": row["wall"]["p50_ms"], "wall p90 ms": row["wall"]["p90_ms"],
                     "wall p50 / exact": row["wall_p50_ratio"], "top-10 overlap": row["parity"]["top10_overlap"],
                     "overlap, ties counted": row["parity"]["top10_overlap_ties"]})
    load = r["load_avg_1m_whole_run"]
    index = r["index"]
    return "\n".join([
        f"{r['docs']:,} synthetic documents (bench/serving.py's: 50-300 terms, Zipf-like term use over 30,522 "
        f"terms; vectors left out of `_source`, one shard, force-merged: {index['segments']} segment(s), "
        f"{index['store_bytes'] / 2**20:.1f} MiB), {r['args']['queries']} queries of 10-80 terms; one local "
        f"{r['node']['engine']} {r['node']['version']} node ({r['node']['heap_max_bytes'][0] / 2**30:.0f} GiB heap) "
        f"and the client on the same {os.cpu_count()} cores. The configurations are interleaved query by query "
        f"({r['args']['rounds']} rounds, the order rotating). Load average (1 min) over the run: "
        f"{load['min']:.1f}-{load['max']:.1f} (mean {load['mean']:.1f}); the comparison's own is in the JSON. "
        f"Whole run {r['seconds']:.0f} s" + (" (the index was reused)." if index.get("reused") else "."), "",
        md_table(rows, list(rows[0])), "",
        "Pruning `(f, w)`: `tokens_freq_ratio_threshold` f, `tokens_weight_threshold` w; a query token is dropped "
        "when its document frequency exceeds f times the field's average and its weight is below w times the "
        "query's heaviest. Overlap: the share of the exact top 10 (exact in-memory scoring of the full query over "
        "the 9-bit stored weights) in the configuration's top 10; ties counted: the share of its top 10 whose exact "
        "score reaches the exact 10th score. Server took is whole milliseconds, so its mean and the client's wall "
        "time are given too.",
    ])


if __name__ == "__main__":
    main()
