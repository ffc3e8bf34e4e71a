"""Dense vectors on disk, in the layout of the paper authors' datasets.

A folder holds `img_embs.parquet` and `text_embs.parquet` (columns `id`: string, `emb`: list
of float32) and `dataset_meta.json` in the Karpathy-split layout: `images[]` with `imgid`,
`split`, `filename`, `sentences[]` with `sentid` and `raw`. Image ids are `str(imgid)`,
caption ids `str(sentid)`, as the authors use them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Collection, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lsr_os.errors import ConfigError, DataError
from lsr_os.splits import select_splits, split_label

IMG_FILE = "img_embs.parquet"
TEXT_FILE = "text_embs.parquet"
META_FILE = "dataset_meta.json"
COLLECTIONS = ("images", "captions")
EMB_FILES = {"images": IMG_FILE, "captions": TEXT_FILE}  # each collection's dense vectors


def check_collection(collection: str) -> str:
    """`collection` when it is one of COLLECTIONS; ConfigError naming the choices otherwise."""
    if collection not in COLLECTIONS:
        raise ConfigError(f"unknown collection {collection!r}; choose one of {', '.join(COLLECTIONS)}")
    return collection


def no_images_in_split(where: str | Path, split: str | None, present: Iterable[str],
                       default: str | None = None) -> DataError:
    """The error of a split selection that matched nothing: it names the splits the input has and
    `--split all` (a captions file without a split column is all `default`, not `test`)."""
    there = sorted(set(present))
    return DataError(f"{where}: no images in split {split_label(split)}; "
                     + (f"its images are in split {', '.join(there)}" if there else "it holds no images")
                     + (f" (a row without a split value counts as {default})" if default else "")
                     + ": give --split all to take every image, or --split with one of those")


def image_path(entry: dict) -> str:
    """An image entry's path under the image root: `filepath/filename` (or `filename`)."""
    return "/".join(p for p in (entry.get("filepath", ""), entry.get("filename", "")) if p)


@dataclass
class Embeddings:
    """Dense vectors with their ids; `row` maps an id to its row."""

    ids: list[str]
    emb: np.ndarray  # (N, D) float32
    path: Path | None = None
    row: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.row = {i: r for r, i in enumerate(self.ids)}

    @property
    def dim(self) -> int:
        return int(self.emb.shape[1])

    def take(self, ids: Sequence[str]) -> np.ndarray:
        """Rows for `ids`, in that order; DataError names the first id that is missing."""
        rows = []
        for i in ids:
            r = self.row.get(i)
            if r is None:
                raise DataError(f"id {i!r} is in the metadata but not in {self.path or 'the embeddings'}")
            rows.append(r)
        return self.emb[np.asarray(rows, dtype=np.int64)]


def write_embeddings(path: str | Path, ids: Sequence[str], emb: np.ndarray) -> None:
    """Write ids and vectors as parquet (`id`: string, `emb`: list<float32>)."""
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    values = pa.array(emb.reshape(-1), type=pa.float32())
    lists = pa.FixedSizeListArray.from_arrays(values, emb.shape[1]).cast(pa.list_(pa.float32()))
    table = pa.table({"id": pa.array([str(i) for i in ids], type=pa.string()), "emb": lists})
    pq.write_table(table, str(path))


def read_embeddings(path: str | Path) -> Embeddings:
    """Read a parquet file of dense vectors, checking shape, ids and finiteness."""
    path = Path(path)
    try:
        table = pq.read_table(str(path), columns=["id", "emb"])
    except (pa.ArrowInvalid, KeyError, OSError) as exc:
        raise _unreadable(path, exc) from exc
    ids = [str(i) for i in table.column("id").to_pylist()]
    col = table.column("emb").combine_chunks()
    if len(ids) == 0:
        raise DataError(f"{path} holds no vectors")
    lengths = np.asarray(col.value_lengths() if hasattr(col, "value_lengths") else [len(x) for x in col.to_pylist()])
    bad = np.flatnonzero(lengths != lengths[0])
    if len(bad):
        raise DataError(f"{path}: id {ids[bad[0]]!r} has {lengths[bad[0]]} dimensions, "
                        f"id {ids[0]!r} has {lengths[0]}")
    emb = np.asarray(col.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(len(ids), -1)
    nonfinite = np.flatnonzero(~np.isfinite(emb).all(axis=1))
    if len(nonfinite):
        raise DataError(f"{path}: {len(nonfinite)} vectors are not finite, the first is id {ids[nonfinite[0]]!r}")
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))
        raise DataError(f"{path}: id {dup!r} appears more than once")
    return Embeddings(ids, emb, path)


def embedding_dim(path: str | Path) -> int:
    """The dimension of the vectors in a parquet file (or folder of parts), from its first row: a
    check before a long job that reads them all later (`read_embeddings`)."""
    import pyarrow.dataset as pads

    path = Path(path)
    try:
        first = pads.dataset(str(path), format="parquet").head(1, columns=["emb"])
    except (pa.ArrowInvalid, KeyError, OSError) as exc:
        raise _unreadable(path, exc) from exc
    if not first.num_rows:
        raise DataError(f"{path} holds no vectors")
    return len(first.column("emb")[0])


def _unreadable(path: Path, exc: Exception) -> DataError:
    if isinstance(exc, FileNotFoundError):
        return DataError(f"{path} does not exist")
    return DataError(f"cannot read {path} as parquet with columns id, emb: {exc}")


@dataclass
class Split:
    """One split of a dataset: its images, its captions, and which image each caption describes."""

    name: str
    image_ids: list[str]
    caption_ids: list[str]
    captions: list[str]
    caption_image: list[str]  # parallel to caption_ids: the id of the described image


@dataclass
class DatasetMeta:
    """The Karpathy-layout metadata of a dataset."""

    images: list[dict]
    path: Path | None = None
    name: str = ""

    @classmethod
    def load(cls, path: str | Path) -> "DatasetMeta":
        path = Path(path)
        try:
            obj = json.loads(path.read_bytes().decode("utf-8"))
        except FileNotFoundError as exc:
            raise DataError(f"{path} does not exist") from exc
        except UnicodeDecodeError as exc:
            raise DataError(f"{path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})") from exc
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
        images = obj.get("images") if isinstance(obj, dict) else None
        if not isinstance(images, list):
            raise DataError(f'{path}: expected an object with an "images" list (Karpathy layout)')
        for n, img in enumerate(images):
            if not isinstance(img, dict) or "imgid" not in img or "split" not in img:
                raise DataError(f"{path}: images[{n}] lacks imgid or split")
            for s in img.get("sentences", []):
                if "sentid" not in s or "raw" not in s:
                    raise DataError(f"{path}: image {img['imgid']} has a sentence without sentid or raw")
        return cls(images, path, obj.get("dataset", ""))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"dataset": self.name, "images": self.images}, ensure_ascii=False),
                              encoding="utf-8")

    def split(self, names: str | Iterable[str]) -> Split:
        """The images and captions of a selection by the split rule (`select_splits`: "train"
        includes restval); DataError when empty."""
        return self.labels(select_splits(names), split_label(names))

    def labels(self, wanted: Collection[str] | None, name: str | None = None) -> Split:
        """The images (and captions) whose split label is exactly one of `wanted` (None: all), for
        callers that state their own selection, as training does; DataError when empty."""
        label = name or ("all" if wanted is None else ",".join(sorted(wanted)))
        split = Split(label, [], [], [], [])
        for img in self.images:
            if wanted is not None and img["split"] not in wanted:
                continue
            image_id = str(img["imgid"])
            split.image_ids.append(image_id)
            for s in img.get("sentences", []):
                split.caption_ids.append(str(s["sentid"]))
                split.captions.append(s["raw"])
                split.caption_image.append(image_id)
        if not split.image_ids:
            raise DataError(f"{self.path or 'the metadata'}: split {label!r} has no images")
        return split
