"""Dense vectors -> sparse JSONL (DESIGN.md's format) with a trained head.

Input: a dataset folder in the authors' layout (pick `images` or `captions`) or one parquet file
of dense vectors. Captions can be encoded without expansion (their own tokens only) when their
text is known from `dataset_meta.json`. Output lines: `{"id", "vector": {term: weight}, "kind"}`.
Resumable: ids already in the output file are skipped (and counted in the log).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from lsr_os import sparse as sparse_lib
from lsr_os.dense_files import IMG_FILE, META_FILE, TEXT_FILE, DatasetMeta, read_embeddings
from lsr_os.errors import ConfigError, DataError
from lsr_os.models.head import SparseHead

log = logging.getLogger(__name__)


@dataclass
class SparsifyReport:
    written: int
    skipped_existing: int
    dropped_weights: int  # subnormal weights OpenSearch cannot store
    empty: int  # records with no term left (they match nothing)
    out: Path


def _captions_by_id(meta_path: Path) -> dict[str, str]:
    meta = DatasetMeta.load(meta_path)
    return {str(s["sentid"]): s["raw"] for img in meta.images for s in img.get("sentences", [])}


def sparsify(head: SparseHead, dense: str | Path, out: str | Path, kind: str = "images", expand: bool = True,
             top_k: int | None = None, batch_size: int = 1024, split: str | None = None, resume: bool = False,
             device: str = "cpu", progress: bool = True) -> SparsifyReport:
    """Encode dense vectors into sparse JSONL; see the module docstring.

    `split` restricts a dataset folder to one split of its metadata ("train" includes restval).
    """
    from tqdm.auto import tqdm

    if kind not in ("images", "captions"):
        raise ConfigError(f"kind must be images or captions, not {kind!r}")
    dense = Path(dense)
    folder = dense if dense.is_dir() else dense.parent
    parquet = dense / (IMG_FILE if kind == "images" else TEXT_FILE) if dense.is_dir() else dense
    emb = read_embeddings(parquet)
    if emb.dim != head.dense_size:
        raise DataError(f"{parquet} holds {emb.dim}-d vectors (first id {emb.ids[0]!r}); "
                        f"the head expects {head.dense_size}-d")
    ids = list(emb.ids)
    meta_path = folder / META_FILE
    if split is not None:
        if not meta_path.exists():
            raise DataError(f"--split needs {meta_path}")
        s = DatasetMeta.load(meta_path).split(split)
        ids = list(s.image_ids if kind == "images" else s.caption_ids)
    texts: dict[str, str] | None = None
    if not expand:
        if kind != "captions":
            raise ConfigError("--no-expansion applies to captions only (images are always expanded)")
        if not meta_path.exists():
            raise DataError(f"--no-expansion needs the captions' text in {meta_path}")
        texts = _captions_by_id(meta_path)
        missing = next((i for i in ids if i not in texts), None)
        if missing is not None:
            raise DataError(f"caption id {missing!r} of {parquet} has no text in {meta_path}")
    out = Path(out)
    done: set[str] = set()
    if resume and out.exists():
        done = {r.id for r in sparse_lib.read_jsonl(out)}
    elif out.exists():
        out.unlink()
    todo = [i for i in ids if i not in done]
    if done:
        log.info("%s: %d of %d ids already written, skipped", out, len(ids) - len(todo), len(ids))
    head = head.to(device).eval()
    written = dropped = empty = 0
    bar = tqdm(total=len(todo), desc=f"sparsify {kind}", unit="vec", disable=not progress)
    for start in range(0, len(todo), batch_size):
        batch_ids = todo[start:start + batch_size]
        vectors = head.encode(emb.take(batch_ids), texts=[texts[i] for i in batch_ids] if texts else None,
                              expand=expand, batch_size=batch_size, top_k=top_k)
        records = []
        for rid, vec in zip(batch_ids, vectors):
            kept = sparse_lib.clean(vec)
            dropped += len(vec) - len(kept)
            empty += not kept
            records.append(sparse_lib.SparseRecord(rid, kept, {"kind": kind[:-1]}))
        written += sparse_lib.write_jsonl(out, records, append=True)
        bar.update(len(batch_ids))
    bar.close()
    if dropped:
        log.info("%s: dropped %d weights OpenSearch cannot store (subnormal)", out, dropped)
    if empty:
        log.warning("%s: %d records have no terms and will match nothing", out, empty)
    return SparsifyReport(written, len(ids) - len(todo), dropped, empty, out)

