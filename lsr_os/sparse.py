"""Sparse vectors: {term: weight} maps, their hygiene, and the JSONL format on disk.

JSONL format (stable): one object a line, `{"id": "...", "vector": {"term": weight, ...}}`,
weights > 0, other keys kept as metadata. Terms are readable vocabulary tokens; an engine that
needs escaped feature names (OpenSearch) gets them only at the cluster boundary (the engine's
`ops.feature`, vocab.term_to_feature).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

import orjson

from lsr_os.errors import DataError
from lsr_os.failures import Failure, OnFailure

if TYPE_CHECKING:  # numpy loads on first use: a vector query from the CLI needs none of it
    import numpy as np

SparseVector = dict[str, float]

# Both engines' sparse fields (OpenSearch's rank_features, Elasticsearch's sparse_vector) store a
# weight as the top 17 bits of its float32 (Lucene FeatureField: bits >>> 15), i.e. 9 significant
# bits, truncated; weights below the smallest normal float32 (2^-126) cannot be stored at all.
MIN_NORMAL = 2.0**-126


def clean(vector: SparseVector) -> SparseVector:
    """Drop weights that no engine's sparse field can store: not finite, <= 0, or subnormal.

    A vector with nothing to drop, the common case on ingest's per-document path, is returned
    as it is after two passes in C: a finite sum rules out NaN and infinities, and then the
    smallest weight tells whether any is <= 0 or subnormal."""
    values = vector.values()
    if vector and math.isfinite(sum(values)) and min(values) >= MIN_NORMAL:
        return vector
    return {t: float(w) for t, w in vector.items() if math.isfinite(w) and w >= MIN_NORMAL}


def _heaviest_key(item: tuple[str, float]) -> tuple[float, str]:
    return -item[1], item[0]


def heaviest_first(items: Iterable[tuple[str, float]]) -> list[tuple[str, float]]:
    """(term, weight) pairs heaviest first, ties by term: the one order of every listing and every
    cut of terms (and of (doc id, score) pairs), so equal weights never reorder between runs."""
    return sorted(items, key=_heaviest_key)


def numeric_weights(obj: object, what: str, also: str = "") -> SparseVector:
    """{term: float weight} of a JSON object of term: weight; DataError naming `what` otherwise.

    JSON `true`, `null` or `"1.5"` are not weights, although Python (`float(True)`) or pydantic
    would quietly take them as numbers. `also` names other accepted shapes in the message."""
    if not isinstance(obj, dict):
        raise DataError(f"{what} must be an object of term: weight{also}, not {type(obj).__name__}")
    for term, weight in obj.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise DataError(f"{what}: the weight of {term!r} is {json.dumps(weight)}, not a number")
    return {str(t): float(w) for t, w in obj.items()}


def prune(vector: SparseVector, top_k: int | None = None, threshold: float = 0.0) -> SparseVector:
    """Keep the `top_k` heaviest terms (ties by term, for determinism) with weight > threshold."""
    items = [(t, w) for t, w in vector.items() if w > threshold]
    if top_k is not None and len(items) > top_k:
        items = heaviest_first(items)[:top_k]
    return dict(items)


def quantize(weights: np.ndarray | float) -> np.ndarray:
    """The weight the engine scores with (either engine): float32 truncated to 9 significant bits."""
    import numpy as np

    bits = np.asarray(weights, dtype=np.float32).view(np.int32)
    return (bits & np.int32(~0x7FFF)).view(np.float32)


def dot(a: SparseVector, b: SparseVector) -> float:
    """Dot product of two sparse vectors."""
    if len(a) > len(b):
        a, b = b, a
    return sum(w * b[t] for t, w in a.items() if t in b)


def from_rows(matrix, terms: Sequence[str], top_k: int | None = None) -> list[SparseVector]:
    """Turn rows of a (batch x vocab) tensor or array into {term: weight} maps of their non-zeros."""
    import numpy as np

    arr = matrix.detach().float().cpu().numpy() if hasattr(matrix, "detach") else np.asarray(matrix)
    out: list[SparseVector] = []
    for row in arr:
        idx = np.flatnonzero(row > 0)
        if top_k is not None and len(idx) > top_k:
            idx = idx[np.argsort(-row[idx], kind="stable")[:top_k]]
        out.append({terms[i]: float(row[i]) for i in idx})
    return out


@dataclass
class SparseRecord:
    """One sparse record: id, vector and metadata (the schema of lsr_os.records)."""

    id: str
    vector: SparseVector
    meta: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"id": self.id, "vector": self.vector, **self.meta}, ensure_ascii=False)


# Given the ids already done (in an unfinished index, in an output file), the records still to
# produce, lazily, with skipped items reported to the callback: an expensive source (a dataset
# encoded on the fly) skips done ids before computing anything.
RecordsAfter = Callable[[frozenset[str], OnFailure], Iterable[SparseRecord]]


@dataclass
class RecordStream:
    """One collection's records from one source: the records (see `RecordsAfter`), the resume key
    (a later run with the same key resumes), and the number of records when known (progress)."""

    records: RecordsAfter
    source: str
    total: int | None = None

    @classmethod
    def of(cls, records: Iterable[SparseRecord], source: str, total: int | None = None) -> "RecordStream":
        """A stream over records already at hand (an iterable, consumed once); done ids are skipped."""
        return cls(lambda done, on_failure: (r for r in records if r.id not in done), source, total)


def read_jsonl(path: str | Path, on_failure: OnFailure | None = None) -> Iterator[SparseRecord]:
    """Stream records from a sparse JSONL file.

    A bad line (not UTF-8, not JSON, not a record) raises DataError naming `file:line`, unless
    `on_failure` is given: then it is reported there (with the id when it was readable) and
    skipped, so one bad line does not stop a long job.
    """
    path = Path(path)
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from exc
    with handle:
        for lineno, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            try:
                yield _parse_record(raw)
            except _BadLine as exc:
                where = f"{path}:{lineno}"
                if on_failure is None:
                    raise DataError(f"{where}: {exc}") from None
                on_failure(Failure("record", exc.record_id, where, str(exc)))


def _parse_slowly(raw: bytes):
    """A line orjson refused: the UTF-8 error, or what json reads (NaN/Infinity literals, which
    clean() drops; huge integers), or json's message."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _BadLine(f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})") from None
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise _BadLine(f"not valid JSON ({exc.msg} at column {exc.colno})") from None


class _BadLine(ValueError):
    def __init__(self, reason: str, record_id: str | None = None):
        super().__init__(reason)
        self.record_id = record_id


def _parse_record(raw: bytes) -> SparseRecord:
    try:
        obj = orjson.loads(raw)  # several times faster than json on ingest's read path; checks UTF-8 too
    except orjson.JSONDecodeError:
        obj = _parse_slowly(raw)
    if not isinstance(obj, dict):
        raise _BadLine("a line must be a JSON object")
    rid = obj.pop("id", None)
    vector = obj.pop("vector", None)
    if isinstance(rid, bool) or not isinstance(rid, (str, int)) or rid == "":
        raise _BadLine('missing or empty "id" (a string or an integer)')
    rid = str(rid)
    if isinstance(vector, dict) and set(map(type, vector.values())) <= {float}:  # the common case, checked in C
        return SparseRecord(rid, vector, obj)
    try:
        return SparseRecord(rid, numeric_weights(vector, '"vector"'), obj)
    except DataError as exc:
        raise _BadLine(str(exc), rid) from None


def write_jsonl(path: str | Path, records: Iterable[SparseRecord], append: bool = False) -> int:
    """Write records, one JSON object a line; returns how many were written."""
    n = 0
    with Path(path).open("a" if append else "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(record.to_json() + "\n")
            n += 1
    return n
