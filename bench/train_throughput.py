"""Training throughput (caption-image pairs per second): our trainer vs a loop built the authors' way.

Both sides train the same head (offline MiniLM init) with the same loss, regularisers and
optimiser settings, on the same synthetic tensors of MSCOCO's shape (the authors' training set,
Karpathy "train": 414,113 caption-image pairs over 82,783 images; `--images 113287 --pairs 566747`
for train + restval), 256-d unit vectors, template captions, in one run, on one device.
What differs is the data path, which is what the authors' code spends its time on:

- authors' way: a DataLoader over pair indices that, per item, looks up the caption text and
  copies both dense rows into new tensors, a collate function that tokenises the batch's
  captions every step, host->device copies every step, one Bernoulli draw through
  torch.bernoulli, separate forward passes for captions and images, two optimisers and two
  schedulers, and `.item()` host syncs for logging every step;
- ours (lsr_os.train.Trainer): every vector and every caption's distinct token ids on the
  device from the start, batches as slices of a device permutation, device-side accumulation
  read once per epoch, no abs pass in the L1 term (the weights are never negative); an
  unexpanded batch computes the captions' weights at their own ids only (no 30,522-wide
  caption vectors).

Each side runs `--warmup` untimed steps, then `--steps` timed steps at batch `--batch-size`,
once with p = 1 (every batch unexpanded) and once with p = 0 (every batch expanded), so no
random draw decides how many of the few timed steps take the cheaper branch. The paper's
schedule spends a share p̄ (its mean p over 200 epochs, 0.475) of its steps unexpanded; its
throughput is 1 / (p̄ / r₁ + (1 - p̄) / r₀) from the two measured rates. Run on a GPU with
`--device cuda` (adds peak memory and a projection of a 200-epoch MSCOCO run).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import md_table, write_results  # noqa: E402
from lsr_os.dense_files import DatasetMeta, Embeddings  # noqa: E402
from lsr_os.models.head import SparseHead  # noqa: E402
from lsr_os.demo.synthetic import CONCEPTS, TEMPLATES  # noqa: E402
from lsr_os.train import (TrainConfig, Trainer, TrainingData, distillation_loss, expansion_p, l1,  # noqa: E402
                          pick_dtype, reg_weight)

MSCOCO_IMAGES = 82_783  # Karpathy "train", what the authors train on (restval adds 30,504 images)
MSCOCO_PAIRS = 414_113


def mscoco_shaped(seed: int = 0, n_images: int = MSCOCO_IMAGES, n_pairs: int = MSCOCO_PAIRS,
                  dim: int = 256, n_eval: int = 500,
                  captions: Callable[[np.random.Generator, int], list[str]] | None = None) -> TrainingData:
    """Random unit vectors and captions with MSCOCO's counts (train) + small val/test.

    Captions are the synthetic world's templates unless `captions(rng, n)` gives the n texts
    (the GPU suite passes captions of MSCOCO's length distribution).
    """
    rng = np.random.default_rng(seed)
    words = sorted({w for k, v in CONCEPTS.items() for w in (k, *v)})
    total_images = n_images + 2 * n_eval
    per_image = np.full(total_images, 5)
    per_image[rng.choice(n_images, n_pairs - 5 * n_images, replace=False)] += 1  # MSCOCO: a few have 6-7
    given = captions(rng, int(per_image.sum())) if captions is not None else None
    images, sent_id = [], 0
    for img in range(total_images):
        split = "train" if img < n_images else "val" if img < n_images + n_eval else "test"
        sents = []
        for _ in range(per_image[img]):
            if given is not None:
                text = given[sent_id]
            else:
                ws = rng.choice(len(words), 3, replace=False)
                text = TEMPLATES[sent_id % len(TEMPLATES)].format(x=", ".join(f"a {words[w]}" for w in ws))
            sents.append({"sentid": sent_id, "raw": text})
            sent_id += 1
        images.append({"imgid": img, "split": split, "filename": f"{img}.jpg", "sentences": sents})

    def unit(n: int) -> np.ndarray:
        x = rng.standard_normal((n, dim), dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    img = Embeddings([str(i) for i in range(total_images)], unit(total_images))
    txt = Embeddings([str(i) for i in range(sent_id)], unit(sent_id))
    return TrainingData(DatasetMeta(images, name="mscoco-shaped"), img, txt)


def authors_style(data: TrainingData, cfg: TrainConfig, steps: int, warmup: int, workers: int,
                  budget_s: float | None = None) -> dict:
    """The authors' data path around the same model and loss; returns timing of `steps` steps
    (fewer when the timed steps pass `budget_s` seconds)."""
    from torch.utils.data import DataLoader, Dataset
    from transformers.optimization import get_linear_schedule_with_warmup

    device = torch.device(cfg.device)
    dtype = pick_dtype(cfg.precision, device)
    split = data.meta.split(["train"])  # the authors' split == "train"
    texts = dict(zip(split.caption_ids, split.captions))
    pairs = list(zip(split.caption_ids, split.caption_image))
    txt_rows, img_rows = data.texts.row, data.images.row
    txt_emb, img_emb = data.texts.emb, data.images.emb

    class Pairs(Dataset):
        def __len__(self):
            return len(pairs)

        def __getitem__(self, i):
            t, im = pairs[i]
            return {"text": texts[t], "text_emb": torch.tensor(txt_emb[txt_rows[t]]),
                    "img_emb": torch.tensor(img_emb[img_rows[im]])}

    torch.manual_seed(cfg.seed)
    head = SparseHead.initialise(cfg.init, data.dim, cfg.seed).to(device).train()  # the Trainer's start
    tok = head.tokenizer

    def collate(batch):
        enc = tok([b["text"] for b in batch], truncation=True, padding=True, return_tensors="pt")
        return enc, torch.stack([b["text_emb"] for b in batch]), torch.stack([b["img_emb"] for b in batch])

    loader = DataLoader(Pairs(), batch_size=cfg.batch_size, shuffle=True, num_workers=workers, collate_fn=collate)
    opt1 = torch.optim.AdamW(list(head.vocab_layer_norm.parameters()) + list(head.vocab_projector.parameters()),
                             lr=cfg.lr_head, weight_decay=0.0)
    opt2 = torch.optim.AdamW(head.proj.parameters(), lr=cfg.lr_proj, weight_decay=0.0)
    total = len(loader) * cfg.epochs
    warm = int(total * cfg.warmup_ratio)
    sch1 = get_linear_schedule_with_warmup(opt1, warm, total)
    sch2 = get_linear_schedule_with_warmup(opt2, warm, total)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    p = torch.tensor(cfg.p)
    losses, q_len = [], []
    t0, step = 0.0, 0
    for enc, txt, img in loader:
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        if step == warmup + steps or (budget_s is not None and step > warmup
                                      and time.perf_counter() - t0 > budget_s):
            break
        enc, txt, img = enc.to(device), txt.to(device), img.to(device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            if torch.bernoulli(p) == 1:
                s_txt = head(txt, enc["input_ids"], enc["attention_mask"])
            else:
                s_txt = head(txt)
            s_img = head(img)
            loss = distillation_loss(s_img @ s_txt.t(), img, txt, cfg.temperature)
            loss = loss + (reg_weight(cfg.q_reg, step, warm) * l1(s_txt) + reg_weight(cfg.d_reg, step, warm) * l1(s_img)) / 2
        opt1.zero_grad()
        opt2.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt1)
        scaler.step(opt2)
        scaler.update()
        sch1.step()
        sch2.step()
        losses.append(loss.item())
        q_len.append((s_txt > 0).float().sum(dim=-1).mean().item())
        step += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    timed = step - warmup
    return {"steps": timed, "seconds": seconds, "pairs_per_s": timed * cfg.batch_size / seconds}


def time_trainer(trainer: Trainer, steps: int, warmup: int, budget_s: float | None = None) -> dict:
    """`warmup` untimed steps of lsr_os.train.Trainer, then `steps` timed ones (in chunks of at most
    50 when `budget_s` bounds the timed seconds, so fewer when they pass it)."""
    if warmup:
        trainer.train_epoch(0, max_steps=warmup)
    chunk = steps if budget_s is None else max(1, min(steps, 50))
    done = pairs = 0
    seconds = 0.0
    while done < steps and (budget_s is None or seconds < budget_s):
        row = trainer.train_epoch(0, max_steps=min(chunk, steps - done))
        done += row["batches"]
        pairs += row["pairs_per_s"] * row["train_seconds"]
        seconds += row["train_seconds"]
    return {"steps": done, "seconds": seconds, "pairs_per_s": pairs / seconds}


def ours(data: TrainingData, cfg: TrainConfig, steps: int, warmup: int) -> dict:
    trainer = Trainer(cfg, data, Path("/tmp/lsr-os-bench-unused"))
    return time_trainer(trainer, steps, warmup)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per side")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per side")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers of the authors'-style loop")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--images", type=int, default=MSCOCO_IMAGES)
    ap.add_argument("--pairs", type=int, default=MSCOCO_PAIRS)
    ap.add_argument("--name", default=None, help="results name [default: train_throughput_<device>]")
    args = ap.parse_args()

    load_before = os.getloadavg()
    t0 = time.perf_counter()
    data = mscoco_shaped(n_images=args.images, n_pairs=args.pairs)
    build_s = time.perf_counter() - t0
    device = torch.device(args.device)
    rows, rate = [], {}
    for p in (1.0, 0.0):
        cfg = TrainConfig(epochs=200, batch_size=args.batch_size, p=p, device=args.device, precision=args.precision,
                          init="minilm")
        for name, fn in (("authors-style loop", lambda: authors_style(data, cfg, args.steps, args.warmup, args.workers)),
                         ("lsr_os.train", lambda: ours(data, cfg, args.steps, args.warmup))):
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            r = fn()
            if device.type == "cuda":
                r["peak_gpu_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
            rows.append({"loop": name, "p": p, **r})
            rate[name, p] = r["pairs_per_s"]
    p_mean = float(np.mean([expansion_p(e, 200) for e in range(200)]))
    schedule = {name: 1 / (p_mean / rate[name, 1.0] + (1 - p_mean) / rate[name, 0.0])
                for name in ("authors-style loop", "lsr_os.train")}
    speedup = {f"p={p:g}": rate["lsr_os.train", p] / rate["authors-style loop", p] for p in (1.0, 0.0)}
    speedup["schedule"] = schedule["lsr_os.train"] / schedule["authors-style loop"]
    epochs200_min = 200 * args.pairs / schedule["lsr_os.train"] / 60
    results = {"device": args.device, "precision": str(pick_dtype(args.precision, device)), "batch_size": args.batch_size,
               "pairs": args.pairs, "images": args.images, "schedule_mean_p": p_mean, "warmup_steps": args.warmup,
               "timed_steps": args.steps, "authors_workers": args.workers, "data_build_s": build_s, "rows": rows,
               "schedule_pairs_per_s": schedule, "speedup": speedup,
               "projected_200_epoch_minutes_ours": epochs200_min,
               "steps_per_epoch": math.ceil(args.pairs / args.batch_size),
               "load_avg_1_5_15_before": load_before, "load_avg_1_5_15_after": os.getloadavg()}
    summary = (f"Device {args.device}, batch {args.batch_size}, {args.pairs:,} pairs / {args.images:,} images, "
               f"{args.warmup} untimed + {args.steps} timed steps per side and p, authors'-style "
               f"DataLoader workers {args.workers}.\n\n"
               + md_table(rows, ["loop", "p", "steps", "seconds", "pairs_per_s"] +
                          (["peak_gpu_mem_gib"] if device.type == "cuda" else []))
               + f"\n\nSpeed-up: {speedup['p=1']:.2f}x unexpanded (p = 1), {speedup['p=0']:.2f}x expanded (p = 0), "
                 f"{speedup['schedule']:.2f}x over the paper's schedule (mean p {p_mean:.3f}: "
                 f"{schedule['lsr_os.train']:.1f} vs {schedule['authors-style loop']:.1f} pairs/s). "
                 f"A 200-epoch run at this size would take {epochs200_min:.0f} min at our schedule rate "
                 f"(training steps only, no evaluation). Load average (1 min) {load_before[0]:.1f} before, "
                 f"{os.getloadavg()[0]:.1f} after.")
    path = write_results(args.name or f"train_throughput_{device.type}", results, summary)
    print(summary)
    print(f"results: {path}")


if __name__ == "__main__":
    main()
