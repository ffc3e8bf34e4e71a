"""Datasets: Karpathy JSON and captions files, split selection, path safety, robust image loading."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from encode_helpers import BOMB_LIMIT, IMAGE_CASES, make_bad_dataset, rgb
from lsr_os import data as data_lib
from lsr_os.data import ImageLoadError, caption_problem, load_captions_file, load_image, resolve_image
from lsr_os.errors import ConfigError, DataError


@pytest.fixture
def bad_dataset(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", BOMB_LIMIT)
    return make_bad_dataset(tmp_path)


EXPECTED_REASON = {
    "truncated.jpg": "truncated", "corrupt.jpg": "not an image", "empty.jpg": "empty file",
    "missing.jpg": "not found", "not_image.jpg": "not an image", "bomb_warn.png": "decompression bomb",
    "bomb_error.png": "decompression bomb", "../outside.jpg": "leaves the image root", "/etc/hostname": "absolute",
}


def test_every_bad_image_fails_with_its_reason_and_good_ones_load(bad_dataset):
    root = bad_dataset.parent / "images"
    for name, ok in IMAGE_CASES.items():
        if ok:
            im = load_image(resolve_image(root, name))
            assert im.mode == "RGB", name
        else:
            with pytest.raises(ImageLoadError, match=EXPECTED_REASON[name]):
                load_image(resolve_image(root, name))


def test_modes_are_converted_faithfully(bad_dataset):
    root = bad_dataset.parent / "images"
    assert Image.open(root / "grey16.png").mode.startswith("I")  # really a 16-bit file
    grey16 = np.asarray(load_image(root / "grey16.png"))
    assert grey16.max() > 200 and len(np.unique(grey16)) > 100  # scaled to 8 bits, not clipped to white
    rgba = np.asarray(load_image(root / "rgba.png")).astype(int)
    src = np.asarray(rgb(7)).astype(int)
    assert np.abs(rgba - (src * 128 + 255 * 127) / 255).max() <= 2  # alpha 128 over white
    assert load_image(root / "cmyk.jpg").size == (40, 30)


def test_exif_orientation_is_applied(bad_dataset):
    im = load_image(bad_dataset.parent / "images" / "exif_rotated.jpg")
    assert im.size == (20, 40)  # stored 40 x 20, orientation 6 turns it upright


def test_outside_paths_are_refused_without_being_opened(bad_dataset, monkeypatch, tmp_path):
    root = bad_dataset.parent / "images"
    (root / "link.jpg").symlink_to(tmp_path / "outside.jpg")
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda p, *a, **k: opened.append(str(p)) or real_open(p, *a, **k))
    for rel in ("../outside.jpg", "sub/../../outside.jpg", "link.jpg", str(tmp_path / "outside.jpg")):
        with pytest.raises(ImageLoadError):
            load_image(resolve_image(root, rel))
    assert opened == []
    assert resolve_image(root, "sub/../good1.jpg") == (root / "good1.jpg").resolve()


def test_captions_file_rows_splits_and_row_failures(bad_dataset):
    ds = load_captions_file(bad_dataset, bad_dataset.parent / "images", split="test")
    assert [i.path for i in ds.images] == list(IMAGE_CASES)
    reasons = sorted(f.reason for f in ds.failures)
    assert len(reasons) == 2 and reasons[0] == "no 'image' value" and reasons[1].startswith("not valid JSON")
    assert [f.where.rsplit(":", 1)[1] for f in ds.failures] == ["4", "6"]  # file:line
    assert "a cat in the training split" not in [c.text for c in ds.captions]
    train = load_captions_file(bad_dataset, bad_dataset.parent / "images", split="train")
    assert [c.text for c in train.captions] == ["a cat in the training split"]
    again = load_captions_file(bad_dataset, bad_dataset.parent / "images", split="test")
    assert [c.id for c in again.captions] == [c.id for c in ds.captions]  # stable ids across runs


def test_csv_captions(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "c.csv").write_text('image,caption\na.jpg,"a dog, running"\na.jpg,a brown dog\nb.jpg,a cat\n')
    ds = data_lib.load_dataset(captions=tmp_path / "c.csv", images=tmp_path / "imgs")
    assert [(i.id, i.path, i.split) for i in ds.images] == [("0", "a.jpg", "train"), ("1", "b.jpg", "train")]
    assert [(c.id, c.text, c.image_id) for c in ds.captions] == [
        ("0", "a dog, running", "0"), ("1", "a brown dog", "0"), ("2", "a cat", "1")]
    meta = ds.meta()
    assert meta.split("train").caption_ids == ["0", "1", "2"]
    (tmp_path / "bad.csv").write_text("file,text\nx,y\n")
    with pytest.raises(DataError, match="'image' column"):
        load_captions_file(tmp_path / "bad.csv")


def test_karpathy_json_split_selection(tmp_path):
    images = [
        {"imgid": 0, "split": "train", "filepath": "train2014", "filename": "a.jpg",
         "sentences": [{"sentid": 0, "raw": "a dog", "imgid": 0}]},
        {"imgid": 1, "split": "restval", "filepath": "val2014", "filename": "b.jpg",
         "sentences": [{"sentid": 1, "raw": "a cat", "imgid": 1}]},
        {"imgid": 2, "split": "test", "filepath": "val2014", "filename": "c.jpg",
         "sentences": [{"sentid": 2, "raw": "a car", "imgid": 2}, {"sentid": 3, "raw": "a red car", "imgid": 2}]},
    ]
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"dataset": "coco", "images": images}))
    train = data_lib.load_dataset(data=path, images=tmp_path, split="train")
    assert [i.path for i in train.images] == ["train2014/a.jpg", "val2014/b.jpg"]
    test = data_lib.load_dataset(data=path, images=tmp_path, split="test")
    assert [c.id for c in test.captions] == ["2", "3"] and test.name == "coco"
    both = data_lib.load_dataset(data=path, images=tmp_path, split="train,test")
    assert len(both.images) == 3
    meta = test.meta(drop_captions={"3"})
    assert meta.images[0]["filepath"] == "val2014" and [s["sentid"] for s in meta.images[0]["sentences"]] == [2]
    with pytest.raises(DataError, match="no images"):
        data_lib.load_dataset(data=path, images=tmp_path, split="val")
    with pytest.raises(ConfigError, match="image root"):
        data_lib.load_dataset(data=path)


def test_a_split_that_selects_nothing_names_the_splits_there_are_and_split_all(tmp_path):
    (tmp_path / "c.csv").write_text("image,caption\na.jpg,a dog\nb.jpg,a cat\n")  # no split column
    with pytest.raises(DataError) as err:
        data_lib.load_dataset(captions=tmp_path / "c.csv", split="test")
    message = str(err.value)
    assert f"{tmp_path / 'c.csv'}: no images in split test" in message
    assert "its images are in split train (a row without a split value counts as train)" in message
    assert "--split all" in message
    images = [{"imgid": i, "split": s, "filename": f"{i}.jpg", "sentences": []}
              for i, s in enumerate(("train", "restval", "test"))]
    (tmp_path / "k.json").write_text(json.dumps({"images": images}))
    with pytest.raises(DataError, match=r"no images in split val; its images are in split restval, test, train: "
                                        r"give --split all"):
        data_lib.load_dataset(data=tmp_path / "k.json", images=tmp_path, split="val")


def test_shards_partition_the_items():
    items = [data_lib.ImageItem(str(i), f"{i}.jpg", "test") for i in range(200)]
    parts = [data_lib.shard(items, i, 3) for i in range(3)]
    ids = [it.id for p in parts for it in p]
    assert sorted(ids, key=int) == [str(i) for i in range(200)] and all(parts)
    assert data_lib.parse_shard("1/3") == (1, 3) and data_lib.parse_shard(None) == (0, 1)
    for bad in ("3/3", "x", "1/0"):
        with pytest.raises(ConfigError):
            data_lib.parse_shard(bad)


def test_caption_policy():
    assert caption_problem("") and caption_problem(" \t\n") and caption_problem(None)
    assert caption_problem("Ein Hund läuft — 犬 🐕") is None
    assert caption_problem("long " * 10_000) is None
