"""The built-in world: deterministic, in the Karpathy layout, captions that vary their words."""

import json
import random

from PIL import Image

from lsr_os.demo import world
from lsr_os.dense_files import DatasetMeta


def test_build_is_deterministic_and_reused(tmp_path):
    a = world.build(tmp_path / "a", n_images=30, seed=3)
    b = world.build(tmp_path / "b", n_images=30, seed=3)
    assert a.read_text() == b.read_text()
    for name in ("world_000000.png", "world_000029.png"):
        assert (tmp_path / "a" / "images" / name).read_bytes() == (tmp_path / "b" / "images" / name).read_bytes()
    stamp = (tmp_path / "a" / "dataset_meta.json").stat().st_mtime_ns
    world.build(tmp_path / "a", n_images=30, seed=3)
    assert (tmp_path / "a" / "dataset_meta.json").stat().st_mtime_ns == stamp  # reused, not rewritten
    world.build(tmp_path / "a", n_images=30, seed=4)
    assert (tmp_path / "a" / "dataset_meta.json").read_text() != b.read_text()


def test_karpathy_layout_splits_and_ground_truth(tmp_path):
    meta_path = world.build(tmp_path, n_images=50, seed=0)
    meta = DatasetMeta.load(meta_path)
    assert {len(meta.split(s).image_ids) for s in ("test", "val")} == {5}
    assert len(meta.split("train").image_ids) == 40
    scenes = world.load_scenes(tmp_path)
    for img in json.loads(meta_path.read_text())["images"]:
        assert len(img["sentences"]) == 5 and len({s["raw"] for s in img["sentences"]}) == 5
        with Image.open(tmp_path / img["filepath"] / img["filename"]) as im:
            assert im.size == (64, 64) and im.mode == "RGB"
        scene = scenes[str(img["imgid"])]
        for s in img["sentences"]:  # every caption names the shape and the colour, by some synonym
            words = set(s["raw"].lower().replace(",", " ").replace(".", " ").split())
            assert any(w.startswith(tuple(world.SHAPES[scene.shape])) for w in words)  # plurals too
            assert words & set(world.COLOURS[scene.colour][1])


def test_captions_of_one_scene_use_synonyms():
    rng = random.Random(0)
    scene = world.Scene("circle", "red", "large", "striped", "left", "grass", 2)
    texts = " ".join(world.captions(scene, rng, n=40)).lower()
    assert sum(w in texts for w in world.SHAPES["circle"]) >= 2
    assert sum(w in texts for w in world.COLOURS["red"][1]) >= 2
    assert scene.concept_words() >= {"circle", "ball", "red", "crimson", "large", "grass"}
