"""The plugin bench (bench/plugin_query.py) runs every part at a tiny size against each engine's
real node with the plugin, so the evidence behind the plugin page's figures cannot rot unnoticed.
Its figures here mean nothing (a thousand documents, one round); only that every part runs, that
the two queries agree, and that it reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from plugin_helpers import require_plugin

ROOT = Path(__file__).resolve().parent.parent
DOCS = 1234  # the bench names its indices bench-plugin-<docs>...: a size no real run uses

pytestmark = pytest.mark.integration


def test_every_part_of_the_plugin_bench_runs_and_reports(engine, tmp_path):
    require_plugin(engine)
    engine.delete_indices(f"bench-plugin-{DOCS}*", missing_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "bench.plugin_query", "--docs", str(DOCS), "--queries", "20", "--rounds", "1",
         "--repeats", "3", "--ingest-docs", "300", "--ingest-rounds", "1", "--baseline-index", "--no-force-merge",
         "--url", engine.config.urls[0], "--name", "tiny", "--out", str(tmp_path), "--drop"],
        capture_output=True, text=True, cwd=ROOT, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "tiny.json").read_text())["results"]
    assert results["index"]["docs"] == DOCS and results["baseline_index"]["docs"] == DOCS
    assert results["index"]["report"]["text_field"] and not results["baseline_index"]["report"]["text_field"]
    query = results["query"]
    sparse = {"opensearch": "rank_feature", "elasticsearch": "sparse_vector"}[engine.name]  # what the engine runs
    assert query["sparse_query"] == sparse and set(query["systems"]) == {"match on text", f"{sparse} on sparse"}
    assert query["queries"]["searched"] == 20 and query["queries"]["terms_min"] >= 1
    for system in query["systems"].values():  # both score what exact scoring scores
        assert system["top10_overlap_ties_vs_exact"] == 1.0 and system["took"]["n"] == 20
        assert system["server_repeated"]["n"] == 20 and system["server_repeated"]["mean_ms"] > 0
    assert query["match_vs_sparse_top10_overlap"] > 0.9
    ingest = results["ingest"]
    assert ingest["ratios"]["store_bytes"] > 0 and ingest["with the text field"]["rounds"][0]["docs"] == 300
    summary = (tmp_path / "tiny.md").read_text()
    assert f"match / {sparse}: server time p50" in summary and "## Machine" in summary and "Load average" in summary
    assert f"One local {engine.display_name} {engine.version} node" in summary
    assert engine.index(f"bench-plugin-{DOCS}*") == {}  # --drop left nothing
    assert engine.index("bench-plugin-ingest-300-*") == {}


def test_the_load_breakdown_bench_runs_every_variant_and_reports(engine, tmp_path):
    """bench/plugin_load.py at a tiny size: every variant loads all documents and is deleted after."""
    require_plugin(engine)
    done = subprocess.run(
        [sys.executable, "-m", "bench.plugin_load", "--docs", "300", "--rounds", "1", "--client-docs", "100",
         "--url", engine.config.urls[0], "--name", "tiny-load", "--out", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "tiny-load.json").read_text())["results"]
    assert set(results["median_load_s"]) == {"without", "with", "with, in _source", "sent, not indexed"}
    assert results["ratio_to_without"]["without"] == 1.0 and all(s > 0 for s in results["median_load_s"].values())
    client = results["client"]
    assert client["with"]["json_bytes"] > client["without"]["json_bytes"] and client["text_terms"] > 10
    assert f"one local {engine.display_name} {engine.version} node" in (tmp_path / "tiny-load.md").read_text()
    assert engine.index("bench-plugin-load-*") == {}
