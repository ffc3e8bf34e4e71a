"""bench/serve.py runs every part at a tiny size against a real node of each engine (the tiny world of
serve_helpers, two of its client counts, one round), so the evidence behind the serve figures
cannot rot unnoticed. Its figures here mean nothing; only that every part runs and reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from serve_helpers import tiny_world, weighted_head

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.integration


def test_every_part_of_the_serve_bench_runs_and_reports(engine, tmp_path_factory, tmp_path):
    with tiny_world(engine, tmp_path_factory, "bench") as tiny:
        meta = {"images": [{"imgid": i, "split": "test", "filename": path,
                            "sentences": [{"raw": caption} for caption in tiny.captions[i]]}
                           for i, path in enumerate(tiny.images)]}
        (tiny.image_root / "dataset_meta.json").write_text(json.dumps(meta))
        demo = tmp_path / "demo"
        demo.mkdir()
        (demo / "search.json").write_text(json.dumps({"model": str(tiny.model), "head": str(tiny.head),
                                                      "prefix": tiny.prefix, "images": str(tiny.image_root)}))
        done = subprocess.run(
            [sys.executable, "bench/serve.py", "--demo", str(demo), "--head", str(weighted_head(tiny)), "--url",
             engine.config.urls[0], "--queries", "6", "--clients", "1,2", "--rounds", "1", "--processes", "1",
             "--models", "demo", "--name", "tiny", "--out", str(tmp_path)],
            capture_output=True, text=True, cwd=ROOT, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "tiny.json").read_text())["results"]
    assert results["engine"] == f"{engine.display_name} {engine.version}"
    cells = {(r["query"], r["where"], r["clients / batch"]) for r in results["summary"]}
    assert cells == {(q, w, n) for q in ("inference-free", "vector (baseline)", "demo encoder")
                     for w in ("serve", "in process") for n in (1, 2)}
    assert {r["system"] for r in results["processes"]} == {"lsr-os search TEXT (inference-free)",
                                                           "lsr-os search --vector-json"}
    assert all(r["q/s"] > 0 for r in results["summary"]) and len(results["goals"]) == 3  # no BLIP: no 10x goal
    summary = (tmp_path / "tiny.md").read_text()
    assert "Goals:" in summary and "## Machine" in summary and "load avg" in summary
    assert f"the {engine.display_name} {engine.version} node share" in summary
