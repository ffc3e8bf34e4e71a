"""The training algorithm of docs/method.md ("probabilistic expansion control"), built for speed.

Per batch of caption-image pairs: one Bernoulli(p) draw decides whether the captions keep only
their own tokens (no expansion) or are fully expanded; images are always expanded. The loss is
the cross-entropy of the sparse in-batch scores against the frozen dense model's in-batch
distribution at temperature τ (both directions), plus L1 regularisers on captions (q_reg) and
images (d_reg) whose weights grow quadratically over the warm-up steps. p falls linearly from 1
at epoch 0 to 0 at 95% of the epochs (or stays fixed, for the ablations).

Speed: every dense vector and every caption's token ids live on the device for the whole run;
a batch is a slice of a random permutation; no host work or device sync happens per step (loss
parts are summed on the device and read once per epoch); evaluation is batched matrix products
on the device, caption chunk by caption chunk, keeping only the top 10 in both directions. A
batch whose captions keep their own tokens never builds their 30,522-wide vectors: the head is
evaluated at each caption's (distinct) token ids only and the in-batch scores gather the image
weights at those ids, which is the same loss at about half the cost of the batch.

Deliberate differences from the reference code (docs/method.md, "Where lsr-os differs"): the caption side
always starts from the caption's dense vector; validation encodes captions fully expanded (p = 0,
as the test does) rather than drawing a fresh mask per batch, so that checkpoint selection is
not noisy; metrics stop at the top 10 because that is all that is kept; by default the head
blocks the special tokens ([CLS], [SEP], ...; see lsr_os.models.head), which docs/method.md does not;
and by default the query weights of lsr_os.train_query train with the head, adding their loss to the
paper's (`TrainConfig.algorithm` names what a run adds; "after" and "none" leave the head's loss alone).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lsr_os import static_query, train_query
from lsr_os.dense_files import IMG_FILE, META_FILE, TEXT_FILE, DatasetMeta, Embeddings, Split, read_embeddings
from lsr_os.errors import ConfigError, DataError
from lsr_os.metrics import flops_from_counts, topk_metrics
from lsr_os.models.dense import resolve_device, resolve_dtype
from lsr_os.models.head import SparseHead, load_head

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
BEST_DIR = "best"
STATE_FILE = "last_state.pt"
REPORT_FILE = "test_report.json"
TOP_K = 10
# The split the authors' training loop selects (split == "train"). Karpathy's MSCOCO file also has
# "restval" (30,504 images that the 113k training set of BLIP and others adds): opt in with
# TrainConfig.train_splits = ("train", "restval") (CLI: --train-splits train,restval).
AUTHORS_TRAIN_SPLITS = ("train",)


@dataclass
class TrainConfig:
    """Every knob of docs/method.md; the defaults are the authors' README settings, but the default
    query weights ("joint") add to the paper's algorithm: `algorithm` says what."""

    epochs: int = 200
    batch_size: int = 512
    q_reg: float = 1e-3
    d_reg: float = 1e-3
    temperature: float = 1e-3
    p: float | None = None  # None: the paper's schedule; else a fixed p (ablations: 0 or 1)
    p_end_fraction: float = 0.95  # the schedule reaches p = 0 at this fraction of the epochs
    lr_head: float = 5e-5  # LayerNorm and vocabulary projection (pre-trained)
    lr_proj: float = 1e-3  # the new dense -> hidden projection
    warmup_ratio: float = 0.2  # of all steps: learning-rate warm-up and regulariser warm-up
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    seed: int = 0
    device: str = "auto"
    init: str = "auto"  # auto | minilm | a local masked-LM folder | a head checkpoint to continue from
    eval_batch_size: int = 2048
    max_text_length: int = 512
    block_special_tokens: bool = True  # keep [CLS]/[SEP]/... weights at zero (not in docs/method.md)
    train_splits: tuple[str, ...] = AUTHORS_TRAIN_SPLITS  # Karpathy split labels trained on
    deterministic: bool = False  # seeded and bit-reproducible on one machine (see `determinism`)
    # The inference-free query side (lsr_os.train_query): "joint" trains the query weights with the
    # head, "after" trains them once the head is done (documents fixed), "none" trains none.
    query_weights: str = "joint"
    query_reg: float = 1e-4  # FLOPs regulariser weight on the inference-free queries
    lr_query: float = 1e-2  # learning rate of the query weights
    query_epochs: int | None = None  # "after": passes over the training pairs [default: epochs]
    # "joint": the query weights' loss reaches an image term also where its logit is below zero, with
    # this slope (the values are unchanged: see lsr_os.train_query), so a word that died on every image
    # can come back when queries that say it need it. 0 turns it off.
    query_leak: float = 0.1

    def check(self) -> None:
        if self.epochs < 1 or self.batch_size < 2:
            raise ConfigError("epochs must be >= 1 and batch size >= 2 (in-batch negatives)")
        if (isinstance(self.train_splits, str) or not self.train_splits
                or not all(isinstance(s, str) and s for s in self.train_splits)):
            raise ConfigError(f"training splits must be a sequence of split names such as ('train',), "
                              f"got {self.train_splits!r}")
        held_out = sorted(set(self.train_splits) & {"val", "test"})
        if held_out:
            raise ConfigError(f"split {held_out[0]!r} is held out for checkpoint selection or the test; "
                              f"it cannot be a training split")
        if self.p is not None and not 0.0 <= self.p <= 1.0:
            raise ConfigError(f"fixed p must lie in [0, 1], got {self.p}")
        if not 0.0 < self.p_end_fraction <= 1.0:
            raise ConfigError(f"p_end_fraction must lie in (0, 1], got {self.p_end_fraction}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"warm-up ratio must lie in [0, 1), got {self.warmup_ratio}")
        if self.temperature <= 0:
            raise ConfigError("temperature must be > 0")
        if self.q_reg < 0 or self.d_reg < 0:
            raise ConfigError("regulariser weights must be >= 0")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ConfigError(f"precision {self.precision!r} is not one of auto, fp32, bf16, fp16")
        if self.query_weights not in ("joint", "after", "none"):
            raise ConfigError(f"query weights {self.query_weights!r} is not one of joint, after, none")
        if (self.query_reg < 0 or self.lr_query <= 0 or self.query_leak < 0
                or (self.query_epochs is not None and self.query_epochs < 1)):
            raise ConfigError("query weights need query_reg >= 0, lr_query > 0, query_leak >= 0 and "
                              "query_epochs >= 1")

    @property
    def algorithm(self) -> dict:
        """Whether these settings train the head by the paper's algorithm alone (docs/method.md), and
        one sentence saying so or naming what they add: `lsr-os train` prints it first, the head's
        config.json and the test report keep it under "algorithm".

        What changes the head's loss or outputs counts: "joint" query weights (their own loss, whose
        leak moves the image terms, and a third parameter group) and blocked special tokens. "after"
        fits the query weights once the head is done, its documents fixed, so the head stays the
        paper's. Settings (epochs, learning rates, regulariser weights, a fixed p as in the paper's
        ablations) do not count.
        """
        summary = "the paper's algorithm"
        if self.query_weights == "joint":
            leak = (f", its gradient leaking into the image terms below zero at slope {self.query_leak:g}"
                    if self.query_leak > 0 else "")
            summary += (f" plus query weights trained with the head (their own distillation loss{leak}, "
                        f"and a FLOPs regulariser on the queries)")
        if self.block_special_tokens:
            summary += ", with the special tokens blocked"
        if self.query_weights == "after":
            summary += "; then query weights fitted with the head fixed"
        paper = self.query_weights != "joint" and not self.block_special_tokens
        return {"paper": paper, "summary": summary}


# ---------------------------------------------------------------------------- schedules


def expansion_p(epoch: int, epochs: int, fixed: float | None = None, end_fraction: float = 0.95) -> float:
    """p for an epoch (0-based): 1 at epoch 0, falling linearly to 0 at `end_fraction` of the epochs."""
    if fixed is not None:
        return float(fixed)
    return max(0.0, 1.0 - epoch / (end_fraction * epochs))


def reg_weight(final: float, step: int, warmup_steps: int) -> float:
    """Regulariser weight before step `step` (0-based): final · (step / T)², capped at final."""
    if warmup_steps <= 0:
        return final
    return final * min(1.0, step / warmup_steps) ** 2


def lr_factor(step: int, warmup_steps: int, total_steps: int,
              decay: Literal["linear", "cosine"] = "linear") -> float:
    """The learning-rate factor of step `step`: linear warm-up to 1 over `warmup_steps`, then decay
    to 0 at `total_steps`, linear (the paper's schedule) or half a cosine (the demo encoder's)."""
    if decay not in ("linear", "cosine"):
        raise ValueError(f"decay must be linear or cosine, not {decay!r}")
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    done = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1 + math.cos(math.pi * done)) if decay == "cosine" else max(0.0, 1.0 - done)


# ---------------------------------------------------------------------------- loss


def _full_precision(t: Tensor):
    """Autocast off for what follows: its matrix products run in the dtype of their (fp32) inputs."""
    return torch.autocast(t.device.type, enabled=False)


def distillation_loss(scores: Tensor, dense_img: Tensor, dense_txt: Tensor, temperature: float) -> Tensor:
    """½ [CE(S, softmax(T/τ)) + CE(Sᵀ, softmax(Tᵀ/τ))], S the sparse (image x caption) and T the dense in-batch scores.

    The teacher is computed in fp32 even inside bf16/fp16 autocast: T/τ with τ = 0.001 turns the
    ~3-digit rounding of a bf16 product into logit errors of order 1 (on a clustered test batch the
    gradient moved 6.1% from fp32 under bf16, 0.45% under fp16, and 0 with the teacher and the
    scores in fp32). Pass `scores` in fp32 too (`in_batch_scores`, `own_token_scores`).
    """
    with torch.no_grad(), _full_precision(dense_img):
        teacher = dense_img.float() @ dense_txt.float().t() / temperature
        p_i2t = torch.softmax(teacher, dim=1)
        p_t2i = torch.softmax(teacher.t(), dim=1)
    scores = scores.float()
    return (F.cross_entropy(scores, p_i2t) + F.cross_entropy(scores.t(), p_t2i)) / 2


def in_batch_scores(sparse_img: Tensor, sparse_txt: Tensor) -> Tensor:
    """(images x captions) dot products in fp32, also inside autocast.

    The loss reads differences of scores of ~10-35; a bf16 output rounds those to steps of 1/16-1/4.
    The inputs stay what the head made (bf16 values are exact in fp32), only the product is fp32.
    """
    with _full_precision(sparse_img):
        return sparse_img.float() @ sparse_txt.float().t()


def own_token_scores(sparse_img: Tensor, token_ids: Tensor, token_weights: Tensor) -> Tensor:
    """(images x captions) dot products, in fp32, when each caption has weights only at its own token ids.

    `token_weights[j, l]` is caption j's weight at `token_ids[j, l]` (ids distinct per row, padding
    weighted 0), so S[i, j] = Σ_l sparse_img[i, ids[j, l]] · w[j, l]; memory images x captions x L.
    """
    gathered = sparse_img[:, token_ids.reshape(-1).long()].view(sparse_img.shape[0], *token_ids.shape)
    with _full_precision(sparse_img):
        return (gathered.float() * token_weights.float().unsqueeze(0)).sum(dim=2)


def l1(sparse: Tensor) -> Tensor:
    """Mean over the batch of Σ|s|; the head's weights are never negative, so Σ|s| = Σs (no abs pass)."""
    return sparse.float().sum(dim=1).mean()


# ---------------------------------------------------------------------------- data


@dataclass
class TextTokens:
    """Each caption's distinct token ids (padded) and their mask, kept on the device.

    Distinct, because the own-token mask counts a repeated token once; ids in `drop_ids` (the
    head's blocked tokens) are left out, as the head would zero them anyway.
    """

    ids: Tensor  # (N, L) int32
    mask: Tensor  # (N, L) uint8

    @classmethod
    def build(cls, tokenizer, texts: list[str], max_length: int, device, chunk: int = 65536,
              drop_ids: Sequence[int] = ()) -> "TextTokens":
        ids: list[list[int]] = []
        drop = set(drop_ids)
        for start in range(0, len(texts), chunk):
            enc = tokenizer(texts[start:start + chunk], truncation=True, max_length=max_length, padding=False)
            ids.extend([t for t in dict.fromkeys(row) if t not in drop] for row in enc["input_ids"])
        width = max([1, *map(len, ids)])
        arr = np.zeros((len(ids), width), dtype=np.int32)
        msk = np.zeros((len(ids), width), dtype=np.uint8)
        for r, row in enumerate(ids):
            arr[r, :len(row)] = row
            msk[r, :len(row)] = 1
        return cls(torch.from_numpy(arr).to(device), torch.from_numpy(msk).to(device))


@dataclass
class SplitTensors:
    """One split on the device: image vectors, caption vectors, caption -> image row."""

    split: Split
    img: Tensor
    txt: Tensor
    caption_image: Tensor  # (N_captions,) long, row into img
    tokens: TextTokens | None = None


def resolve_data_dir(data: str | Path) -> Path:
    """A local folder, or a Hugging Face dataset id fetched (when the hub is reachable) into the cache."""
    path = Path(data)
    if path.exists():
        if not path.is_dir():
            raise DataError(f"{path} is not a folder with {IMG_FILE}, {TEXT_FILE} and {META_FILE}")
        return path
    if str(data).count("/") == 1 and not str(data).startswith((".", "/")):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(str(data), repo_type="dataset",
                                          allow_patterns=[IMG_FILE, TEXT_FILE, META_FILE]))
        except Exception as exc:  # the hub client raises many types when offline
            raise DataError(f"{data} is not a local folder and could not be fetched from the Hugging Face hub: {exc}") from exc
    raise DataError(f"{path} does not exist")


class TrainingData:
    """A dataset, read and checked once: the dense vectors and the metadata of the three splits."""

    def __init__(self, meta: DatasetMeta, images: Embeddings, texts: Embeddings, folder: Path | None = None):
        self.folder = folder or Path(".")
        self.meta, self.images, self.texts = meta, images, texts
        if self.images.dim != self.texts.dim:
            raise DataError(f"{self.images.path} has {self.images.dim}-d vectors but {self.texts.path} has "
                            f"{self.texts.dim}-d (first ids {self.images.ids[0]!r}, {self.texts.ids[0]!r})")

    @classmethod
    def load(cls, folder: str | Path) -> "TrainingData":
        """Read a folder in the authors' layout (or fetch a Hugging Face dataset id)."""
        path = resolve_data_dir(folder)
        return cls(DatasetMeta.load(path / META_FILE), read_embeddings(path / IMG_FILE),
                   read_embeddings(path / TEXT_FILE), path)

    @property
    def dim(self) -> int:
        return self.images.dim

    def split(self, name: str | Sequence[str], device, tokenizer=None, max_length: int = 512,
              drop_token_ids: Sequence[int] = ()) -> SplitTensors:
        """A split's tensors on `device`; images without captions are counted and logged.

        `name` as a string follows the split rule (`DatasetMeta.split`: "train" includes "restval");
        a list selects exactly the labels it names (what training uses, see AUTHORS_TRAIN_SPLITS).
        """
        if not isinstance(name, str):
            labels = {img["split"] for img in self.meta.images}
            missing = [n for n in name if n not in labels]
            if missing:
                raise DataError(f"{self.meta.path or 'the metadata'}: no image has split {missing[0]!r} "
                                f"(its splits: {', '.join(sorted(labels))})")
        split = self.meta.split(name) if isinstance(name, str) else self.meta.labels(set(name), ",".join(name))
        if not split.caption_ids:
            raise DataError(f"{self.meta.path}: split {split.name!r} has images but no captions")
        with_captions = set(split.caption_image)
        lonely = [i for i in split.image_ids if i not in with_captions]
        if lonely:
            log.warning("split %s: %d images have no captions (first: %s); they are only negatives",
                        split.name, len(lonely), lonely[0])
        img = torch.from_numpy(self.images.take(split.image_ids)).to(device)
        txt = torch.from_numpy(self.texts.take(split.caption_ids)).to(device)
        row = {i: r for r, i in enumerate(split.image_ids)}
        cap_img = torch.tensor([row[i] for i in split.caption_image], dtype=torch.long, device=device)
        tokens = (TextTokens.build(tokenizer, split.captions, max_length, device, drop_ids=drop_token_ids)
                  if tokenizer is not None else None)
        return SplitTensors(split, img, txt, cap_img, tokens)


# ---------------------------------------------------------------------------- evaluation


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


@torch.no_grad()
def rank_and_score(encode_img: Callable[[Tensor], Tensor], encode_txt: Callable[[Tensor, Tensor], Tensor],
                   data: SplitTensors, chunk: int = 2048, sparse: bool = True) -> dict:
    """Text->image and image->text metrics with the top 10 only, chunk by chunk on the device.

    `encode_txt(vectors, rows)` gets the caption rows too, for the own-token mask. Returns
    {"t2i": {...}, "i2t": {...}} plus FLOPs and mean non-zeros when `sparse`.
    """
    n_img, n_txt = data.img.shape[0], data.txt.shape[0]
    docs = torch.cat([encode_img(data.img[s:s + chunk]) for s in range(0, n_img, chunk)])
    k_t2i = min(TOP_K, n_img)
    best_val = torch.full((n_img, TOP_K), -math.inf, device=docs.device)
    best_idx = torch.zeros((n_img, TOP_K), dtype=torch.long, device=docs.device)
    t2i_hits = []
    q_counts = torch.zeros(docs.shape[1], device=docs.device)
    q_nnz = torch.zeros((), device=docs.device)
    for s in range(0, n_txt, chunk):
        rows = torch.arange(s, min(s + chunk, n_txt), device=docs.device)
        q = encode_txt(data.txt[rows], rows)
        if sparse:
            used = q > 0
            q_counts += used.sum(dim=0)
            q_nnz += used.sum()
        scores = (q @ docs.t()).float()  # (chunk, n_img)
        top = scores.topk(k_t2i, dim=1).indices
        t2i_hits.append(top == data.caption_image[rows, None])
        k = min(TOP_K, len(rows))
        cv, ci = scores.t().topk(k, dim=1)
        merged_v = torch.cat([best_val, cv], dim=1)
        merged_i = torch.cat([best_idx, ci + s], dim=1)
        order = merged_v.topk(TOP_K, dim=1).indices
        best_val, best_idx = merged_v.gather(1, order), merged_i.gather(1, order)
    hits_t2i = torch.cat(t2i_hits)
    hits_i2t = (data.caption_image[best_idx] == torch.arange(n_img, device=docs.device)[:, None]) & (best_val > -math.inf)
    out: dict = {"t2i": topk_metrics(_pad_hits(hits_t2i).cpu()), "i2t": topk_metrics(_pad_hits(hits_i2t).cpu())}
    if sparse:
        used_d = docs > 0
        out["flops"] = flops_from_counts(q_counts.double().cpu().numpy(), n_txt,
                                         used_d.sum(dim=0).double().cpu().numpy(), n_img)
        out["nnz_query"] = float(q_nnz) / n_txt
        out["nnz_doc"] = float(used_d.sum()) / n_img
    return out


def _pad_hits(hits: Tensor) -> Tensor:
    if hits.shape[1] >= TOP_K:
        return hits
    return torch.cat([hits, torch.zeros(hits.shape[0], TOP_K - hits.shape[1], dtype=torch.bool, device=hits.device)], 1)


def keep_top_k(sparse: Tensor, k: int | None) -> Tensor:
    """Zero all but the k heaviest weights of each row (what a served, pruned vector keeps)."""
    if k is None or k >= sparse.shape[1]:
        return sparse
    top = sparse.topk(k, dim=1)
    return torch.zeros_like(sparse).scatter_(1, top.indices, top.values)


def evaluate_head(head: SparseHead, data: SplitTensors, expand_queries: bool = True,
                  dtype: torch.dtype | None = None, chunk: int = 2048, top_k: int | None = None) -> dict:
    """Sparse retrieval metrics of `head` on a split (captions masked when not `expand_queries`).

    `top_k` prunes every vector to its k heaviest terms first, as a served index would.
    """
    device = data.img.device
    was_training = head.training
    head.eval()

    def enc_img(x: Tensor) -> Tensor:
        with _autocast(device, dtype):
            return keep_top_k(head(x), top_k)

    def enc_txt(x: Tensor, rows: Tensor) -> Tensor:
        with _autocast(device, dtype):
            if expand_queries:
                return keep_top_k(head(x), top_k)
            if data.tokens is None:
                raise ConfigError("evaluation without query expansion needs the captions' tokens")
            return keep_top_k(head(x, data.tokens.ids[rows], data.tokens.mask[rows]), top_k)

    try:
        return rank_and_score(enc_img, enc_txt, data, chunk)
    finally:
        head.train(was_training)


def evaluate_static(head: SparseHead, weights: Tensor, data: SplitTensors, dtype: torch.dtype | None = None,
                    chunk: int = 2048) -> dict:
    """Text -> image metrics of the inference-free queries (the query weights at each caption's
    distinct tokens, lsr_os.static_query) against the head's fully expanded image vectors."""
    if data.tokens is None:
        raise ConfigError("evaluating inference-free queries needs the captions' tokens")
    device = data.img.device
    was_training = head.training
    head.eval()

    def enc_img(x: Tensor) -> Tensor:
        with _autocast(device, dtype):
            return head(x).float()

    def enc_txt(x: Tensor, rows: Tensor) -> Tensor:
        return train_query.static_query_rows(weights, data.tokens.ids[rows], data.tokens.mask[rows], head.vocab_size)

    try:
        out = rank_and_score(enc_img, enc_txt, data, chunk)
    finally:
        head.train(was_training)
    out.pop("i2t")  # inference-free queries are text queries: image -> text has nothing to do with them
    return out


def evaluate_dense(data: SplitTensors, chunk: int = 2048) -> dict:
    """The frozen dense model's metrics on a split (the teacher's ceiling)."""
    return rank_and_score(lambda x: x, lambda x, rows: x, data, chunk, sparse=False)


# ---------------------------------------------------------------------------- training


def pick_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype (None = fp32): `models.dense.resolve_dtype`'s choice, the one place that
    picks a compute dtype (auto: bf16 on GPUs that have it, else fp16; fp32 on CPU, where bf16
    matmuls measured 4x slower without native bf16). fp16 needs CUDA (its grad scaler)."""
    dtype = resolve_dtype(precision, device)
    if dtype == torch.float16 and device.type != "cuda":
        raise ConfigError("fp16 mixed precision needs a CUDA device (use bf16 or fp32 on CPU)")
    return None if dtype == torch.float32 else dtype


CUBLAS_DETERMINISTIC = ":4096:8"  # a cuBLAS workspace setting under which its products are deterministic


@contextlib.contextmanager
def determinism(enabled: bool, device: torch.device) -> Iterator[None]:
    """Deterministic kernels while inside (the previous setting is restored on exit).

    Data order and the Bernoulli draws come from seeded generators in every run; what still varies
    is the order of floating-point accumulation. On CPU it is the backward of the own-token gather
    (index_put with accumulate, split over threads; measured with 2 threads: two runs of a seed
    differ after a few unexpanded batches without this, and are bit-identical with it). On
    CUDA it is the same scatter plus cuBLAS, which reads CUBLAS_WORKSPACE_CONFIG (set here when
    unset) when the process first uses it: a Trainer's first product comes after this is entered.
    The bits still depend on the thread count, the hardware and the library versions: same
    machine, same settings, same result.
    """
    if not enabled:
        yield
        return
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC)
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.benchmark)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.benchmark = before[2]


@dataclass
class TrainResult:
    out: Path
    best_epoch: int
    best_val_r1: float
    test: dict
    epochs_run: int
    seconds: float
    history: list[dict] = field(default_factory=list)
    train_set: dict = field(default_factory=dict)  # splits, images, pairs


class Trainer:
    """Trains a SparseHead on a dataset folder; see the module docstring for the algorithm."""

    def __init__(self, config: TrainConfig, data: TrainingData, out: str | Path):
        config.check()
        self.cfg = config
        self.data = data
        self.out = Path(out)
        self.device = resolve_device(config.device)
        self.dtype = pick_dtype(config.precision, self.device)
        torch.manual_seed(config.seed)
        self.head = SparseHead.initialise(config.init, data.dim, config.seed)
        if self.head.dense_size != data.dim:
            raise ConfigError(f"head expects {self.head.dense_size}-d vectors, {data.folder} has {data.dim}-d")
        self.head.max_text_length = config.max_text_length
        self.head.algorithm = config.algorithm
        if config.block_special_tokens:
            self.head.block_special_tokens()
        else:
            self.head.blocked_token_ids = []
        self.head.to(self.device).train()
        tok, blocked = self.head.tokenizer, self.head.blocked_token_ids
        self.train_data = data.split(config.train_splits, self.device, tok, config.max_text_length, blocked)
        self.val_data = data.split("val", self.device, tok, config.max_text_length, blocked)
        self.n_pairs = self.train_data.txt.shape[0]
        self.n_train_images = self.train_data.img.shape[0]
        self.query = None  # the query weights trained with the head ("joint"), from IDF
        if config.query_weights == "joint":
            tokens, content = self.train_data.tokens, train_query.content_mask(self.head).to(self.device)
            self.query = train_query.QueryTable(train_query.idf_init(tokens.ids, tokens.mask, content),
                                                train_query.allowed_terms(content, tokens.ids, tokens.mask))
        log.info("training by %s", config.algorithm["summary"])
        log.info("training on split(s) %s: %d images, %d caption-image pairs", ",".join(config.train_splits),
                 self.n_train_images, self.n_pairs)
        self.steps_per_epoch = math.ceil(self.n_pairs / config.batch_size)
        self.total_steps = self.steps_per_epoch * config.epochs
        self.warmup_steps = int(self.total_steps * config.warmup_ratio)
        groups = [
            {"params": list(self.head.vocab_layer_norm.parameters()) + list(self.head.vocab_projector.parameters()),
             "lr": config.lr_head, "name": "head"},
            {"params": list(self.head.proj.parameters()), "lr": config.lr_proj, "name": "proj"},
        ]
        if self.query is not None:
            groups.append({"params": [self.query.weight], "lr": config.lr_query, "name": "query"})
        self.optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                                           foreach=True)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, self.warmup_steps, self.total_steps))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.rng = np.random.default_rng(config.seed)
        self.perm_gen = torch.Generator().manual_seed(config.seed)
        self.step = 0
        self.start_epoch = 0
        self.best_r1 = -1.0
        self.best_epoch = -1

    # -- one epoch -------------------------------------------------------------------------

    def train_epoch(self, epoch: int, max_steps: int | None = None) -> dict:
        """One pass over the training pairs (or its first `max_steps` batches, for benchmarks)."""
        with determinism(self.cfg.deterministic, self.device):
            return self._train_epoch(epoch, max_steps)

    def _train_epoch(self, epoch: int, max_steps: int | None) -> dict:
        cfg, d, head = self.cfg, self.train_data, self.head
        n_steps = self.steps_per_epoch if max_steps is None else min(max_steps, self.steps_per_epoch)
        p = expansion_p(epoch, cfg.epochs, cfg.p, cfg.p_end_fraction)
        masked = self.rng.random(self.steps_per_epoch) < p  # one Bernoulli draw per batch, drawn up front
        perm = torch.randperm(self.n_pairs, generator=self.perm_gen).to(self.device)
        sums = torch.zeros(7, device=self.device)  # loss, distill, reg, nnz_q, nnz_d, batches, query distill
        t0 = time.perf_counter()
        for b in range(n_steps):
            idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            txt_dense = d.txt[idx]
            img_dense = d.img[d.caption_image[idx]]
            wq = reg_weight(cfg.q_reg, self.step, self.warmup_steps)
            wd = reg_weight(cfg.d_reg, self.step, self.warmup_steps)
            ids, ids_mask = d.tokens.ids[idx], d.tokens.mask[idx]
            with _autocast(self.device, self.dtype):
                z_img = head.logits(img_dense)
                s_img = torch.log1p(torch.relu(z_img))
                if masked[b]:  # captions keep their own tokens: only their weights are computed
                    s_txt = head.own_token_weights(txt_dense, ids, ids_mask)
                    scores = own_token_scores(s_img, ids, s_txt)
                else:  # two calls: slicing one call's output costs two (2B x V) gradient buffers
                    s_txt = head(txt_dense)
                    scores = in_batch_scores(s_img, s_txt)
                distill = distillation_loss(scores, img_dense, txt_dense, cfg.temperature)
                reg = (wq * l1(s_txt) + wd * l1(s_img)) / 2
                loss = distill + reg
                if self.query is not None:  # the same image vectors against the inference-free queries
                    q_w = self.query(ids, ids_mask)
                    q_distill = distillation_loss(train_query.doc_scores_at(z_img, ids, q_w, cfg.query_leak),
                                                  img_dense, txt_dense, cfg.temperature)
                    q_reg = reg_weight(cfg.query_reg, self.step, self.warmup_steps) * train_query.flops_regulariser(
                        ids, q_w, head.vocab_size)
                    loss = loss + q_distill + q_reg
                else:
                    q_distill = torch.zeros((), device=self.device)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            if self.query is not None:
                self.query.project()
            self.step += 1
            with torch.no_grad():
                sums += torch.stack([loss.detach(), distill.detach(), reg.detach(),
                                     (s_txt > 0).sum(dim=1).float().mean(), (s_img > 0).sum(dim=1).float().mean(),
                                     torch.ones((), device=self.device), q_distill.detach()])
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        loss_m, distill_m, reg_m, nq, nd, n, q_distill_m = sums.tolist()
        return {"epoch": epoch, "p": p, "masked_batches": int(masked.sum()), "batches": int(n),
                "loss": loss_m / n, "loss_distill": distill_m / n, "loss_reg": reg_m / n,
                "q_reg_weight": reg_weight(cfg.q_reg, self.step, self.warmup_steps),
                "d_reg_weight": reg_weight(cfg.d_reg, self.step, self.warmup_steps),
                "lr_head": self.optimizer.param_groups[0]["lr"], "lr_proj": self.optimizer.param_groups[1]["lr"],
                "temperature": cfg.temperature, "train_nnz_query": nq / n, "train_nnz_doc": nd / n,
                **({"loss_query_distill": q_distill_m / n} if self.query is not None else {}),
                "train_seconds": seconds,
                "pairs_per_s": min(self.n_pairs, n_steps * cfg.batch_size) / seconds if seconds else None}

    # -- the run -----------------------------------------------------------------------------

    def _save_state(self, epoch: int) -> None:
        state = {"epoch": epoch, "step": self.step, "best_r1": self.best_r1, "best_epoch": self.best_epoch,
                 "head": self.head.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                 "rng": self.rng.bit_generator.state, "perm_gen": self.perm_gen.get_state(),
                 "config": asdict(self.cfg), "query": self.query.state_dict() if self.query is not None else None}
        tmp = self.out / (STATE_FILE + ".tmp")
        torch.save(state, tmp)
        tmp.replace(self.out / STATE_FILE)

    def _resume(self) -> bool:
        path = self.out / STATE_FILE
        if not path.exists():
            return False
        state = torch.load(path, map_location=self.device, weights_only=False)
        if state["config"] != asdict(self.cfg):
            raise ConfigError(f"{path} was written with other settings; use another --out or drop --resume")
        self.head.load_state_dict(state["head"])
        if self.query is not None:
            self.query.load_state_dict(state["query"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.rng.bit_generator.state = state["rng"]
        self.perm_gen.set_state(state["perm_gen"])
        self.step, self.best_r1, self.best_epoch = state["step"], state["best_r1"], state["best_epoch"]
        self.start_epoch = state["epoch"] + 1
        log.info("resuming %s after epoch %d (best val R@1 %.4f at epoch %d)", self.out, state["epoch"],
                 self.best_r1, self.best_epoch)
        return True

    @property
    def train_set(self) -> dict:
        """What was trained on: split labels, images, caption-image pairs (metrics.jsonl and the report)."""
        return {"train_splits": list(self.cfg.train_splits), "train_images": self.n_train_images,
                "train_pairs": self.n_pairs}

    def run(self, resume: bool = False, progress: bool = True) -> TrainResult:
        with determinism(self.cfg.deterministic, self.device):
            return self._run(resume, progress)

    def _run(self, resume: bool, progress: bool) -> TrainResult:
        from tqdm.auto import tqdm

        self.out.mkdir(parents=True, exist_ok=True)
        resumed = resume and self._resume()
        log_path = self.out / METRICS_FILE
        history: list[dict] = []
        t_start = time.perf_counter()
        with log_path.open("a" if resumed else "w", encoding="utf-8") as log_file:
            bar = tqdm(range(self.start_epoch, self.cfg.epochs), desc="epochs", unit="epoch", disable=not progress,
                       initial=self.start_epoch, total=self.cfg.epochs)
            for epoch in bar:
                row = self._train_epoch(epoch, None)  # run() already holds the determinism settings
                val = row["val"] = self.validate()
                if val["t2i"]["R@1"] > self.best_r1:
                    self.best_r1, self.best_epoch = val["t2i"]["R@1"], epoch
                    if self.query is not None:
                        self.head.query_weights = self.query.table()
                        self.head.query_weights_info = query_weights_info(self.cfg, "joint")
                    self.head.save_pretrained(self.out / BEST_DIR)
                row["best_epoch"] = self.best_epoch
                row.update(self.train_set)
                log_file.write(json.dumps(row) + "\n")
                log_file.flush()
                history.append(row)
                self._save_state(epoch)
                bar.set_postfix(loss=f"{row['loss']:.3f}", p=f"{row['p']:.2f}", val_r1=f"{val['t2i']['R@1']:.3f}",
                                pairs_s=f"{row['pairs_per_s']:.0f}")
        if self.cfg.query_weights == "after":
            self._fit_query_weights_after(progress)
        test = self.test_report()
        (self.out / REPORT_FILE).write_text(json.dumps(test, indent=2), encoding="utf-8")
        return TrainResult(self.out, self.best_epoch, self.best_r1, test, len(history),
                           time.perf_counter() - t_start, history, self.train_set)

    def validate(self) -> dict:
        """Validation figures of the current head (queries fully expanded, as the test does) and of
        the inference-free queries when the query weights train with it."""
        val = evaluate_head(self.head, self.val_data, True, self.dtype, self.cfg.eval_batch_size)
        if self.query is not None:
            val["inference_free"] = evaluate_static(self.head, self.query.table().to(self.device), self.val_data,
                                                    self.dtype, self.cfg.eval_batch_size)
        return val

    def _fit_query_weights_after(self, progress: bool) -> None:
        """The "after" way: the best head's documents fixed, the query weights trained alone."""
        best = load_head(self.out / BEST_DIR).to(self.device)
        weights, history = fit_query_weights(best, self.train_data, self.val_data, self.cfg, self.dtype, progress)
        best.query_weights, best.query_weights_info = weights, query_weights_info(self.cfg, "after")
        best.save_pretrained(self.out / BEST_DIR)
        with (self.out / METRICS_FILE).open("a", encoding="utf-8") as log_file:
            for row in history:
                log_file.write(json.dumps({"query_weights_after": row}) + "\n")

    def test_report(self) -> dict:
        """The best checkpoint on the test split: full expansion (p = 0), no query expansion, dense,
        and the inference-free queries: the trained query weights and the two training-free baselines."""
        best = load_head(self.out / BEST_DIR).to(self.device)
        test = self.data.split("test", self.device, best.tokenizer, best.max_text_length, best.blocked_token_ids)
        ev = self.cfg.eval_batch_size
        tokens = self.train_data.tokens
        content = train_query.content_mask(best).to(self.device)
        baselines = {
            "idf": train_query.idf_weights(tokens.ids, tokens.mask, content),
            "mean_own_token": train_query.mean_own_token_weights(best, self.train_data.txt, tokens.ids, tokens.mask,
                                                                 content)}
        report = {"algorithm": self.cfg.algorithm, "best_epoch": self.best_epoch,
                  "best_val_t2i_R@1": self.best_r1, **self.train_set,
                  "deterministic": self.cfg.deterministic, "cpu_threads": torch.get_num_threads(),
                  "n_images": test.img.shape[0], "n_captions": test.txt.shape[0],
                  "sparse": evaluate_head(best, test, True, self.dtype, ev),
                  "sparse_no_query_expansion": evaluate_head(best, test, False, self.dtype, ev),
                  "dense": evaluate_dense(test, ev),
                  "inference_free_baselines": {name: evaluate_static(best, w, test, self.dtype, ev)
                                               for name, w in baselines.items()}}
        if best.query_weights is not None:
            report["inference_free"] = evaluate_static(best, best.query_weights.to(self.device), test, self.dtype, ev)
        return report


def train(data: str | Path, out: str | Path, config: TrainConfig | None = None, resume: bool = False,
          progress: bool = True) -> TrainResult:
    """Train a head on the dataset folder `data`, writing checkpoints, log and report into `out`."""
    return Trainer(config or TrainConfig(), TrainingData.load(data), out).run(resume=resume, progress=progress)


QUERY_WEIGHT_METHODS = ("distillation", "idf", "mean-own-token")


def query_weights_info(cfg: TrainConfig, way: str) -> dict:
    """How query weights were made, as the head's config.json records it: trained by distillation
    with the head ("joint") or with its documents fixed ("after"), with which settings."""
    return {"method": f"distillation-{way}", "query_reg": cfg.query_reg, "lr_query": cfg.lr_query,
            "temperature": cfg.temperature, "train_splits": list(cfg.train_splits),
            **({"leak": cfg.query_leak} if way == "joint" else {"epochs": cfg.query_epochs or cfg.epochs})}


def fit_query_weights(head: SparseHead, train_data: SplitTensors, val_data: SplitTensors, cfg: TrainConfig,
                      dtype: torch.dtype | None, progress: bool) -> tuple[Tensor, list[dict]]:
    """The "after" way (`train_query.fit_after`, from IDF), the best epoch chosen on validation R@1."""
    tokens, device = train_data.tokens, train_data.img.device
    init = train_query.idf_init(tokens.ids, tokens.mask, train_query.content_mask(head).to(device))
    return train_query.fit_after(
        head, train_data, val_data, cfg.query_epochs or cfg.epochs, cfg.batch_size, cfg.lr_query, cfg.query_reg,
        cfg.temperature, cfg.seed, init,
        lambda w: evaluate_static(head, w.to(device), val_data, dtype, cfg.eval_batch_size)["t2i"]["R@1"],
        cfg.warmup_ratio, progress)


def add_query_weights(head_path: str | Path, data: str | Path, method: str = "distillation",
                      config: TrainConfig | None = None, progress: bool = True) -> dict:
    """Give an existing head query weights (the inference-free query side) without retraining it.

    "distillation" trains them against the dense teacher with the head's documents fixed (the
    "after" way of `TrainConfig.query_weights`, `config` giving its settings); "idf" and
    "mean-own-token" are the training-free baselines. Writes them into the head folder and returns
    the test split's figures of the inference-free queries next to the head's own query modes.
    """
    if method not in QUERY_WEIGHT_METHODS:
        raise ConfigError(f"method {method!r} is not one of {', '.join(QUERY_WEIGHT_METHODS)}")
    cfg = config or TrainConfig()
    cfg.check()
    device = resolve_device(cfg.device)
    dtype = pick_dtype(cfg.precision, device)
    head = load_head(head_path).to(device)
    static_query.check_writable(head_path)  # before any training: the weights are written into it
    training = TrainingData.load(data)
    if head.dense_size != training.dim:
        raise ConfigError(f"the head {head_path} takes {head.dense_size}-d vectors, {training.folder} has {training.dim}-d")
    tok, blocked, max_len = head.tokenizer, head.blocked_token_ids, head.max_text_length
    train_data = training.split(cfg.train_splits, device, tok, max_len, blocked)
    tokens = train_data.tokens
    content = train_query.content_mask(head).to(device)
    if method == "idf":
        weights = train_query.idf_weights(tokens.ids, tokens.mask, content)
    elif method == "mean-own-token":
        weights = train_query.mean_own_token_weights(head, train_data.txt, tokens.ids, tokens.mask, content)
    else:
        val_data = training.split("val", device, tok, max_len, blocked)
        weights, _ = fit_query_weights(head, train_data, val_data, cfg, dtype, progress)
    info = (query_weights_info(cfg, "after") if method == "distillation"
            else {"method": method, "train_splits": list(cfg.train_splits)})
    entry = static_query.add_to_head(head_path, weights.cpu().tolist(), info)
    test = training.split("test", device, tok, max_len, blocked)
    ev = cfg.eval_batch_size
    return {"query_weights": entry,
            "test": {"inference_free": evaluate_static(head, weights.to(device), test, dtype, ev),
                     "sparse": evaluate_head(head, test, True, dtype, ev),
                     "sparse_no_query_expansion": evaluate_head(head, test, False, dtype, ev)}}
