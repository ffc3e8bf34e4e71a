"""Issue 3 (a)-(c) on the synthetic world: one short training run on CPU, fixed seeds.

The CI settings are not the paper's (200 epochs at lr 5e-5 is far beyond a 2-minute CPU
budget): 6 epochs, batch 128, lr 2e-3 (LayerNorm + vocabulary projection) and 1e-2 (new
projection), q_reg = d_reg = 1e-2, warm-up 20%, the paper's p schedule, offline MiniLM init,
special tokens blocked (the default), world of 900 images (750 train / 50 val / 100 test, five
captions each), seed 0, deterministic kernels (issue 16). Building the world takes about 30 s and
training about 60 s on 2 quiet CPU cores. Measured on these settings with 2 threads: dense t2i
R@1 0.95; sparse 0.92, R@5 1.0; FLOPs 14; about 26 terms per image, 37 per caption; the share of
an image's 3 heaviest terms outside its concepts and their synonyms (semantic deviation@3) 0.27;
its heaviest term is one of them for 71% of the test images; pruned to 32 terms per vector, R@1
0.91 against 0.50 untrained. Deterministic runs repeat these bits on one machine at one thread
count, but not across thread counts: with 1 thread the same run gave R@1 0.89, deviation@3 0.28,
73% (runs without deterministic kernels: 0.88-0.91). So the thresholds keep their margin:

(a) training beats the untrained head: with every vector pruned to its 32 heaviest terms,
    test text->image R@1 rises by at least 0.15, and FLOPs of the full vectors fall below 1/20;
(b) sparse text->image R@1 >= 0.8 x dense R@1 and R@5 >= 0.95 x dense R@5;
(c) an image's top terms are mostly its concepts or their synonyms: semantic deviation@3 <= 0.45
    (so at least 55% of the 3 heaviest terms of a test image are its own concepts or synonyms),
    and the single heaviest term is one for at least half of the test images.

What is left in the top terms is caption filler ("a", "and") and a term or two the head puts on
nearly every image; with 240 images (a world a quarter the size, same number of steps) deviation@3
was 0.52, and 0.84 before the special tokens were blocked ([CLS] headed most images).
"""

from __future__ import annotations

import json

import pytest

from lsr_os.models.head import SparseHead, load_head
from lsr_os.demo.synthetic import semantic_deviation, write_synthetic
from lsr_os.train import TrainConfig, Trainer, TrainingData, evaluate_dense, evaluate_head, train

WORLD = {"n_images": 900, "seed": 0, "n_val": 50, "n_test": 100}
CONFIG = TrainConfig(epochs=6, batch_size=128, lr_head=2e-3, lr_proj=1e-2, q_reg=1e-2, d_reg=1e-2,
                     warmup_ratio=0.2, init="minilm", seed=0, device="cpu", deterministic=True)
PRUNE = 32


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    truth = write_synthetic(root / "world", **WORLD)
    result = train(root / "world", root / "out", CONFIG, progress=False)
    best = load_head(root / "out" / "best")
    test = TrainingData.load(root / "world").split("test", "cpu", best.tokenizer)
    return {"root": root, "truth": truth, "result": result, "best": best, "test": test,
            "untrained": SparseHead.init_offline(256, seed=CONFIG.seed)}


def test_dense_retrieval_works_on_the_world(run):
    dense = evaluate_dense(run["test"])
    assert dense["t2i"]["R@1"] >= 0.85 and dense["t2i"]["R@5"] >= 0.95 and dense["i2t"]["R@1"] >= 0.85


def test_a_training_beats_the_untrained_head(run):
    trained = evaluate_head(run["best"], run["test"], top_k=PRUNE)
    untrained = evaluate_head(run["untrained"], run["test"], top_k=PRUNE)
    assert trained["t2i"]["R@1"] >= untrained["t2i"]["R@1"] + 0.15
    assert evaluate_head(run["best"], run["test"])["flops"] < evaluate_head(run["untrained"], run["test"])["flops"] / 20


def test_b_sparse_reaches_a_fraction_of_dense(run):
    report = run["result"].test
    sparse, dense = report["sparse"]["t2i"], report["dense"]["t2i"]
    assert sparse["R@1"] >= 0.8 * dense["R@1"]
    assert sparse["R@5"] >= 0.95 * dense["R@5"]


def test_c_an_images_top_terms_are_mostly_its_concepts(run):
    test, truth = run["test"], run["truth"]
    top = dict(zip(test.split.image_ids, (list(v) for v in run["best"].encode(test.img.numpy(), top_k=3))))
    assert all(len(terms) == 3 for terms in top.values())
    assert semantic_deviation(top, truth) <= 0.45
    heaviest_is_own = [terms[0] in truth.relevant_terms(i) for i, terms in top.items()]
    assert sum(heaviest_is_own) >= 0.5 * len(top)


def test_log_follows_the_schedule_and_the_report_has_both_directions(run):
    rows = [json.loads(x) for x in (run["root"] / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(CONFIG.epochs))
    assert [r["p"] for r in rows] == pytest.approx([max(0.0, 1 - e / (0.95 * CONFIG.epochs)) for e in range(6)])
    assert rows[0]["masked_batches"] == rows[0]["batches"]  # p = 1: every batch unexpanded
    assert rows[-1]["q_reg_weight"] == pytest.approx(CONFIG.q_reg)
    best = max(range(len(rows)), key=lambda e: (rows[e]["val"]["t2i"]["R@1"], -e))
    assert run["result"].best_epoch == best
    report = run["result"].test
    for name in ("sparse", "sparse_no_query_expansion", "dense"):
        assert set(report[name]) >= {"t2i", "i2t"}


def test_a_deterministic_run_repeats_its_metrics_bit_for_bit(run):
    """A second trainer with the same seed and settings retraces the run's first two epochs exactly.

    Two epochs cover both branches (epoch 0 has only unexpanded batches, whose gather backward is
    what varied between runs; epoch 1 mixes in expanded ones). Whole runs were compared by hand:
    two `lsr-os train --deterministic` processes wrote identical metrics.jsonl (less the timings)
    and test_report.json. Costs two epochs of training (13 s at a load of 2, 21 s at 3-4).
    """
    rows = [json.loads(x) for x in (run["root"] / "out" / "metrics.jsonl").read_text().splitlines()]
    again = Trainer(CONFIG, TrainingData.load(run["root"] / "world"), run["root"] / "again")
    timing = {"train_seconds", "pairs_per_s"}
    for epoch in range(2):
        row = again.train_epoch(epoch)
        row["val"] = again.validate()
        assert 0 < row["masked_batches"] and (epoch == 0) == (row["masked_batches"] == row["batches"])
        assert {k: v for k, v in row.items() if k not in timing} == {k: rows[epoch][k] for k in row if k not in timing}


def test_d_the_query_weights_recover_the_concept_words(run):
    """Trained with the head (the default), the inference-free query weights put every concept word and
    synonym above every filler word of the captions' templates ("photo", "showing", "sunny", ...):
    measured 0.82-2.2 for concepts against at most 0.52 for filler on these settings."""
    from lsr_os.demo.synthetic import CONCEPTS, TEMPLATES
    from lsr_os.vocab import fast_tokenizer, is_content_term

    tok, weights = fast_tokenizer(), run["best"].query_weights
    special = set(tok.all_special_tokens)
    concepts = {t for c, synonyms in CONCEPTS.items() for t in (c, *synonyms)}
    filler = {t for template in TEMPLATES for t in tok.tokenize(template.replace("{x}", "")) if is_content_term(t, special)}
    weight = {t: float(weights[tok.token_ids(t)[0]]) for t in concepts | filler}
    assert filler and min(weight[t] for t in concepts) > max(weight[t] for t in filler)
    report = run["result"].test
    assert report["inference_free"]["t2i"]["R@1"] >= 0.8 * report["dense"]["t2i"]["R@1"]
