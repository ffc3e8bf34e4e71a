"""Text query modes on the demo world and the synthetic world: how the query weights are trained.

For each world, heads are trained on the same dense vectors and settings four ways: without query
weights (the paper's training alone), query weights trained after the head (documents fixed),
jointly with the head, and jointly with the gradient leak below zero (`TrainConfig.query_leak`,
the default). The test split is then scored exactly in memory for each text query mode:
expanded and own-tokens (the model) and inference-free (the query weights; the training-free
baselines IDF and mean own-token weight beside them). Reported per mode: R@1/5/10, MRR@10, FLOPs,
terms a query, and the share of a query's content words that keep a weight (words kept); on the
demo world also the document side: per attribute family, the best caption word's R-precision
(`lsr_os.demo.words`). Ways and seeds are interleaved; figures are exact scoring (the cluster
returns the same: `lsr-os evaluate` and the demo report that parity).

    python bench/query_modes.py --demo lsr-os-demo      # the demo folder of `lsr-os demo`
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import md_table, write_results  # noqa: E402
from lsr_os.dense_files import TEXT_FILE, read_embeddings  # noqa: E402
from lsr_os.demo.synthetic import write_synthetic  # noqa: E402
from lsr_os.evaluate import words_kept  # noqa: E402
from lsr_os.models.head import load_head  # noqa: E402
from lsr_os.static_query import StaticQueryEncoder, tokenizer_dir  # noqa: E402
from lsr_os.train import BEST_DIR, TrainConfig, TrainingData, train  # noqa: E402
from lsr_os.vocab import content_words, fast_tokenizer  # noqa: E402

WAYS = {"none": dict(query_weights="none"), "after": dict(query_weights="after"),
        "joint": dict(query_weights="joint", query_leak=0.0), "joint + leak": dict(query_weights="joint")}
# The demo's head settings (lsr_os.demo.pipeline.DemoConfig) and the synthetic world's
# (tests/test_train_synthetic.py): short CPU runs, learning rates and regularisers scaled up.
SETTINGS = {"demo": dict(epochs=4, batch_size=128, lr_head=2e-3, lr_proj=1e-2, q_reg=1e-2, d_reg=1e-2),
            "synthetic": dict(epochs=6, batch_size=128, lr_head=2e-3, lr_proj=1e-2, q_reg=1e-2, d_reg=1e-2,
                              init="minilm")}
METRICS = ("R@1", "R@5", "R@10", "MRR@10")


def mode_rows(world: str, way: str, seed: int, out: Path, data: Path, report: dict) -> list[dict]:
    """One row per text query mode of a trained head's test split (exact scoring)."""
    head = load_head(out / BEST_DIR)
    split = TrainingData.load(data).meta.split("test")
    texts = dict(zip(map(str, split.caption_ids), split.captions))
    dense = read_embeddings(data / TEXT_FILE).take(list(texts))
    tok = fast_tokenizer(tokenizer_dir(out / BEST_DIR))
    queries = {"expanded": head.encode_captions(dense, list(texts.values())),
               "own-tokens": head.encode_captions(dense, list(texts.values()), expand=False)}
    if head.query_weights is not None:
        queries["inference-free"] = StaticQueryEncoder.from_head(out / BEST_DIR).encode_each(list(texts.values()))
    words = {qid: content_words(text, tok) for qid, text in texts.items()}
    sections = {"expanded": report["sparse"], "own-tokens": report["sparse_no_query_expansion"],
                "inference-free": report.get("inference_free"),
                "inference-free (IDF)": report["inference_free_baselines"]["idf"],
                "inference-free (mean own-token)": report["inference_free_baselines"]["mean_own_token"]}
    rows = []
    for mode, sec in sections.items():
        if sec is None:
            continue
        row = {"world": world, "training": way, "seed": seed, "mode": mode,
               **{m: 100 * sec["t2i"][m] for m in METRICS}, "FLOPs": sec["flops"], "terms/q": sec["nnz_query"],
               "terms/doc": sec["nnz_doc"]}
        if mode in queries:
            row["words kept"] = 100 * words_kept(words, dict(zip(texts, queries[mode])))
        rows.append(row)
    return rows


def word_rows(world_dir: Path, data: Path, out: Path, way: str, seed: int) -> dict:
    """The document side on the demo world: mean best-word R-precision per attribute family."""
    from lsr_os.demo.words import served_word_precision

    words = served_word_precision(out / BEST_DIR, data, world_dir)
    dead = [v for family in ("colour", "shape") for v, row in words[family]["values"].items() if row["r_precision"] == 0]
    return {"training": way, "seed": seed, **{f: round(w["mean"], 3) for f, w in words.items()},
            "values without a word": ", ".join(dead) or "-"}


def mean_rows(rows: list[dict], keys: tuple[str, ...]) -> list[dict]:
    """Rows averaged over seeds (same world, training and mode)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    out = []
    for key, group in groups.items():
        row = dict(zip(keys, key))
        for col in group[0]:
            if col not in keys and col != "seed" and isinstance(group[0][col], float):
                row[col] = statistics.fmean(g[col] for g in group)
        row["seeds"] = len(group)
        out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--demo", type=Path, required=True, help="output folder of `lsr-os demo` (its world and dense files)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--ways", nargs="+", default=list(WAYS), choices=list(WAYS))
    ap.add_argument("--worlds", nargs="+", default=["demo", "synthetic"], choices=["demo", "synthetic"])
    ap.add_argument("--out", type=Path, default=None, help="results folder [default: bench/results]")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="lsr-os-query-modes-"))
    data = {"demo": args.demo / "dense", "synthetic": root / "synthetic"}
    if "synthetic" in args.worlds:
        write_synthetic(data["synthetic"], n_images=900, seed=0, n_val=50, n_test=100)
    rows, words, seconds = [], [], {}
    for seed in args.seeds:  # seeds outside, ways inside: each way sees the machine at every stage
        for world in args.worlds:
            for way in args.ways:
                out = root / f"{world}-{way.replace(' + ', '-')}-{seed}"
                t0 = time.perf_counter()
                result = train(data[world], out, TrainConfig(**SETTINGS[world], **WAYS[way], seed=seed, device="cpu"),
                               progress=False)
                seconds[f"{world}/{way}/{seed}"] = round(time.perf_counter() - t0, 1)
                rows.extend(mode_rows(world, way, seed, out, data[world], result.test))
                if world == "demo":
                    words.append(word_rows(args.demo / "world", data[world], out, way, seed))
                print(f"{world} {way} seed {seed}: {seconds[f'{world}/{way}/{seed}']} s", flush=True)
    means = mean_rows(rows, ("world", "training", "mode"))
    word_means = mean_rows(words, ("training",))
    columns = ["world", "training", "mode", *METRICS, "FLOPs", "terms/q", "terms/doc", "words kept", "seeds"]
    summary = (f"Test split, text -> image, exact scoring, mean over seeds {args.seeds} (in %; FLOPs and terms as "
               f"counts). Demo world: {args.demo} (2,000 images, 200 for test); synthetic world: 900 images, 100 for "
               f"test. Head settings: the demo's and the synthetic training test's; query weights: "
               f"TrainConfig's defaults.\n\n" + md_table(means, columns)
               + ("\n\n### Demo world, document side\n\nBest caption word's R-precision per value, mean per family; "
                  "colour and shape values no image holds a word for, per seed.\n\n"
                  + md_table(word_means, ["training", "colour", "shape", "count", "size", "texture", "place",
                                          "background", "seeds"])
                  + "\n\n" + md_table(words, ["training", "seed", "values without a word"]) if words else "")
               + "\n\nEvery row per seed is in the JSON file.")
    write_results("query_modes", {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows, "words": words,
                                  "seconds": seconds}, summary, args.out or Path(__file__).parent / "results")
    print(summary)


if __name__ == "__main__":
    main()
