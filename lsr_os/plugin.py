"""The index side of the lsr-os plugin (OpenSearch and Elasticsearch): typed text ranked inside the cluster.

With the plugin, an images index gets a second field beside `sparse`: `text`, whose term
frequencies carry each document's weights already multiplied by the query-side weight table
("folded"). A plain `match` (or Dashboards' free-text search) on `text` splits the typed text into
the same word pieces as `tokenizers` (analyzer `lsr_os_query`: tokenizer `lsr_os_wordpiece` and
filter `lsr_os_unique`, so a repeated piece counts once), and the `lsr_os_dot` similarity scores each
matching term freq / scale, so the score is

    sum over the distinct pieces t of the text:  round(w_t * q9(d_t) * scale) / scale

which is the inference-free score sum w_t * q9(d_t) (rank_feature clauses on `sparse` with boost
w_t) to within 0.5 / scale per matching term. q9 is the weight `rank_features` stores (9 bits).
Terms with w_t = 0 (stop words, punctuation, special tokens) are never indexed, so they add
nothing. Every analysis component the settings name is the plugin's own (the same names on both
engines), so they need no analysis-common module (Elasticsearch's integration-test distribution
has none). `Folding` is what an index's `text` field is made of (a head's query weights, the
vocabulary, the scale); `lsr_os.index` builds the field with it. Nothing here talks to the
cluster (`engine.features.has_lsr_os_plugin` asks whether every node runs the plugin).
"""

from __future__ import annotations

import copy
import hashlib
import sys
from array import array
from dataclasses import dataclass
from itertools import chain, compress, repeat
from pathlib import Path
from typing import Any, Mapping, Sequence

from lsr_os.errors import ConfigError, DataError, ModelError
from lsr_os.sparse import quantize

PLUGIN = "lsr-os"
FIELD = "text"
SIMILARITY = "lsr_os_dot"  # the similarity type, and the name the index declares it under
TOKENIZER = "lsr_os_wordpiece"
UNIQUE_FILTER = "lsr_os_unique"
FOLDED_ANALYZER = "lsr_os_folded"  # the analyzer type (whitespace + delimited term frequency), and its name here
QUERY_ANALYZER = "lsr_os_query"
DEFAULT_SCALE = 65536
# The folded analyzer's delimiter: a control character, which BERT's tokenizer deletes from any
# text, so no query piece can ever contain it.
DELIMITER = "\u0001"
# Lucene keeps a term's frequency, and the sum of a field's frequencies, in a Java int.
MAX_FREQ = 2**31 - 1
_QUERY_TOKENIZER = "lsr_os_query_pieces"


def vocab_sha256(path: str | Path | None = None) -> str:
    """SHA-256 of a vocab.txt (default: the BERT-uncased vocabulary lsr-os and the plugin ship)."""
    from lsr_os.vocab import default_vocab_dir

    file = Path(path) if path else default_vocab_dir() / "vocab.txt"
    try:
        return hashlib.sha256(file.read_bytes()).hexdigest()
    except OSError as exc:
        raise DataError(f"cannot read the vocabulary {file}: {exc}") from exc


def _check_scale(scale: int | float) -> None:
    if not scale > 0:
        raise ConfigError(f"the text field's scale must be > 0, not {scale}")


def index_settings(vocab_sha256: str, scale: int | float = DEFAULT_SCALE) -> dict[str, Any]:
    """The `settings.index` entries an index needs for the `text` field (merge them into its own)."""
    _check_scale(scale)
    return {
        "similarity": {SIMILARITY: {"type": SIMILARITY, "scale": scale}},
        "analysis": {
            "analyzer": {
                FOLDED_ANALYZER: {"type": FOLDED_ANALYZER, "delimiter": DELIMITER},
                QUERY_ANALYZER: {"type": "custom", "tokenizer": _QUERY_TOKENIZER, "filter": [UNIQUE_FILTER]},
            },
            "tokenizer": {_QUERY_TOKENIZER: {"type": TOKENIZER, "vocab_sha256": vocab_sha256}},
        },
        # query_string and multi_match without fields (Discover's free text) search `text`
        "query": {"default_field": [FIELD]},
    }


def text_field() -> dict[str, Any]:
    """The mapping of the `text` field: folded weights as term frequencies, scored by lsr_os_dot."""
    return {"type": "text", "analyzer": FOLDED_ANALYZER, "search_analyzer": QUERY_ANALYZER,
            "index_options": "freqs", "norms": False, "similarity": SIMILARITY}


def with_text_field(body: Mapping[str, Any], vocab_sha256: str, scale: int | float = DEFAULT_SCALE) -> dict[str, Any]:
    """A copy of an index body (`settings` + `mappings`, as mappings/images.json) with the `text`
    field, its settings, and `text` kept out of `_source` (it is derived data; Discover would show it)."""
    out = copy.deepcopy(dict(body))
    index = out.setdefault("settings", {}).setdefault("index", {})
    for key, value in index_settings(vocab_sha256, scale).items():
        index[key] = _merged(index.get(key), value)
    mappings = out.setdefault("mappings", {})
    mappings.setdefault("properties", {})[FIELD] = text_field()
    excludes = mappings.setdefault("_source", {}).setdefault("excludes", [])
    if FIELD not in excludes:
        excludes.append(FIELD)
    return out


def _merged(old: Any, new: Any) -> Any:
    if isinstance(old, dict) and isinstance(new, dict):
        return {**old, **{k: _merged(old.get(k), v) for k, v in new.items()}}
    return new


def folded_text(vector: Mapping[str, float], weights: Mapping[str, float], scale: int | float = DEFAULT_SCALE,
                doc_id: str | None = None) -> str:
    """A document's `text` value: `term + U+0001 + freq` for every term of its sparse vector whose
    query weight is > 0, where freq = max(1, round(w_t * q9(d_t) * scale)).

    `vector` maps vocabulary terms (not feature names) to the document's weights d_t, `weights`
    maps terms to the query table's w_t. Raises DataError naming `doc_id` when a frequency, or the
    field's sum of them, exceeds Lucene's int limit (choose a smaller scale)."""
    import numpy as np

    # Per document on ingest's path: C loops only (150-210 us for 172 terms here, bench/results/plugin_load_*;
    # a Python step a term costs more)
    w = np.array(list(map(weights.get, vector, repeat(0.0))), np.float64)
    q9 = quantize(np.array(list(vector.values()), np.float32)).astype(np.float64)
    keep = (w > 0) & (q9 > 0)
    if not keep.any():
        return ""
    terms = list(compress(vector, keep.tolist()))
    freqs = np.maximum(1.0, np.rint(w[keep] * q9[keep] * scale))  # half to even, as Python's round
    if freqs.max() > MAX_FREQ or freqs.sum() > MAX_FREQ:
        over = int(np.argmax(freqs > MAX_FREQ)) if freqs.max() > MAX_FREQ else None
        what = (f"term {terms[over]!r} folds to {int(freqs[over])}" if over is not None
                else f"its folded weights sum to over {MAX_FREQ}")
        raise DataError(f"document {doc_id or '(no id)'}: {what}, more than Lucene's limit {MAX_FREQ} "
                        f"for the {FIELD!r} field at scale {scale}; use a smaller scale (ingest --text-scale)")
    joined = " ".join(terms)
    if DELIMITER in joined or len(joined.split()) != len(terms):  # the whitespace tokenizer would cut a term apart
        bad = next(t for t in terms if DELIMITER in t or len(t.split()) != 1)
        raise DataError(f"document {doc_id or '(no id)'}: term {bad!r} cannot be folded (whitespace or U+0001)")
    pairs = tuple(chain.from_iterable(zip(terms, freqs.astype(np.int64).tolist())))
    return (f"%s{DELIMITER}%d " * len(terms) % pairs)[:-1]


def table_sha256(weights: Sequence[float]) -> str:
    """SHA-256 of a query weight table as an index records it: float32, little-endian, one weight
    per vocabulary id."""
    table = array("f", weights)
    if sys.byteorder != "little":
        table.byteswap()
    return hashlib.sha256(table.tobytes()).hexdigest()


def head_weights_sha256(head: str | Path) -> str | None:
    """`table_sha256` of a head folder's query weights as they are now; None when it has none."""
    from lsr_os.static_query import has_query_weights, read_weights

    return table_sha256(read_weights(head)) if has_query_weights(head) else None


def stale_text_field(index: str, recorded: Mapping[str, Any] | None, head: str | Path | None = None) -> str | None:
    """Why `index`'s `text` field (`recorded`: what its `_meta` records, `Folding.meta`) ranks typed
    text by other query weights than `head`'s (by default the head folder it was folded from, as it
    is now: `lsr-os add-query-weights` or a new training may have changed them since); None when
    they are the same, or when there is nothing to compare (no field, no head with query weights).

    The field is folded at ingest, so a `match` in the cluster keeps the old weights while
    `lsr-os search --mode inference-free` with the head uses the new ones; a load with the head
    folds it again."""
    if not recorded or not recorded.get("query_weights_sha256"):
        return None
    folded_from = recorded.get("head")
    head = head if head is not None else folded_from
    try:
        current = head_weights_sha256(head) if head else None
    except ModelError:  # the head that was recorded is gone or broken: nothing to compare with
        return None
    old = recorded["query_weights_sha256"]
    if current is None or current == old:
        return None
    same = folded_from is not None and Path(head).resolve() == Path(folded_from)
    source = (f"older query weights of that head (table {old[:12]}, now {current[:12]})" if same else
              f"the query weights of {folded_from or 'another head'} (table {old[:12]}), not those of {head} "
              f"(table {current[:12]})")
    return (f"{index}'s {FIELD!r} field was folded from {source}: a `match` on it in the cluster ranks typed text "
            f"by those, unlike inference-free search with {head}; load the images again with --head {head} to "
            f"fold it anew (docs/plugin.md)")


@dataclass(frozen=True)
class Folding:
    """The query weights an index's `text` field folds in, and what the index records of them
    (`meta`): a resumed load must fold with the same table, vocabulary and scale, and
    `lsr-os collections list` tells indices with the field from those without."""

    weights: Mapping[str, float]  # vocabulary term -> its query weight, > 0 only
    vocab_sha256: str
    scale: int | float
    weights_sha256: str  # of the float32 table, little-endian, one weight per vocabulary id
    head: str

    @classmethod
    def from_head(cls, head: str | Path, scale: int | float = DEFAULT_SCALE) -> "Folding":
        """The folding of a head folder's query weights (QueryWeightsMissing when it has none;
        ModelError when its vocabulary is not the one the plugin tokenizes queries with)."""
        from lsr_os.static_query import StaticQueryEncoder
        from lsr_os.vocab import Vocabulary

        _check_scale(scale)
        enc = StaticQueryEncoder.from_head(head)
        terms = [enc.tokenizer.id_to_token(i) for i in range(len(enc.weights))]
        if terms != Vocabulary.default().terms:
            raise ModelError(f"the head {head} has its own vocabulary ({len(terms)} terms), not the BERT-uncased one "
                             f"the lsr-os plugin splits typed text with, so the {FIELD!r} field cannot be built for it")
        return cls({t: float(w) for t, w in zip(terms, enc.weights) if w > 0}, vocab_sha256(), scale,
                   table_sha256(enc.weights), str(Path(head).resolve()))

    def text(self, vector: Mapping[str, float], doc_id: str | None = None) -> str:
        """A document's `text` value (`folded_text`)."""
        return folded_text(vector, self.weights, self.scale, doc_id)

    def meta(self) -> dict[str, Any]:
        """What the index's `_meta` records of the field."""
        return {"field": FIELD, "vocab_sha256": self.vocab_sha256, "scale": self.scale,
                "query_weights_sha256": self.weights_sha256, "head": self.head}

    def folds_like(self, recorded: Mapping[str, Any] | None) -> bool:
        """Whether an index's recorded `meta` folds the same way (the same table, vocabulary and
        scale; where the head folder lay is recorded for people, not compared)."""
        mine = self.meta()
        return recorded is not None and all(recorded.get(k) == v for k, v in mine.items() if k != "head")
