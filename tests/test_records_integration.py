"""One record schema end to end on a real node of each engine: sparsify -> ingest --sparse -> search --split ->
evaluate needs nothing else; dense files and the dataset they came from load the same documents."""

from __future__ import annotations

import json
import shutil

import pytest

from encode_helpers import make_tiny_blip, rgb
from index_helpers import cli
from lsr_os.data import load_dataset
from lsr_os.encode import EncodeOptions, encode_dataset
from lsr_os.models import load_encoder
from lsr_os.models.head import SparseHead

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A Karpathy dataset (train, restval, val, test; 3 captions an image), its dense files, a head."""
    root = tmp_path_factory.mktemp("rt")
    (root / "img").mkdir()
    images = []
    for i in range(16):
        split = ("train", "restval", "val", "test")[i % 4]
        rgb(100 + i).save(root / "img" / f"{i}.png")
        images.append({"imgid": i, "split": split, "filepath": "img", "filename": f"{i}.png",
                       "sentences": [{"sentid": 100 * i + j, "raw": f"photo {i} variant {j}"} for j in range(3)]})
    (root / "karpathy.json").write_text(json.dumps({"dataset": "rt", "images": images}))
    blip = make_tiny_blip(root / "blip")
    encode_dataset(load_encoder(blip, device="cpu"), load_dataset(data=root / "karpathy.json", images=root),
                   root / "dense", EncodeOptions(progress=False))
    SparseHead.init_offline(dense_size=256).save_pretrained(root / "head")
    return root


def served_ids(engine, alias: str) -> set[str]:
    engine.refresh(alias)
    return set(engine.ids(alias))


def test_sparsify_ingest_search_evaluate_round_trip_needs_no_metadata_file(engine, index_name, world, tmp_path):
    out = tmp_path / "sparse"
    res = cli(engine, "sparsify", "--dense", world / "dense", "--head", world / "head", "--device", "cpu",
              "--out", out)
    assert res.exit_code == 0, res.output
    res = cli(engine, "ingest", "--sparse", out, "--prefix", index_name, "--failures", tmp_path / "f.jsonl")
    assert res.exit_code == 0, res.output  # both collections from the folder
    assert served_ids(engine, f"{index_name}-images") == {str(i) for i in range(16)}
    # search --split test finds labelled hits
    query = json.loads((out / "captions.jsonl").read_text().splitlines()[0])["vector"]
    res = cli(engine, "search", "--vector-json", json.dumps(query), "--prefix", index_name, "--split", "test",
              "-k", "3", "--json")
    assert res.exit_code == 0, res.output
    hits = json.loads(res.output)["hits"]
    assert len(hits) == 3 and all(h["split"] == "test" and h["image"].startswith("img/") for h in hits)
    res = cli(engine, "search", "--vector-json", json.dumps(query), "--prefix", index_name, "--collection", "captions",
              "--split", "train", "-k", "50", "--json")
    splits = {h["split"] for h in json.loads(res.output)["hits"]}
    assert splits == {"train", "restval"}  # one split rule: train includes restval
    # evaluate reads split and image_id from the records themselves
    res = cli(engine, "evaluate", "--sparse", out, "--prefix", index_name, "--out", tmp_path / "eval")
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["t2i"]["queries"] == 12 and report["t2i"]["documents"] == 4
    assert report["t2i"]["parity"]["top10_overlap"] >= 0.99


def test_dense_and_dataset_ingest_of_train_index_the_same_ids(engine, index_name, world, tmp_path):
    common = ["--head", world / "head", "--device", "cpu", "--split", "train"]
    res = cli(engine, "ingest", "--dense", world / "dense", *common, "--prefix", f"{index_name}-d",
              "--failures", tmp_path / "d.jsonl")
    assert res.exit_code == 0, res.output
    res = cli(engine, "ingest", "--data", world / "karpathy.json", "--images", world, "--model", world / "blip",
              *common, "--workers", "0", "--prefix", f"{index_name}-k", "--failures", tmp_path / "k.jsonl")
    assert res.exit_code == 0, res.output
    for collection in ("images", "captions"):
        dense = served_ids(engine, f"{index_name}-d-{collection}")
        data = served_ids(engine, f"{index_name}-k-{collection}")
        assert dense == data and len(dense) == (8 if collection == "images" else 24)
    doc = engine.get_document(f"{index_name}-d-captions", "101")["_source"]
    assert {k: doc[k] for k in ("dataset", "split", "image", "image_id", "caption")} == {
        "dataset": "rt", "split": "restval", "image": "img/1.png", "image_id": "1", "caption": "photo 1 variant 1"}


def test_evaluate_on_a_captions_file_without_splits_names_split_all(engine, index_name, world, tmp_path):
    for collection in ("images", "captions"):  # evaluate checks its indices before it reads the source
        engine.create_index(f"{index_name}-{collection}", {})
    rgb(1).save(tmp_path / "a.png")
    (tmp_path / "c.csv").write_text("image,caption\na.png,a dog\n")
    res = cli(engine, "evaluate", "--captions", tmp_path / "c.csv", "--model", world / "blip", "--head", world / "head",
              "--prefix", index_name, "--out", tmp_path / "eval")
    assert res.exit_code == 1, res.output
    assert "no images in split test" in res.output and "--split all" in res.output


def dataset_args(world, head):
    return ["--data", world / "karpathy.json", "--images", world, "--model", world / "blip", "--head", head,
            "--device", "cpu", "--workers", "0"]


def head_of_size(folder, dense_size):
    SparseHead.init_offline(dense_size=dense_size).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("case", ["head-folder-above", "model-unknown", "head-size-vs-encoder", "head-size-vs-dense",
                                  "dense-captions-missing", "no-image-under-root"])
def test_every_input_is_checked_before_any_index_is_created(engine, index_name, world, tmp_path, case):
    """A bad input fails in one line before the first index of either collection exists, so no
    unfinished index is left behind for the next run to delete."""
    if case == "head-folder-above":  # the training run's folder instead of its checkpoint
        shutil.copytree(world / "head", tmp_path / "run" / "best")
        args, expected = dataset_args(world, tmp_path / "run"), f"give --head {tmp_path / 'run' / 'best'}"
    elif case == "model-unknown":
        args = [*dataset_args(world, world / "head")[:4], "--model", tmp_path / "no-model",
                *dataset_args(world, world / "head")[6:]]
        expected = f"unknown encoder '{tmp_path / 'no-model'}'"
    elif case == "head-size-vs-encoder":
        args, expected = dataset_args(world, head_of_size(tmp_path / "h64", 64)), "256-d"
    elif case == "head-size-vs-dense":
        args = ["--dense", world / "dense", "--head", head_of_size(tmp_path / "h64", 64), "--device", "cpu"]
        expected = "256-d"
    elif case == "dense-captions-missing":  # the images collection would load first
        shutil.copytree(world / "dense", tmp_path / "dense")
        shutil.rmtree(tmp_path / "dense" / "text_embs.parquet")
        args = ["--dense", tmp_path / "dense", "--head", world / "head", "--device", "cpu"]
        expected = f"{tmp_path / 'dense' / 'text_embs.parquet'} does not exist"
    else:
        (tmp_path / "elsewhere").mkdir()
        args = [*dataset_args(world, world / "head")[:2], "--images", tmp_path / "elsewhere",
                *dataset_args(world, world / "head")[4:]]
        expected = (f"none of the 16 images is under the image root {tmp_path / 'elsewhere'} "
                    f"(the first tried: {tmp_path / 'elsewhere' / 'img' / '0.png'})")
    res = cli(engine, "ingest", *args, "--prefix", index_name, "--failures", tmp_path / "f.jsonl")
    assert res.exit_code in (1, 2), res.output
    errors = [line for line in res.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and expected in errors[0], res.output
    assert not engine.mappings(f"{index_name}*")
