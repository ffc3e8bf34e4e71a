"""Where the images' load time with the lsr-os plugin's `text` field goes, on either engine.

The same documents (bench/serving.py's, 50-300 terms each) loaded by `lsr_os.index.ingest` into
fresh one-shard indices, the variants alternating round by round (no force-merge: the load alone):

- `without`: no text field (the baseline);
- `with`: the field as lsr-os writes it (the plugin's analyzers, kept out of `_source`);
- `with, in _source`: the same field left in `_source`;
- `sent, not indexed`: the same folded text sent, but mapped as an unindexed keyword (kept out of
  `_source` too): the client's folding, the larger requests and their parsing, without the
  field's analysis and postings.

Beside it, the client's own cost of a document with and without the field (`to_document` and
its JSON), which on a machine shared by client and node takes the node's cores.

    python -m bench.plugin_load --url http://localhost:9200 --docs 30000 --name plugin_load_os_30k
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Iterator

import orjson

from bench.harness import RESULTS, md_table, write_results
from bench.plugin_query import idf_head
from bench.serving import LoadSampler, documents, index_stats, node_facts, phase
from lsr_os import index as ix
from lsr_os import plugin
from lsr_os.config import ClusterConfig, split_urls
from lsr_os.engines import connect
from lsr_os.engines.base.base import Engine
from lsr_os.sparse import RecordStream

VARIANTS = ("without", "with", "with, in _source", "sent, not indexed")


@contextlib.contextmanager
def variant_mapping(variant: str) -> Iterator[None]:
    """`plugin.with_text_field` as `variant` maps the field, for the loads inside."""
    original = plugin.with_text_field

    def with_field(body, vocab_sha256, scale=plugin.DEFAULT_SCALE):
        out = original(body, vocab_sha256, scale)
        if variant == "with, in _source":
            out["mappings"]["_source"]["excludes"].remove(plugin.FIELD)
        elif variant == "sent, not indexed":
            out["mappings"]["properties"][plugin.FIELD] = {"type": "keyword", "index": False, "doc_values": False}
        return out

    plugin.with_text_field = with_field
    try:
        yield
    finally:
        plugin.with_text_field = original


def client_cost(n_docs: int, seed: int, head: Path, repeats: int = 3) -> dict:
    """Microseconds a document of `to_document` and of its JSON, with and without the folding (the
    best of `repeats` passes), the folding alone, and the JSON's bytes."""
    folding = plugin.Folding.from_head(head)
    records = list(documents(n_docs, seed))
    out: dict = {}
    for label, fold in (("without", None), ("with", folding)):
        best: dict | None = None
        for _ in range(repeats):
            t0 = time.perf_counter()
            docs = [ix.to_document(r, folding=fold) for r in records]
            t1 = time.perf_counter()
            raw = [orjson.dumps(d) for d in docs]
            t2 = time.perf_counter()
            row = {"to_document_us": (t1 - t0) / n_docs * 1e6, "json_us": (t2 - t1) / n_docs * 1e6,
                   "json_bytes": statistics.fmean(map(len, raw))}
            best = row if best is None or row["to_document_us"] < best["to_document_us"] else best
        out[label] = best
    vectors = [ix.clean(r.vector) for r in records]
    t0 = time.perf_counter()
    texts = [folding.text(v) for v in vectors]
    out["folding_us"] = (time.perf_counter() - t0) / n_docs * 1e6
    out["text_terms"] = statistics.fmean(t.count(" ") + 1 for t in texts)
    out["text_json_bytes"] = statistics.fmean(len(orjson.dumps(t)) for t in texts)
    return out


def load(engine: Engine, variant: str, n_docs: int, seed: int, head: Path, r: int) -> dict:
    alias = f"bench-plugin-load-{VARIANTS.index(variant)}"
    with variant_mapping(variant):
        report = ix.ingest(engine, RecordStream.of(documents(n_docs, seed), f"bench-plugin-load:{r}", n_docs), alias,
                           "images", ix.IngestOptions(fresh=True, force_merge=False, progress=False, shards=1,
                                                      text_field=variant != "without"),
                           head=head if variant != "without" else None)
    if report.not_swapped or report.failed or report.count != n_docs:
        raise RuntimeError(f"bench load of {alias} failed: {report.to_dict()}")
    stats = index_stats(engine, alias)
    engine.delete_indices(f"{alias}*", missing_ok=True)
    return {"load_s": report.seconds, "docs_per_s": report.docs_per_s, "store_bytes_unmerged": stats["store_bytes"],
            "load_avg_1m": os.getloadavg()[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default=None,
                    help="Cluster URL, of either engine [default: OPENSEARCH_URL or localhost:9200].")
    ap.add_argument("--docs", type=int, default=30_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--client-docs", type=int, default=10_000, help="Documents of the client-cost passes.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default="plugin_load")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()

    url = split_urls(args.url or os.environ.get("OPENSEARCH_URL"))[0]
    engine = connect(ClusterConfig(urls=(url,), timeout=600))
    if not engine.features.has_lsr_os_plugin:
        raise SystemExit(f"the {engine.display_name} cluster at {url} does not run the lsr-os plugin on every node")
    head = idf_head(Path(tempfile.gettempdir()) / f"lsr-os-bench-idf-{args.docs}-{args.seed}", args.docs, args.seed)
    sampler = LoadSampler()
    t_start = time.time()
    results: dict = {"docs": args.docs, "args": {k: str(v) for k, v in vars(args).items()}, "node": node_facts(engine)}
    results["client"] = phase(sampler, lambda: client_cost(args.client_docs, args.seed, head))
    rows: dict[str, list[dict]] = {v: [] for v in VARIANTS}

    def loads() -> dict:
        for r in range(args.rounds):
            order = VARIANTS if r % 2 == 0 else VARIANTS[::-1]
            for variant in order:
                rows[variant].append(load(engine, variant, args.docs, args.seed, head, r))
        return {"rounds": rows}

    results["loads"] = phase(sampler, loads)
    median = {v: statistics.median(run["load_s"] for run in runs) for v, runs in rows.items()}
    results["median_load_s"] = median
    results["ratio_to_without"] = {v: s / median["without"] for v, s in median.items()}
    sampler.stop()
    results["load_avg_1m_whole_run"] = sampler.between(t_start, time.time())
    print(f"results: {write_results(args.name, results, summary(results), Path(args.out))}")


def summary(r: dict) -> str:
    c, load = r["client"], r["load_avg_1m_whole_run"]
    lines = [f"{r['docs']:,} synthetic documents (bench/serving.py's) loaded by `lsr_os.index.ingest` into fresh "
             f"one-shard indices of one local {r['node']['engine']} {r['node']['version']} node (heap "
             f"{r['node']['heap_max_bytes'][0] / 2**30:.1f} GiB), client on the same 2 cores; {r['args']['rounds']} "
             f"alternating rounds, no force-merge; load average (1 min) {load['min']:.1f}-{load['max']:.1f} (mean "
             f"{load['mean']:.1f}).", ""]
    rows = [{"load": v, "median load s": r["median_load_s"][v], "x without": r["ratio_to_without"][v],
             "rounds s": ", ".join(f"{run['load_s']:.1f}" for run in r["loads"]["rounds"][v])} for v in VARIANTS]
    lines += [md_table(rows, list(rows[0])), ""]
    crow = [{"document": label, "to_document us": c[label]["to_document_us"], "JSON us": c[label]["json_us"],
             "JSON bytes": c[label]["json_bytes"]} for label in ("without", "with")]
    lines += [f"The client, a document ({r['args']['client_docs']} documents, best of 3 passes; the folding alone "
              f"{c['folding_us']:.0f} us for {c['text_terms']:.0f} terms, {c['text_json_bytes']:,.0f} bytes of "
              "JSON):", "",
              md_table(crow, list(crow[0]))]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
