"""Contact sheets: a query and its top image hits in one PNG, with scores and top terms.

People judge image results faster by looking than by reading ids, so every example query of
the demo (and `lsr-os search --sheet`) can be saved as a picture.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

TILE = 160
PAD = 8
TEXT_H = 46


@dataclass
class SheetHit:
    """One result tile: the image, its rank and score, and the terms that matched most."""

    image: Path
    rank: int
    score: float
    terms: list[str]
    relevant: bool | None = None  # draws a green (True) or red (False) frame when known


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size default font
        return ImageFont.load_default()


def _tile(path: Path) -> Image.Image:
    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((TILE, TILE), Image.Resampling.NEAREST if max(im.size) < TILE else Image.Resampling.BICUBIC)
        if im.size != (TILE, TILE):
            im = im.resize((TILE, TILE), Image.Resampling.NEAREST)
        return im


def contact_sheet(title: str, hits: list[SheetHit], out: str | Path, query_image: Path | None = None,
                  columns: int = 5) -> Path:
    """Draw the query (text, or its image first) and the hits in a grid; returns the PNG path."""
    tiles: list[tuple[Image.Image, str, str | None]] = []
    if query_image is not None:
        tiles.append((_tile(query_image), "query", None))
    for h in hits:
        frame = None if h.relevant is None else ("#1a9850" if h.relevant else "#d73027")
        tiles.append((_tile(h.image), f"#{h.rank}  {h.score:.2f}\n{' '.join(h.terms[:4])}", frame))
    columns = max(1, min(columns, len(tiles) or 1))
    rows = max(1, -(-len(tiles) // columns))
    head_lines = textwrap.wrap(title, width=12 * columns) or [""]
    head_h = 16 + 18 * len(head_lines)
    width = PAD + columns * (TILE + PAD)
    height = head_h + rows * (TILE + TEXT_H + PAD) + PAD
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    draw.multiline_text((PAD, PAD), "\n".join(head_lines), fill="black", font=_font(15))
    small = _font(12)
    for n, (tile, label, frame) in enumerate(tiles):
        x = PAD + (n % columns) * (TILE + PAD)
        y = head_h + (n // columns) * (TILE + TEXT_H + PAD)
        sheet.paste(tile, (x, y))
        if frame:
            draw.rectangle((x - 2, y - 2, x + TILE + 1, y + TILE + 1), outline=frame, width=3)
        draw.multiline_text((x, y + TILE + 4), label, fill="black", font=small, spacing=2)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
