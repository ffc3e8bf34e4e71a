"""Contact sheets: a query and its top image hits in one PNG, with scores, files and matched terms.

People judge image results faster by looking than by reading ids, so every example query of
the demo (and `lsr-os search --sheet`) can be saved as a picture. Labels leave out stop words
and are cut to the tile's width. A hit's image is looked for where its collection's images were
ingested from (`lsr_os.search.images_root`); one that cannot be read is a tile that says so.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from lsr_os.sparse import heaviest_first
from lsr_os.vocab import STOP_WORDS

TILE = 160
PAD = 8
TEXT_H = 50  # three lines: rank and score, the file, the matched terms


@dataclass
class SheetHit:
    """One result tile: the image, its rank and score, and the terms that matched most."""

    image: Path | None  # None: the hit's image path cannot be resolved under the root (`missing` says why)
    rank: int
    score: float
    terms: list[str]
    relevant: bool | None = None  # draws a green (True) or red (False) frame when known
    label: str | None = None  # the file line [default: the image's file name]
    missing: str = "not found"


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size default font
        return ImageFont.load_default()


def _tile(path: Path | None, why: str = "not found") -> Image.Image:
    """The image scaled to a tile, or, when it cannot be read (or `path` is None), a pale tile that says why."""
    from lsr_os.data import ImageLoadError, load_image

    try:
        if path is None:
            raise ImageLoadError(why)
        im = load_image(path)
    except ImageLoadError as exc:
        tile = Image.new("RGB", (TILE, TILE), "#eceff3")
        draw = ImageDraw.Draw(tile)
        draw.multiline_text((8, TILE // 2 - 20), "\n".join(_wrap(f"image {exc}", _font(12), 3, TILE - 16)),
                            fill="#8a94a6", font=_font(12), spacing=3)
        return tile
    im.thumbnail((TILE, TILE), Image.Resampling.NEAREST if max(im.size) < TILE else Image.Resampling.BICUBIC)
    if im.size != (TILE, TILE):
        im = im.resize((TILE, TILE), Image.Resampling.NEAREST)
    return im


def _fit(text: str, font, width: int = TILE) -> str:
    """`text` cut with an ellipsis so that it fits `width` pixels."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def _wrap(text: str, font, lines: int, width: int = TILE) -> list[str]:
    """Up to `lines` lines of whole words that fit `width` pixels (the last one may be cut)."""
    out: list[str] = []
    for word in text.split():
        if out and font.getlength(f"{out[-1]} {word}") <= width:
            out[-1] = f"{out[-1]} {word}"
        elif len(out) < lines:
            out.append(word)
        else:
            break
    return out


def contact_sheet(title: str, hits: list[SheetHit], out: str | Path, query_image: Path | None = None,
                  columns: int = 5) -> Path:
    """Draw the query (text, or its image first) and the hits in a grid; returns the PNG path."""
    tiles: list[tuple[Image.Image, str, str | None]] = []
    if query_image is not None:
        tiles.append((_tile(query_image), "query", None))
    small = _font(12)
    for h in hits:
        frame = None if h.relevant is None else ("#1a9850" if h.relevant else "#d73027")
        words = [t for t in h.terms if t.strip("#") not in STOP_WORDS and any(c.isalnum() for c in t)]
        lines = [f"#{h.rank}  score {h.score:.2f}", h.label or Path(h.image).name] + _wrap(" ".join(words), small, 1)
        tiles.append((_tile(h.image, h.missing), "\n".join(_fit(line, small) for line in lines), frame))
    columns = max(1, min(columns, len(tiles) or 1))
    rows = max(1, -(-len(tiles) // columns))
    head_lines = textwrap.wrap(title, width=12 * columns) or [""]
    head_h = 16 + 18 * len(head_lines)
    width = PAD + columns * (TILE + PAD)
    height = head_h + rows * (TILE + TEXT_H + PAD) + PAD
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    draw.multiline_text((PAD, PAD), "\n".join(head_lines), fill="black", font=_font(15))
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


@dataclass
class SheetReport:
    """A drawn contact sheet and the image paths of its hits that could not be shown."""

    path: Path
    root: Path
    missing: list[str] = field(default_factory=list)


def search_sheet(result, out: str | Path, engine=None, images: str | Path | None = None,
                 demo: str | Path | None = None) -> SheetReport:
    """The contact sheet of a `lsr_os.search.SearchResult`: each hit's image (a caption hit: the
    image it describes) under the collection's image root (`search.images_root`; the one recorded
    at ingest is read through `engine`), with its matched terms when explained. ConfigError naming
    --images when the root is unknown."""
    from lsr_os.data import ImageLoadError, resolve_image
    from lsr_os.errors import ConfigError
    from lsr_os.index import image_root
    from lsr_os.search import images_root

    recorded = image_root(engine, result.index) if images is None and engine is not None else None
    root = images_root(result.index, recorded, images, demo)
    if root is None:
        raise ConfigError(f"{result.index} records no image root (it was loaded from sparse records or dense files, "
                          f"or before lsr-os recorded one), so --sheet cannot find its images: give --images ROOT")
    hits, missing = [], []
    for row in result.hits:
        if not row.get("image"):
            continue
        try:
            path, why = resolve_image(root, row["image"]), "not found"
        except ImageLoadError as exc:
            path, why = None, str(exc)
        if path is None or not path.is_file():
            missing.append(row["image"])
        terms = [m["term"] for m in row.get("matches", [])] or [t for t, _ in heaviest_first(result.query.items())]
        hits.append(SheetHit(path, row["rank"], row["score"], terms, label=Path(row["image"]).name, missing=why))
    title = f'"{result.text}"' if result.text else f"{len(result.query)}-term query"
    return SheetReport(contact_sheet(f"{title} -> {result.index}", hits, out), root, missing)
