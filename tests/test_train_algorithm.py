"""The training algorithm's pieces against docs/method.md's formulas, and bad input to the trainer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lsr_os.dense_files import DatasetMeta, write_embeddings
from lsr_os.errors import ConfigError, DataError
from lsr_os.train import (TrainConfig, Trainer, TrainingData, distillation_loss, expansion_p, keep_top_k, l1,
                          lr_factor, reg_weight)


def test_expansion_schedule_at_epoch_boundaries():
    epochs = 20  # p reaches 0 at 0.95 * 20 = 19
    assert expansion_p(0, epochs) == 1.0
    assert expansion_p(1, epochs) == pytest.approx(1 - 1 / 19)
    assert expansion_p(10, epochs) == pytest.approx(1 - 10 / 19)
    assert expansion_p(18, epochs) == pytest.approx(1 / 19)
    assert expansion_p(19, epochs) == 0.0 and expansion_p(epochs - 1, epochs) == 0.0
    ps = [expansion_p(e, 200) for e in range(200)]
    assert all(a > b for a, b in zip(ps[:190], ps[1:191])) and ps[190:] == [0.0] * 10
    assert expansion_p(7, 20, fixed=0.0) == 0.0 and expansion_p(0, 20, fixed=1.0) == 1.0


def test_regulariser_warmup_is_quadratic():
    assert reg_weight(0.02, 0, 100) == 0.0
    assert reg_weight(0.02, 50, 100) == pytest.approx(0.02 / 4)
    assert reg_weight(0.02, 100, 100) == pytest.approx(0.02)
    assert reg_weight(0.02, 5000, 100) == pytest.approx(0.02)
    assert reg_weight(0.02, 3, 0) == 0.02


def test_learning_rate_warmup_then_linear_decay():
    assert lr_factor(0, 20, 100) == 0.0
    assert lr_factor(10, 20, 100) == pytest.approx(0.5)
    assert lr_factor(20, 20, 100) == pytest.approx(1.0)
    assert lr_factor(60, 20, 100) == pytest.approx(0.5)
    assert lr_factor(100, 20, 100) == 0.0


def test_distillation_loss_matches_formula_on_fixed_tensors():
    s_img = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 0.5]])
    s_txt = torch.tensor([[0.5, 0.0, 1.0], [0.0, 2.0, 0.0]])
    d_img = torch.tensor([[0.6, 0.8], [1.0, 0.0]])
    d_txt = torch.tensor([[0.8, 0.6], [0.0, 1.0]])
    tau = 0.1
    S = s_img.numpy() @ s_txt.numpy().T  # [[2.5, 0], [0.5, 2]]
    T = d_img.numpy() @ d_txt.numpy().T / tau

    def softmax(x):
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def ce(logits, target):
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        return float(-(target * logp).sum(axis=1).mean())

    want = (ce(S, softmax(T)) + ce(S.T, softmax(T.T))) / 2
    assert distillation_loss(s_img @ s_txt.T, d_img, d_txt, tau).item() == pytest.approx(want, rel=1e-5)
    assert l1(s_img).item() == pytest.approx((3.0 + 1.5) / 2)


def test_unexpanded_batch_by_gathering_equals_the_full_masked_computation():
    """The trainer's cheap path for unexpanded captions: same loss and gradients as 30,522-wide vectors."""
    from lsr_os.models.head import SparseHead
    from lsr_os.train import own_token_scores

    torch.manual_seed(0)
    head = SparseHead(dense_size=8, hidden_size=16, vocab_size=60, blocked_token_ids=[0, 1])
    with torch.no_grad():
        head.vocab_projector.bias.fill_(0.3)
    d_img, d_txt = torch.randn(4, 8), torch.randn(4, 8)
    ids = torch.tensor([[2, 9, 1, 0], [5, 6, 7, 8], [9, 0, 0, 0], [59, 3, 2, 0]])
    am = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 0]])

    def loss_and_grads(cheap: bool):
        head.zero_grad()
        s_img = head(d_img)
        if cheap:
            s_txt = head.own_token_weights(d_txt, ids, am)
            scores = own_token_scores(s_img, ids, s_txt)
        else:
            s_txt = head(d_txt, ids, am)
            scores = s_img @ s_txt.t()
        loss = distillation_loss(scores, d_img, d_txt, 0.05) + 0.01 * l1(s_txt) + 0.01 * l1(s_img)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in head.parameters()]

    loss_full, grads_full = loss_and_grads(False)
    loss_cheap, grads_cheap = loss_and_grads(True)
    torch.testing.assert_close(loss_cheap, loss_full)
    for a, b in zip(grads_cheap, grads_full):
        torch.testing.assert_close(a, b)


def test_caption_tokens_are_distinct_and_leave_out_blocked_ids():
    from lsr_os.train import TextTokens
    from lsr_os.vocab import load_tokenizer

    tok = load_tokenizer()
    t = TextTokens.build(tok, ["a dog and a dog", "dog"], 512, "cpu", drop_ids=tok.all_special_ids)
    a, dog, and_ = tok.convert_tokens_to_ids(["a", "dog", "and"])
    assert t.ids.tolist() == [[a, dog, and_], [dog, 0, 0]] and t.mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_keep_top_k():
    x = torch.tensor([[0.1, 0.5, 0.0, 0.3], [1.0, 0.2, 0.3, 0.0]])
    assert torch.equal(keep_top_k(x, 2), torch.tensor([[0.0, 0.5, 0.0, 0.3], [1.0, 0.0, 0.3, 0.0]]))
    assert keep_top_k(x, None) is x


def _tiny_dataset(folder, dim=8, n_images=6, seed=0, splits=None, captions=None):
    """Images 0..n-3 train, then one val and one test image, two captions each (or as given)."""
    rng = np.random.default_rng(seed)
    splits = splits or ["train"] * (n_images - 2) + ["val", "test"]
    n_images = len(splits)
    images, sent = [], 0
    for i, split in enumerate(splits):
        sents = []
        for _ in range(captions[i] if captions else 2):
            sents.append({"sentid": sent, "raw": f"a dog number {sent}"})
            sent += 1
        images.append({"imgid": i, "split": split, "filename": f"{i}.jpg", "sentences": sents})
    DatasetMeta(images).save(folder / "dataset_meta.json")
    write_embeddings(folder / "img_embs.parquet", [str(i) for i in range(n_images)],
                     rng.standard_normal((n_images, dim)).astype(np.float32))
    write_embeddings(folder / "text_embs.parquet", [str(i) for i in range(sent)],
                     rng.standard_normal((sent, dim)).astype(np.float32))
    return folder


def test_bad_input_names_file_and_id(tmp_path):
    folder = _tiny_dataset(tmp_path)
    write_embeddings(folder / "text_embs.parquet", ["0", "1"], np.zeros((2, 5), np.float32))
    with pytest.raises(DataError, match=r"img_embs.parquet has 8-d vectors but .*text_embs.parquet has 5-d"):
        TrainingData.load(folder)
    folder = _tiny_dataset(tmp_path)
    write_embeddings(folder / "text_embs.parquet", [str(i) for i in range(11)], np.ones((11, 8), np.float32))
    data = TrainingData.load(folder)
    with pytest.raises(DataError, match=r"id '11' is in the metadata but not in .*text_embs.parquet"):
        data.split("test", "cpu")
    bad = np.ones((12, 8), np.float32)
    bad[4, 2] = np.nan
    write_embeddings(folder / "text_embs.parquet", [str(i) for i in range(12)], bad)
    with pytest.raises(DataError, match=r"text_embs.parquet: 1 vectors are not finite, the first is id '4'"):
        TrainingData.load(folder)
    meta = json.loads((folder / "dataset_meta.json").read_text())
    for img in meta["images"]:
        img["split"] = "train"
    (folder / "dataset_meta.json").write_text(json.dumps(meta))
    write_embeddings(folder / "text_embs.parquet", [str(i) for i in range(12)], np.ones((12, 8), np.float32))
    with pytest.raises(DataError, match=r"split 'val' has no images"):
        Trainer(TrainConfig(epochs=1, batch_size=4, init="minilm"), TrainingData.load(folder), tmp_path / "o")
    with pytest.raises(ConfigError, match="fixed p"):
        TrainConfig(p=1.5).check()


def test_fixed_p_one_never_expands_and_p_zero_always_does(tmp_path):
    folder = _tiny_dataset(tmp_path)
    data = TrainingData.load(folder)
    never = Trainer(TrainConfig(epochs=2, batch_size=4, p=1.0, init="minilm"), data, tmp_path / "a")
    row = never.train_epoch(0)
    assert row["masked_batches"] == row["batches"] == 2
    # own tokens only: [CLS] a dog number <n> [SEP] -> at most 6 distinct terms
    assert 0 < row["train_nnz_query"] <= 6 and row["train_nnz_doc"] > 100
    always = Trainer(TrainConfig(epochs=2, batch_size=4, p=0.0, init="minilm"), data, tmp_path / "b")
    row = always.train_epoch(0)
    assert row["masked_batches"] == 0 and row["train_nnz_query"] > 100
    # learning-rate groups: LayerNorm + vocabulary projection, the new projection, the query weights
    names = [g["name"] for g in always.optimizer.param_groups]
    assert names == ["head", "proj", "query"]
    without = Trainer(TrainConfig(epochs=2, batch_size=4, p=0.0, init="minilm", query_weights="none"), data,
                      tmp_path / "c")
    assert [g["name"] for g in without.optimizer.param_groups] == ["head", "proj"]
    assert always.warmup_steps == int(always.total_steps * 0.2)


def _paper_loss(head, cfg: TrainConfig, d_img, d_txt, captions: list[str], unexpanded: bool):
    """docs/method.md's loss of one batch, written out from the head's forward alone (no query-weight
    code, no trainer shortcut): distillation both ways plus the averaged L1 of captions and images."""
    s_img = head(d_img)
    if unexpanded:  # the captions keep their own tokens: the full-width masked forward
        enc = head.tokenizer(captions, padding=True, truncation=True, max_length=cfg.max_text_length,
                             return_tensors="pt")
        s_txt = head(d_txt, enc["input_ids"], enc["attention_mask"])
    else:
        s_txt = head(d_txt)
    scores, teacher = s_img @ s_txt.t(), d_img @ d_txt.t() / cfg.temperature
    distill = (torch.nn.functional.cross_entropy(scores, teacher.softmax(1))
               + torch.nn.functional.cross_entropy(scores.t(), teacher.t().softmax(1))) / 2
    return distill + (cfg.q_reg * s_txt.sum(1).mean() + cfg.d_reg * s_img.sum(1).mean()) / 2


@pytest.mark.parametrize("query_weights", ["after", "none", "joint"])
@pytest.mark.parametrize("p", [0.0, 1.0])
def test_a_step_of_the_paper_setting_is_the_paper_loss_alone(tmp_path, query_weights, p):
    """Where `TrainConfig.algorithm` says "the paper's algorithm", one training step's loss, gradients
    and AdamW update equal the paper's loss alone on the same batch; with joint query weights they
    do not. Full regulariser weights and learning rates from step 0 (no warm-up), so every term counts."""
    import copy

    data = TrainingData.load(_tiny_dataset(tmp_path, n_images=10))
    cfg = TrainConfig(epochs=1, batch_size=8, p=p, init="minilm", device="cpu", precision="fp32",
                      block_special_tokens=False, query_weights=query_weights, warmup_ratio=0.0,
                      lr_head=1e-2, lr_proj=1e-2, q_reg=0.02, d_reg=0.01)
    trainer = Trainer(cfg, data, tmp_path / "o")
    head = copy.deepcopy(trainer.head)
    perm_gen = torch.Generator()
    perm_gen.set_state(trainer.perm_gen.get_state())
    idx = torch.randperm(trainer.n_pairs, generator=perm_gen)[:cfg.batch_size]
    d = trainer.train_data
    row = trainer.train_epoch(0, max_steps=1)

    optimizer = torch.optim.AdamW([
        {"params": list(head.vocab_layer_norm.parameters()) + list(head.vocab_projector.parameters()),
         "lr": cfg.lr_head}, {"params": list(head.proj.parameters()), "lr": cfg.lr_proj}], weight_decay=0.0)
    loss = _paper_loss(head, cfg, d.img[d.caption_image[idx]], d.txt[idx],
                       [d.split.captions[i] for i in idx.tolist()], unexpanded=p == 1.0)
    loss.backward()
    loss = float(loss.detach())
    grads = {n: q.grad.clone() for n, q in head.named_parameters()}
    optimizer.step()
    assert row["batches"] == 1
    trained = dict(trainer.head.named_parameters())
    if cfg.algorithm["paper"]:
        assert row["loss"] == pytest.approx(loss, rel=1e-6)
        for name, ref in head.named_parameters():
            torch.testing.assert_close(trained[name].grad, grads[name], msg=f"gradient of {name}")
            torch.testing.assert_close(trained[name].detach(), ref.detach(), msg=f"update of {name}")
    else:  # the joint loss adds its own terms, and its leak moves the image terms
        assert row["loss"] > loss + 1e-3
        assert not torch.allclose(trained["vocab_projector.weight"].grad, grads["vocab_projector.weight"])


def test_cli_train_writes_checkpoint_log_report_and_resumes(tmp_path):
    from click.testing import CliRunner

    import lsr_os.cli as cli
    from lsr_os.models.head import load_head

    (tmp_path / "d").mkdir()
    folder = _tiny_dataset(tmp_path / "d")
    args = ["train", "--dense", str(folder), "--out", str(tmp_path / "o"), "--epochs", "2", "--batch-size", "4",
            "--init", "minilm", "--q-reg", "0.01"]
    res = CliRunner().invoke(cli.main, args)
    assert res.exit_code == 0, res.output
    # the first line says the defaults are not the paper's algorithm alone; config.json and the report agree
    algorithm = TrainConfig().algorithm
    assert res.output.splitlines()[0] == f"training by {algorithm['summary']}"
    assert algorithm["paper"] is False and algorithm["summary"].startswith("the paper's algorithm plus query weights")
    assert "test sparse: t2i R@1" in res.output and "test dense:" in res.output
    rows = [json.loads(x) for x in (tmp_path / "o" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1] and rows[0]["p"] == 1.0 and rows[1]["p"] == pytest.approx(1 - 1 / 1.9)
    for key in ("loss", "loss_distill", "loss_reg", "q_reg_weight", "d_reg_weight", "temperature", "lr_head",
                "lr_proj", "train_nnz_query", "train_nnz_doc"):
        assert key in rows[0]
    assert set(rows[0]["val"]) == {"t2i", "i2t", "flops", "nnz_query", "nnz_doc", "inference_free"}
    report = json.loads((tmp_path / "o" / "test_report.json").read_text())
    config = json.loads((tmp_path / "o" / "best" / "config.json").read_text())
    assert report["algorithm"] == config["algorithm"] == algorithm
    assert set(report["sparse"]["i2t"]) == {"R@1", "R@5", "R@10", "MRR@10"}
    assert set(report["inference_free"]["t2i"]) == {"R@1", "R@5", "R@10", "MRR@10"}
    assert set(report["inference_free_baselines"]) == {"idf", "mean_own_token"}
    assert "test inference_free: t2i R@1" in res.output and "test inference_free_idf: t2i" in res.output
    best = load_head(tmp_path / "o" / "best")
    assert best.init_info["method"] == "minilm-word-embeddings"
    assert best.query_weights is not None and best.query_weights_info["method"] == "distillation-joint"
    res = CliRunner().invoke(cli.main, args + ["--resume"])  # all epochs done: only the report again
    assert res.exit_code == 0, res.output
    assert len((tmp_path / "o" / "metrics.jsonl").read_text().splitlines()) == 2
    res = CliRunner().invoke(cli.main, args[:-2] + ["--q-reg", "0.5", "--resume"])
    assert res.exit_code == 2 and "other settings" in res.output


def test_training_defaults_to_the_authors_train_split_and_restval_is_opt_in(tmp_path):
    """Karpathy's MSCOCO file labels 30,504 images restval: the authors train on split == "train" only."""
    from click.testing import CliRunner

    import lsr_os.cli as cli

    splits = ["train"] * 5 + ["restval"] * 3 + ["val", "test"]
    captions = [2, 3, 2, 2, 2, 1, 2, 2, 2, 2]  # train: 5 images, 11 pairs; restval: 3 images, 5 pairs
    folder = _tiny_dataset(tmp_path, splits=splits, captions=captions)
    data = TrainingData.load(folder)
    assert len(data.meta.split("train").image_ids) == 8  # the shared selector keeps train = train + restval

    default = Trainer(TrainConfig(epochs=1, batch_size=4, init="minilm"), data, tmp_path / "a")
    assert default.train_set == {"train_splits": ["train"], "train_images": 5, "train_pairs": 11}
    assert default.steps_per_epoch == 3
    both = Trainer(TrainConfig(epochs=1, batch_size=4, init="minilm", train_splits=("train", "restval")), data,
                   tmp_path / "b")
    assert both.train_set == {"train_splits": ["train", "restval"], "train_images": 8, "train_pairs": 16}
    assert sorted(both.train_data.split.image_ids, key=int) == [str(i) for i in range(8)]

    base = ["train", "--dense", str(folder), "--epochs", "1", "--batch-size", "4", "--init", "minilm"]
    for extra, images, pairs in (([], 5, 11), (["--train-splits", "train,restval"], 8, 16)):
        out = tmp_path / f"cli-{images}"
        res = CliRunner().invoke(cli.main, base + ["--out", str(out)] + extra)
        assert res.exit_code == 0, res.output
        assert f"{images} images, {pairs} caption-image pairs" in res.output
        row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
        report = json.loads((out / "test_report.json").read_text())
        for got in (row, report):
            assert (got["train_images"], got["train_pairs"]) == (images, pairs)

    (tmp_path / "flickr").mkdir()
    no_restval = TrainingData.load(_tiny_dataset(tmp_path / "flickr"))
    with pytest.raises(DataError, match=r"meta.json: no image has split 'restval' \(its splits: test, train, val\)"):
        Trainer(TrainConfig(epochs=1, batch_size=4, init="minilm", train_splits=("train", "restval")), no_restval,
                tmp_path / "e")
    res = CliRunner().invoke(cli.main, base + ["--out", str(tmp_path / "d"), "--train-splits", "train,val"])
    assert res.exit_code != 0 and "'val' is held out" in res.output
    for bad in ("train", ()):
        with pytest.raises(ConfigError, match="sequence of split names"):
            TrainConfig(train_splits=bad).check()


def test_cosine_decay_shares_the_warm_up_and_ends_at_zero():
    assert lr_factor(10, 20, 100, decay="cosine") == lr_factor(10, 20, 100) == pytest.approx(0.5)
    assert lr_factor(60, 20, 100, decay="cosine") == pytest.approx(0.5)
    assert lr_factor(40, 20, 100, decay="cosine") > lr_factor(40, 20, 100)  # cosine holds higher early
    assert lr_factor(100, 20, 100, decay="cosine") == pytest.approx(0.0)
