"""Do the terms speak the user's words? Measured on the demo world, which knows the truth.

The world knows each image's colour, shape, count, size, texture, place and background, and the
words its captions use for each value ("crimson" for red, "ball" for circle). Retrieval figures
can look fine while whole concepts have no term of their own: other terms' combinations carry
them. What a person sees is different: a query's own word that is missing from its vector, or a
colour no image holds. Two measures:

- document side (`word_precision`): for each attribute value, rank the images by their weight on
  each word the captions use for that value; the best word's R-precision against the truth (of the
  top R images, R = the images that have the value, the share that have it; 0 when no image holds
  the word), averaged per attribute family.
- query side (`words_kept`, lsr_os.evaluate): the share of a query's content words that keep a
  weight in the query.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from lsr_os.demo import world
from lsr_os.sparse import SparseVector, heaviest_first


def value_words() -> dict[str, dict[str, list[str]]]:
    """family -> value -> the single words captions use for it (stop words left out)."""
    from lsr_os.vocab import STOP_WORDS

    def words(phrases: list[str]) -> list[str]:
        out = [w for phrase in phrases for w in phrase.split() if w not in STOP_WORDS]
        return list(dict.fromkeys(out))

    shapes = {v: list(dict.fromkeys(ws + [world._plural(w, 2) for w in ws])) for v, ws in world.SHAPES.items()}
    return {"colour": {v: ws for v, (_, ws) in world.COLOURS.items()}, "shape": shapes,
            "count": {str(v): words(ws) for v, ws in world.COUNT_WORDS.items()},
            "size": dict(world.SIZES), "texture": dict(world.TEXTURES),
            "place": {v: words(ws) for v, ws in world.POSITIONS.items()},
            "background": {v: ws for v, (_, ws) in world.BACKGROUNDS.items()}}


def _value(scene: world.Scene, family: str) -> str:
    return str(scene.count) if family == "count" else scene.position if family == "place" else getattr(scene, family)




def word_precision(images: Mapping[str, SparseVector], scenes: Mapping[str, world.Scene], tokenize) -> dict:
    """The document-side measure (module docstring) for every family and value.

    `images` and `scenes` are keyed by image id; `tokenize` gives a word's pieces (the head's
    tokenizer). Returns {family: {"mean": ..., "values": {value: {"r_precision", "best_word",
    "images", "words": {word: (r_precision, images holding it)}}}}}.
    """
    ids = [i for i in images if i in scenes]
    out: dict = {}
    for family, table in value_words().items():
        values = {}
        for value, words in table.items():
            truth = {i for i in ids if _value(scenes[i], family) == value}
            r = len(truth)
            per_word = {}
            for word in words:
                pieces = tokenize(word)  # an image's weight on a word: the sum over its pieces (mostly one)
                weights = ((i, sum(images[i].get(p, 0.0) for p in pieces)) for i in ids)
                holding = heaviest_first((i, w) for i, w in weights if w > 0)
                top = [i for i, _ in holding[:r]]
                per_word[word] = (len(truth.intersection(top)) / r if r else 0.0, len(holding))
            best = max(per_word, key=lambda w: per_word[w][0])
            values[value] = {"r_precision": per_word[best][0], "best_word": best, "images": r,
                             "words": {w: {"r_precision": p, "images_holding": n} for w, (p, n) in per_word.items()}}
        out[family] = {"mean": sum(v["r_precision"] for v in values.values()) / len(values), "values": values}
    return out


def served_word_precision(head_dir: str | Path, dense_dir: str | Path, world_dir: str | Path) -> dict:
    """`word_precision` of a head's (fully expanded) image vectors over every image of a demo world,
    from its dense files; the words split by the head's own tokenizer."""
    from lsr_os.dense_files import IMG_FILE, read_embeddings
    from lsr_os.models.head import load_head
    from lsr_os.static_query import tokenizer_dir
    from lsr_os.vocab import fast_tokenizer

    head = load_head(head_dir)
    images = read_embeddings(Path(dense_dir) / IMG_FILE)
    vectors = dict(zip(images.ids, head.encode_images(images.take(images.ids))))
    return word_precision(vectors, world.load_scenes(world_dir), fast_tokenizer(tokenizer_dir(head_dir)).tokenize)
