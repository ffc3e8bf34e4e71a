"""Builders shared by the dense-encoder, data and encode tests: a tiny random BLIP checkpoint
folder (same files as a hub checkpoint) and a dataset folder holding every kind of bad input."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

TINY_IMAGE = 32
BOMB_LIMIT = 6000  # pixels; set Image.MAX_IMAGE_PIXELS to this when using make_bad_dataset


def make_tiny_blip(folder: Path, seed: int = 0) -> Path:
    """Save a random BlipForImageTextRetrieval + BlipProcessor (offline BERT tokenizer) to `folder`."""
    import torch
    from transformers import BlipConfig, BlipForImageTextRetrieval, BlipImageProcessorPil, BlipProcessor

    from lsr_os.vocab import load_tokenizer

    torch.manual_seed(seed)
    config = BlipConfig(
        text_config={"vocab_size": 30524, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "intermediate_size": 64, "max_position_embeddings": 64, "encoder_hidden_size": 32},
        vision_config={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
                       "image_size": TINY_IMAGE, "patch_size": 16},
    )
    model = BlipForImageTextRetrieval(config).eval()
    processor = BlipProcessor(image_processor=BlipImageProcessorPil(size={"height": TINY_IMAGE, "width": TINY_IMAGE}),
                              tokenizer=load_tokenizer())
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def rgb(seed: int, size=(40, 30)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), mode="RGB")


def jpeg_bytes(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", **kw)
    return buf.getvalue()


# what each bad or unusual file is, and whether it must be encoded (True) or fail (False)
IMAGE_CASES = {
    "good1.jpg": True, "good2.png": True, "good3.jpg": True,
    "grey_L.png": True, "palette_P.png": True, "cmyk.jpg": True, "rgba.png": True, "grey16.png": True,
    "exif_rotated.jpg": True,
    "truncated.jpg": False, "corrupt.jpg": False, "empty.jpg": False, "missing.jpg": False,
    "not_image.jpg": False, "bomb_warn.png": False, "bomb_error.png": False, "../outside.jpg": False, "/etc/hostname": False,
}


def make_bad_dataset(root: Path) -> Path:
    """An image folder and captions.jsonl covering every bad case; returns the captions file."""
    images = root / "images"
    images.mkdir(parents=True)
    rgb(1).save(images / "good1.jpg")
    rgb(2).save(images / "good2.png")
    rgb(3).save(images / "good3.jpg")
    rgb(4).convert("L").save(images / "grey_L.png")
    rgb(5).convert("P", palette=Image.Palette.ADAPTIVE).save(images / "palette_P.png")
    rgb(6).convert("CMYK").save(images / "cmyk.jpg")
    rgba = rgb(7).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(images / "rgba.png")
    Image.fromarray((np.arange(30 * 40, dtype=np.uint16).reshape(30, 40) * 50)).save(images / "grey16.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    rgb(8, size=(40, 20)).save(images / "exif_rotated.jpg", exif=exif)
    (images / "truncated.jpg").write_bytes(jpeg_bytes(rgb(9, (200, 200)))[:400])
    (images / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    (images / "empty.jpg").write_bytes(b"")
    (images / "not_image.jpg").write_text("this is a text file, not a picture\n")
    # Decompression bombs relative to BOMB_LIMIT (tests lower Pillow's limit to it, so the files stay
    # small): one in the range where Pillow only warns (limit < pixels <= 2 x limit), one beyond.
    Image.new("L", (100, 100)).save(images / "bomb_warn.png")
    Image.new("L", (150, 150)).save(images / "bomb_error.png")
    rgb(10).save(root / "outside.jpg")  # exists, but outside the image root: must never be read

    rows = []
    for n, name in enumerate(IMAGE_CASES):
        rows.append({"image": name, "caption": f"picture number {n} of a dog", "split": "test"})
    rows += [
        {"image": "good1.jpg", "caption": "", "split": "test"},
        {"image": "good1.jpg", "caption": "   \t ", "split": "test"},
        {"image": "good2.png", "caption": "a very long caption " * 500, "split": "test"},
        {"image": "good2.png", "caption": "Ein Hund läuft über die Straße — 犬が走る 🐕", "split": "test"},
        {"image": "good3.jpg", "caption": "a cat in the training split", "split": "train"},
    ]
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    lines.insert(3, "{not json")
    lines.insert(5, json.dumps({"caption": "a row without an image"}))
    captions = root / "captions.jsonl"
    captions.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return captions
