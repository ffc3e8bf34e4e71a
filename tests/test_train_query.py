"""Training the query weights of the inference-free query side (lsr_os.train_query) on tiny data."""

import json
import math

import pytest
import torch
from click.testing import CliRunner

from lsr_os import train_query as tq
from lsr_os.errors import ConfigError
from lsr_os.models.head import load_head
from lsr_os.static_query import StaticQueryEncoder
from lsr_os.train import TrainConfig, Trainer, TrainingData, add_query_weights
from lsr_os.vocab import fast_tokenizer
from tests.test_train_algorithm import _tiny_dataset

TINY = dict(epochs=2, batch_size=4, init="minilm", lr_head=1e-2, lr_proj=1e-2)


def test_flops_regulariser_is_the_squared_batch_mean_of_each_term():
    ids = torch.tensor([[5, 7, 0], [7, 9, 0]])
    weights = torch.tensor([[1.0, 2.0, 0.0], [4.0, 3.0, 0.0]])
    # term 5: mean 0.5, term 7: (2 + 4) / 2 = 3, term 9: 1.5 -> 0.25 + 9 + 2.25
    assert float(tq.flops_regulariser(ids, weights, 10)) == pytest.approx(11.5)


def test_idf_counts_captions_and_weighs_only_content_terms_they_contain():
    ids = torch.tensor([[3, 4], [3, 0], [3, 5]])
    mask = torch.tensor([[1, 1], [1, 0], [1, 1]])
    content = torch.tensor([False, False, False, True, True, False, True])
    idf = tq.idf_weights(ids, mask, content)
    assert float(idf[3]) == pytest.approx(math.log1p(0.5 / 3.5))  # in every caption: small, never negative
    assert float(idf[4]) == pytest.approx(math.log1p(2.5 / 1.5))
    assert float(idf[5]) == 0.0 and float(idf[6]) == 0.0  # not content / in no caption


def test_the_table_stays_non_negative_and_zero_where_not_allowed():
    allowed = torch.tensor([True, False, True])
    table = tq.QueryTable(torch.tensor([1.0, 5.0, 2.0]), allowed)
    assert table.table().tolist() == [1.0, 0.0, 2.0]
    with torch.no_grad():
        table.weight.copy_(torch.tensor([-3.0, 4.0, 0.5]))
    table.project()
    assert table.table().tolist() == [0.0, 0.0, 0.5]


def _dataset(tmp_path):
    (tmp_path / "d").mkdir()
    return _tiny_dataset(tmp_path / "d", n_images=10)


def test_joint_training_trains_the_table_and_its_loss_reaches_the_documents(tmp_path):
    data = TrainingData.load(_dataset(tmp_path))
    joint = Trainer(TrainConfig(**TINY), data, tmp_path / "j")
    none = Trainer(TrainConfig(**TINY, query_weights="none"), data, tmp_path / "n")
    before = joint.query.table()
    joint_row, none_row = joint.train_epoch(0), none.train_epoch(0)
    assert "loss_query_distill" in joint_row and "loss_query_distill" not in none_row
    after = joint.query.table()
    assert not torch.equal(before, after) and (after >= 0).all()
    tok = fast_tokenizer()
    assert float(after[tok.token_ids("dog")[0]]) > 0
    assert float(after[tok.token_ids("a")[0]]) == 0.0  # a stop word never weighs
    assert float(after[tok.token_ids("cat")[0]]) == 0.0  # no training caption has it
    # same seed, same batches: the heads differ only by the query weights' loss on the image vectors
    assert not torch.equal(joint.head.vocab_projector.weight, none.head.vocab_projector.weight)


def test_the_best_checkpoint_carries_the_joint_table_and_the_report_compares_the_modes(tmp_path):
    folder = _dataset(tmp_path)
    result = Trainer(TrainConfig(**TINY), TrainingData.load(folder), tmp_path / "o").run(progress=False)
    best = load_head(tmp_path / "o" / "best")
    assert best.query_weights is not None and best.query_weights_info["method"] == "distillation-joint"
    report = result.test
    assert {"sparse", "sparse_no_query_expansion", "inference_free", "inference_free_baselines"} <= set(report)
    assert "i2t" not in report["inference_free"]  # inference-free queries are text queries
    enc = StaticQueryEncoder.from_head(tmp_path / "o" / "best")
    assert set(enc.encode("a dog number 3")) <= {"dog", "number", "3"}


def test_after_trains_the_table_with_the_documents_fixed(tmp_path):
    """And leaves the head the paper's, which the head folder and the report say (special tokens kept)."""
    folder = _dataset(tmp_path)
    result = Trainer(TrainConfig(**TINY, query_weights="after", query_epochs=2, block_special_tokens=False),
                     TrainingData.load(folder), tmp_path / "o").run(progress=False)
    best = load_head(tmp_path / "o" / "best")
    assert best.query_weights_info["method"] == "distillation-after"
    paper = {"paper": True, "summary": "the paper's algorithm; then query weights fitted with the head fixed"}
    assert best.algorithm == result.test["algorithm"] == paper
    rows = [json.loads(x) for x in (tmp_path / "o" / "metrics.jsonl").read_text().splitlines()]
    assert [r["query_weights_after"]["epoch"] for r in rows if "query_weights_after" in r] == [0, 1]


@pytest.mark.parametrize("method", ["distillation", "idf", "mean-own-token"])
def test_add_query_weights_gives_an_old_head_a_table_without_touching_its_documents(tmp_path, method):
    folder = _dataset(tmp_path)
    Trainer(TrainConfig(**TINY, query_weights="none"), TrainingData.load(folder), tmp_path / "o").run(progress=False)
    head_dir = tmp_path / "o" / "best"
    weights_before = (head_dir / "model.safetensors").read_bytes()
    with pytest.raises(Exception, match="has no query weights"):
        StaticQueryEncoder.from_head(head_dir)
    res = CliRunner().invoke(__import__("lsr_os.cli", fromlist=["main"]).main,
                             ["add-query-weights", "--head", str(head_dir), "--dense", str(folder), "--method", method,
                              "--epochs", "2", "--batch-size", "4", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "query weights" in res.output and "test inference_free: t2i R@1" in res.output
    assert (head_dir / "model.safetensors").read_bytes() == weights_before
    query = StaticQueryEncoder.from_head(head_dir).encode("a dog number 5")
    assert query and set(query) <= {"dog", "number", "5"}


def test_add_query_weights_refuses_an_unknown_method_and_a_head_of_another_size(tmp_path):
    folder = _dataset(tmp_path)
    Trainer(TrainConfig(**TINY, query_weights="none"), TrainingData.load(folder), tmp_path / "o").run(progress=False)
    with pytest.raises(ConfigError, match="method 'bm25' is not one of"):
        add_query_weights(tmp_path / "o" / "best", folder, "bm25")
    (tmp_path / "e").mkdir()
    other = _tiny_dataset(tmp_path / "e", dim=16)
    with pytest.raises(ConfigError, match="takes 8-d vectors"):
        add_query_weights(tmp_path / "o" / "best", other, "idf")


@pytest.mark.parametrize("leak", [0.0, 0.1])
def test_a_word_dead_on_every_image_gets_the_query_loss_gradient_only_with_the_leak(tmp_path, leak):
    """log1p(relu(z)) gives a term whose logit is below zero on every image no gradient at all; with
    query_leak the inference-free queries that say the word still reach it (values unchanged)."""
    data = TrainingData.load(_dataset(tmp_path))
    trainer = Trainer(TrainConfig(**TINY, query_leak=leak), data, tmp_path / "o")
    number = fast_tokenizer().token_ids("number")[0]  # in every caption: its query weight starts > 0
    assert float(trainer.query.table()[number]) > 0
    with torch.no_grad():
        trainer.head.vocab_projector.bias[number] = -100.0  # dead on every image
    row_before = trainer.head.vocab_projector.weight[number].clone()
    trainer.train_epoch(0)
    moved = not torch.equal(trainer.head.vocab_projector.weight[number], row_before)
    assert moved == (leak > 0)
