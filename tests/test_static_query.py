"""The inference-free query side: the query weights saved with a head, and texts encoded without a model."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lsr_os import static_query as sq
from lsr_os.errors import DataError, ModelError
from lsr_os.models.head import SparseHead, load_head
from lsr_os.vocab import fast_tokenizer, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]

TEXTS = ["two green stars", "A Tiny DOTTED yellow diamond in the snow!!", "naïve café — crème brûlée",
         "一只猫 and 犬", "emoji 🦄🌈 run", "x" * 130, "  \t ", "", "ctrl\x00\x07chars\u200b here",
         "xylophonequux", "don't stop-believing... (ok?)"]


@pytest.mark.parametrize("text", TEXTS)
def test_the_fast_tokenizer_gives_transformers_tokens(text):
    assert fast_tokenizer().tokenize(text) == load_tokenizer().tokenize(text)


def _head_with_weights(tmp_path, weights=None) -> tuple[SparseHead, Path]:
    torch.manual_seed(0)
    head = SparseHead(dense_size=8, hidden_size=16)
    if weights is None:
        weights = torch.rand(head.vocab_size)
    head.query_weights = weights
    head.query_weights_info = {"method": "test"}
    folder = tmp_path / "head"
    head.save_pretrained(folder)
    return head, folder


def test_query_weights_round_trip_through_the_head_folder(tmp_path):
    head, folder = _head_with_weights(tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["query_weights"]["file"] == sq.WEIGHTS_FILE and cfg["query_weights"]["method"] == "test"
    assert cfg["query_weights"]["nonzero"] == int((head.query_weights > 0).sum())
    loaded = load_head(folder)
    assert torch.equal(loaded.query_weights, head.query_weights)
    assert loaded.query_weights_info == {"method": "test"}
    assert list(sq.read_weights(folder)) == pytest.approx(head.query_weights.tolist())
    assert sq.has_query_weights(folder)


def test_a_head_without_query_weights_still_loads_and_saving_it_drops_stale_ones(tmp_path):
    head, folder = _head_with_weights(tmp_path)
    head.query_weights = None
    head.save_pretrained(folder)
    assert not (folder / sq.WEIGHTS_FILE).exists() and not sq.has_query_weights(folder)
    assert load_head(folder).query_weights is None


def test_the_static_query_is_the_distinct_weighted_pieces_of_the_text(tmp_path):
    tok = fast_tokenizer()
    terms = [tok.id_to_token(i) for i in range(len(tok))]
    mask = torch.tensor(sq.content_term_mask(terms, tok.all_special_tokens))
    weights = torch.linspace(0.5, 2.0, len(terms)) * mask
    _, folder = _head_with_weights(tmp_path, weights)
    enc = sq.StaticQueryEncoder.from_head(folder)
    query = enc.encode("Three small blue stars, blue stars at night")
    assert sorted(query) == ["blue", "night", "small", "stars", "three"]  # once each; "at" and "," weigh 0
    assert query["blue"] == pytest.approx(float(weights[tok.token_ids("blue")[0]]))
    assert enc.encode_each(["the blue star", "the a of"]) == [enc.encode("the blue star"), {}]


def test_texts_without_searchable_words_are_one_line_errors(tmp_path):
    _, folder = _head_with_weights(tmp_path, torch.zeros(30522))
    enc = sq.StaticQueryEncoder.from_head(folder)
    with pytest.raises(DataError, match="no content word to search for"):
        enc.encode("the a of .")
    with pytest.raises(DataError, match="no word of the query 'red ring' has a weight"):
        enc.encode("red ring")


def test_a_head_without_query_weights_names_the_folder_and_the_command(tmp_path):
    head = SparseHead(dense_size=8, hidden_size=16)
    head.save_pretrained(tmp_path / "old")
    with pytest.raises(sq.QueryWeightsMissing, match=r"the head .*old has no query weights.*lsr-os add-query-weights"):
        sq.StaticQueryEncoder.from_head(tmp_path / "old")


def test_add_to_head_writes_weights_into_an_existing_folder(tmp_path):
    head = SparseHead(dense_size=8, hidden_size=16)
    head.save_pretrained(tmp_path / "h")
    weights = [0.0] * head.vocab_size
    weights[2307] = 1.5
    assert sq.add_to_head(tmp_path / "h", weights, {"method": "idf"})["nonzero"] == 1
    assert sq.StaticQueryEncoder.from_head(tmp_path / "h").info["method"] == "idf"
    assert float(load_head(tmp_path / "h").query_weights[2307]) == 1.5


def test_bad_query_weight_files_are_refused(tmp_path):
    _, folder = _head_with_weights(tmp_path)
    (folder / sq.WEIGHTS_FILE).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{nope}")
    with pytest.raises(ModelError, match="is not a query weights file"):
        sq.read_weights(folder)
    with pytest.raises(ModelError, match="finite and >= 0"):
        sq.write_weights(folder, [1.0, -1.0])


def test_encoding_a_text_imports_neither_torch_nor_transformers_nor_numpy(tmp_path):
    _, folder = _head_with_weights(tmp_path)
    probe = ("import sys; from lsr_os.static_query import StaticQueryEncoder as E; "
             f"print(E.from_head({str(folder)!r}).encode('two green stars')); "
             "print(sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT,
                         timeout=60)
    assert out.stdout.splitlines()[-1] == "[]"
