"""Issue 27: which fusion of sparse and dense scores to serve, measured exactly in memory.

Builds (or reuses, under --work) the demo world and the synthetic world for each seed: dense
vectors and a trained sparse head, without a cluster (the demo's first four steps, as `lsr-os demo`
runs them). Then, for the test split in both directions (text -> image, image -> text) and for the
inference-free text queries (sparse from the text alone, dense from the text model: hybrid needs the
model even then), it scores every fusion of `lsr_os.fusion` over a grid of sparse weight a, window N
and query-side scale, beside the dense-only and sparse-only rows. Not a test: numbers go to
bench/results/.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import md_table, write_results  # noqa: E402
from lsr_os.fusion import METHODS  # noqa: E402

log = logging.getLogger("bench.hybrid_fusion")


# --------------------------------------------------------------------------- worlds


def prepare_demo(folder: Path, seed: int, n_images: int) -> tuple[Path, Path]:
    """The demo's world, dense encoder, dense files and sparse head (`lsr-os demo` steps 1-4, with its
    default settings), reused when `folder` already holds them; returns (dense files, head)."""
    from lsr_os.data import load_karpathy
    from lsr_os.demo import world
    from lsr_os.demo.encoder import train_demo_encoder
    from lsr_os.demo.pipeline import DemoConfig
    from lsr_os.encode import EncodeOptions, encode_dataset
    from lsr_os.models import load_encoder
    from lsr_os.models.dense import MARKER_FILE
    from lsr_os.train import BEST_DIR, REPORT_FILE, TrainConfig, train

    cfg = DemoConfig(out=folder, n_images=n_images, seed=seed, progress=False)
    world_dir, enc_dir, dense_dir, head_dir = folder / "world", folder / "encoder", folder / "dense", folder / "head"
    meta = world.build(world_dir, n_images=cfg.n_images, seed=cfg.seed)
    if not (enc_dir / MARKER_FILE).exists():
        train_demo_encoder(meta, world_dir, enc_dir, epochs=cfg.encoder_epochs, seed=cfg.seed, progress=False)
    encode_dataset(load_encoder(enc_dir, device="cpu"), load_karpathy(meta, world_dir), dense_dir,
                   EncodeOptions(progress=False))
    if not (head_dir / REPORT_FILE).exists():
        train(dense_dir, head_dir, TrainConfig(epochs=cfg.head_epochs, batch_size=cfg.head_batch_size, seed=cfg.seed,
                                               device="cpu", lr_head=cfg.head_lr, lr_proj=cfg.proj_lr, q_reg=cfg.reg,
                                               d_reg=cfg.reg), progress=False)
    return dense_dir, head_dir / BEST_DIR


# The settings of tests/test_train_synthetic.py and bench/synthetic_quality.py.
SYNTHETIC = {"n_images": 900, "n_val": 50, "n_test": 100}


def prepare_synthetic(folder: Path, seed: int) -> tuple[Path, Path]:
    """The synthetic world and a head trained on it, reused when `folder` holds them; returns
    (dense files, head)."""
    from lsr_os.demo.synthetic import write_synthetic
    from lsr_os.train import BEST_DIR, REPORT_FILE, TrainConfig, train

    world_dir, head_dir = folder / "world", folder / "head"
    if not (world_dir / "ground_truth.json").exists():
        write_synthetic(world_dir, seed=seed, **SYNTHETIC)
    if not (head_dir / REPORT_FILE).exists():
        train(world_dir, head_dir, TrainConfig(epochs=6, batch_size=128, lr_head=2e-3, lr_proj=1e-2, q_reg=1e-2,
                                               d_reg=1e-2, warmup_ratio=0.2, init="minilm", seed=seed, device="cpu"),
              progress=False)
    return world_dir, head_dir / BEST_DIR


# --------------------------------------------------------------------------- queries and documents


def directions(dense_dir: Path, head: Path) -> dict[str, dict]:
    """The test split's query sets: t2i (captions as the head encodes them), i2t (images), t2i-free
    (the captions' inference-free queries, with the text model's dense vectors: hybrid needs the
    model even for them). Each: queries [(id, prepared sparse, dense)], documents, qrels, dense runs."""
    from lsr_os.dense_files import IMG_FILE, TEXT_FILE, read_embeddings
    from lsr_os.errors import DataError
    from lsr_os.evaluate import SplitData, dense_runs, text_query_modes
    from lsr_os.records import SourceOptions, open_source
    from lsr_os.search import prepare_query

    source = open_source(SourceOptions(dense=dense_dir, head=head, split="test", device="cpu"))
    data = SplitData.load(source)
    _, extra = text_query_modes(source, data)
    img, txt = read_embeddings(dense_dir / IMG_FILE), read_embeddings(dense_dir / TEXT_FILE)
    teacher = dense_runs(dense_dir, data, k=10)

    def prepared(vector):
        try:
            return prepare_query(vector, 1024)
        except DataError:  # no usable term: the sparse side finds nothing, the dense side still does
            return {}

    def queries(sparse, emb):
        ids = list(sparse)
        return [(q, prepared(sparse[q]), v) for q, v in zip(ids, emb.take(ids))]

    images = dict(zip(data.images, img.take(list(data.images))))
    captions = dict(zip(data.captions, txt.take(list(data.captions))))
    return {
        "t2i": {"queries": queries(data.captions, txt), "docs": (data.images, images), "qrels": data.qrels_t2i,
                "dense": teacher["t2i"]},
        "i2t": {"queries": queries(data.images, img), "docs": (data.captions, captions), "qrels": data.qrels_i2t,
                "dense": teacher["i2t"]},
        "t2i-free": {"queries": queries(extra["inference-free"], txt), "docs": (data.images, images),
                     "qrels": data.qrels_t2i, "dense": teacher["t2i"]},
    }


# --------------------------------------------------------------------------- metrics


def fast_metrics(top: np.ndarray, relevant: np.ndarray) -> dict[str, float]:
    """R@1, R@5, MRR@10 of `fuse`'s top-10 columns (-1 padded) against a (queries x documents)
    relevance matrix; `measure` checks them against lsr_os.metrics.retrieval_metrics."""
    hits = np.take_along_axis(relevant, np.maximum(top, 0), axis=1) & (top >= 0)
    first = np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, 0)
    return {"R@1": float(hits[:, :1].any(axis=1).mean()), "R@5": float(hits[:, :5].any(axis=1).mean()),
            "MRR@10": float(np.where(first > 0, 1.0 / np.maximum(first, 1), 0.0).mean())}


def grid(windows: list[int], weights: list[float]):
    """Every fusion measured: the two a cluster can serve in one request, and the two it cannot."""
    from lsr_os.fusion import SCALES, Fusion

    for n in windows:
        for a in weights:
            for scale in SCALES:
                for dense in ("cos", "half"):
                    yield Fusion("rescore", a, n, scale, dense)
                # the knn score is (1 + cos) / 2 on both engines: a union with the cosine does not exist
                yield Fusion("union", a, n, scale, "half")
            yield Fusion("minmax", a, n)
        yield Fusion("rrf", window=n)


def measure(name: str, data: dict, fusions: list, k: int = 10) -> tuple[list[dict], dict]:
    """Every fusion's metrics on one query set, and its baselines (dense, sparse)."""
    from lsr_os.evaluate import ExactScorer
    from lsr_os.fusion import HybridScorer, fuse, query_scale, to_run
    from lsr_os.metrics import retrieval_metrics

    doc_sparse, doc_dense = data["docs"]
    scorer = HybridScorer(doc_sparse, doc_dense)
    queries, qrels = data["queries"], data["qrels"]
    qids = [q for q, _, _ in queries]
    column = {d: j for j, d in enumerate(scorer.ids)}
    relevant = np.zeros((len(qids), len(scorer)), dtype=bool)
    for r, q in enumerate(qids):
        for d, v in qrels.get(q, {}).items():
            relevant[r, column[d]] = v > 0
    s, c = scorer.scores([(q, v) for _, q, v in queries])
    scales = {scale: np.array([query_scale(q, scale) for _, q, _ in queries]) for scale in ("none", "l2", "l1")}
    sparse_run = ExactScorer(doc_sparse.items()).run(((q, v) for q, v, _ in queries if v), k)[0]
    base = {"dense": retrieval_metrics(data["dense"], qrels), "sparse": retrieval_metrics(sparse_run, qrels)}
    base["queries"], base["documents"] = len(qids), len(scorer)
    base["sparse_top_score_median"] = float(np.median(s.max(axis=1)))
    # the share of documents a query's terms match: near 1, the union's candidates are the collection
    base["matched_share_median"] = float(np.median((s > 0).mean(axis=1)))
    rows = []
    for fusion in fusions:
        top, fused = fuse(s, c, fusion, k, scales[fusion.scale])
        row = {"method": fusion.method, "a": fusion.weight, "N": fusion.window, "scale": fusion.scale,
               "dense": fusion.dense, **fast_metrics(top, relevant)}
        rows.append(row)
    # the fast metrics against the project's own, on each method's first setting; scores by rank, so
    # ties in the fused score cannot be ordered otherwise by ir_measures
    for fusion in ({f.method: f for f in reversed(fusions)}).values():
        top, _ = fuse(s, c, fusion, k, scales[fusion.scale])
        by_rank = np.broadcast_to(np.arange(k, 0, -1, dtype=np.float64), top.shape)
        exact = retrieval_metrics(to_run(qids, top, by_rank, scorer.ids), qrels)
        fast = fast_metrics(top, relevant)
        if abs(exact["R@1"] - fast["R@1"]) > 1e-9 or abs(exact["MRR@10"] - fast["MRR@10"]) > 1e-9:
            raise AssertionError(f"{name} {fusion.label}: fast metrics {fast} differ from {exact}")
    return rows, base


# --------------------------------------------------------------------------- choosing


GOAL_SETS = ("t2i", "i2t")  # the issue's goal: hybrid R@1 >= both sides', both directions, every world


def family(row: dict) -> tuple:
    return row["method"], row["scale"], row["dense"]


def setting(row: dict) -> tuple:
    return (*family(row), row["a"], row["N"])


def summarise(rows: list[dict], bases: dict) -> dict[tuple, dict]:
    """Per setting, over the goal cells (world, seed, t2i/i2t): cells where its R@1 reaches both
    sides', its mean and worst R@1 margin over the better side (points), and the same for the
    inference-free cells."""
    out: dict[tuple, dict] = {}
    for r in rows:
        b = bases[(r["world"], r["seed"], r["set"])]
        margin = 100 * (r["R@1"] - max(b["dense"]["R@1"], b["sparse"]["R@1"]))
        s = out.setdefault(setting(r), {"goal_margins": [], "free_margins": [], "R@1": []})
        if r["set"] in GOAL_SETS:
            s["goal_margins"].append(margin)
            s["R@1"].append(r["R@1"])
        else:
            s["free_margins"].append(margin)
    for s in out.values():
        g = np.array(s.pop("goal_margins"))
        f = np.array(s.pop("free_margins"))
        s.update(cells=len(g), met=int((g >= -1e-9).sum()), mean_margin=float(g.mean()), worst_margin=float(g.min()),
                 mean_R1=100 * float(np.mean(s.pop("R@1"))), free_met=int((f >= -1e-9).sum()), free_cells=len(f),
                 free_mean_margin=float(f.mean()) if len(f) else 0.0)
    return out


def rank_key(s: dict) -> tuple:
    """Best first: every goal cell met, then the worst margin, then the mean margin."""
    return -s["met"], -s["worst_margin"], -s["mean_margin"]


# Where each method can run in one request (issue 27's clusters): see lsr_os.fusion.fuse.
SERVED = {"rescore": "both engines (a rescore by the plugin's dense query; painless on OpenSearch)",
          "union": "Elasticsearch (query + knn); OpenSearch only with the k-NN plugin",
          "minmax": "neither (client-side: needs both lists first)", "rrf": "neither (client-side)"}


def pct(x: float) -> float:
    return round(100 * x, 1)


def name(key: tuple) -> str:
    m, scale, dense, a, n = key
    return f"{m}, a = {a}, N = {n}" + (f", scale {scale}, dense {dense}" if m in ("rescore", "union") else "")


def recommend(summary: dict, method: str, args) -> tuple:
    """The setting of `method` to serve by default: at N = --window, the family (scale, dense score)
    with the longest run of consecutive grid weights that meet every goal cell, and the middle weight
    of that run (a default should not sit on the edge of what works); with no such run, the best
    setting by `rank_key`."""
    runs: list[tuple[tuple, list[float]]] = []  # (family, consecutive weights meeting every goal cell)
    for fam in sorted({k[:3] for k in summary if k[0] == method}):
        run: list[float] = []
        for a in [*args.weights, None]:
            s = summary.get((*fam, a, args.window))
            if s and s["met"] == s["cells"]:
                run.append(a)
            elif run:
                runs.append((fam, run))
                run = []
    if not runs:
        return min((k for k in summary if k[0] == method), key=lambda k: rank_key(summary[k]))

    def middle(r: tuple[tuple, list[float]]) -> tuple:
        return (*r[0], r[1][(len(r[1]) - 1) // 2], args.window)

    return middle(max(runs, key=lambda r: (len(r[1]), summary[middle(r)]["mean_margin"])))


def report(rows: list[dict], bases: dict, summary: dict, args) -> str:
    """The markdown summary: baselines, each family's best setting, the recommendation cell by cell,
    its sensitivity to a and N, and the first probe's settings again."""
    cells = sorted(bases)
    base_rows = [{"world": w, "seed": s, "set": n, "queries": b["queries"], "docs": b["documents"],
                  "dense R@1": pct(b["dense"]["R@1"]), "dense R@5": pct(b["dense"]["R@5"]),
                  "dense MRR": pct(b["dense"]["MRR@10"]), "sparse R@1": pct(b["sparse"]["R@1"]),
                  "sparse R@5": pct(b["sparse"]["R@5"]), "sparse MRR": pct(b["sparse"]["MRR@10"]),
                  "median top sparse score": round(b["sparse_top_score_median"], 2),
                  "median share of docs matched": round(b["matched_share_median"], 2)}
                 for (w, s, n), b in ((c, bases[c]) for c in cells)]
    best: dict[tuple, tuple] = {}
    for key, s in summary.items():
        fam = key[:3]
        if fam not in best or rank_key(s) < rank_key(summary[best[fam]]):
            best[fam] = key
    fam_rows = []
    for fam, key in sorted(best.items(), key=lambda kv: rank_key(summary[kv[1]])):
        s = summary[key]
        fam_rows.append({"method": fam[0], "scale": fam[1] if fam[0] in ("rescore", "union") else "-",
                         "dense": fam[2] if fam[0] in ("rescore", "union") else "-", "a": key[3] if fam[0] != "rrf" else "-",
                         "N": key[4], "goal cells met": f"{s['met']}/{s['cells']}",
                         "worst margin": round(s["worst_margin"], 1), "mean margin": round(s["mean_margin"], 2),
                         "mean R@1": round(s["mean_R1"], 2), "inference-free met": f"{s['free_met']}/{s['free_cells']}",
                         "inference-free mean margin": round(s["free_mean_margin"], 2), "one request on": SERVED[fam[0]]})

    chosen, union = recommend(summary, "rescore", args), recommend(summary, "union", args)
    minmax = min((k for k in summary if k[0] == "minmax"), key=lambda k: rank_key(summary[k]))

    def best_mean(method: str) -> tuple:
        return max((k for k in summary if k[0] == method), key=lambda k: (summary[k]["mean_R1"], k[3] == 0.5))

    mean_rescore, mean_union, mean_minmax, mean_rrf = (best_mean(m) for m in METHODS)
    by_setting = {(setting(r), r["world"], r["seed"], r["set"]): r for r in rows}
    cell_rows = []
    for c in cells:
        b = bases[c]
        row = {"world": c[0], "seed": c[1], "set": c[2], "dense R@1": pct(b["dense"]["R@1"]),
               "sparse R@1": pct(b["sparse"]["R@1"])}
        r = by_setting[(chosen, *c)]
        row["recommended R@1"], row["recommended R@5"], row["recommended MRR"] = (
            pct(r["R@1"]), pct(r["R@5"]), pct(r["MRR@10"]))
        for label, key in (("union", union), ("best-mean rescore", mean_rescore), ("best-mean minmax", mean_minmax),
                           ("minmax (strict)", minmax)):
            row[f"{label} R@1"] = pct(by_setting[(key, *c)]["R@1"])
        cell_rows.append(row)
    goal = [c for c in cells if c[2] in GOAL_SETS]
    close = [{"setting": f"{side} only", "goal cells met": "-",
              "mean R@1": round(100 * float(np.mean([bases[c][side]["R@1"] for c in goal])), 2)}
             for side in ("dense", "sparse")]
    for label, key in (("recommended rescore", chosen), ("recommended union", union), ("strict min-max", minmax),
                       ("best-mean rescore", mean_rescore), ("best-mean union", mean_union),
                       ("best-mean min-max", mean_minmax), ("best-mean rrf", mean_rrf)):
        s = summary[key]
        close.append({"setting": f"{label}: {name(key)}", "goal cells met": f"{s['met']}/{s['cells']}",
                      "mean R@1": round(s["mean_R1"], 2), "mean margin": round(s["mean_margin"], 2),
                      "worst margin": round(s["worst_margin"], 1),
                      "inference-free met": f"{s['free_met']}/{s['free_cells']}",
                      "inference-free mean margin": round(s["free_mean_margin"], 2)})
    families = [f for f in sorted({k[:3] for k in summary}) if f[0] in ("rescore", "union")]
    sens = []
    for a in args.weights:
        row: dict = {"a": a}
        for fam in families:
            s = summary.get((*fam, a, args.window))
            row[" ".join(fam)] = f"{s['met']}/{s['cells']} {s['mean_R1']:.2f}" if s else ""
        sens.append(row)
    windows = []
    for key in (chosen, union):
        for n in args.windows:
            s = summary[(*key[:4], n)]
            windows.append({"setting": name((*key[:4], n)), "goal cells met": f"{s['met']}/{s['cells']}",
                            "mean R@1": round(s["mean_R1"], 2),
                            "inference-free met": f"{s['free_met']}/{s['free_cells']}",
                            "inference-free mean margin": round(s["free_mean_margin"], 2)})
    probe = []
    for c in [c for c in cells if c[0] == "demo"]:
        row = {"seed": c[1], "set": c[2]}
        for a in (0.3, 0.5, 0.7):
            r = by_setting.get((("minmax", "none", "cos", a, 10), *c))
            row[f"minmax a={a}"] = pct(r["R@1"]) if r else ""
        r = by_setting.get((("rrf", "none", "cos", 0.5, 10), *c))
        row["rrf k=60"] = pct(r["R@1"]) if r else ""
        probe.append(row)

    probe_md = (f"""## The first probe's settings again (FINDINGS.md: min-max over the union of both top 10s; RRF), demo world, R@1

{md_table(probe, list(probe[0]))}
""" if probe else "")

    return f"""Exact in-memory fusion of the sparse head's scores and the dense teacher's cosines (lsr_os.fusion),
test split, k = 10. Worlds: the demo ({args.demo_images} images, `lsr-os demo`'s settings, its test split
of 200 images and 1,000 captions) and the synthetic world (900 images, 100 of them and their 500 captions
for test; the settings of tests/test_train_synthetic.py), seeds {args.seeds} each (the seed builds the
world, trains the dense encoder where there is one, and the head). Sets: t2i (captions as the head
encodes them, against the images), i2t (images against the captions), t2i-free (the captions'
inference-free queries, with the text model's dense vector: hybrid needs the model even then).
Percentages; margins in points of R@1 over the better of dense and sparse in the same cell. Goal cells:
t2i and i2t of every world and seed (the issue's goal: hybrid R@1 at least both sides').

## Baselines

{md_table(base_rows, list(base_rows[0]))}

## Each fusion family's best setting (a, N) over the goal cells

Ranked by goal cells met, then worst margin, then mean margin; a is the sparse share, N the window
(rescore: the sparse top N; union: the knn k; minmax/rrf: both lists' length).

{md_table(fam_rows, list(fam_rows[0]))}

## The recommended defaults and how close they come to min-max

Recommended (see `recommend`): the family with the widest run of weights meeting every goal cell at
N = {args.window}, at the middle of that run. Strict min-max: the min-max setting ranked first by goal
cells met, worst margin, mean margin. Best-mean: the setting of the method with the highest mean R@1
over the goal cells, whatever cells it misses. Mean R@1 over the {len(goal)} goal cells.

{md_table(close, ["setting", "goal cells met", "mean R@1", "mean margin", "worst margin", "inference-free met",
                  "inference-free mean margin"])}

## Cell by cell: R@1, R@5, MRR@10

{md_table(cell_rows, list(cell_rows[0]))}

## Weight a at N = {args.window}, every cluster-side family: goal cells met, mean R@1 over them

{md_table(sens, list(sens[0]))}

## Window N at the recommended weights

{md_table(windows, list(windows[0]))}

{probe_md}"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "lsr-os-hybrid-fusion",
                    help="where the worlds and heads are built, and reused by a later run")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--worlds", nargs="+", default=["demo", "synthetic"], choices=["demo", "synthetic"])
    ap.add_argument("--demo-images", type=int, default=2000, help="the demo's default world size")
    ap.add_argument("--windows", type=int, nargs="+", default=[10, 50, 100, 200])
    # 0.1 .. 0.9, and beyond on both ends: an unscaled sparse score is tens of times a cosine
    ap.add_argument("--weights", type=float, nargs="+",
                    default=[0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95])
    ap.add_argument("--window", type=int, default=100, help="the N the recommendation is chosen at")
    ap.add_argument("--name", default="hybrid_fusion")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    fusions = list(grid(args.windows, args.weights))
    rows: list[dict] = []
    bases: dict[tuple, dict] = {}
    seconds: dict[str, float] = {}
    for world in args.worlds:
        for seed in args.seeds:
            t0 = time.perf_counter()
            folder = args.work / f"{world}-seed{seed}"
            dense_dir, head = (prepare_demo(folder, seed, args.demo_images) if world == "demo"
                               else prepare_synthetic(folder, seed))
            seconds[f"{world}-seed{seed} build"] = round(time.perf_counter() - t0, 1)
            t0 = time.perf_counter()
            for name, data in directions(dense_dir, head).items():
                set_rows, base = measure(f"{world} seed {seed} {name}", data, fusions)
                bases[(world, seed, name)] = base
                rows += [{"world": world, "seed": seed, "set": name, **r} for r in set_rows]
                log.info("%s seed %d %s: dense R@1 %.3f, sparse R@1 %.3f", world, seed, name,
                         base["dense"]["R@1"], base["sparse"]["R@1"])
            seconds[f"{world}-seed{seed} measure"] = round(time.perf_counter() - t0, 1)
    summary = summarise(rows, bases)
    md = report(rows, bases, summary, args)
    results = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "seconds": seconds,
               "baselines": [{"world": w, "seed": s, "set": n, **b} for (w, s, n), b in bases.items()],
               "settings": [{"method": m, "scale": sc, "dense": d, "a": a, "N": n, **v}
                            for (m, sc, d, a, n), v in summary.items()],
               "rows": rows}
    write_results(args.name, results, md)
    print(md)


if __name__ == "__main__":
    main()
