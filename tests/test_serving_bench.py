"""The serving bench (bench/serving.py) runs every part at a tiny size against a real node of each
engine, so the evidence behind the README's serving figures cannot rot unnoticed. Its figures here
mean nothing (a few hundred documents, one round); only that every part runs and reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = 1234  # the bench names its indices bench-<docs>...: a size no real run uses

pytestmark = pytest.mark.integration


def test_every_part_of_the_serving_bench_runs_and_reports(engine, tmp_path):
    engine.delete_indices(f"bench-{DOCS}*", missing_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "bench.serving", "--docs", str(DOCS), "--queries", "12", "--rounds", "1",
         "--settings-rounds", "1", "--cli-queries", "1", "--ingest-docs", "400", "--ingest-rounds", "1",
         "--doc-pruning", "top_k=32", "--shards", "2", "--no-force-merge", "--url", engine.config.urls[0],
         "--name", "tiny", "--out", str(tmp_path), "--drop"],
        capture_output=True, text=True, cwd=ROOT, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "tiny.json").read_text())["results"]
    assert (results["node"]["engine"], results["node"]["version"]) == (engine.display_name, engine.version)
    assert results["index"]["docs"] == DOCS and results["index_novec"]["docs"] == DOCS
    assert set(results["query_overhead"]["p50_ratio_to_raw"]) == {"Searcher.search", "run_search", "exact CSR"}
    assert results["cli_process"]["p50_ratio"] > 0 and results["cli_process"]["total_import_ms"] > 0
    assert results["cli_process"]["client"] == type(engine.client).__module__.split(".")[0]  # the engine's own
    full = results["query_settings"]["full query"]["parity"]
    assert full["top10_overlap_ties"] == 1.0  # the engine scores what exact scoring scores
    assert set(results["variants"]) == {"1 shard, vector in _source", "1 shard, vector left out of _source",
                                        "2 shards (split), vector in _source", "1 shard, documents pruned: top-k 32"}
    assert results["ingest"]["docs"] == 400 and results["ingest"]["ratio"] > 0
    summary = (tmp_path / "tiny.md").read_text()
    assert "### Query path" in summary and "## Machine" in summary and "load avg" in summary
    assert f"one local {engine.display_name} {engine.version} node" in summary
    assert engine.mappings(f"bench-{DOCS}*") == {} and engine.mappings("bench-ingest-*") == {}  # --drop left nothing
