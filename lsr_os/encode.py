"""Batched, resumable, sharded encoding of a dataset to dense files or sparse JSONL.

Dense output (`encode_dataset(..., head=None)`) is the authors' layout, so `lsr-os train`
reads it unchanged:

    OUT/img_embs.parquet/part-<shard>-<seq>.parquet   a folder of parquet parts (id, emb)
    OUT/text_embs.parquet/part-<shard>-<seq>.parquet
    OUT/dataset_meta.json                             Karpathy layout, failed items left out
    OUT/failures[.shard-I-of-N].jsonl                 one line per skipped item, with the reason
    OUT/encode.json                                   model, dimension and dataset of this folder

`lsr_os.dense_files.read_embeddings` reads such a folder as one table. Parts are written to a
hidden temporary name and renamed when complete, so an interrupted run leaves only whole
parts; a re-run skips every id already in a part (of any shard) and goes on. Shards (`I/N`,
by a stable hash of the id) write parts with their own names into the same folder, so their
outputs merge without a copy step; the last shard to finish writes the complete metadata
(re-running any shard on finished output rewrites it).

Sparse output (`head=...`) goes through the D2S head to `images.jsonl` / `captions.jsonl`
(`images.shard-I-of-N.jsonl` when sharded), appended batch by batch; a re-run reads the ids
already written (dropping a torn last line) and goes on.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Collection, Iterator

import numpy as np
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from lsr_os.data import (CaptionItem, Dataset, Failure, ImageItem, ImageLoadError, caption_problem, load_image,
                         resolve_image, shard)
from lsr_os.dense_files import IMG_FILE, META_FILE, TEXT_FILE, write_embeddings
from lsr_os.errors import ConfigError, DataError
from lsr_os.models.dense import DenseEncoder, ImagePreprocessor
from lsr_os.sparse import SparseRecord, write_jsonl

log = logging.getLogger(__name__)

MANIFEST = "encode.json"


@dataclass
class EncodeOptions:
    batch_size: int = 64  # images per model call
    text_batch_size: int = 256  # captions per model call
    workers: int = 0  # DataLoader processes decoding images (0: in the main process)
    shard: tuple[int, int] = (0, 1)
    part_size: int = 8192  # vectors per parquet part: the most an interruption can lose
    images: bool = True
    captions: bool = True
    max_batches: int | None = None  # stop after this many batches per side (a trial run)
    progress: bool = True
    expand_captions: bool = True  # sparse output: expand captions (else keep their own tokens)
    top_k: int | None = None  # sparse output: keep the heaviest k terms


@dataclass
class Counts:
    total: int = 0  # in this shard
    encoded: int = 0  # in this run
    already: int = 0  # found done by an earlier run
    failed: int = 0


@dataclass
class EncodeReport:
    out: str
    failures_file: str
    images: Counts = field(default_factory=Counts)
    captions: Counts = field(default_factory=Counts)
    row_failures: int = 0
    stopped_early: bool = False
    seconds: float = 0.0

    @property
    def failed(self) -> int:
        return self.images.failed + self.captions.failed + self.row_failures

    def to_dict(self) -> dict:
        return {**asdict(self), "failed": self.failed}


def shard_tag(index: int, count: int) -> str:
    return "" if count == 1 else f".shard-{index}-of-{count}"


# ---------------------------------------------------------------- sinks


class ParquetParts:
    """A folder of parquet parts that is read as one table; whole parts only, hidden while written."""

    def __init__(self, folder: Path, index: int, count: int, part_size: int):
        self.folder = folder
        self.prefix = f"part-{index:03d}of{count:03d}-"
        self.part_size = part_size
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(f".{self.prefix}*.tmp"):
            stale.unlink()
        seqs = [int(m.group(1)) for p in folder.glob(f"{self.prefix}*.parquet")
                if (m := re.search(r"-(\d+)\.parquet$", p.name))]
        self.seq = max(seqs, default=-1) + 1
        self.ids: list[str] = []
        self.embs: list[np.ndarray] = []

    def done_ids(self) -> set[str]:
        """Ids in every finished part of the folder (all shards)."""
        done: set[str] = set()
        for part in sorted(self.folder.glob("part-*.parquet")):
            try:
                done.update(pq.read_table(str(part), columns=["id"]).column("id").to_pylist())
            except Exception as exc:  # pyarrow raises several types for a damaged file
                raise DataError(f"{part} is not a readable parquet part ({exc}); delete it to re-encode its ids") from exc
        return done

    def add(self, ids: list[str], emb: np.ndarray, texts: list[str] | None = None) -> None:
        self.ids.extend(ids)
        self.embs.append(emb)
        if len(self.ids) >= self.part_size:
            self.flush()

    def flush(self) -> None:
        if not self.ids:
            return
        tmp = self.folder / f".{self.prefix}{self.seq:05d}.tmp"
        write_embeddings(tmp, self.ids, np.concatenate(self.embs))
        os.replace(tmp, self.folder / f"{self.prefix}{self.seq:05d}.parquet")
        self.seq += 1
        self.ids, self.embs = [], []


class SparseJsonl:
    """Sparse records through a head, appended to one JSONL file per side and shard."""

    def __init__(self, path: Path, head, expand: bool, top_k: int | None, meta: Callable[[str], dict]):
        self.path = path
        self.head = head
        self.expand = expand
        self.top_k = top_k
        self.meta = meta
        path.parent.mkdir(parents=True, exist_ok=True)

    def done_ids(self) -> set[str]:
        """Ids already written; a torn last line (an interrupted write) is cut off first."""
        if not self.path.exists():
            return set()
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end != len(data):
            with self.path.open("r+b") as handle:
                handle.truncate(end)
        done = set()
        for lineno, line in enumerate(data[:end].splitlines(), 1):
            if line.strip():
                try:
                    done.add(str(json.loads(line)["id"]))
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise DataError(f"{self.path}:{lineno}: not a sparse record ({exc})") from exc
        return done

    def add(self, ids: list[str], emb: np.ndarray, texts: list[str] | None = None) -> None:
        with torch.inference_mode():
            vectors = self.head.encode(emb, texts=texts, expand=self.expand or texts is None, top_k=self.top_k)
        write_jsonl(self.path, (SparseRecord(i, v, self.meta(i)) for i, v in zip(ids, vectors)), append=True)

    def flush(self) -> None:
        """Every batch is appended as it comes; nothing is buffered."""


# ---------------------------------------------------------------- image loading for the DataLoader


class ImageSource(torch.utils.data.Dataset):
    """Decode + resize one image in a worker; a bad image comes back as its reason, never raises."""

    def __init__(self, root: Path, items: list[ImageItem], pre: ImagePreprocessor):
        self.root = root
        self.items = items
        self.pre = pre

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        item = self.items[i]
        try:
            return i, self.pre(load_image(resolve_image(self.root, item.path))), None
        except ImageLoadError as exc:
            return i, None, str(exc)
        except Exception as exc:  # a decoder bug on one file must not end a long run
            return i, None, f"unexpected {type(exc).__name__}: {exc}"


def collate(samples):
    """(indices of good images, uint8 batch or None, [(index, reason)] of bad ones)."""
    good = [(i, t) for i, t, _ in samples if t is not None]
    bad = [(i, e) for i, _, e in samples if e is not None]
    batch = torch.stack([t for _, t in good]) if good else None
    return [i for i, _ in good], batch, bad


def image_loader(source: ImageSource, batch_size: int, workers: int, pin: bool) -> torch.utils.data.DataLoader:
    kwargs = {"num_workers": workers, "collate_fn": collate, "pin_memory": pin, "batch_size": batch_size}
    if workers > 0:
        kwargs["prefetch_factor"] = 4
    return torch.utils.data.DataLoader(source, shuffle=False, **kwargs)


# ---------------------------------------------------------------- sparse records on the fly (ingest)


def dataset_records(encoder: DenseEncoder, head, dataset: Dataset, collection: str,
                    on_failure: Callable[[Failure], None], batch_size: int = 64, text_batch_size: int = 256,
                    workers: int = 0, expand_captions: bool = True,
                    skip: Collection[str] = frozenset()) -> Iterator[SparseRecord]:
    """Sparse records of one collection ("images" or "captions") of `dataset`, encoded batch by batch.

    For `lsr-os ingest` straight from a dataset: images are decoded by the same DataLoader as
    `encode_dataset` (in `workers` processes), embedded on the encoder's device and sparsified
    there (the head is moved to that device), so only one batch exists at a time. Bad images and
    captions go to `on_failure` and are skipped. Metadata follows `lsr_os.index.dense_records`:
    dataset, split, image (the path under the image root); captions add image_id and caption.
    Items whose id is in `skip` (already indexed, on a resumed load) are neither decoded nor encoded.
    """
    if collection not in ("images", "captions"):
        raise ConfigError(f"unknown collection {collection!r}; choose images or captions")
    head = head.to(encoder.device)
    images = {img.id: img for img in dataset.images}

    def meta(img: ImageItem) -> dict:
        return {"dataset": dataset.name, "split": img.split, "image": img.path}

    if collection == "images":
        todo = [img for img in dataset.images if img.id not in skip]
        if not todo:
            return
        source = ImageSource(dataset.root, todo, encoder.image_preprocessor())
        for good, batch, bad in image_loader(source, batch_size, workers, pin=encoder.device.type == "cuda"):
            for i, reason in bad:
                on_failure(Failure("image", todo[i].id, reason, todo[i].path))
            if batch is None:
                continue
            vectors = head.encode(encoder.encode_pixels(batch))
            for i, vector in zip(good, vectors):
                yield SparseRecord(todo[i].id, vector, meta(todo[i]))
        return

    def encode_chunk(chunk: list[CaptionItem]) -> Iterator[SparseRecord]:
        texts = [c.text for c in chunk]
        vectors = head.encode(encoder.encode_text_batch(texts), texts=texts, expand=expand_captions)
        for c, vector in zip(chunk, vectors):
            yield SparseRecord(c.id, vector, {**meta(images[c.image_id]), "image_id": c.image_id, "caption": c.text})

    chunk: list[CaptionItem] = []
    for c in dataset.captions:
        if c.id in skip:
            continue
        problem = caption_problem(c.text)
        if problem:
            on_failure(Failure("caption", c.id, problem, repr(c.text[:80]) if isinstance(c.text, str) else ""))
            continue
        chunk.append(c)
        if len(chunk) >= text_batch_size:
            yield from encode_chunk(chunk)
            chunk = []
    if chunk:
        yield from encode_chunk(chunk)


# ---------------------------------------------------------------- the run


class _Failures:
    def __init__(self, path: Path):
        self.path = path
        self.handle = path.open("w", encoding="utf-8")

    def add(self, failure: Failure) -> None:
        self.handle.write(failure.to_json() + "\n")
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


def _check_manifest(out: Path, manifest: dict) -> None:
    """Refuse to mix vectors of two models (or two datasets) in one output folder."""
    path = out / MANIFEST
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} is not valid JSON: {exc}") from exc
        for key in ("model", "dim", "dataset", "head"):
            if old.get(key) != manifest.get(key):
                raise ConfigError(f"{out} holds output of {key} {old.get(key)!r}, not {manifest.get(key)!r}; "
                                  f"use another --out")
    path.write_text(json.dumps(manifest, indent=2))


def encode_dataset(encoder: DenseEncoder, dataset: Dataset, out: str | Path, options: EncodeOptions | None = None,
                   head=None, head_name: str | None = None) -> EncodeReport:
    """Encode the dataset's images and captions to `out` (dense parts, or sparse JSONL with `head`)."""
    opts = options or EncodeOptions()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    index, count = opts.shard
    tag = shard_tag(index, count)
    _check_manifest(out, {"model": encoder.name, "kind": encoder.kind, "dim": encoder.dim, "dataset": dataset.name,
                          "head": head_name, "format": "sparse-jsonl" if head is not None else "dense-parquet"})
    failures = _Failures(out / f"failures{tag}.jsonl")
    report = EncodeReport(str(out), str(failures.path))
    t0 = time.perf_counter()
    try:
        for f in dataset.failures:
            failures.add(f)
        report.row_failures = len(dataset.failures)
        if head is not None:
            captions_by_id = {c.id: c for c in dataset.captions}
            images_by_id = {i.id: i for i in dataset.images}
            img_sink = SparseJsonl(out / f"images{tag}.jsonl", head, True, opts.top_k,
                                   lambda i: {"filename": images_by_id[i].path})
            txt_sink = SparseJsonl(out / f"captions{tag}.jsonl", head, opts.expand_captions, opts.top_k,
                                   lambda i: {"image_id": captions_by_id[i].image_id, "text": captions_by_id[i].text})
        else:
            img_sink = ParquetParts(out / IMG_FILE, index, count, opts.part_size)
            txt_sink = ParquetParts(out / TEXT_FILE, index, count, opts.part_size)
        if opts.images:
            report.stopped_early |= _encode_images(encoder, dataset, img_sink, opts, report.images, failures)
        if opts.captions:
            report.stopped_early |= _encode_captions(encoder, dataset, txt_sink, opts, report.captions, failures)
    finally:
        failures.close()
    if head is None:
        _write_meta(out, dataset)
    report.seconds = time.perf_counter() - t0
    log.info("encoded %s", report.to_dict())
    return report


def _write_meta(out: Path, dataset: Dataset) -> None:
    """dataset_meta.json without the items that any shard's latest run failed on."""
    drop_images: set[str] = set()
    drop_captions: set[str] = set()
    for path in out.glob("failures*.jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                rec = json.loads(line)
                (drop_images if rec["what"] == "image" else drop_captions).add(rec["id"])
    tmp = out / f".{META_FILE}.{os.getpid()}.tmp"
    dataset.meta(drop_images, drop_captions).save(tmp)
    os.replace(tmp, out / META_FILE)


class _Drain:
    """Keep the device busy: a batch's result is copied back while the next batch computes."""

    def __init__(self, sink, device: torch.device):
        self.sink = sink
        self.cuda = device.type == "cuda"
        self.pending: collections.deque = collections.deque()

    def push(self, ids: list[str], emb: torch.Tensor, texts: list[str] | None = None) -> None:
        if self.cuda:
            host = emb.to("cpu", non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        else:
            host, event = emb, None
        self.pending.append((ids, host, event, texts))
        while len(self.pending) > 1:
            self._finish()

    def _finish(self) -> None:
        ids, host, event, texts = self.pending.popleft()
        if event is not None:
            event.synchronize()
        self.sink.add(ids, host.numpy(), texts)

    def close(self) -> None:
        while self.pending:
            self._finish()
        self.sink.flush()


def _encode_images(encoder: DenseEncoder, dataset: Dataset, sink, opts: EncodeOptions, counts: Counts,
                   failures: _Failures) -> bool:
    items = shard(dataset.images, *opts.shard)
    done = sink.done_ids()
    todo = [it for it in items if it.id not in done]
    counts.total, counts.already = len(items), len(items) - len(todo)
    if not todo:
        return False
    source = ImageSource(dataset.root, todo, encoder.image_preprocessor())
    loader = image_loader(source, opts.batch_size, opts.workers, pin=encoder.device.type == "cuda")
    drain = _Drain(sink, encoder.device)
    stopped = False
    with tqdm(total=len(todo), unit="img", desc="images", disable=not opts.progress or None) as bar:
        try:
            for n, (good, batch, bad) in enumerate(loader, 1):
                for i, reason in bad:
                    failures.add(Failure("image", todo[i].id, reason, todo[i].path))
                counts.failed += len(bad)
                if batch is not None:
                    drain.push([todo[i].id for i in good], encoder.encode_pixels(batch))
                    counts.encoded += len(good)
                bar.update(len(good) + len(bad))
                if opts.max_batches is not None and n >= opts.max_batches and counts.encoded + counts.failed < len(todo):
                    stopped = True
                    break
        finally:
            drain.close()
    return stopped


def _encode_captions(encoder: DenseEncoder, dataset: Dataset, sink, opts: EncodeOptions, counts: Counts,
                     failures: _Failures) -> bool:
    items: list[CaptionItem] = shard(dataset.captions, *opts.shard)
    done = sink.done_ids()
    todo = []
    for c in items:
        if c.id in done:
            counts.already += 1
            continue
        problem = caption_problem(c.text)
        if problem:
            failures.add(Failure("caption", c.id, problem, repr(c.text[:80]) if isinstance(c.text, str) else ""))
            counts.failed += 1
        else:
            todo.append(c)
    counts.total = len(items)
    drain = _Drain(sink, encoder.device)
    stopped = False
    with tqdm(total=len(todo), unit="cap", desc="captions", disable=not opts.progress or None) as bar:
        try:
            for n, start in enumerate(range(0, len(todo), opts.text_batch_size), 1):
                chunk = todo[start:start + opts.text_batch_size]
                texts = [c.text for c in chunk]
                drain.push([c.id for c in chunk], encoder.encode_text_batch(texts), texts)
                counts.encoded += len(chunk)
                bar.update(len(chunk))
                if opts.max_batches is not None and n >= opts.max_batches and counts.encoded < len(todo):
                    stopped = True
                    break
        finally:
            drain.close()
    return stopped
