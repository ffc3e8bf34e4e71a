"""The lsr-os plugin's in-cluster text query against the sparse query of the same weights.

On one synthetic collection (bench/serving.py's documents, 50-300 terms each) loaded by
`lsr_os.index.ingest` with the plugin's `text` field, folded from a query weight table, on either
engine (the cluster at --url says which):

- query time: a plain `match` of the typed text on `text` (what curl or Dashboards send) vs the
  inference-free query lsr-os sends for the same text (the engine's sparse query on `sparse` with
  the table's weights: rank_feature clauses on OpenSearch, sparse_vector on Elasticsearch), server
  `took` and client wall, interleaved query by query over rounds; the client's own cost of the
  inference-free query (tokenizer and table lookup) beside;
- agreement: top-10 overlap of each with exact scoring of the inference-free query over the
  9-bit document weights, ties counted (`lsr_os.evaluate.tie_aware_overlap`), and of `match`
  with the sparse query directly;
- ingest cost: index size and load time of the same documents with and without the field,
  alternating rounds (and, with --baseline-index, one index of the full size without the field).

The typed texts are captions of the demo world's test split: with --demo DIR, that demo's
captions (and its head's query weights when it has them); otherwise captions drawn by the demo's
world generator. Without a head with query weights the table is an IDF over the collection,
zero on the terms that never carry a search (stop words, punctuation, special tokens).

    python -m bench.plugin_query --docs 100000 --name plugin_query_100k
    python -m bench.plugin_query --docs 1000000 --ingest-docs 0 --baseline-index --name plugin_query_1m
    python -m bench.plugin_query --url http://localhost:9400 --docs 100000 --name plugin_query_es_100k
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

from bench.harness import RESULTS, md_table, percentiles, write_results
from bench.serving import BlockScorer, LoadSampler, doc_blocks, documents, index_stats, interleaved, node_facts, phase
from lsr_os import index as ix
from lsr_os import plugin, static_query
from lsr_os.config import ClusterConfig, split_urls
from lsr_os.engines import connect
from lsr_os.engines.base.base import Engine
from lsr_os.errors import DataError
from lsr_os.evaluate import tie_aware_overlap
from lsr_os.search import build_query
from lsr_os.sparse import RecordStream
from lsr_os.vocab import Vocabulary, fast_tokenizer

K = 10
GOAL_RATIO = 1.2  # match's server time at p50 and p90, relative to the sparse query's
GOAL_OVERLAP = 0.99
INGEST_LABELS = ("without the text field", "with the text field")


# --------------------------------------------------------------------------- texts and the weight table


def demo_captions(demo: Path | None, n: int, seed: int) -> list[str]:
    """Distinct test-split captions: of the demo folder's world, else drawn by the demo's generator."""
    if demo is not None:
        meta = json.loads((demo / "world" / "dataset_meta.json").read_text(encoding="utf-8"))
        texts = [s["raw"] for img in meta["images"] if img["split"] == "test" for s in img["sentences"]]
    else:
        from lsr_os.demo import world

        rng = random.Random(seed)
        texts = [t for _ in range(n) for t in world.captions(world.random_scene(rng), rng, n=2)]
    texts = list(dict.fromkeys(texts))
    random.Random(seed).shuffle(texts)
    return texts[:n]


def idf_head(folder: Path, n_docs: int, seed: int) -> Path:
    """A folder holding only query weights (all `plugin.Folding` and the inference-free encoder
    read): IDF over the collection's documents, zero on terms that cannot carry a search."""
    if static_query.has_query_weights(folder):
        return folder
    terms = Vocabulary.default().terms
    df = np.zeros(len(terms), dtype=np.int64)
    for block in doc_blocks(n_docs, seed):
        for ids, _ in block:
            df[ids] += 1
    idf = np.log1p((n_docs - df + 0.5) / (df + 0.5))
    tok = fast_tokenizer()
    mask = np.asarray(static_query.content_term_mask(terms, tok.all_special_tokens))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / static_query.CONFIG_FILE).write_text(json.dumps({}), encoding="utf-8")
    static_query.add_to_head(folder, (idf * mask).astype(np.float32), {"method": f"idf over bench:{n_docs}:{seed}"})
    return folder


# --------------------------------------------------------------------------- indices


def sparse_query_name(engine: Engine) -> str:
    """The engine's sparse query by name (rank_feature, sparse_vector), for labels."""
    query = engine.ops.sparse_query({"x": 1.0})
    while "bool" in query:
        query = query["bool"]["should"][0]
    return next(iter(query))


def settled_stats(engine: Engine, alias: str, timeout_s: float = 120.0) -> dict:
    """`index_stats` once the store size has stopped moving: right after a force-merge the
    replaced segments' files are still counted until they are released (seen: 832 MiB read at
    the end of a load that settles at 501 MiB)."""
    engine.refresh(alias)
    deadline, last, same = time.monotonic() + timeout_s, None, 0
    while True:
        stats = index_stats(engine, alias)
        same = same + 1 if stats == last else 0
        if same >= 2 or time.monotonic() > deadline:
            return stats
        last = stats
        time.sleep(2.0)


def ensure_index(engine: Engine, alias: str, n_docs: int, seed: int, sampler: LoadSampler, head: Path | None,
                 text_field: bool, force_merge: bool = True) -> dict:
    """The bench index `alias` (with or without the `text` field of `head`'s weights), reused
    when it already serves the same documents and table; returns what the load did."""
    fingerprint = plugin.Folding.from_head(head).weights_sha256[:16] if text_field else "none"
    source = f"bench-plugin:{n_docs}:{seed}:text={fingerprint}:merge={force_merge}"
    if ix.serving_source(engine, alias) == source:
        return {"alias": alias, "reused": True, **settled_stats(engine, alias)}

    def load() -> dict:
        report = ix.ingest(engine, RecordStream.of(documents(n_docs, seed), source, n_docs), alias, "images",
                           ix.IngestOptions(force_merge=force_merge, progress=False, shards=1, text_field=text_field),
                           failures_path=Path(tempfile.gettempdir()) / f"{alias}-failures.jsonl", head=head)
        if report.not_swapped or report.failed or report.text_field != text_field:
            raise RuntimeError(f"bench load of {alias} failed: {report.to_dict()}")
        return {"alias": alias, "reused": False, "report": report.to_dict(), **settled_stats(engine, alias)}

    return phase(sampler, load)


def ingest_cost(engine: Engine, n_docs: int, seed: int, head: Path, rounds: int, force_merge: bool = True) -> dict:
    """The same documents loaded with and without the field, alternating (the order turns each
    round), each a fresh index force-merged: load seconds, merge seconds, store bytes."""
    rows: dict[str, list[dict]] = {label: [] for label in INGEST_LABELS}
    for r in range(rounds):
        order = list(rows) if r % 2 == 0 else list(rows)[::-1]
        for label in order:
            alias = f"bench-plugin-ingest-{n_docs}-{'text' if label.startswith('with ') else 'plain'}"
            report = ix.ingest(engine, RecordStream.of(documents(n_docs, seed), f"bench-ingest:{r}", n_docs), alias,
                               "images", ix.IngestOptions(fresh=True, force_merge=force_merge, progress=False, shards=1,
                                                          text_field=label.startswith("with ")), head=head)
            if report.not_swapped or report.failed:
                raise RuntimeError(f"ingest round of {alias} failed: {report.to_dict()}")
            rows[label].append({"load_s": report.seconds, "docs_per_s": report.docs_per_s,
                                "merge_s": report.merge_seconds, **settled_stats(engine, alias)})
    out = {}
    for label, runs in rows.items():
        out[label] = {key: statistics.median(run[key] for run in runs)
                      for key in ("load_s", "docs_per_s", "merge_s", "store_bytes")} | {"rounds": runs}
    plain, text = out["without the text field"], out["with the text field"]
    out["ratios"] = {"store_bytes": text["store_bytes"] / plain["store_bytes"],
                     "load_s": text["load_s"] / plain["load_s"]}
    engine.delete_indices(f"bench-plugin-ingest-{n_docs}-*", missing_ok=True)
    return out


# --------------------------------------------------------------------------- queries


def query_time(engine: Engine, index: str, texts: list[str], head: Path, scorer: BlockScorer, rounds: int,
               repeats: int) -> dict:
    """`match` on `text` vs the inference-free sparse query, interleaved; overlaps with exact.

    Each query is timed twice: one search (client wall time and the server's `took`, which counts
    whole milliseconds), and the server time of `repeats` runs of it in one `_msearch` run one
    after the other (its `took` / repeats: the same server work to 1/repeats ms)."""
    encoder = static_query.StaticQueryEncoder.from_head(head)
    kept, vectors = [], []
    for text in texts:
        try:
            vectors.append(encoder.encode(text))
            kept.append(text)
        except DataError:  # no word of it has a weight: neither query searches anything
            continue
    qids = [f"q{i}" for i in range(len(kept))]
    sparse_name = sparse_query_name(engine)
    sparse = f"{sparse_name} on sparse"
    bodies = {
        "match on text": [{"size": K, "query": {"match": {plugin.FIELD: t}}, "_source": False,
                           "track_total_hits": False} for t in kept],
        sparse: [build_query(engine.ops, v, K, with_source=False) for v in vectors],
    }
    runs: dict[str, dict] = {name: {} for name in bodies}

    def system(name):
        def call(i):
            t0 = time.perf_counter()
            resp = engine.search(index, bodies[name][i])
            wall = time.perf_counter() - t0
            runs[name][qids[i]] = {h["_id"]: h["_score"] for h in resp["hits"]["hits"]}
            return wall, resp["took"] / 1000
        return call

    def repeated(name):
        lines = [b"".join(b"{}\n" + orjson.dumps(body) + b"\n" for _ in range(repeats)) for body in bodies[name]]

        def call(i):
            with engine.errors():  # one request of ready lines, one search at a time: the client's own call
                resp = engine.client.msearch(index=index, body=lines[i], max_concurrent_searches=1, filter_path="took")
            return resp["took"] / 1000 / repeats
        return call

    systems = {name: system(name) for name in bodies}
    for i in range(min(30, len(kept))):  # warm-up: caches, connections
        for fn in systems.values():
            fn(i)
    out: dict = {"systems": interleaved(systems, len(kept), rounds)}
    server = interleaved({name: repeated(name) for name in bodies}, len(kept), rounds)
    for name in bodies:
        out["systems"][name]["server_repeated"] = server[name]["wall"]
    encode = []
    for text in kept:
        t0 = time.perf_counter()
        encoder.encode(text)
        encode.append(time.perf_counter() - t0)
    out["inference_free_encode"] = percentiles(encode)
    queries = dict(zip(qids, vectors))
    exact = {qid: scorer.topk(v, K) for qid, v in queries.items()}
    for name in bodies:
        out["systems"][name]["top10_overlap_ties_vs_exact"] = tie_aware_overlap(runs[name], exact, scorer, queries, K)
    match, feature = runs["match on text"], runs[sparse]
    out["sparse_query"] = sparse_name
    out["match_vs_sparse_top10_overlap"] = statistics.fmean(
        len(set(match[q]) & set(feature[q])) / max(1, len(feature[q])) for q in qids)
    lengths = [len(v) for v in vectors]
    out["queries"] = {"texts": len(texts), "searched": len(kept), "terms_mean": statistics.fmean(lengths),
                      "terms_min": min(lengths), "terms_max": max(lengths),
                      "terms_histogram": {str(n): lengths.count(n) for n in sorted(set(lengths))},
                      "examples": [{"text": t, "terms": len(v)} for t, v in list(zip(kept, vectors))[:5]]}
    rep_m, rep_f = (out["systems"][name]["server_repeated"] for name in bodies)
    out["server_ratio"] = {p: rep_m[f"{p}_ms"] / rep_f[f"{p}_ms"] for p in ("p50", "p90", "mean")}
    out["repeats"] = repeats
    took_m, took_f = (out["systems"][name]["took"] for name in bodies)
    out["took_ratio"] = {p: (took_m[f"{p}_ms"] / took_f[f"{p}_ms"] if took_f[f"{p}_ms"] else None)
                         for p in ("p50", "p90", "mean")}
    wall_m, wall_f = (out["systems"][name]["wall"] for name in bodies)
    out["wall_ratio"] = {p: wall_m[f"{p}_ms"] / wall_f[f"{p}_ms"] for p in ("p50", "p90", "mean")}
    return out


# --------------------------------------------------------------------------- the run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=100_000, help="Collection size.")
    ap.add_argument("--queries", type=int, default=300, help="Typed texts (demo test captions).")
    ap.add_argument("--rounds", type=int, default=3, help="Rounds of the interleaved query comparison.")
    ap.add_argument("--repeats", type=int, default=10,
                    help="Runs of a query in one _msearch for its server time to 1/repeats ms.")
    ap.add_argument("--demo", type=Path, default=None,
                    help="A demo folder: its world's test captions, and its head's query weights when it has them.")
    ap.add_argument("--ingest-docs", type=int, default=100_000, help="Documents of the ingest comparison (0: skip).")
    ap.add_argument("--ingest-rounds", type=int, default=2, help="Rounds of the ingest comparison (each loads both).")
    ap.add_argument("--baseline-index", action="store_true",
                    help="Also load the whole collection without the field once: its size and load time.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--url", default=None,
                    help="Cluster URL, of either engine [default: OPENSEARCH_URL or localhost:9200].")
    ap.add_argument("--force-merge", action=argparse.BooleanOptionalAction, default=True,
                    help="Force-merge the indices after loading (off: a quick check that the bench runs).")
    ap.add_argument("--name", default="plugin_query", help="Results file name.")
    ap.add_argument("--out", default=str(RESULTS), help="Results folder [default: bench/results].")
    ap.add_argument("--drop", action="store_true", help="Delete the bench indices at the end.")
    args = ap.parse_args()

    url = split_urls(args.url or os.environ.get("OPENSEARCH_URL"))[0]
    engine = connect(ClusterConfig(urls=(url,), timeout=600))
    if not engine.features.has_lsr_os_plugin:
        raise SystemExit(f"the {engine.display_name} cluster at {url} does not run the lsr-os plugin on every node: "
                         f"start it with `lsr-os node start --engine {engine.name} --plugin`")
    sampler = LoadSampler()
    t_start = time.time()
    n, seed = args.docs, args.seed
    demo_head = args.demo / "head" / "best" if args.demo else None
    head = (demo_head if demo_head and static_query.has_query_weights(demo_head)
            else idf_head(Path(tempfile.gettempdir()) / f"lsr-os-bench-idf-{n}-{seed}", n, seed))
    results: dict = {"docs": n, "args": {k: str(v) for k, v in vars(args).items()}, "node": node_facts(engine),
                     "query_weights": static_query.read_config(head)[static_query.CONFIG_KEY]}
    alias = f"bench-plugin-{n}"
    results["index"] = ensure_index(engine, alias, n, seed, sampler, head, True, args.force_merge)
    if args.baseline_index:
        results["baseline_index"] = ensure_index(engine, f"{alias}-plain", n, seed, sampler, None, False,
                                                 args.force_merge)
    t0 = time.perf_counter()
    scorer = BlockScorer(n, seed)
    results["exact_build_s"] = time.perf_counter() - t0
    texts = demo_captions(args.demo, args.queries, seed)
    results["query"] = phase(sampler, lambda: query_time(engine, alias, texts, head, scorer, args.rounds,
                                                         args.repeats))
    scorer = None  # its memory, before the ingest rounds
    if args.ingest_docs:
        results["ingest"] = phase(sampler, lambda: ingest_cost(engine, args.ingest_docs, seed, head,
                                                               args.ingest_rounds, args.force_merge))
    sampler.stop()
    results["load_avg_1m_whole_run"] = sampler.between(t_start, time.time())
    if args.drop:
        engine.delete_indices(f"{alias}*", missing_ok=True)
    path = write_results(args.name, results, summary(results), Path(args.out))
    print(f"results: {path}")


def summary(r: dict) -> str:
    """The markdown of one run."""
    q, n = r["query"], r["docs"]
    load = r["load_avg_1m_whole_run"]
    qs = q["queries"]
    lines = [f"{n:,} synthetic documents (bench/serving.py's: 50-300 terms, Zipf-like term use over 30,522 terms) "
             f"loaded by `lsr_os.index.ingest` with the lsr-os plugin's `text` field; {qs['searched']} typed texts "
             f"(demo world test captions) of {qs['terms_min']}-{qs['terms_max']} query terms (mean "
             f"{qs['terms_mean']:.1f}); query weights: {r['query_weights'].get('method')}. One local "
             f"{r['node']['engine']} {r['node']['version']} node (heap {r['node']['heap_max_bytes'][0] / 2**30:.1f} "
             f"GiB) and the client on the same cores; the two queries interleaved query by query ({r['args']['rounds']} rounds). Load "
             f"average (1 min) over the run: {load['min']:.1f}-{load['max']:.1f} (mean {load['mean']:.1f}); the "
             f"query part's: {q['phase']['load_avg_1m']['mean']:.1f}.", ""]
    rows = []
    for name, s in q["systems"].items():
        rows.append({"query": name, "server p50 ms": s["server_repeated"]["p50_ms"],
                     "server p90 ms": s["server_repeated"]["p90_ms"], "server mean ms": s["server_repeated"]["mean_ms"],
                     "took p50 ms": s["took"]["p50_ms"], "took p90 ms": s["took"]["p90_ms"],
                     "took mean ms": s["took"]["mean_ms"], "wall p50 ms": s["wall"]["p50_ms"],
                     "wall p90 ms": s["wall"]["p90_ms"], "top-10 overlap with exact, ties counted":
                     s["top10_overlap_ties_vs_exact"]})
    lines.append(md_table(rows, list(rows[0])))
    sr, tr, wr = q["server_ratio"], q["took_ratio"], q["wall_ratio"]
    ok = all(sr[p] <= GOAL_RATIO for p in ("p50", "p90")) and \
        q["systems"]["match on text"]["top10_overlap_ties_vs_exact"] >= GOAL_OVERLAP
    lines += ["", f"match / {q['sparse_query']}: server time p50 {_x(sr['p50'])}, p90 {_x(sr['p90'])}, mean "
              f"{_x(sr['mean'])} (each query run {q['repeats']} times in one _msearch: its took / {q['repeats']}); "
              f"one search's took p50 {_x(tr['p50'])}, p90 {_x(tr['p90'])} (whole milliseconds), wall p50 "
              f"{_x(wr['p50'])}, p90 {_x(wr['p90'])}. Goal (match <= {GOAL_RATIO}x the server time at p50 and p90, "
              f"top-10 overlap >= {GOAL_OVERLAP}): **{'met' if ok else 'not met'}**. Top-10 overlap of match with "
              f"the {q['sparse_query']} query itself (ties not counted): {q['match_vs_sparse_top10_overlap']:.4f}. "
              f"The {q['sparse_query']} path also costs the client its inference-free encoding: p50 "
              f"{q['inference_free_encode']['p50_ms']:.3f} ms (tokenizer and table lookup; `match` costs the client "
              f"nothing).", ""]
    index_rows = [{"index": f"{n:,} documents, with the text field", **_index_row(r["index"])}]
    if "baseline_index" in r:
        index_rows.append({"index": f"{n:,} documents, without", **_index_row(r["baseline_index"])})
    lines += ["Indices (force-merged, `_source` as `lsr-os ingest` writes it):", "",
              md_table(index_rows, ["index", "store MiB", "load s", "docs/s", "merge s", "reused"]), ""]
    if "ingest" in r:
        ing = r["ingest"]
        rows = [{"load": label, "store MiB": v["store_bytes"] / 2**20, "load s": v["load_s"], "docs/s": v["docs_per_s"],
                 "merge s": v["merge_s"]} for label, v in ing.items() if label in INGEST_LABELS]
        docs = r["args"]["ingest_docs"]
        lines += [f"Ingest cost ({int(docs):,} documents, {r['args']['ingest_rounds']} alternating rounds, medians; "
                  f"load avg {ing['phase']['load_avg_1m']['mean']:.1f}):", "",
                  md_table(rows, list(rows[0])), "",
                  f"With the field: store {_x(ing['ratios']['store_bytes'])}, load time {_x(ing['ratios']['load_s'])}."]
    return "\n".join(lines)


def _index_row(info: dict) -> dict:
    rep = info.get("report") or {}
    return {"store MiB": info["store_bytes"] / 2**20, "load s": rep.get("seconds", ""),
            "docs/s": rep.get("docs_per_s", ""),
            "merge s": rep.get("merge_seconds", ""), "reused": info["reused"]}


def _x(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.2f}x"


if __name__ == "__main__":
    main()
