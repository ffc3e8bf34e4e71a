"""A built-in image-caption world: scenes rendered with Pillow, five plain-English captions each.

It exists so that the whole pipeline runs offline with results that mean something. Each
image shows one to three objects of one shape, colour, size and texture, placed in one part
of a background. Captions describe the same facts with synonyms ("ball" for "circle",
"crimson" for "red") and different word orders, so a caption often says a word that the
image's other captions do not: the case where the sparse head's expansion matters. Written in
the Karpathy layout (dataset_meta.json + images/), so every dataset command reads it.
"""

from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

log = logging.getLogger(__name__)

# Attribute value -> (words a caption may use for it). The first word is the canonical one.
SHAPES = {
    "circle": ["circle", "ball", "disc"],
    "square": ["square", "box", "block"],
    "triangle": ["triangle", "wedge", "pyramid"],
    "star": ["star"],
    "cross": ["cross", "plus"],
    "diamond": ["diamond"],
}
COLOURS = {
    "red": ((215, 35, 35), ["red", "scarlet", "crimson"]),
    "blue": ((40, 70, 220), ["blue", "navy", "azure"]),
    "green": ((40, 165, 60), ["green", "emerald", "lime"]),
    "yellow": ((245, 215, 40), ["yellow", "golden"]),
    "orange": ((250, 140, 20), ["orange"]),
    "purple": ((140, 50, 180), ["purple", "violet"]),
    "pink": ((245, 120, 190), ["pink", "rose"]),
    "black": ((20, 20, 20), ["black"]),
}
SIZES = {"small": ["small", "tiny", "little"], "large": ["large", "big", "huge"]}
TEXTURES = {"plain": ["plain", "solid"], "striped": ["striped", "lined"], "dotted": ["dotted", "spotted"]}
POSITIONS = {
    "left": ["on the left", "at the left side", "to the left"],
    "right": ["on the right", "at the right side", "to the right"],
    "top": ["at the top", "near the top", "in the upper part"],
    "bottom": ["at the bottom", "near the bottom", "in the lower part"],
    "middle": ["in the middle", "in the centre", "in the center"],
}
BACKGROUNDS = {
    "grass": ((110, 175, 90), ["grass", "lawn", "field"]),
    "sky": ((150, 200, 245), ["sky", "clouds"]),
    "sand": ((225, 205, 160), ["sand", "beach", "desert"]),
    "night": ((25, 30, 60), ["night", "dark"]),
    "snow": ((235, 240, 245), ["snow", "ice"]),
}
COUNT_WORDS = {1: ["a", "one", "a single"], 2: ["two", "a pair of"], 3: ["three", "several"]}
_CENTRES = {"left": (0.25, 0.5), "right": (0.75, 0.5), "top": (0.5, 0.25), "bottom": (0.5, 0.75), "middle": (0.5, 0.5)}
_PLURAL = {"cross": "crosses", "box": "boxes", "plus": "pluses", "glass": "glasses"}


@dataclass(frozen=True)
class Scene:
    """The facts of one image: what its captions describe and its pixels show."""

    shape: str
    colour: str
    size: str
    texture: str
    position: str
    background: str
    count: int

    def words_for(self, attribute: str) -> set[str]:
        """Every word a caption may use for one attribute ("shape", "colour", ...), plurals included."""
        table = {"shape": SHAPES, "colour": {k: v[1] for k, v in COLOURS.items()}, "size": SIZES,
                 "texture": TEXTURES, "background": {k: v[1] for k, v in BACKGROUNDS.items()}}[attribute]
        words = set(table[getattr(self, attribute)])
        return words | {_plural(w, 2) for w in words} if attribute == "shape" else words

    def concept_words(self) -> set[str]:
        """Every word that names one of the scene's colour, shape, size, texture or background."""
        words = set(SHAPES[self.shape]) | set(COLOURS[self.colour][1]) | set(SIZES[self.size])
        words |= set(TEXTURES[self.texture]) | set(BACKGROUNDS[self.background][1])
        return words


def random_scene(rng: random.Random) -> Scene:
    colour = rng.choice(list(COLOURS))
    # Keep objects visible: no black objects at night, nothing pale on snow is needed as colours are saturated.
    background = rng.choice([b for b in BACKGROUNDS if not (b == "night" and colour == "black")])
    return Scene(shape=rng.choice(list(SHAPES)), colour=colour, size=rng.choice(list(SIZES)),
                 texture=rng.choice(list(TEXTURES)), position=rng.choice(list(POSITIONS)),
                 background=background, count=rng.choice([1, 2, 3]))


def _plural(word: str, count: int) -> str:
    if count == 1:
        return word
    return _PLURAL.get(word, word + "es" if word.endswith(("s", "x", "sh", "ch")) else word + "s")


def captions(scene: Scene, rng: random.Random, n: int = 5) -> list[str]:
    """`n` different captions of a scene; each picks its own synonyms, attributes and word order."""
    out: list[str] = []
    while len(out) < n:
        shape = _plural(rng.choice(SHAPES[scene.shape]), scene.count)
        colour = rng.choice(COLOURS[scene.colour][1])
        size = rng.choice(SIZES[scene.size])
        texture = rng.choice(TEXTURES[scene.texture])
        where = rng.choice(POSITIONS[scene.position])
        bg = rng.choice(BACKGROUNDS[scene.background][1])
        count = rng.choice(COUNT_WORDS[scene.count])
        tex = "" if scene.texture == "plain" and rng.random() < 0.6 else f"{texture} "
        templates = [
            f"{count} {size} {colour} {tex}{shape} {where} on {bg}",
            f"a picture of {count} {colour} {shape} {where}, with {bg} behind",
            f"{bg} scene with {count} {size} {tex}{shape} coloured {colour}",
            f"there {'is' if scene.count == 1 else 'are'} {count} {tex}{colour} {shape} {where}",
            f"{colour} {shape}, {size} and {texture}, {where} of a {bg} background",
            f"an image showing {count} {size} {shape} in {colour} against {bg}",
        ]
        text = rng.choice(templates).replace("  ", " ").strip()
        text = text[0].upper() + text[1:] + "."
        if text not in out:
            out.append(text)
    return out


def render(scene: Scene, rng: random.Random, size: int = 64) -> Image.Image:
    """Draw the scene: a slightly noisy background, then `count` textured objects in its region.

    Objects are large relative to the image (a small one spans about a quarter of it) and never
    overlap, so that a small CNN can tell the shapes apart at a reduced input size.
    """
    base = BACKGROUNDS[scene.background][0]
    noise = np.random.default_rng(rng.getrandbits(32))
    arr = np.empty((size, size, 3), dtype=np.int16)
    arr[:] = base
    speckle = noise.random((size, size)) < 0.06  # so the background is not a flat colour
    arr[speckle] += noise.integers(-18, 19, size=(int(speckle.sum()), 1), dtype=np.int16)
    radius = size * (0.14 if scene.size == "small" else 0.23) * (1.0, 0.85, 0.75)[scene.count - 1]
    radius *= rng.uniform(0.9, 1.1)
    cx, cy = _CENTRES[scene.position]
    spread = radius * 1.15  # centres 2.3 radii apart: neighbours do not touch
    offsets = {1: [(0, 0)], 2: [(-spread, 0), (spread, 0)],
               3: [(-spread, spread * 0.9), (spread, spread * 0.9), (0, -spread * 1.1)]}[scene.count]
    if scene.position in ("left", "right"):  # stack vertically where the region is tall
        offsets = [(dy, dx) for dx, dy in offsets]
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    points = [(cx * size + dx + rng.uniform(-2, 2), cy * size + dy + rng.uniform(-2, 2)) for dx, dy in offsets]
    # Shift the group as a whole back inside the frame (shifting objects one by one would merge them).
    lo, hi = radius + 1, size - radius - 1
    shift_x = max(0.0, lo - min(x for x, _ in points)) - max(0.0, max(x for x, _ in points) - hi)
    shift_y = max(0.0, lo - min(y for _, y in points)) - max(0.0, max(y for _, y in points) - hi)
    for x, y in points:
        _draw_shape(draw, scene.shape, x + shift_x, y + shift_y, radius, 255)
    inside = np.asarray(mask) > 0
    colour = COLOURS[scene.colour][0]
    arr[inside] = colour
    pattern = _texture_pattern(scene.texture, size)
    if pattern is not None:
        tone = tuple(255 - c // 2 for c in colour) if sum(colour) < 200 else tuple(c // 3 for c in colour)
        arr[inside & pattern] = tone
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, x: float, y: float, r: float, fill) -> None:
    if shape == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    elif shape == "square":
        draw.rectangle((x - r * 0.9, y - r * 0.9, x + r * 0.9, y + r * 0.9), fill=fill)
    elif shape == "triangle":
        draw.polygon([(x, y - r), (x - r, y + r * 0.8), (x + r, y + r * 0.8)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(x, y - r), (x + r * 0.8, y), (x, y + r), (x - r * 0.8, y)], fill=fill)
    elif shape == "cross":
        w = r * 0.35
        draw.rectangle((x - w, y - r, x + w, y + r), fill=fill)
        draw.rectangle((x - r, y - w, x + r, y + w), fill=fill)
    elif shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.45
            ang = -math.pi / 2 + k * math.pi / 5
            pts.append((x + rad * math.cos(ang), y + rad * math.sin(ang)))
        draw.polygon(pts, fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _texture_pattern(texture: str, size: int) -> np.ndarray | None:
    """Where a texture recolours an object (stripes two pixels wide, or a dot grid); None when plain."""
    if texture == "plain":
        return None
    yy, xx = np.mgrid[:size, :size]
    if texture == "striped":
        return (yy // 2) % 2 == 0
    if texture == "dotted":
        return (xx % 4 == 0) & (yy % 4 == 0)
    raise ValueError(f"unknown texture {texture!r}")


def build(out: str | Path, n_images: int = 3000, seed: int = 0, image_size: int = 64,
          val_fraction: float = 0.1, test_fraction: float = 0.1) -> Path:
    """Write the world to `out` (images/*.png, dataset_meta.json, scenes.jsonl); returns the meta path.

    Deterministic for a given seed and size; a folder already holding the same world is reused.
    """
    out = Path(out)
    meta_path = out / "dataset_meta.json"
    signature = {"n_images": n_images, "seed": seed, "image_size": image_size,
                 "val_fraction": val_fraction, "test_fraction": test_fraction}
    stamp = out / "world.json"
    if meta_path.exists() and stamp.exists() and json.loads(stamp.read_text()) == signature:
        log.info("reusing the world in %s", out)
        return meta_path
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    n_test = int(round(n_images * test_fraction))
    n_val = int(round(n_images * val_fraction))
    images, scenes = [], []
    sentid = 0
    for imgid in range(n_images):
        scene = random_scene(rng)
        filename = f"world_{imgid:06d}.png"
        render(scene, rng, image_size).save(out / "images" / filename, optimize=False)
        split = "test" if imgid < n_test else "val" if imgid < n_test + n_val else "train"
        sentences = []
        for text in captions(scene, rng):
            sentences.append({"sentid": sentid, "raw": text, "imgid": imgid,
                              "tokens": text.lower().rstrip(".").replace(",", "").split()})
            sentid += 1
        images.append({"imgid": imgid, "split": split, "filepath": "images", "filename": filename,
                       "sentids": [s["sentid"] for s in sentences], "sentences": sentences})
        scenes.append({"imgid": imgid, **asdict(scene)})
    meta_path.write_text(json.dumps({"dataset": "lsr-os-world", "images": images}))
    (out / "scenes.jsonl").write_text("".join(json.dumps(s) + "\n" for s in scenes))
    stamp.write_text(json.dumps(signature))
    log.info("wrote %d images (%d test, %d val) to %s", n_images, n_test, n_val, out)
    return meta_path


def load_scenes(folder: str | Path) -> dict[str, Scene]:
    """The ground truth of a built world: image id -> Scene."""
    scenes = {}
    for line in (Path(folder) / "scenes.jsonl").read_text().splitlines():
        obj = json.loads(line)
        image_id = str(obj.pop("imgid"))
        scenes[image_id] = Scene(**obj)
    return scenes
