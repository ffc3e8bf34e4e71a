"""Batched, resumable, sharded encoding of a dataset to dense files (sparse records: lsr_os.records).

The output is the authors' layout, so `lsr-os train` and `lsr-os sparsify --dense` read it
unchanged:

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

Image decoding runs in DataLoader worker processes (`ImageSource`, `image_loader`; the dataset
source of lsr_os.records uses them too) while the model runs on the device.
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

import numpy as np
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from lsr_os.data import (CaptionItem, Dataset, ImageItem, ImageLoadError, caption_problem, image_file, load_image,
                         resolve_image, shard)
from lsr_os.dense_files import IMG_FILE, META_FILE, TEXT_FILE, check_collection, write_embeddings
from lsr_os.errors import ConfigError, DataError
from lsr_os.models.dense import DenseEncoder, ImagePreprocessor
from lsr_os.failures import Failure, FailureLog, read_failures

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

    def add(self, ids: list[str], emb: np.ndarray) -> None:
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

    def failure(self, i: int, reason: str) -> Failure:
        """The failure of item `i`, naming the full path it was looked for at."""
        item = self.items[i]
        return Failure("image", item.id, image_file(self.root, item.path), reason)


def collate(samples):
    """(indices of good images, uint8 batch or None, [(index, reason)] of bad ones)."""
    good = [(i, t) for i, t, _ in samples if t is not None]
    bad = [(i, e) for i, _, e in samples if e is not None]
    batch = torch.stack([t for _, t in good]) if good else None
    return [i for i, _ in good], batch, bad


def default_workers() -> int:
    """Image-decoding processes when none are asked for: one core stays with the model."""
    return min(8, max(0, (os.cpu_count() or 1) - 1))


def image_loader(source: ImageSource, batch_size: int, workers: int, pin: bool) -> torch.utils.data.DataLoader:
    kwargs = {"num_workers": workers, "collate_fn": collate, "pin_memory": pin, "batch_size": batch_size}
    if workers > 0:
        kwargs["prefetch_factor"] = 4
    return torch.utils.data.DataLoader(source, shuffle=False, **kwargs)


# ---------------------------------------------------------------- the run


def _check_manifest(out: Path, manifest: dict) -> None:
    """Refuse to mix vectors of two models (or two datasets) in one output folder."""
    path = out / MANIFEST
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} is not valid JSON: {exc}") from exc
        for key in ("model", "dim", "dataset"):
            if old.get(key) != manifest.get(key):
                raise ConfigError(f"{out} holds output of {key} {old.get(key)!r}, not {manifest.get(key)!r}; "
                                  f"use another --out")
    path.write_text(json.dumps(manifest, indent=2))


def encode_dataset(encoder: DenseEncoder, dataset: Dataset, out: str | Path,
                   options: EncodeOptions | None = None) -> EncodeReport:
    """Encode the dataset's images and captions to dense parquet parts in `out`."""
    opts = options or EncodeOptions()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    index, count = opts.shard
    tag = shard_tag(index, count)
    _check_manifest(out, {"model": encoder.name, "kind": encoder.kind, "dim": encoder.dim, "dataset": dataset.name,
                          "format": "dense-parquet"})
    report = EncodeReport(str(out), str(out / f"failures{tag}.jsonl"))
    t0 = time.perf_counter()
    with FailureLog(report.failures_file) as failures:
        for f in dataset.failures:
            failures.add(f)
        report.row_failures = len(dataset.failures)
        if opts.images:
            sink = ParquetParts(out / IMG_FILE, index, count, opts.part_size)
            report.stopped_early |= _encode_images(encoder, dataset, sink, opts, report.images, failures)
        if opts.captions:
            sink = ParquetParts(out / TEXT_FILE, index, count, opts.part_size)
            report.stopped_early |= _encode_captions(encoder, dataset, sink, opts, report.captions, failures)
    _write_meta(out, dataset)
    report.seconds = time.perf_counter() - t0
    log.info("encoded %s", report.to_dict())
    return report


def encode_folder(model: str | None, out: str | Path, data: str | Path | None = None, images: str | Path | None = None,
                  captions: str | Path | None = None, split: str | None = None, collection: str | None = None,
                  options: EncodeOptions | None = None, workers: int | None = None, shard: str | None = None,
                  device: str | None = None, dtype: str | None = None) -> tuple[EncodeReport, dict]:
    """`lsr-os encode`: load the dataset (checked first) and the encoder, encode into `out`.

    `collection` None encodes both; `workers` None means `default_workers()`; `shard`
    is "I/N". Returns the report and the encoder's description.
    """
    from lsr_os.data import load_dataset, parse_shard, require_images
    from lsr_os.data import shard as shard_items  # the name `shard` is the option here
    from lsr_os.models import load_encoder

    if not model:
        raise ConfigError("--model is required: the dense encoder to encode with")
    opts = options or EncodeOptions()
    opts.shard = parse_shard(shard)
    opts.workers = default_workers() if workers is None else workers
    if collection is not None:
        check_collection(collection)
        opts.images, opts.captions = collection == "images", collection == "captions"
    dataset = load_dataset(data=data, images=images, captions=captions, split=split)
    if opts.images:
        require_images(dataset.root, shard_items(dataset.images, *opts.shard))
    encoder = load_encoder(model, device=device, dtype=dtype)
    return encode_dataset(encoder, dataset, out, opts), encoder.describe()


def _write_meta(out: Path, dataset: Dataset) -> None:
    """dataset_meta.json without the items that any shard's latest run failed on."""
    drop_images: set[str] = set()
    drop_captions: set[str] = set()
    for path in out.glob("failures*.jsonl"):
        for failure in read_failures(path):
            if failure.what in ("image", "caption"):
                (drop_images if failure.what == "image" else drop_captions).add(failure.id)
    tmp = out / f".{META_FILE}.{os.getpid()}.tmp"
    dataset.meta(drop_images, drop_captions).save(tmp)
    os.replace(tmp, out / META_FILE)


class _Drain:
    """Keep the device busy: a batch's result is copied back while the next batch computes."""

    def __init__(self, sink, device: torch.device):
        self.sink = sink
        self.cuda = device.type == "cuda"
        self.pending: collections.deque = collections.deque()

    def push(self, ids: list[str], emb: torch.Tensor) -> None:
        if self.cuda:
            host = emb.to("cpu", non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        else:
            host, event = emb, None
        self.pending.append((ids, host, event))
        while len(self.pending) > 1:
            self._finish()

    def _finish(self) -> None:
        ids, host, event = self.pending.popleft()
        if event is not None:
            event.synchronize()
        self.sink.add(ids, host.numpy())

    def close(self) -> None:
        while self.pending:
            self._finish()
        self.sink.flush()


def _encode_images(encoder: DenseEncoder, dataset: Dataset, sink, opts: EncodeOptions, counts: Counts,
                   failures: FailureLog) -> bool:
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
                    failures.add(source.failure(i, reason))
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
                     failures: FailureLog) -> bool:
    items: list[CaptionItem] = shard(dataset.captions, *opts.shard)
    done = sink.done_ids()
    todo = []
    for c in items:
        if c.id in done:
            counts.already += 1
            continue
        problem = caption_problem(c.text)
        if problem:
            failures.add(Failure("caption", c.id, repr(c.text[:80]) if isinstance(c.text, str) else "", problem))
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
                drain.push([c.id for c in chunk], encoder.encode_text_batch([c.text for c in chunk]))
                counts.encoded += len(chunk)
                bar.update(len(chunk))
                if opts.max_batches is not None and n >= opts.max_batches and counts.encoded < len(todo):
                    stopped = True
                    break
        finally:
            drain.close()
    return stopped
