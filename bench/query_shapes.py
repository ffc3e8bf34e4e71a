"""Server time of the three text query shapes at 100k and 1M documents.

A text query's shape is its number of terms, and that differs by query mode: the expanded query
carries the model's expansion, the own-token and the inference-free queries only the text's own
word pieces. The lengths are taken from the demo's own queries (its test captions encoded in each
mode by the demo's head); each query of a shape is that many terms drawn by a Zipf popularity,
weights log-uniform, as bench/serving.py's queries are, against its synthetic collection (50-300
terms a document, Zipf term popularity). Two term draws: "independent" (another permutation of
the vocabulary than the documents', as bench/serving.py's queries: most query terms are rare in
the collection) and "popular" (the documents' own popularity: the query terms are the
collection's most common ones, the slow case). Every query is sent as the sparse query lsr-os
sends to the engine at --url (OpenSearch's `rank_feature` clauses, Elasticsearch's
`sparse_vector` query), interleaved query by query over rounds (the shapes' order rotating);
server `took` and client wall are reported, with the load average.

    python -m bench.query_shapes --demo lsr-os-demo --docs 100000 1000000
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np

from bench.harness import RESULTS, md_table, write_results
from bench.serving import LoadSampler, draw_ids, ensure_index, interleaved, node_facts, zipf_sampler
from lsr_os.config import ClusterConfig, split_urls
from lsr_os.engines import connect
from lsr_os.search import build_query
from lsr_os.vocab import Vocabulary

MODES = ("expanded", "own-tokens", "inference-free")


def demo_lengths(demo: Path) -> dict[str, list[int]]:
    """Terms a query of each mode has, over the demo's test captions (its head, its dense vectors)."""
    from lsr_os.dense_files import TEXT_FILE, read_embeddings
    from lsr_os.models.head import load_head
    from lsr_os.search import load_demo_settings
    from lsr_os.static_query import StaticQueryEncoder
    from lsr_os.train import TrainingData

    head_dir = Path(load_demo_settings(demo)["head"])
    head = load_head(head_dir)
    split = TrainingData.load(demo / "dense").meta.split("test")
    texts, ids = list(split.captions), [str(c) for c in split.caption_ids]
    dense = read_embeddings(demo / "dense" / TEXT_FILE).take(ids)
    free = StaticQueryEncoder.from_head(head_dir).encode_each(texts)
    return {"expanded": [len(v) for v in head.encode_captions(dense, texts)],
            "own-tokens": [len(v) for v in head.encode_captions(dense, texts, expand=False)],
            "inference-free": [len(v) for v in free if v]}  # a text without a weighted word is never sent


def shaped_queries(lengths: list[int], n: int, seed: int) -> list[dict[str, float]]:
    """n queries whose term counts are drawn from `lengths`, terms by the popularity of `seed`'s
    permutation (the collection's own when it is the collection's seed)."""
    terms = Vocabulary.default().terms
    order, cdf = zipf_sampler(len(terms), seed)
    rng = np.random.default_rng([seed, 777])
    out = []
    for length in rng.choice(lengths, n):
        ids, weights = draw_ids(rng, order, cdf, int(length), 0.05, 2.5)
        out.append({terms[t]: float(w) for t, w in zip(ids, weights)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--demo", type=Path, required=True, help="a demo folder whose head has query weights")
    ap.add_argument("--docs", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--queries", type=int, default=300, help="queries of each shape")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0, help="the collection's seed (bench/serving.py's)")
    ap.add_argument("--url", default=None, help="OpenSearch or Elasticsearch URL (the engine is told from its answer) "
                                                "[default: OPENSEARCH_URL, ELASTICSEARCH_URL or localhost:9200]")
    ap.add_argument("--name", default="query_shapes")
    args = ap.parse_args()
    url = args.url or os.environ.get("OPENSEARCH_URL") or os.environ.get("ELASTICSEARCH_URL")
    engine = connect(ClusterConfig(urls=split_urls(url), timeout=600.0))
    lengths = demo_lengths(args.demo)
    draws = {"independent": args.seed + 1, "popular": args.seed}
    shapes = {(d, m): shaped_queries(lengths[m], args.queries, s) for d, s in draws.items() for m in MODES}
    sampler = LoadSampler()
    results: dict = {"lengths": {m: {"mean": statistics.fmean(v), "median": statistics.median(v), "max": max(v),
                                     "queries": len(v)} for m, v in lengths.items()},
                     "node": node_facts(engine), "collections": {}}
    try:
        for n_docs in args.docs:
            alias = f"bench-shapes-{n_docs}"
            loaded = ensure_index(engine, alias, n_docs, args.seed, sampler)
            bodies = {key: [build_query(engine.ops, q, 10, with_source=False) for q in qs]
                      for key, qs in shapes.items()}

            def system(key: tuple[str, str]):
                def one(i: int) -> tuple[float, float]:
                    t0 = time.perf_counter()
                    answer = engine.search(alias, bodies[key][i])
                    return time.perf_counter() - t0, answer["took"] / 1000
                return one

            part = results["collections"][str(n_docs)] = {"index": loaded}
            for draw in draws:
                for mode in MODES:  # warm the caches once, untimed
                    for body in bodies[(draw, mode)][:20]:
                        engine.search(alias, body)
                t0 = time.time()
                timing = interleaved({m: system((draw, m)) for m in MODES}, args.queries, args.rounds)
                part[draw] = {"timing": timing, "load_avg_1m": sampler.between(t0, time.time())}
                print(n_docs, draw, {m: round(t["took"]["p50_ms"], 2) for m, t in timing.items()}, flush=True)
    finally:
        sampler.stop()
    rows = []
    for n_docs, part in results["collections"].items():
        for draw, mode in shapes:
            t, load = part[draw]["timing"][mode], part[draw]["load_avg_1m"]
            rows.append({"documents": int(n_docs), "query terms": draw, "query shape": mode,
                         "terms (mean)": results["lengths"][mode]["mean"],
                         "took p50 ms": t["took"]["p50_ms"], "took p90 ms": t["took"]["p90_ms"],
                         "took mean ms": t["took"]["mean_ms"], "wall p50 ms": t["wall"]["p50_ms"],
                         "wall p90 ms": t["wall"]["p90_ms"], "load avg": f"{load['min']:.1f}-{load['max']:.1f}"})
    node = results["node"]
    summary = (f"Server time (`took`) and client wall of the sparse query lsr-os sends to {node['engine']} "
               f"{node['version']}, by text query shape; "
               f"term counts from the demo's test captions in each mode ({args.demo}); bench/serving.py's synthetic "
               f"collection (seed {args.seed}; force-merged, one shard, vectors in _source); query terms drawn "
               f"independently of the collection's popularity (as bench/serving.py's queries) or by it (the "
               f"collection's most common terms: the slow case); {args.queries} queries a shape, {args.rounds} "
               f"rounds interleaved, k = 10, ids and scores only. Took is whole milliseconds as the engine reports "
               f"it.\n\n"
               + md_table(rows, list(rows[0])))
    write_results(args.name, {"args": {k: str(v) for k, v in vars(args).items()}, **results}, summary, RESULTS)
    print(summary)


if __name__ == "__main__":
    main()
