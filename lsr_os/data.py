"""Datasets of images and captions: Karpathy-split JSON, or an image folder with a captions file.

Both become a `Dataset`: image items (id, path under the image root, split) and caption items
(id, text, image id), plus what is needed to write `dataset_meta.json` in the Karpathy layout.
Ids follow the authors' convention: `str(imgid)` and `str(sentid)`.

Bad input never stops a job: an unreadable row (also one that is not UTF-8), image or caption
becomes a `Failure` that the caller lists in a failures file. Image paths must stay inside the image
root: absolute paths and paths that leave it (`../`, or a symlink pointing out) are refused
without being opened.
"""

from __future__ import annotations

import csv
import json
import logging
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from lsr_os.dense_files import DatasetMeta, image_path, no_images_in_split
from lsr_os.splits import select_splits
from lsr_os.errors import ConfigError, DataError
from lsr_os.failures import Failure

log = logging.getLogger(__name__)

# A truncated file is an error item, not a silently grey-padded image.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageLoadError(DataError):
    """One image that cannot be used; the message is the reason recorded in the failures file."""


@dataclass
class ImageItem:
    id: str
    path: str  # relative to the image root, as the dataset file gives it
    split: str
    meta: dict = field(default_factory=dict)  # the Karpathy image entry without its sentences


@dataclass
class CaptionItem:
    id: str
    text: str
    image_id: str
    meta: dict = field(default_factory=dict)  # the Karpathy sentence entry


@dataclass
class Dataset:
    """Images and captions of the selected splits, with the rows that could not be read."""

    name: str
    root: Path
    images: list[ImageItem]
    captions: list[CaptionItem]
    failures: list[Failure] = field(default_factory=list)

    def meta(self, drop_images: set[str] = frozenset(), drop_captions: set[str] = frozenset()) -> DatasetMeta:
        """Karpathy-layout metadata without the dropped items (a dropped image takes its captions)."""
        by_image: dict[str, list[dict]] = {}
        for c in self.captions:
            if c.id not in drop_captions:
                by_image.setdefault(c.image_id, []).append(c.meta)
        images = [{**img.meta, "sentences": by_image.get(img.id, [])}
                  for img in self.images if img.id not in drop_images]
        return DatasetMeta(images, name=self.name)


def load_karpathy(json_path: str | Path, image_root: str | Path, split: str | None = None) -> Dataset:
    """A Karpathy-split JSON (MSCOCO, Flickr30k): image path = `filepath/filename` (or `filename`)."""
    meta = DatasetMeta.load(json_path)
    wanted = select_splits(split)
    images: list[ImageItem] = []
    captions: list[CaptionItem] = []
    for entry in meta.images:
        if wanted is not None and entry["split"] not in wanted:
            continue
        image_id = str(entry["imgid"])
        images.append(ImageItem(image_id, image_path(entry), entry["split"], {k: v for k, v in entry.items() if k != "sentences"}))
        for s in entry.get("sentences", []):
            captions.append(CaptionItem(str(s["sentid"]), s["raw"], image_id, s))
    if not images:
        raise no_images_in_split(json_path, split, (entry["split"] for entry in meta.images))
    return Dataset(meta.name or Path(json_path).stem, Path(image_root), images, captions)


def _decoded_lines(handle, problems: list[tuple[int, str]]) -> Iterator[str]:
    """The lines of a binary file as text; a line that is not UTF-8 is left out and noted in
    `problems` as (line, reason), so one bad line never ends the read."""
    for lineno, raw in enumerate(handle, 1):
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append((lineno, f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"))
            yield "\n"  # keeps the line numbers of the csv reader and of JSONL in step


def _caption_rows(path: Path) -> Iterable[tuple[int, dict | None, str]]:
    """(line, row, problem) from a JSONL or CSV captions file."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise DataError(f"cannot read captions file {path}: {exc.strerror}") from exc
    problems: list[tuple[int, str]] = []
    with handle:
        lines = _decoded_lines(handle, problems)
        if path.suffix.lower() in (".csv", ".tsv"):
            reader = csv.DictReader(lines, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            if not reader.fieldnames or "image" not in reader.fieldnames:
                raise DataError(f"{path}: the header must name an 'image' column (and 'caption', optionally 'split')")
            for row in reader:
                yield from ((lineno, None, reason) for lineno, reason in problems)
                problems.clear()
                yield reader.line_num, row, ""
            yield from ((lineno, None, reason) for lineno, reason in problems)
            return
        for lineno, line in enumerate(lines, 1):
            if problems and problems[0][0] == lineno:
                yield lineno, None, problems.pop(0)[1]
                continue
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                yield lineno, None, f"not valid JSON ({exc.msg} at column {exc.colno})"
                continue
            yield (lineno, row, "") if isinstance(row, dict) else (lineno, None, "a line must be a JSON object")


def load_captions_file(captions: str | Path, image_root: str | Path | None = None, split: str | None = None,
                       default_split: str = "train") -> Dataset:
    """A folder of images plus a captions file (JSONL or CSV) with `image`, `caption`, optional `split`.

    An image may appear on several rows (one caption each); a row with an empty caption adds
    the image alone (and records the empty caption as a failure). Image ids are 0, 1, ... in
    order of first appearance, caption ids the row order, so a re-run over the same file
    gives the same ids.
    """
    path = Path(captions)
    root = Path(image_root) if image_root else path.parent
    wanted = select_splits(split)
    images: dict[str, ImageItem] = {}
    result = Dataset(path.stem, root, [], [])
    next_image = next_caption = 0
    seen_splits: set[str] = set()
    defaulted = False  # a row without a split value: it takes default_split
    for lineno, row, problem in _caption_rows(path):
        where = f"{path}:{lineno}"
        image = row.get("image") if row is not None else None
        if not problem and (not isinstance(image, str) or not image.strip()):
            problem = "no 'image' value"
        if problem:
            result.failures.append(Failure("row", None, where, problem))
            continue
        row_split = str(row.get("split") or default_split)
        seen_splits.add(row_split)
        defaulted |= not row.get("split")
        caption = row.get("caption")
        sentid = next_caption
        next_caption += 1
        if wanted is not None and row_split not in wanted:
            continue
        item = images.get(image)
        if item is None:
            item = ImageItem(str(next_image), image, row_split,
                             {"imgid": next_image, "split": row_split, "filename": image})
            images[image] = item
            next_image += 1
        text = caption if isinstance(caption, str) else "" if caption is None else str(caption)
        result.captions.append(CaptionItem(str(sentid), text, item.id,
                                           {"sentid": sentid, "imgid": item.meta["imgid"], "raw": text}))
    result.images = list(images.values())
    if not result.images:
        raise no_images_in_split(path, split, seen_splits, default_split if defaulted else None)
    return result


def load_dataset(data: str | Path | None = None, images: str | Path | None = None,
                 captions: str | Path | None = None, split: str | None = None) -> Dataset:
    """Pick the loader: `data` = Karpathy JSON (+ `images` root); `captions` = JSONL/CSV (+ `images`)."""
    if data and captions:
        raise ConfigError("give either a Karpathy JSON (--data) or a captions file (--captions), not both")
    if data:
        if not images:
            raise ConfigError("a Karpathy JSON needs the image root (--images)")
        return load_karpathy(data, images, split)
    if captions:
        return load_captions_file(captions, images, split)
    raise ConfigError("no dataset: give --data KARPATHY.json --images ROOT, or --captions FILE [--images ROOT]")


def shard(items: Sequence, index: int, count: int) -> list:
    """The items of shard `index` of `count`: by a stable hash of the id, so shards never overlap."""
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"shard {index}/{count}: need 0 <= I < N")
    if count == 1:
        return list(items)
    return [it for it in items if zlib.crc32(it.id.encode("utf-8")) % count == index]


def parse_shard(text: str | None) -> tuple[int, int]:
    """'I/N' -> (I, N); None -> (0, 1)."""
    if not text:
        return 0, 1
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError as exc:
        raise ConfigError(f"--shard {text!r}: expected I/N, e.g. 0/4") from exc
    shard([], i, n)
    return i, n


def resolve_image(root: Path, rel: str) -> Path:
    """The file for `rel` under `root`; ImageLoadError when it would leave the root (never opened)."""
    if not rel or Path(rel).is_absolute():
        raise ImageLoadError(f"path {rel!r} is absolute or empty; image paths must be relative to the image root")
    base = root.resolve()
    try:
        full = (base / rel).resolve()
    except (OSError, ValueError) as exc:
        raise ImageLoadError(f"path {rel!r} cannot be resolved: {exc}") from None
    if not full.is_relative_to(base):
        raise ImageLoadError(f"path {rel!r} leaves the image root {root}; refused")
    return full


class ImageTooLarge(ImageLoadError):
    """An image over a pixel cap: `size` says how large ("W x H = N pixels"); `pixels` is None
    where Pillow refused to read its size."""

    def __init__(self, width: int | None, height: int | None, limit: int, over: int | None = None):
        self.pixels = width * height if width is not None and height is not None else None
        self.limit = limit
        self.size = (f"{width:,} x {height:,} = {self.pixels:,} pixels" if self.pixels is not None
                     else f"over {over:,} pixels")
        super().__init__(f"{self.size}, more than the limit of {limit:,}")


def image_file(root: Path, rel: str) -> str:
    """The full path an image is looked for at, as messages and failures name it (not resolved:
    the root as given, made absolute, and the path the dataset gives)."""
    return str(Path(root).absolute() / rel)


def require_images(root: Path, items: Sequence[ImageItem]) -> None:
    """DataError unless `root` is a folder holding at least one of `items`: a wrong image root (bare
    file names whose images sit in a subfolder, say) is one line naming it, before any work, rather
    than a failure per image. Stops at the first image found, so a good root costs one stat."""
    if not Path(root).is_dir():
        raise DataError(f"the image root {Path(root).absolute()} is not a folder")
    for item in items:
        try:
            if resolve_image(root, item.path).is_file():
                return
        except ImageLoadError:
            continue
    if items:
        some = "the one image is not" if len(items) == 1 else f"none of the {len(items)} images is"
        raise DataError(f"{some} under the image root {Path(root).absolute()} "
                        f"(the first tried: {image_file(root, items[0].path)}); give --images with the folder "
                        f"that holds them, or --collection captions for the captions alone")


def load_image(source: Path | BinaryIO, max_pixels: int | None = None) -> Image.Image:
    """Decode an image file (a path, or an open binary file such as an upload) as RGB with its
    EXIF orientation applied; ImageLoadError says why not.

    Without `max_pixels`, Pillow's decompression-bomb limit (Image.MAX_IMAGE_PIXELS) is an error,
    also in the range where Pillow would only warn. With it, that cap replaces Pillow's limit: the
    size is read from the header and checked before any pixel is decoded (ImageTooLarge). Alpha is
    composited on white; 16- and 32-bit greyscale is scaled to 8 bits rather than clipped.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise ImageLoadError("file not found") from None
        except OSError as exc:
            raise ImageLoadError(f"cannot stat file: {exc.strerror}") from None
        if not path.is_file():
            raise ImageLoadError("not a regular file")
        if size == 0:
            raise ImageLoadError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore" if max_pixels else "error", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                width, height = im.size
                if max_pixels is not None and width * height > max_pixels:
                    raise ImageTooLarge(width, height, max_pixels)
                im.load()
                im = ImageOps.exif_transpose(im)
                return to_rgb(im)
    except Image.DecompressionBombError as exc:  # beyond twice Pillow's limit: refused in Image.open itself
        if max_pixels is not None:  # so no cap can go beyond Pillow's hard limit
            hard = 2 * Image.MAX_IMAGE_PIXELS
            raise ImageTooLarge(None, None, min(max_pixels, hard), over=hard) from None
        raise ImageLoadError(f"decompression bomb: {exc}") from None
    except Image.DecompressionBombWarning as exc:
        raise ImageLoadError(f"decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        raise ImageLoadError("not an image Pillow can identify") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # what Pillow raises for damaged files
        raise ImageLoadError(f"truncated or corrupt image: {exc}") from None


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB: alpha over white, high-bit-depth greyscale scaled, CMYK/P/L converted."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") else max(float(arr.max()), 255.0)
        im = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")


def caption_problem(text: object) -> str | None:
    """Why a caption cannot be encoded, or None. Empty and whitespace-only captions are errors;
    long ones are encoded (the model truncates them), non-ASCII ones are encoded as they are."""
    if not isinstance(text, str):
        return "caption is not a string"
    if not text.strip():
        return "empty or whitespace-only caption"
    return None
