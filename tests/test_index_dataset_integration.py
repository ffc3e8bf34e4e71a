"""`lsr-os ingest` straight from a dataset (tiny random BLIP + head, encoded on the fly) against a
real node of each engine: good items indexed with their metadata, bad ones listed, re-run
idempotent, resume."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from PIL import Image

from encode_helpers import BOMB_LIMIT, IMAGE_CASES, make_bad_dataset, make_tiny_blip, rgb
from index_helpers import cli, load
from lsr_os import index as ix
from lsr_os.data import load_dataset
from lsr_os.errors import EXIT_FAILURES, EXIT_NOT_SWAPPED
from lsr_os.records import SourceOptions, open_source
from lsr_os.sparse import RecordStream, SparseRecord
from lsr_os.models.head import SparseHead

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    blip = make_tiny_blip(root / "tiny-blip")
    SparseHead.init_offline(dense_size=256).save_pretrained(root / "head")
    return blip, root / "head"


@pytest.fixture
def bad(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", BOMB_LIMIT)  # in-process decoding: --workers 0
    return make_bad_dataset(tmp_path / "ds")


def ingest_args(captions, models, index, collection, failures):
    blip, head = models
    return ["ingest", "--captions", str(captions), "--images", str(captions.parent / "images"), "--model", str(blip),
            "--head", str(head), "--collection", collection, "--index", index, "--workers", "0",
            "--batch-size", "4", "--text-batch-size", "5", "--chunk-docs", "3", "--failures", str(failures)]


def docs(engine, index):
    """{id: _source} of every document, its sparse vector included (on every engine)."""
    engine.refresh(index)
    body = {"size": 100, "query": {"match_all": {}}, "_source": engine.ops.source_filter(["*"], with_vectors=True)}
    return {h["_id"]: h["_source"] for h in engine.search(index, body)["hits"]["hits"]}


def test_images_good_indexed_with_metadata_bad_listed_rerun_idempotent(engine, index_name, bad, models, tmp_path):
    dataset = load_dataset(captions=bad, images=bad.parent / "images")
    by_path = {img.path: img.id for img in dataset.images}
    good = {by_path[name] for name, ok in IMAGE_CASES.items() if ok}
    failed = {by_path[name] for name, ok in IMAGE_CASES.items() if not ok}
    failures = tmp_path / "failures.jsonl"

    res = cli(engine, *ingest_args(bad, models, index_name, "images", failures))
    assert res.exit_code == EXIT_FAILURES, res.output  # a first load serves the good items and says some failed
    indexed = docs(engine, index_name)
    assert set(indexed) == good
    first = indexed[by_path["good1.jpg"]]
    assert {k: first[k] for k in ("id", "split", "image", "dataset")} == {
        "id": by_path["good1.jpg"], "split": "test", "image": "good1.jpg", "dataset": "captions"}
    assert first["terms"] and first["sparse"]  # a real sparse vector through the head
    listed = [json.loads(line) for line in failures.read_text().splitlines()]
    assert {f["id"] for f in listed if f["id"] is not None} == failed
    assert all(f["what"] in ("image", "row") and f["reason"] for f in listed)
    assert sum(f["id"] is None for f in listed) == 2  # the captions file's unreadable rows
    assert f"{len(good)} documents ({len(good)} sent, {len(listed)} failed" in res.output

    # A replacement with the same failures is served only when they are allowed.
    again = cli(engine, *ingest_args(bad, models, index_name, "images", failures), "--max-failed", str(len(listed)),
                "--json")
    assert again.exit_code == EXIT_FAILURES, again.output
    report = json.loads(again.stdout)
    assert report["count"] == len(good) and report["created"] == len(good) and report["replaced"]
    assert engine.count(index_name) == len(good)
    assert docs(engine, index_name) == indexed


def test_captions_metadata_empty_ones_listed_and_an_interrupted_load_resumes(engine, index_name, bad, models,
                                                                             tmp_path):
    dataset = load_dataset(captions=bad, images=bad.parent / "images")
    empty = {c.id for c in dataset.captions if not c.text.strip()}
    good = {c.id for c in dataset.captions} - empty
    blip, head = models
    source = open_source(SourceOptions(captions=bad, images=bad.parent / "images", model=str(blip), head=head,
                                       workers=0, text_batch_size=5))
    stream = source.stream("captions")

    def stops_halfway(done, on_failure):
        for n, record in enumerate(stream.records(done, on_failure)):
            if n == 10:
                raise KeyboardInterrupt
            yield record

    with pytest.raises(KeyboardInterrupt):
        ix.ingest(engine, RecordStream(stops_halfway, stream.source), index_name, "captions",
                  ix.IngestOptions(chunk_docs=3, progress=False))
    assert not engine.is_alias(index_name)

    engine.refresh(f"{index_name}-v*")  # a loading index refreshes only when asked
    before = engine.count(f"{index_name}-v*")
    assert before > 0
    encoded = []
    original = SparseHead.encode

    def counting_encode(self, dense, *args, **kwargs):
        encoded.append(len(dense))
        return original(self, dense, *args, **kwargs)

    failures = tmp_path / "failures.jsonl"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SparseHead, "encode", counting_encode)
        res = cli(engine, *ingest_args(bad, models, index_name, "captions", failures))
    assert res.exit_code == EXIT_FAILURES, res.output
    assert f"resumed: {before} already there" in res.output
    # the captions the unfinished index held were neither encoded nor sent again
    assert sum(encoded) == len(good) - before and f"({len(good) - before} sent" in res.output
    indexed = docs(engine, index_name)
    assert set(indexed) == good
    cat = next(c for c in dataset.captions if c.text == "a cat in the training split")
    doc = indexed[cat.id]
    assert doc["caption"] == cat.text and doc["image_id"] == cat.image_id and doc["image"] == "good3.jpg"
    assert doc["split"] == "test"  # a caption takes its image's split (the image's first row)
    listed = [json.loads(line) for line in failures.read_text().splitlines()]
    assert {f["id"] for f in listed if f["what"] == "caption"} == empty
    assert all("empty" in f["reason"] for f in listed if f["what"] == "caption")


def test_dataset_input_needs_model_and_head_before_any_cluster_call(bad):
    from lsr_os.cli import main

    res = CliRunner().invoke(main, ["ingest", "--captions", str(bad), "--url", "http://127.0.0.1:9"])
    assert res.exit_code == 2 and "--model" in res.output and "--head" in res.output
    res = CliRunner().invoke(main, ["ingest", "--sparse", str(bad), "--captions", str(bad), "--collection", "images",
                                    "--url", "http://127.0.0.1:9"])
    assert res.exit_code == 2 and "give one source" in res.output


def captions_csv(path, images):
    path.write_text("image,caption\n" + "".join(f"{name},a picture called {name}\n" for name in images))
    return path


def meta(engine, alias):
    (body,) = engine.mappings(alias).values()
    return body["_meta"]["lsr_os"]


def test_each_index_records_its_absolute_image_root(engine, index_name, models, tmp_path, monkeypatch):
    blip, head = models
    (tmp_path / "mine" / "pics").mkdir(parents=True)
    for i in range(2):
        rgb(i).save(tmp_path / "mine" / "pics" / f"{i}.png")
    monkeypatch.chdir(tmp_path)  # a relative --images is recorded absolute
    common = ["--model", str(blip), "--head", str(head), "--workers", "0"]
    res = cli(engine, "ingest", "--captions", str(captions_csv(tmp_path / "mine" / "captions.csv", ["0.png", "1.png"])),
              "--images", "mine/pics", *common, "--prefix", index_name, "--failures", str(tmp_path / "f.jsonl"))
    assert res.exit_code == 0, res.output
    for collection in ("images", "captions"):
        assert meta(engine, f"{index_name}-{collection}")["images"] == str(tmp_path / "mine" / "pics")
        assert ix.image_root(engine, f"{index_name}-{collection}") == tmp_path / "mine" / "pics"
    # without --images the root is the captions file's folder
    captions = captions_csv(tmp_path / "mine" / "pics" / "captions.csv", ["0.png", "1.png"])
    res = cli(engine, "ingest", "--captions", str(captions), *common, "--collection", "images",
              "--prefix", f"{index_name}-d", "--failures", str(tmp_path / "d.jsonl"))
    assert res.exit_code == 0, res.output
    assert meta(engine, f"{index_name}-d-images")["images"] == str(tmp_path / "mine" / "pics")
    # sparse records name no root
    load(engine, [SparseRecord("1", {"dog": 1.0})], f"{index_name}-s")
    assert "images" not in meta(engine, f"{index_name}-s") and ix.image_root(engine, f"{index_name}-s") is None


def test_when_every_image_fails_the_captions_are_not_served_without_them(engine, index_name, models, tmp_path):
    blip, head = models
    for name in ("a.jpg", "b.jpg", "c.jpg"):  # there, but no image Pillow can read (HEIC photos renamed, say)
        (tmp_path / name).write_text("not a picture")
    args = ["ingest", "--captions", str(captions_csv(tmp_path / "captions.csv", ["a.jpg", "b.jpg", "c.jpg"])),
            "--model", str(blip), "--head", str(head), "--workers", "0", "--prefix", index_name,
            "--failures", str(tmp_path / "f.jsonl")]
    res = cli(engine, *args)
    assert res.exit_code == EXIT_NOT_SWAPPED, res.output
    assert (f"{index_name}-captions: not loaded, since every image of this run failed (3 failures, listed in "
            f"{tmp_path / 'f-images.jsonl'})") in res.output and "--allow-empty" in res.output
    assert not engine.is_alias(f"{index_name}-images")
    assert not engine.mappings(f"{index_name}-captions*")  # nothing created
    listed = [json.loads(line) for line in (tmp_path / "f-images.jsonl").read_text().splitlines()]
    assert {f["where"] for f in listed} == {str(tmp_path / n) for n in ("a.jpg", "b.jpg", "c.jpg")}
    # --allow-empty says an empty images collection is what is wanted: both are served
    res = cli(engine, *args, "--allow-empty")
    assert res.exit_code == EXIT_FAILURES, res.output
    assert engine.count(f"{index_name}-images") == 0
    assert engine.count(f"{index_name}-captions") == 3
