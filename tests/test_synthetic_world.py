"""The synthetic world: real vocabulary words, the authors' layout, determinism by seed."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import lsr_os.cli as cli
from lsr_os.dense_files import DatasetMeta, read_embeddings
from lsr_os.demo.synthetic import CONCEPTS, GroundTruth, generate_world, semantic_deviation, write_synthetic
from lsr_os.vocab import Vocabulary


def test_every_concept_and_synonym_is_one_vocabulary_term():
    vocab = Vocabulary.default()
    words = [w for c, syns in CONCEPTS.items() for w in (c, *syns)]
    assert [w for w in words if w not in vocab] == []
    assert len(set(words)) == len(words)


def test_world_layout_truth_and_determinism(tmp_path):
    truth = write_synthetic(tmp_path / "a", n_images=16, seed=3, n_val=2, n_test=2, encoder="bag-of-words")
    meta = DatasetMeta.load(tmp_path / "a" / "dataset_meta.json")
    img = read_embeddings(tmp_path / "a" / "img_embs.parquet")
    txt = read_embeddings(tmp_path / "a" / "text_embs.parquet")
    assert img.emb.shape == (16, 256) and txt.emb.shape == (80, 256)
    np.testing.assert_allclose(np.linalg.norm(img.emb, axis=1), 1, atol=1e-5)
    test = meta.split("test")
    assert len(test.image_ids) == 2 and len(test.caption_ids) == 10 and len(meta.split("train").image_ids) == 12
    for image in meta.images:
        terms = truth.relevant_terms(str(image["imgid"]))
        assert 2 <= len(truth.image_concepts[str(image["imgid"])]) <= 3
        for s in image["sentences"]:  # every concept is mentioned, by itself or by a synonym
            words = set(s["raw"].replace(",", " ").split())
            for c in truth.image_concepts[str(image["imgid"])]:
                assert words & {c, *truth.synonyms[c]}, (c, s["raw"])
            assert words & terms
    assert GroundTruth.load(tmp_path / "a" / "ground_truth.json").image_concepts == truth.image_concepts
    again = generate_world(16, seed=3, n_val=2, n_test=2, encoder="bag-of-words")
    np.testing.assert_array_equal(again.img_emb, img.emb)
    assert again.captions == [s["raw"] for im in meta.images for s in im["sentences"]]
    other = generate_world(16, seed=4, n_val=2, n_test=2, encoder="bag-of-words")
    assert other.captions != again.captions


def test_semantic_deviation():
    truth = GroundTruth({"1": ["dog"], "2": ["car", "cat"]}, {"dog": ["puppy"], "car": ["sedan"], "cat": ["kitty"]})
    assert semantic_deviation({"1": ["dog", "puppy", "the"], "2": ["sedan", "kitty", "dog"]}, truth) == pytest.approx(2 / 6)


def test_cli_synth_then_sparsify_with_and_without_expansion(tmp_path):
    from lsr_os.models.head import SparseHead

    runner = CliRunner()
    res = runner.invoke(cli.main, ["synth", "--out", str(tmp_path / "w"), "--num-images", "12", "--seed", "1",
                                   "--encoder", "bag-of-words", "--val", "3", "--test", "2"])
    assert res.exit_code == 0, res.output
    meta = DatasetMeta.load(tmp_path / "w" / "dataset_meta.json")
    assert [len(meta.split(s).image_ids) for s in ("train", "val", "test")] == [7, 3, 2]
    head = SparseHead(dense_size=256, hidden_size=16)
    head.save_pretrained(tmp_path / "head")
    common = ["sparsify", "--head", str(tmp_path / "head"), "--dense", str(tmp_path / "w"), "--device", "cpu"]
    res = runner.invoke(cli.main, [*common, "--out", str(tmp_path / "all"), "--collection", "images", "--top-k", "20"])
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in (tmp_path / "all" / "images.jsonl").read_text().splitlines()]
    assert len(lines) == 12 and all(len(x["vector"]) <= 20 for x in lines)
    assert all(w > 0 for x in lines for w in x["vector"].values())
    assert {x["split"] for x in lines} == {"train", "val", "test"} and all(x["image"] for x in lines)
    out = str(tmp_path / "test")
    res = runner.invoke(cli.main, [*common, "--out", out, "--no-expansion", "--split", "test"])
    assert res.exit_code == 0, res.output
    raw = {str(s["sentid"]): s["raw"] for im in meta.images for s in im["sentences"]}
    caps = [json.loads(x) for x in (tmp_path / "test" / "captions.jsonl").read_text().splitlines()]
    assert len(caps) == len(meta.split("test").caption_ids)
    assert all(c["caption"] == raw[c["id"]] and c["split"] == "test" and c["image_id"] for c in caps)
    tok = head.tokenizer
    for c in caps:  # no expansion: only the caption's own word pieces (a fresh head blocks no special token)
        assert set(c["vector"]) <= set(tok.tokenize(raw[c["id"]])) | {"[CLS]", "[SEP]"}
    # resume: nothing new to write; another source into the same folder is refused
    res = runner.invoke(cli.main, [*common, "--out", out, "--no-expansion", "--split", "test"])
    assert res.exit_code == 0 and "wrote 0 to" in res.output and "already there" in res.output
    res = runner.invoke(cli.main, [*common, "--out", out, "--split", "test"])
    assert res.exit_code == 2 and "another source" in res.output
    res = runner.invoke(cli.main, ["sparsify", "--head", str(tmp_path / "w"), "--dense", str(tmp_path / "w"),
                                   "--out", str(tmp_path / "x")])
    assert res.exit_code != 0 and "config.json does not exist" in res.output

