"""BLIP ITC features through exactly the code path of the real checkpoints, on a tiny random
BLIP saved to a folder (model + processor, as a hub checkpoint has them)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from encode_helpers import make_tiny_blip, rgb
from lsr_os.errors import ModelError
from lsr_os.models.blip import BlipEncoder, clean_caption
from lsr_os.models import load_encoder, register_encoder
from lsr_os.models.dense import MARKER_FILE, DenseEncoder, ImagePreprocessor


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory):
    return make_tiny_blip(tmp_path_factory.mktemp("blip") / "tiny-blip")


@pytest.fixture(scope="module")
def blip(blip_dir):
    return load_encoder(str(blip_dir), device="cpu")


def test_loads_as_blip_with_itc_shape(blip):
    assert isinstance(blip, BlipEncoder)
    assert blip.dim == 256 and blip.device == torch.device("cpu") and blip.dtype == torch.float32
    imgs = blip.encode_images([rgb(1), rgb(2), rgb(3)], batch_size=2)
    txts = blip.encode_texts(["a dog", "two cats on a sofa"])
    assert imgs.shape == (3, 256) and txts.shape == (2, 256)
    assert imgs.dtype == np.float32 and txts.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(imgs, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(txts, axis=1), 1.0, atol=1e-5)


def test_preprocessing_matches_the_checkpoint_processor(blip):
    images = [rgb(4, (53, 71)), rgb(5, (20, 20)).convert("L")]
    ours = blip.image_preprocessor().normalize(torch.stack([blip.image_preprocessor()(im) for im in images]))
    theirs = blip.processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_itc_similarities_equal_transformers_retrieval_head(blip):
    """Our image @ text.T equals BlipForImageTextRetrieval(use_itm_head=False): the ITC scores."""
    images = [rgb(6), rgb(7, (64, 48))]
    texts = ["a dog runs on the grass", "a plate of food"]  # already in BLIP's cleaned form
    sims = blip.encode_images(images) @ blip.encode_texts(texts).T
    inputs = blip.processor(images=images, text=texts, padding=True, return_tensors="pt")
    model = blip.model
    with torch.no_grad():
        ref = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                    pixel_values=inputs["pixel_values"], use_itm_head=False).itm_score
    np.testing.assert_allclose(sims, ref.numpy(), atol=1e-5)


def test_sdpa_vision_attention_matches_eager(blip_dir):
    sdpa = BlipEncoder.load(blip_dir, device="cpu", sdpa=True)
    eager = BlipEncoder.load(blip_dir, device="cpu", sdpa=False)
    assert sdpa.sdpa and not eager.sdpa
    images = [rgb(8), rgb(9)]
    np.testing.assert_allclose(sdpa.encode_images(images), eager.encode_images(images), atol=1e-5)


def test_captions_cleaned_and_truncated_like_blip_retrieval(blip):
    assert clean_caption('A Dog!  Running (fast): "yes".') == "a dog running fast yes"
    words = [f"w{i}" for i in range(40)]
    assert clean_caption(" ".join(words)) == " ".join(words[:30])
    long = "xqzvw " * 500  # each word is several word pieces: the 35-token cut applies after the 30-word cut
    assert len(blip.tokenizer(clean_caption(long), truncation=True, max_length=35)["input_ids"]) == 35
    np.testing.assert_allclose(blip.encode_texts([long]), blip.encode_texts(["xqzvw " * 12]), atol=1e-5)
    ids = blip.tokenizer(["a dog"])["input_ids"][0]
    assert ids[0] == blip.tokenizer.cls_token_id  # ITC text starts with [CLS], not BLIP's [ENC]/[DEC]


def test_paths_and_pil_images_give_the_same_vectors(blip, tmp_path):
    im = rgb(10)
    im.save(tmp_path / "a.png")
    np.testing.assert_allclose(blip.encode_images([tmp_path / "a.png"]), blip.encode_images([im]), atol=1e-6)


def test_batch_size_does_not_change_results(blip):
    images = [rgb(i) for i in range(5)]
    np.testing.assert_allclose(blip.encode_images(images, batch_size=1), blip.encode_images(images, batch_size=4),
                               atol=1e-5)
    texts = ["a", "a dog with a long tail", "x"]
    np.testing.assert_allclose(blip.encode_texts(texts, batch_size=1), blip.encode_texts(texts, batch_size=3),
                               atol=1e-5)


def test_save_writes_marker_and_reloads(blip, tmp_path):
    blip.save(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / MARKER_FILE).read_text())["kind"] == "blip"
    again = load_encoder(tmp_path / "saved", device="cpu")
    prefixed = load_encoder(f"blip:{tmp_path / 'saved'}", device="cpu")
    images, texts = [rgb(11)], ["a red car"]
    for other in (again, prefixed):
        np.testing.assert_allclose(other.encode_images(images), blip.encode_images(images), atol=1e-6)
        np.testing.assert_allclose(other.encode_texts(texts), blip.encode_texts(texts), atol=1e-6)


class _MeanColour(DenseEncoder):
    """A toy model: proves that a new model is one class plus one register call."""

    def __init__(self, name):
        self.name, self.dim, self.device, self.dtype = name, 3, torch.device("cpu"), torch.float32

    @classmethod
    def load(cls, source, device=None, dtype=None):
        return cls(str(source))

    def save(self, folder):
        folder.mkdir(parents=True, exist_ok=True)
        self.write_marker(folder)

    def image_preprocessor(self):
        return ImagePreprocessor(8, 8)

    def _image_features(self, pixel_values):
        return pixel_values.mean(dim=(2, 3)) + 10.0

    def _text_features(self, texts):
        return torch.tensor([[len(t), 1.0, 1.0] for t in texts])


def test_registry_new_kind_is_one_class_and_one_call(tmp_path):
    register_encoder("mean-colour-test", _MeanColour)
    _MeanColour("x").save(tmp_path / "m")
    enc = load_encoder(tmp_path / "m")
    assert isinstance(enc, _MeanColour)
    out = enc.encode_images([rgb(1)])
    assert out.shape == (1, 3) and np.isclose(np.linalg.norm(out), 1.0)
    assert load_encoder("mean-colour-test:anything").name == "anything"


def test_unknown_sources_are_clear_errors(tmp_path):
    with pytest.raises(ModelError, match="unknown encoder"):
        load_encoder("Salesforce/no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="neither"):
        load_encoder(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / MARKER_FILE).write_text(json.dumps({"kind": "nope"}))
    with pytest.raises(ModelError, match="not registered"):
        load_encoder(tmp_path / "bad")
