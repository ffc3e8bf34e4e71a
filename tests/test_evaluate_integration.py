"""Integration tier on every engine: `lsr-os evaluate` through the engine's node agrees with exact
in-memory scoring, for every text query mode."""

import json

import numpy as np
import pytest

from index_helpers import cli
from lsr_os.sparse import SparseRecord, write_jsonl

pytestmark = pytest.mark.integration


def _assert_agreement(report: dict) -> None:
    for direction in ("t2i", "i2t"):
        sec = report[direction]
        assert sec["parity"]["top10_overlap"] >= 0.99
        for key, value in sec["exact"]["metrics"].items():
            # equal up to a near-tie swapped at rank 10 in at most 1% of the queries
            assert sec["cluster"]["metrics"][key] == pytest.approx(value, abs=0.01), (direction, key)
        assert sec["cluster"]["latency_took"]["n"] == sec["queries"] - sec["queries_without_terms"]


def test_evaluate_sparse_files_both_directions(engine, index_name, tmp_path):
    rng = np.random.default_rng(5)
    terms = [f"t{i}" for i in range(150)] + [".", "##s", "[UNK]"]
    images, captions = [], []
    for i in range(120):
        split = "test" if i < 60 else "train"  # the index holds both splits: evaluate filters
        topic = rng.choice(len(terms), 12, replace=False)
        images.append(SparseRecord(f"i{i}", {terms[j]: float(rng.uniform(0.2, 2)) for j in topic}, {"split": split}))
        for c in range(5):
            own = rng.choice(topic, 4, replace=False)
            noise = rng.choice(len(terms), 3, replace=False)
            vec = {terms[j]: float(rng.uniform(0.2, 2)) for j in list(own) + list(noise)}
            captions.append(SparseRecord(f"c{i}-{c}", vec, {"split": split, "image_id": f"i{i}",
                                                             "caption": f"caption {c} of {i}"}))
    write_jsonl(tmp_path / "images.jsonl", images)
    write_jsonl(tmp_path / "captions.jsonl", captions)
    for coll in ("images", "captions"):
        res = cli(engine, "ingest", "--sparse", tmp_path / f"{coll}.jsonl", "--collection", coll, "--prefix", index_name,
                  "--failures", tmp_path / f"f-{coll}.jsonl")
        assert res.exit_code == 0, res.output
    res = cli(engine, "evaluate", "--sparse", tmp_path, "--prefix", index_name, "--out", tmp_path / "eval",
              "--query-batch", "16")
    assert res.exit_code == 0, res.output
    assert "text -> image: 300 queries, 60 documents" in res.output
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    _assert_agreement(report)
    assert report["t2i"]["sparsity"]["document_terms"] == 12.0  # every image has 12 terms
    assert 0 < report["i2t"]["sparsity"]["query_terms"] <= 12.0
    assert report["t2i"]["sparsity"]["flops"] > 0 and "sparsity FLOPs" in res.output
    assert report["t2i"]["cluster"]["metrics"]["R@10"] > 0.5  # the captions do describe their images
    lines = (tmp_path / "eval" / "t2i.cluster.trec").read_text().splitlines()
    assert lines[0].split()[1] == "Q0" and len({ln.split()[0] for ln in lines}) == 300
    # a mismatch between files and index is a clear error, not a silently wrong figure
    res = cli(engine, "evaluate", "--sparse", tmp_path, "--prefix", index_name, "--split", "train", "--out", tmp_path / "e2",
              "--images-index", f"{index_name}-captions")
    assert res.exit_code != 0 and "holds" in res.output


def test_evaluate_synthetic_world_through_the_cluster_agrees_with_memory(engine, index_name, tmp_path):
    import torch

    from lsr_os.demo.synthetic import write_synthetic
    from lsr_os.models.head import SparseHead
    from lsr_os.static_query import content_term_mask

    world = tmp_path / "world"
    write_synthetic(world, n_images=64, seed=3)
    head_dir = tmp_path / "head"
    head = SparseHead.init_offline(seed=0)
    terms = head.terms  # query weights (1 + id / V on every content term): the inference-free mode too
    head.query_weights = (1.0 + torch.arange(len(terms)) / len(terms)) * torch.tensor(
        content_term_mask(terms, head.tokenizer.all_special_tokens))
    head.save_pretrained(head_dir)
    res = cli(engine, "ingest", "--dense", world, "--head", head_dir, "--prefix", index_name, "--top-k", "256",
              "--failures", tmp_path / "f.jsonl", "--json")
    assert res.exit_code == 0, res.output
    decoder, reports, at = json.JSONDecoder(), [], 0
    while res.output[at:].strip():
        obj, at = decoder.raw_decode(res.output, at + len(res.output[at:]) - len(res.output[at:].lstrip()))
        reports.append(obj)
    # one --failures path, two collections: each gets its own file instead of overwriting the other's
    assert [r["failures_file"] for r in reports] == [str(tmp_path / "f-images.jsonl"), str(tmp_path / "f-captions.jsonl")]
    # an unfinished load resumes only from the same input: the splits are part of that key
    from lsr_os.records import SourceOptions, open_source

    keys = {open_source(SourceOptions(dense=world, head=head_dir, split=s)).stream("images").source
            for s in (None, "test")}
    assert len(keys) == 2
    res = cli(engine, "evaluate", "--dense", world, "--head", head_dir, "--prefix", index_name, "--max-terms", "256",
              "--top-k", "256", "--out", tmp_path / "eval")
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert "dense" in report["t2i"] and (tmp_path / "eval" / "i2t.dense.trec").exists()
    assert report["t2i"]["documents"] == 8 and report["t2i"]["queries"] == 40
    _assert_agreement(report)
    assert report["t2i"]["mode"] == "expanded" and set(report["t2i_modes"]) == {"expanded", "own-tokens", "inference-free"}
    for mode, section in report["t2i_modes"].items():  # every text query mode scores as exact scoring does
        assert section["parity"]["top10_overlap"] >= 0.99, mode
        assert section["cluster"]["latency_took"]["n"] == section["queries"] - section["queries_without_terms"] > 0
        for key, value in section["exact"]["metrics"].items():
            assert section["cluster"]["metrics"][key] == pytest.approx(value, abs=0.01), (mode, key)
