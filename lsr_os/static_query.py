"""The inference-free query side: text queries without a model.

A head may carry query weights: one non-negative weight per vocabulary term, trained with the head
by `lsr-os train` (or added to a head later by `lsr-os add-query-weights`). A text query is then

    {t: w_t for each distinct word piece t of the text with w_t > 0}

so a repeated word piece counts once, and stop words, punctuation and special tokens never count:
their weight is 0 in every table (`content_term_mask`). Nothing here imports torch, transformers or
numpy on the query path: a text query costs a tokenizer call and a table lookup, and the lsr-os
plugin (OpenSearch, Elasticsearch) computes the same score inside the cluster from the same table.

Files, in the head folder beside `config.json` and `model.safetensors`: `query_weights.safetensors`
(one float32 tensor `query_weights` with one entry per vocabulary id), described in `config.json`
under the key `query_weights` (how the table was made). A head folder without them loads as before.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from array import array
from pathlib import Path
from typing import Sequence

from lsr_os.errors import DataError, ModelError
from lsr_os.sparse import SparseVector
from lsr_os.vocab import WordPieceTokenizer, content_tokens, fast_tokenizer, is_content_term

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
TOKENIZER_DIR = "tokenizer"  # the head's tokenizer files (beside config.json they would confuse transformers)
WEIGHTS_FILE = "query_weights.safetensors"
TENSOR = "query_weights"
CONFIG_KEY = "query_weights"
FORMAT_VERSION = 1
ADD_COMMAND = "lsr-os add-query-weights --head {head} --dense DENSE_DIR"


class QueryWeightsMissing(ModelError):
    """A head without query weights was asked for an inference-free query."""


def read_config(folder: str | Path) -> dict:
    """A head folder's `config.json` (ModelError naming the file when it is missing or not JSON)."""
    path = Path(folder) / CONFIG_FILE
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelError(f"{path} does not exist: not a head checkpoint folder") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(cfg, dict):
        raise ModelError(f"{path} is not a JSON object")
    return cfg


def tokenizer_dir(folder: str | Path) -> str | None:
    """Where a head folder keeps its tokenizer files (None: the offline BERT-uncased default)."""
    folder = Path(folder)
    return next((str(d) for d in (folder / TOKENIZER_DIR, folder)
                 if (d / "vocab.txt").exists() or (d / "tokenizer.json").exists()), None)


def has_query_weights(folder: str | Path) -> bool:
    """Whether the head folder carries query weights (its config names them)."""
    try:
        return CONFIG_KEY in read_config(folder)
    except ModelError:
        return False


def content_term_mask(terms: Sequence[str], special: Sequence[str]) -> list[bool]:
    """For each vocabulary term, whether a query weight may be non-zero there (`is_content_term`)."""
    special_set = frozenset(special)
    return [is_content_term(t, special_set) for t in terms]


def entry(info: dict, weights: Sequence[float]) -> dict:
    """The `query_weights` entry of config.json: the file, how it was made, how many terms it weights."""
    return {"file": WEIGHTS_FILE, "format_version": FORMAT_VERSION, "vocab_size": len(weights),
            "nonzero": sum(1 for w in weights if w > 0), **info}


def check_writable(folder: str | Path) -> None:
    """ModelError naming the folder when query weights could not be written into it."""
    probe = Path(folder) / ".lsr-os-write-check"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ModelError(f"cannot write into the head folder {folder}: {exc.strerror}") from exc


def write_weights(folder: str | Path, weights) -> None:
    """Write `query_weights.safetensors` (float32, one weight per vocabulary id) into the folder."""
    import numpy as np
    from safetensors.numpy import save_file

    arr = np.ascontiguousarray(np.asarray(weights, dtype=np.float32).reshape(-1))
    if not np.all(np.isfinite(arr)) or (arr < 0).any():
        raise ModelError("query weights must be finite and >= 0")
    path = Path(folder) / WEIGHTS_FILE
    try:
        save_file({TENSOR: arr}, str(path), metadata={"format": "lsr-os-query-weights"})
    except OSError as exc:
        raise ModelError(f"cannot write {path}: {exc.strerror}") from exc


def add_to_head(folder: str | Path, weights, info: dict) -> dict:
    """Add (or replace) the query weights of an existing head folder; returns the config entry."""
    folder = Path(folder)
    cfg = read_config(folder)
    values = [float(w) for w in weights]
    write_weights(folder, values)
    cfg[CONFIG_KEY] = entry(info, values)
    tmp = folder / (CONFIG_FILE + ".tmp")
    try:
        tmp.write_text(json.dumps(cfg, indent=2), encoding="utf-8")
        tmp.replace(folder / CONFIG_FILE)
    except OSError as exc:
        raise ModelError(f"cannot write {folder / CONFIG_FILE}: {exc.strerror}") from exc
    return cfg[CONFIG_KEY]


def read_weights(folder: str | Path) -> array:
    """The query weights of a head folder as a float32 array, read without numpy.

    safetensors is an 8-byte little-endian header length, a JSON header naming each tensor's dtype,
    shape and byte range, then the raw little-endian data.
    """
    path = Path(folder) / WEIGHTS_FILE
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        size = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8:8 + size])
        spec = header[TENSOR]
        start, end = spec["data_offsets"]
        if spec["dtype"] != "F32" or len(spec["shape"]) != 1 or end - start != 4 * spec["shape"][0]:
            raise ValueError(f"tensor {TENSOR} is {spec['dtype']} {spec['shape']}, not one float32 row")
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{path} is not a query weights file: {exc}") from exc
    weights = array("f")
    weights.frombytes(raw[8 + size + start:8 + size + end])
    if sys.byteorder != "little":
        weights.byteswap()
    if not math.isfinite(sum(weights)) or min(weights, default=0.0) < 0:
        raise ModelError(f"{path}: query weights must be finite and >= 0")
    return weights


class StaticQueryEncoder:
    """Texts -> sparse query vectors from a head's query weights: a tokenizer and a lookup, no model."""

    def __init__(self, weights: Sequence[float], tokenizer: WordPieceTokenizer, head: str | Path, info: dict):
        if len(weights) != len(tokenizer):
            raise ModelError(f"{head}: {len(weights)} query weights for a vocabulary of {len(tokenizer)} terms")
        self.weights, self.tokenizer, self.head, self.info = weights, tokenizer, Path(head), info

    @classmethod
    def from_head(cls, folder: str | Path) -> "StaticQueryEncoder":
        """The encoder of a head folder; QueryWeightsMissing (naming the command that adds them) when it has none."""
        cfg = read_config(folder)
        if CONFIG_KEY not in cfg:
            raise QueryWeightsMissing(f"the head {folder} has no query weights, so it cannot answer text queries "
                                      f"without a model; add them with `{ADD_COMMAND.format(head=folder)}`")
        return cls(read_weights(folder), fast_tokenizer(tokenizer_dir(folder)), folder, cfg[CONFIG_KEY])

    def encode(self, text: str) -> SparseVector:
        """The inference-free query of one text; DataError when no word of it has a weight."""
        pieces, ids = self.tokenizer.pieces_and_ids(text)
        content = content_tokens(text, self.tokenizer, pieces)
        query = {}
        for i in dict.fromkeys(ids):
            if self.weights[i] > 0:
                query[self.tokenizer.id_to_token(i)] = float(self.weights[i])
        if not query:
            raise DataError(f"no word of the query {text!r} has a weight in the query weights of {self.head} "
                            f"(its content word pieces: {' '.join(content)}); search it with a model instead")
        return query

    def encode_each(self, texts: Sequence[str]) -> list[SparseVector]:
        """The inference-free query of each text, an empty one where `encode` refuses the text (an
        evaluation counts it as a miss; a bench does not send it)."""
        out = []
        for text in texts:
            try:
                out.append(self.encode(text))
            except DataError:
                out.append({})
        return out
