"""`lsr-os encode`: bad items skipped and listed, resume after an interruption, shards that merge
in one folder, output that the training reader takes unchanged."""

from __future__ import annotations

import ast
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import lsr_os.cli as cli
from encode_helpers import BOMB_LIMIT, IMAGE_CASES, make_bad_dataset, make_tiny_blip, rgb
from lsr_os.dense_files import IMG_FILE, META_FILE, TEXT_FILE, DatasetMeta, read_embeddings
from lsr_os.errors import EXIT_FAILURES


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory):
    return make_tiny_blip(tmp_path_factory.mktemp("blip") / "tiny-blip")


@pytest.fixture
def bad(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", BOMB_LIMIT)
    return make_bad_dataset(tmp_path / "ds")


@pytest.fixture
def clean(tmp_path):
    root = tmp_path / "clean"
    (root / "img").mkdir(parents=True)
    rows = []
    for i in range(11):
        rgb(100 + i, (30 + i, 40)).save(root / "img" / f"{i}.png")
        rows += [{"image": f"img/{i}.png", "caption": f"photo {i} of a dog"},
                 {"image": f"img/{i}.png", "caption": f"cat {i}"}]
    (root / "c.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root / "c.jsonl"


def run(*args) -> "object":
    return CliRunner().invoke(cli.main, ["encode", *map(str, args)], catch_exceptions=False)


def read_all(out):
    img, txt = read_embeddings(out / IMG_FILE), read_embeddings(out / TEXT_FILE)
    return dict(zip(img.ids, img.emb)), dict(zip(txt.ids, txt.emb))


def test_bad_items_are_skipped_listed_and_the_rest_trains(blip_dir, bad, tmp_path):
    out = tmp_path / "out"
    res = run("--model", blip_dir, "--captions", bad, "--images", bad.parent / "images", "--split", "test",
              "--out", out, "--batch-size", 4, "--workers", 1, "--device", "cpu", "--json")
    assert res.exit_code == EXIT_FAILURES, res.output
    report = json.loads(res.stdout)
    good = [n for n, ok in IMAGE_CASES.items() if ok]
    assert report["images"]["encoded"] == len(good) and report["images"]["failed"] == len(IMAGE_CASES) - len(good)
    assert report["captions"]["failed"] == 2 and report["row_failures"] == 2

    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    by_source = {f["where"]: f for f in failures if f["what"] == "image"}  # the full path tried
    assert set(by_source) == {str(bad.parent / "images" / n) for n, ok in IMAGE_CASES.items() if not ok}
    assert all(f["reason"] for f in failures)
    assert sorted(f["reason"] for f in failures if f["what"] == "caption") == ["empty or whitespace-only caption"] * 2

    # What `lsr-os train` does with the folder: metadata split -> ids -> rows of both parquet tables.
    meta = DatasetMeta.load(out / META_FILE)
    split = meta.split("test")
    img, txt = read_embeddings(out / IMG_FILE), read_embeddings(out / TEXT_FILE)
    assert img.take(split.image_ids).shape == (len(good), 256)
    assert txt.take(split.caption_ids).shape[0] == len(split.caption_ids) > 0
    assert {i["filename"] for i in meta.images} == set(good)
    long_and_foreign = [c for c, t in zip(split.caption_ids, split.captions) if len(t) > 1000 or "犬" in t]
    assert len(long_and_foreign) == 2  # encoded, not failed


def test_resume_after_interruption_gives_the_one_shot_result(blip_dir, clean, tmp_path):
    common = ["--model", blip_dir, "--captions", clean, "--device", "cpu", "--batch-size", 2,
              "--text-batch-size", 3, "--part-size", 2, "--workers", 0]
    once = tmp_path / "once"
    assert run(*common, "--out", once).exit_code == 0
    resumed = tmp_path / "resumed"
    first = run(*common, "--out", resumed, "--max-batches", 2)
    assert first.exit_code == 0 and "re-run to continue" in first.output
    partial_img, partial_txt = read_all(resumed)
    assert len(partial_img) == 4 and len(partial_txt) == 6
    (resumed / IMG_FILE / ".part-000of001-00099.tmp").write_bytes(b"torn write")  # a crash mid-write
    second = run(*common, "--out", resumed)
    assert second.exit_code == 0 and "4 already done" in second.output
    assert not list((resumed / IMG_FILE).glob(".*.tmp"))
    ref_img, ref_txt = read_all(once)
    got_img, got_txt = read_all(resumed)  # read_embeddings also rejects duplicate ids
    assert sorted(got_img) == sorted(ref_img) and sorted(got_txt) == sorted(ref_txt)
    for ref, got in ((ref_img, got_img), (ref_txt, got_txt)):
        np.testing.assert_allclose(np.stack([got[i] for i in ref]), np.stack(list(ref.values())), atol=1e-5)
    third = run(*common, "--out", resumed)
    assert "0 encoded, 11 already done" in third.output
    assert (resumed / META_FILE).read_text() == (once / META_FILE).read_text()


def test_shards_write_into_one_folder_and_merge(blip_dir, clean, tmp_path):
    common = ["--model", blip_dir, "--captions", clean, "--device", "cpu", "--workers", 0]
    once, shared = tmp_path / "once", tmp_path / "shared"
    assert run(*common, "--out", once).exit_code == 0
    for i in range(3):
        assert run(*common, "--out", shared, "--shard", f"{i}/3").exit_code == 0
    assert len(list((shared / IMG_FILE).glob("part-*.parquet"))) == 3
    ref_img, ref_txt = read_all(once)
    got_img, got_txt = read_all(shared)
    assert sorted(got_img) == sorted(ref_img) and sorted(got_txt) == sorted(ref_txt)
    np.testing.assert_allclose(np.stack([got_img[i] for i in ref_img]), np.stack(list(ref_img.values())), atol=1e-5)
    assert json.loads((shared / META_FILE).read_text()) == json.loads((once / META_FILE).read_text())


def test_another_model_into_the_same_folder_is_refused(blip_dir, clean, tmp_path):
    out = tmp_path / "out"
    assert run("--model", blip_dir, "--captions", clean, "--out", out, "--collection", "captions").exit_code == 0
    other = make_tiny_blip(tmp_path / "other-blip", seed=1)
    res = CliRunner().invoke(cli.main, ["encode", "--model", str(other), "--captions", str(clean), "--out", str(out)])
    assert res.exit_code == 2 and "use another --out" in res.output


def lsr_imports(module: str) -> set[str]:
    """Every lsr_os module that `module` imports, at its top or inside a function."""
    tree = ast.parse(Path(importlib.util.find_spec(module).origin).read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return {n for n in names if n.split(".")[0] == "lsr_os"}


def test_dense_encoding_does_not_depend_on_sparse_records():
    """The data flow runs one way: dataset -> dense vectors (encode) -> sparse records (records)."""
    assert "lsr_os.encode" in lsr_imports("lsr_os.records")  # records decode images with encode's loader
    assert "lsr_os.records" not in lsr_imports("lsr_os.encode")


def test_an_image_root_holding_none_of_the_images_fails_in_one_line_before_the_model_loads(blip_dir, clean, tmp_path):
    out = tmp_path / "out"
    res = run("--model", "no-such-model", "--captions", clean, "--images", tmp_path, "--out", out)
    assert res.exit_code == 1
    assert res.output.startswith(f"Error: none of the 11 images is under the image root {tmp_path} "
                                 f"(the first tried: {tmp_path / 'img' / '0.png'}); give --images")
    assert not out.exists()
    # the captions alone need no image
    res = run("--model", blip_dir, "--captions", clean, "--images", tmp_path, "--collection", "captions",
              "--out", out, "--workers", 0)
    assert res.exit_code == 0 and "captions: 22 encoded" in res.output
