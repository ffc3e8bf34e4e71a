"""Any source -> one stream of sparse records in one schema: the only place dense becomes sparse.

Sources (exactly one; `SourceOptions` names them, `open_source` checks and opens them):

- sparse JSONL: a file (one collection) or a folder holding `images.jsonl` and `captions.jsonl`;
- dense files in the paper authors' layout (`img_embs.parquet`, `text_embs.parquet`,
  `dataset_meta.json`) and a sparse head;
- a dataset (Karpathy JSON + image root, or a captions file) encoded on the fly by a dense
  encoder (on the GPU when there is one) and a sparse head.

The record schema, the same for both collections and every source (README, "Sparse records"):

    id        str       the image's or caption's id (str(imgid), str(sentid) for datasets)
    vector    object    {term: weight}, weights finite and > 0
    dataset   str       the dataset's name                                  (where known)
    split     str       its Karpathy split: train, restval, val, test, ...  (where known)
    image     str       the image file under the image root (a caption: the image it describes)
    image_id  str       captions: the id of the image the caption describes
    caption   str       captions: the text

Every consumer (`lsr-os sparsify`, `ingest`, `evaluate`) asks a source for a `RecordStream` per
collection; the stream skips the ids a caller already holds (a resumed load or output file)
before decoding or encoding anything, and reports skipped items as `failures.Failure`s.
"""

from __future__ import annotations

import json
import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from lsr_os.dense_files import (COLLECTIONS, EMB_FILES, META_FILE, DatasetMeta, check_collection, image_path,
                                no_images_in_split)
from lsr_os.splits import select_splits, split_label
from lsr_os.errors import ConfigError, DataError, ModelError
from lsr_os.failures import Failure, FailureLog, OnFailure
from lsr_os.sparse import RecordStream, SparseRecord, SparseVector, prune, read_jsonl

log = logging.getLogger(__name__)

SPARSE_FILES = {"images": "images.jsonl", "captions": "captions.jsonl"}
SPARSIFY_MANIFEST = "sparsify.json"


# --------------------------------------------------------------------------- dense -> sparse


def image_meta(dataset: str | None, split: str | None, image: str | None) -> dict:
    """The schema's metadata of an image (keys with no value are left out)."""
    return {k: v for k, v in (("dataset", dataset or None), ("split", split), ("image", image or None)) if v}


def caption_meta(of_image: dict, image_id: str, caption: str) -> dict:
    """A caption's metadata: its image's, plus the image id and the text."""
    return {**of_image, "image_id": image_id, "caption": caption}


def to_sparse(head, collection: str, ids: Sequence[str], dense, metas: Sequence[dict],
              texts: Sequence[str] | None = None, expand: bool = True) -> list[SparseRecord]:
    """Sparse records of one batch of dense vectors: the one function where dense becomes sparse.

    Images are always expanded; captions are expanded unless `expand` is False, then they keep
    their own tokens (`texts` are needed for that).
    """
    if collection == "images":
        vectors = head.encode_images(dense)
    else:
        if texts is None:
            raise DataError("captions need their texts to be encoded")
        vectors = head.encode_captions(dense, texts, expand=expand)
    return [SparseRecord(i, v, dict(m)) for i, v, m in zip(ids, vectors, metas)]


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class SourceOptions:
    """Where records come from (one of sparse, dense, data/captions) and how they are made."""

    sparse: Path | None = None  # sparse JSONL file, or a folder of images.jsonl + captions.jsonl
    dense: Path | None = None  # dense files folder (authors' layout); needs head
    data: Path | None = None  # Karpathy-split JSON; needs images, model, head
    captions: Path | None = None  # captions file (JSONL/CSV: image, caption[, split]); needs model, head
    images: Path | None = None  # image root of data or captions
    model: str | None = None  # dense encoder (name, folder, KIND:SOURCE)
    head: Path | None = None  # sparse head checkpoint
    split: str | None = None  # comma-separated splits; "train" includes restval; None: all
    expand: bool = True  # captions expanded; False: their own tokens only
    batch_size: int = 64  # images per model call
    text_batch_size: int = 256  # captions per model call (and dense vectors per head call)
    workers: int | None = None  # image-decoding processes (None: encode.default_workers())
    device: str | None = None  # None: the GPU when there is one


def open_source(opts: SourceOptions) -> "RecordSource":
    """The source the options name; every combination is checked here, before anything loads."""
    from_dataset = opts.data is not None or opts.captions is not None
    given = [name for name, on in (("--sparse", opts.sparse is not None), ("--dense", opts.dense is not None),
                                   ("--data/--captions", from_dataset)) if on]
    if len(given) != 1:
        raise ConfigError("give one source: --sparse FILE|DIR, --dense DIR with --head, or a dataset "
                          "(--data KARPATHY.json --images ROOT, or --captions FILE) with --model and --head"
                          + (f" (got {' and '.join(given)})" if given else ""))
    if opts.data is not None and opts.captions is not None:
        raise ConfigError("give either a Karpathy JSON (--data) or a captions file (--captions), not both")
    if opts.images is not None and not from_dataset:
        raise ConfigError("--images is the image root of a dataset source (--data or --captions)")
    if opts.model is not None and not from_dataset:
        raise ConfigError("--model encodes a dataset: give --data KARPATHY.json --images ROOT or --captions FILE")
    if opts.sparse is not None:
        if opts.head is not None or not opts.expand:
            raise ConfigError("--sparse records are already sparse: --head and --no-expansion do not apply")
        return SparseSource(opts.sparse, opts.split)
    if opts.dense is not None:
        if opts.head is None:
            raise ConfigError("--dense needs --head (a sparse head checkpoint)")
        return DenseSource(opts)
    if opts.model is None or opts.head is None:
        raise ConfigError("a dataset source needs --model (the dense encoder) and --head (the sparse head)")
    if opts.data is not None and opts.images is None:
        raise ConfigError("a Karpathy JSON (--data) needs its image root (--images)")
    return DatasetSource(opts)


def file_key(path: str | Path) -> str:
    """A file's part of a resume key: its absolute path, size and modification time."""
    p = Path(path).resolve()
    st = p.stat()
    return f"{p}:{st.st_size}:{int(st.st_mtime)}"


class RecordSource(ABC):
    """A source of sparse records for the images and captions collections."""

    def collections(self, requested: Iterable[str] = ()) -> tuple[str, ...]:
        """The collections to read: `requested`, else both."""
        return tuple(check_collection(c) for c in requested) or COLLECTIONS

    @abstractmethod
    def stream(self, collection: str) -> RecordStream:
        """The records of one collection, with their resume key."""

    @property
    def dense_dir(self) -> Path | None:
        """The dense files behind the records, when there are any (for the teacher's figures)."""
        return None

    @property
    def image_root(self) -> Path | None:
        """The absolute folder the records' `image` paths are under, when the source knows it."""
        return None

    @property
    def head_path(self) -> Path | None:
        """The head that encodes the records, when the source runs one (None: records as given)."""
        return None

    @property
    @abstractmethod
    def split(self) -> str | None:
        """The splits the source was opened on (None: all)."""


class SparseSource(RecordSource):
    """Sparse JSONL records as they are; `split` keeps the records whose `split` key it selects."""

    def __init__(self, path: Path, split: str | None = None):
        self.path = Path(path)
        if not self.path.exists():
            raise DataError(f"{self.path} does not exist")
        self._split = split
        self.wanted = select_splits(split)

    @property
    def split(self) -> str | None:
        return self._split

    def file(self, collection: str) -> Path:
        if self.path.is_dir():
            path = self.path / SPARSE_FILES[check_collection(collection)]
            if not path.is_file():
                raise DataError(f"{self.path} has no {SPARSE_FILES[collection]} (the {collection} collection)")
            return path
        return self.path

    def collections(self, requested: Iterable[str] = ()) -> tuple[str, ...]:
        requested = tuple(check_collection(c) for c in requested)
        if self.path.is_dir():
            present = tuple(c for c in COLLECTIONS if (self.path / SPARSE_FILES[c]).is_file())
            if not present:
                raise DataError(f"{self.path} holds neither images.jsonl nor captions.jsonl")
            return requested or present
        named = next((c for c in COLLECTIONS if self.path.name.startswith(c)), None)
        if len(requested) > 1 or (not requested and named is None):
            raise ConfigError(f"{self.path} is one collection: add --collection images or --collection captions")
        return requested or (named,)

    def stream(self, collection: str) -> RecordStream:
        path, wanted = self.file(collection), self.wanted

        def records(done: frozenset[str], on_failure: OnFailure) -> Iterator[SparseRecord]:
            outside = 0
            for record in read_jsonl(path, on_failure):
                if wanted is not None and record.meta.get("split") not in wanted:
                    outside += 1
                elif record.id not in done:
                    yield record
            if outside:
                log.info("%s: %d records outside split %s left out", path, outside, split_label(self.split))

        total = _count_lines(path) if wanted is None else None
        return RecordStream(records, f"sparse|{file_key(path)}|split={split_label(self.split)}", total)


def _count_lines(path: Path) -> int:
    """Non-empty lines of a file (a progress bar's total), streamed."""
    with path.open("rb") as handle:
        return sum(1 for line in handle if line.strip())


class _Encoded(RecordSource):
    """What the dense and dataset sources share: the head, loaded once, and the key's tail.

    Both check every input when a stream is asked for (the head loads then, and the vectors'
    size is matched against it), so a caller that opens its streams first (`index.ingest_collections`)
    fails before it has created anything.
    """

    def __init__(self, opts: SourceOptions):
        self.opts = opts
        self._head = None

    @property
    def split(self) -> str | None:
        return self.opts.split

    @property
    def head_path(self) -> Path:
        return Path(self.opts.head)

    def head(self):
        if self._head is None:
            from lsr_os.models.dense import resolve_device
            from lsr_os.models.head import load_head

            try:
                head = load_head(self.opts.head)
            except ModelError as exc:
                inside = _heads_inside(Path(self.opts.head))
                if not inside:
                    raise
                raise ModelError(f"{self.opts.head} is not a head checkpoint folder but holds "
                                 f"{', '.join(p.name for p in inside)}: give --head {inside[0]}") from exc
            self._head = head.to(resolve_device(self.opts.device)).eval()
        return self._head

    def _check_size(self, dim: int, of: str) -> None:
        if dim != self.head().dense_size:
            raise ModelError(f"{of} gives {dim}-d vectors; the head {self.opts.head} takes {self.head().dense_size}-d")

    def _key(self, kind: str, parts: Sequence[str], collection: str) -> str:
        expand = "own-tokens" if collection == "captions" and not self.opts.expand else "expanded"
        return "|".join((kind, *parts, str(Path(self.opts.head).resolve()), f"split={split_label(self.opts.split)}",
                         expand, collection))


def _heads_inside(folder: Path) -> list[Path]:
    """Head checkpoints directly inside `folder` (a --head given one level too high: a training
    run's folder instead of its `best`), `best` first."""
    from lsr_os.models.head import AUTHORS_MODEL_TYPE, MODEL_TYPE
    from lsr_os.static_query import read_config

    found = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else ():
        try:
            if read_config(sub).get("model_type") in (MODEL_TYPE, AUTHORS_MODEL_TYPE):
                found.append(sub)
        except ModelError:
            continue
    return sorted(found, key=lambda p: p.name != "best")


class DenseSource(_Encoded):
    """Dense files and a head: records encoded batch by batch, metadata from `dataset_meta.json`."""

    def __init__(self, opts: SourceOptions):
        super().__init__(opts)
        self.folder = Path(opts.dense)
        self._meta: DatasetMeta | None = None

    @property
    def dense_dir(self) -> Path:
        return self.folder

    def meta(self) -> DatasetMeta:
        if self._meta is None:
            self._meta = DatasetMeta.load(self.folder / META_FILE)
        return self._meta

    def rows(self, collection: str) -> list[tuple[str, dict, str | None]]:
        """(id, metadata, caption text) of the selected splits, in the metadata's order."""
        meta, wanted = self.meta(), select_splits(self.opts.split)
        rows: list[tuple[str, dict, str | None]] = []
        for img in meta.images:
            if wanted is not None and img["split"] not in wanted:
                continue
            base = image_meta(meta.name, img["split"], image_path(img))
            if collection == "images":
                rows.append((str(img["imgid"]), base, None))
            else:
                image_id = str(img["imgid"])
                rows.extend((str(s["sentid"]), caption_meta(base, image_id, s["raw"]), s["raw"])
                            for s in img.get("sentences", []))
        if not rows:
            if collection == "images" or not any(wanted is None or img["split"] in wanted for img in meta.images):
                raise no_images_in_split(self.folder / META_FILE, self.opts.split,
                                         (img["split"] for img in meta.images))
            raise DataError(f"{self.folder / META_FILE} has no captions in split {split_label(self.opts.split)}")
        return rows

    def stream(self, collection: str) -> RecordStream:
        from lsr_os.dense_files import embedding_dim, read_embeddings

        check_collection(collection)
        rows = self.rows(collection)
        path = self.folder / EMB_FILES[collection]
        self._check_size(embedding_dim(path), str(path))
        head, batch = self.head(), self.opts.text_batch_size

        def records(done: frozenset[str], on_failure: OnFailure) -> Iterator[SparseRecord]:
            todo = [r for r in rows if r[0] not in done]
            if not todo:
                return
            emb = read_embeddings(path)
            for start in range(0, len(todo), batch):
                part = todo[start:start + batch]
                ids = [r[0] for r in part]
                yield from to_sparse(head, collection, ids, emb.take(ids), [r[1] for r in part],
                                     [r[2] for r in part] if collection == "captions" else None, self.opts.expand)

        return RecordStream(records, self._key("dense", [file_key(self.folder / META_FILE)], collection), len(rows))


class DatasetSource(_Encoded):
    """A dataset encoded on the fly: images decoded in worker processes, embedded on the encoder's
    device and sparsified there, one batch at a time; bad images, captions and rows are reported."""

    def __init__(self, opts: SourceOptions):
        super().__init__(opts)
        self._dataset = self._encoder = None

    def dataset(self):
        """The dataset file's images and captions of the split, read on first use."""
        if self._dataset is None:
            from lsr_os.data import load_dataset

            self._dataset = load_dataset(data=self.opts.data, images=self.opts.images, captions=self.opts.captions,
                                         split=self.opts.split)
        return self._dataset

    def loaded(self):
        """(dataset, encoder), loaded and checked on first use, the cheapest first: the dataset
        file, the head, the encoder, and whether the head takes the encoder's vectors."""
        if self._encoder is None:
            from lsr_os.models import load_encoder

            self.dataset()
            self.head()
            encoder = load_encoder(self.opts.model, device=self.opts.device)
            self._check_size(encoder.dim, f"the encoder {self.opts.model}")
            self._encoder = encoder
        return self._dataset, self._encoder

    @property
    def image_root(self) -> Path:
        return self.dataset().root.resolve()

    def stream(self, collection: str) -> RecordStream:
        from lsr_os.data import require_images

        check_collection(collection)
        if collection == "images":  # before any model loads: a wrong image root is the commonest slip
            require_images(self.dataset().root, self.dataset().images)
        dataset, _ = self.loaded()
        model = Path(self.opts.model).expanduser()
        parts = [file_key(self.opts.data or self.opts.captions), str(dataset.root.resolve()),
                 str(model.resolve()) if model.exists() else self.opts.model]
        total = len(dataset.images) if collection == "images" else len(dataset.captions)
        return RecordStream(lambda done, on_failure: self._records(collection, done, on_failure),
                            self._key("dataset", parts, collection), total)

    def _records(self, collection: str, done: frozenset[str], on_failure: OnFailure) -> Iterator[SparseRecord]:
        from lsr_os.data import caption_problem

        dataset, encoder = self.loaded()
        for failure in dataset.failures:  # rows of the dataset file that could not be read
            on_failure(failure)
        head = self.head().to(encoder.device)
        by_id = {img.id: img for img in dataset.images}

        def meta_of(img) -> dict:
            return image_meta(dataset.name, img.split, img.path)

        if collection == "images":
            yield from self._image_records(dataset, encoder, head, [i for i in dataset.images if i.id not in done],
                                           meta_of, on_failure)
            return
        chunk = []
        for c in dataset.captions:
            if c.id in done:
                continue
            problem = caption_problem(c.text)
            if problem:
                on_failure(Failure("caption", c.id, repr(c.text[:80]) if isinstance(c.text, str) else "", problem))
                continue
            chunk.append(c)
            if len(chunk) >= self.opts.text_batch_size:
                yield from self._caption_records(encoder, head, chunk, by_id, meta_of)
                chunk = []
        if chunk:
            yield from self._caption_records(encoder, head, chunk, by_id, meta_of)

    def _image_records(self, dataset, encoder, head, todo, meta_of, on_failure: OnFailure) -> Iterator[SparseRecord]:
        from lsr_os.encode import ImageSource, default_workers, image_loader

        if not todo:
            return
        workers = default_workers() if self.opts.workers is None else self.opts.workers
        source = ImageSource(dataset.root, todo, encoder.image_preprocessor())
        for good, batch, bad in image_loader(source, self.opts.batch_size, workers, encoder.device.type == "cuda"):
            for i, reason in bad:
                on_failure(source.failure(i, reason))
            if batch is not None:
                items = [todo[i] for i in good]
                yield from to_sparse(head, "images", [it.id for it in items], encoder.encode_pixels(batch),
                                     [meta_of(it) for it in items])

    def _caption_records(self, encoder, head, chunk, by_id, meta_of) -> Iterator[SparseRecord]:
        texts = [c.text for c in chunk]
        metas = [caption_meta(meta_of(by_id[c.image_id]), c.image_id, c.text) for c in chunk]
        yield from to_sparse(head, "captions", [c.id for c in chunk], encoder.encode_text_batch(texts), metas, texts,
                             self.opts.expand)


# --------------------------------------------------------------------------- sparse JSONL output


@dataclass
class SparsifyReport:
    """What `sparsify` wrote for one collection."""

    collection: str
    out: str
    written: int = 0
    already: int = 0  # in the file from an earlier run of the same source
    failed: int = 0
    failures_file: str | None = None
    seconds: float = 0.0
    failed_by_what: dict[str, int] = field(default_factory=dict)


def done_ids(path: Path) -> frozenset[str]:
    """Ids already in a sparse JSONL output; a torn last line (an interrupted write) is cut off first."""
    if not path.exists():
        return frozenset()
    with path.open("r+b") as handle:
        data = handle.read()
        end = data.rfind(b"\n") + 1
        if end != len(data):
            handle.truncate(end)
    ids: set[str] = set()
    for lineno, line in enumerate(data[:end].splitlines(), 1):
        if line.strip():
            try:
                ids.add(str(json.loads(line)["id"]))
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
                raise DataError(f"{path}:{lineno}: not a sparse record ({exc}); is this an lsr-os output file?") from exc
    return frozenset(ids)


def _check_manifest(out: Path, collection: str, key: str, fresh: bool) -> None:
    """One output file holds the records of one source: refuse to resume another source's file."""
    path = out / SPARSIFY_MANIFEST
    manifest = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    target = out / SPARSE_FILES[collection]
    if fresh:
        target.unlink(missing_ok=True)
    elif target.exists() and manifest.get(collection) != key:
        raise ConfigError(f"{target} holds records of another source ({manifest.get(collection) or 'unknown'}); "
                          f"give --fresh to replace it, or another --out")
    manifest[collection] = key
    path.write_text(json.dumps(manifest, indent=2), encoding="utf-8")


def sparsify(source: RecordSource, collections: Iterable[str], out: str | Path, fresh: bool = False,
             top_k: int | None = None, progress: bool | None = None) -> Iterator[SparsifyReport]:
    """Write each collection's records to `out/<collection>.jsonl`; yields one report per collection.

    Resumes by default: ids already in the file (from the same source) are neither encoded nor
    written again. Skipped items go to `out/failures-<collection>.jsonl`. `top_k` keeps each
    record's heaviest terms.
    """
    from tqdm.auto import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for collection in collections:
        stream = source.stream(collection)
        _check_manifest(out, collection, stream.source, fresh)
        target = out / SPARSE_FILES[collection]
        done = done_ids(target)
        report = SparsifyReport(collection, str(target), already=len(done))
        t0 = time.perf_counter()
        total = None if stream.total is None else max(0, stream.total - len(done))
        with FailureLog(out / f"failures-{collection}.jsonl") as failures, target.open("a", encoding="utf-8") as handle, \
                tqdm(total=total, unit="rec", desc=f"sparsify {collection}", dynamic_ncols=True,
                     disable=None if progress is None else not progress) as bar:
            for record in stream.records(done, failures.add):
                if top_k is not None:
                    record.vector = prune(record.vector, top_k)
                handle.write(record.to_json() + "\n")
                report.written += 1
                bar.update(1)
            handle.flush()
            report.failed, report.failed_by_what = failures.count, dict(failures.by_what)
            report.failures_file = str(failures.path) if failures.count else None
        report.seconds = time.perf_counter() - t0
        log.info("sparsify %s: %s", collection, report)
        yield report


# --------------------------------------------------------------------------- a split, in memory


@dataclass
class SplitRecords:
    """The sparse vectors of one split's images and captions, and which image each caption describes."""

    images: dict[str, SparseVector]
    captions: dict[str, SparseVector]
    caption_image: dict[str, str]
    caption_texts: dict[str, str]  # the caption's text, where the record carries it (evaluation's text queries)


def read_split(source: RecordSource) -> SplitRecords:
    """Every record of both collections of `source` (opened on one split), in memory.

    Any item the source cannot read is an error here: an evaluation that silently lost queries
    or documents would report figures of another collection.
    """
    def fail(failure: Failure) -> None:
        raise DataError(f"{failure.where}: {failure.what}{f' {failure.id}' if failure.id else ''}: {failure.reason}")

    images = {r.id: r.vector for r in source.stream("images").records(frozenset(), fail)}
    captions: dict[str, SparseVector] = {}
    caption_image: dict[str, str] = {}
    caption_texts: dict[str, str] = {}
    stream = source.stream("captions")
    for r in stream.records(frozenset(), fail):
        image_id = r.meta.get("image_id")
        if image_id is None:
            raise DataError(f"caption {r.id} has no image_id: sparse caption records need it to be evaluated "
                            f"(lsr-os sparsify writes it)")
        captions[r.id] = r.vector
        caption_image[r.id] = str(image_id)
        if isinstance(r.meta.get("caption"), str):
            caption_texts[r.id] = r.meta["caption"]
    if not images or not captions:
        hint = ("" if select_splits(source.split) is None else
                "; records without a split key are in no split: give --split all to take every record")
        raise DataError(f"the source holds {len(images)} images and {len(captions)} captions in split "
                        f"{split_label(source.split)}{hint}")
    return SplitRecords(images, captions, caption_image, caption_texts)
