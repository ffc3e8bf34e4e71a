"""Server time of the three text query shapes at 100k and 1M documents.

A text query's shape is its number of terms, and that differs by query mode: the expanded query
carries the model's expansion, the own-token and the inference-free queries only the text's own
word pieces. The lengths are taken from the demo's own queries (its test captions encoded in each
mode by the demo's head); each query of a shape is that many terms drawn by popularity from the
synthetic collection of bench/serving.py (50-300 terms a document, Zipf term popularity), weights
log-uniform as its queries are. Every shape is sent as the `rank_feature` query lsr-os sends,
interleaved query by query over rounds (the shapes' order rotating); server `took` and client
wall are reported, with the load average.

    python -m bench.query_shapes --demo lsr-os-demo --docs 100000 1000000
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from bench.harness import RESULTS, md_table, write_results
from bench.serving import LoadSampler, draw_ids, ensure_index, interleaved, node_facts, zipf_sampler
from lsr_os.config import ClusterConfig, connect, split_urls
from lsr_os.errors import DataError
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
    static = StaticQueryEncoder.from_head(head_dir)
    lengths = {"expanded": [len(v) for v in head.encode_captions(dense, texts)],
               "own-tokens": [len(v) for v in head.encode_captions(dense, texts, expand=False)],
               "inference-free": []}
    for text in texts:
        try:
            lengths["inference-free"].append(len(static.encode(text)))
        except DataError:  # no weighted word: such a text is never sent
            continue
    return lengths


def shaped_queries(lengths: list[int], n: int, seed: int) -> list[dict[str, float]]:
    """n queries whose term counts are drawn from `lengths`, terms by the collection's popularity."""
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
    ap.add_argument("--url", default=None, help="OpenSearch URL [default: OPENSEARCH_URL or localhost:9200]")
    ap.add_argument("--name", default="query_shapes")
    args = ap.parse_args()
    client = connect(ClusterConfig(urls=split_urls(args.url), timeout=600.0))
    lengths = demo_lengths(args.demo)
    shapes = {m: shaped_queries(lengths[m], args.queries, args.seed) for m in MODES}
    sampler = LoadSampler()
    results: dict = {"lengths": {m: {"mean": statistics.fmean(v), "median": statistics.median(v), "max": max(v),
                                     "queries": len(v)} for m, v in lengths.items()},
                     "node": node_facts(client), "collections": {}}
    try:
        for n_docs in args.docs:
            alias = f"bench-shapes-{n_docs}"
            loaded = ensure_index(client, alias, n_docs, args.seed, sampler)
            bodies = {m: [build_query(q, 10, with_source=False) for q in qs] for m, qs in shapes.items()}

            def system(mode: str):
                def one(i: int) -> tuple[float, float]:
                    t0 = time.perf_counter()
                    answer = client.search(index=alias, body=bodies[mode][i])
                    return time.perf_counter() - t0, answer["took"] / 1000
                return one

            for mode in MODES:  # warm the caches once, untimed
                for body in bodies[mode][:20]:
                    client.search(index=alias, body=body)
            t0 = time.time()
            timing = interleaved({m: system(m) for m in MODES}, args.queries, args.rounds)
            results["collections"][str(n_docs)] = {"index": loaded, "timing": timing,
                                                   "load_avg_1m": sampler.between(t0, time.time())}
            print(n_docs, {m: round(t["took"]["p50_ms"], 2) for m, t in timing.items()}, flush=True)
    finally:
        sampler.stop()
    rows = []
    for n_docs, part in results["collections"].items():
        for mode in MODES:
            t = part["timing"][mode]
            rows.append({"documents": int(n_docs), "query shape": mode,
                         "terms (mean)": results["lengths"][mode]["mean"],
                         "took p50 ms": t["took"]["p50_ms"], "took p90 ms": t["took"]["p90_ms"],
                         "took mean ms": t["took"]["mean_ms"], "wall p50 ms": t["wall"]["p50_ms"],
                         "wall p90 ms": t["wall"]["p90_ms"], "load avg": f"{part['load_avg_1m']['min']:.1f}-{part['load_avg_1m']['max']:.1f}"})
    summary = (f"Server time (`took`) and client wall of the `rank_feature` query lsr-os sends, by text query shape; "
               f"term counts from the demo's test captions in each mode ({args.demo}), terms drawn by popularity from "
               f"bench/serving.py's synthetic collection (seed {args.seed}; force-merged, one shard, vectors in "
               f"_source); {args.queries} queries a shape, {args.rounds} rounds interleaved, k = 10, ids and scores "
               f"only. Took is whole milliseconds as OpenSearch reports it.\n\n"
               + md_table(rows, list(rows[0])))
    write_results(args.name, {"args": {k: str(v) for k, v in vars(args).items()}, **results}, summary, RESULTS)
    print(summary)


if __name__ == "__main__":
    main()
