"""Issue 3 (d) on the synthetic world: the paper's p schedule against p = 0 from the start.

Trains both on the same world and settings, then reports for the test split: dense and sparse
R@k, FLOPs, mean non-zeros, semantic deviation (the share of an image's top-k terms outside its
concepts and synonyms) and concept precision (among the world's concept and synonym terms, the
share of an image's k heaviest that are its own). Not a test: numbers go to bench/results/.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import md_table, write_results  # noqa: E402
from lsr_os.models.head import load_head  # noqa: E402
from lsr_os.demo.synthetic import semantic_deviation, write_synthetic  # noqa: E402
from lsr_os.train import TrainConfig, TrainingData, train  # noqa: E402


def concept_precision(head, test, truth, k: int) -> float:
    terms = sorted({t for c, syns in truth.synonyms.items() for t in (c, *syns)})
    hits = 0
    for image_id, vec in zip(test.split.image_ids, head.encode(test.img.numpy())):
        top = sorted(terms, key=lambda t: -vec.get(t, 0.0))[:k]
        hits += sum(t in truth.relevant_terms(image_id) for t in top if vec.get(t, 0.0) > 0)
    return hits / (k * len(test.split.image_ids))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # defaults: the settings of tests/test_train_synthetic.py
    ap.add_argument("--images", type=int, default=900)
    ap.add_argument("--val", type=int, default=50, help="validation images")
    ap.add_argument("--test", type=int, default=100, help="test images")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr-head", type=float, default=2e-3)
    ap.add_argument("--lr-proj", type=float, default=1e-2)
    ap.add_argument("--reg", type=float, default=1e-2, help="q_reg = d_reg")
    ap.add_argument("--warmup-ratio", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="lsr-os-synth-"))
    truth = write_synthetic(root / "world", n_images=args.images, seed=args.seed, n_val=args.val, n_test=args.test)
    rows = []
    for label, p in (("paper schedule", None), ("p = 0 from the start", 0.0)):
        cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr_head=args.lr_head, lr_proj=args.lr_proj,
                          q_reg=args.reg, d_reg=args.reg, warmup_ratio=args.warmup_ratio, p=p, init="minilm",
                          seed=args.seed, device=args.device)
        result = train(root / "world", root / f"out-{p}", cfg, progress=False)
        best = load_head(root / f"out-{p}" / "best")
        test = TrainingData.load(root / "world").split("test", args.device, best.tokenizer,
                                                        drop_token_ids=best.blocked_token_ids)
        rep = result.test
        row = {"training": label, "dense_t2i_R@1": rep["dense"]["t2i"]["R@1"], "t2i_R@1": rep["sparse"]["t2i"]["R@1"],
               "t2i_R@5": rep["sparse"]["t2i"]["R@5"], "i2t_R@1": rep["sparse"]["i2t"]["R@1"],
               "flops": rep["sparse"]["flops"], "nnz_query": rep["sparse"]["nnz_query"],
               "nnz_doc": rep["sparse"]["nnz_doc"]}
        for k in (1, 3, 5, 10):
            top = best.encode(test.img.numpy(), top_k=k)
            row[f"deviation@{k}"] = semantic_deviation(dict(zip(test.split.image_ids, map(list, top))), truth)
        row["concept_precision@1"] = concept_precision(best, test, truth, 1)
        row["concept_precision@3"] = concept_precision(best, test, truth, 3)
        rows.append(row)
    summary = (f"World: {args.images} images, {args.test} of them for test (seed {args.seed}); "
               f"{args.epochs} epochs, batch {args.batch_size}, "
               f"lr {args.lr_head}/{args.lr_proj}, q_reg = d_reg = {args.reg}, warm-up {args.warmup_ratio}.\n\n"
               + md_table(rows, list(rows[0])))
    write_results("synthetic_quality", {"args": vars(args), "rows": rows}, summary)
    print(summary)


if __name__ == "__main__":
    main()
