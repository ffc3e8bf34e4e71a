"""Training the query weights of the inference-free query side (see lsr_os.static_query).

The inference-free query of a caption is a weight table w >= 0 read at the caption's distinct
content word pieces: q_j[t] = w_t for each such t, 0 elsewhere. The table is trained the way the
head is (docs/method.md's loss): the cross-entropy of the in-batch sparse scores, the head's fully
expanded image vectors against these queries, against the frozen dense teacher's in-batch
distribution at temperature τ, both directions (`train.distillation_loss`); plus SPLADE's FLOPs
regulariser on the queries, Σ_t (mean_j q_j[t])², which costs most where many queries share a
term (filler words) and so drives those weights to zero, where L1 would shrink all alike.

Two ways to train it (`TrainConfig.query_weights`):
- "joint": with the head, every batch; the table's loss also reaches the image vectors, so the
  documents learn to carry the words people type (a query that keeps only its own words can only
  find images that hold them).
- "after": the head first, then the table alone with the documents frozen (`fit_after`); also
  what `lsr-os add-query-weights` does for an existing head.

Words that die on the documents: an image term's weight is log1p(relu(z)), so a term whose logit z
is below zero on every image gets no gradient and cannot come back; in the demo world "orange",
"purple" and "dotted" died that way while the own-token queries that say them went on asking for
them. In "joint", the query weights' loss also reaches the image logits below zero with a small
slope (`TrainConfig.query_leak`, 0.1; the values are unchanged, only the gradient leaks), so a word
the typed queries need comes back on the images that have it. Measured on the demo world (seed 0):
colours 0.87 -> 0.99 and sizes 0.50 -> 0.99 (document-side R-precision, lsr_os.demo.words),
inference-free R@1 90.4 -> 92.9.

The weights are kept >= 0 by projection after each step (clamped at 0, not passed through a ReLU),
so a weight that reached 0 comes back when its gradient says so. Stop words, punctuation and
special tokens stay 0 (`static_query.content_term_mask`), and terms no training caption contains
stay 0: the table knows nothing about them.

Two training-free baselines are measured next to it: IDF over the training captions, and each
term's mean own-token weight from the head (the head's no-expansion caption weights, averaged).
"""

from __future__ import annotations

import logging
import math
from typing import Callable

import torch
from torch import Tensor, nn

from lsr_os import static_query

log = logging.getLogger(__name__)


def content_mask(head) -> Tensor:
    """(V,) bool: where a query weight may be non-zero for this head's vocabulary."""
    tok = head.tokenizer
    return torch.tensor(static_query.content_term_mask(head.terms, tok.all_special_tokens), dtype=torch.bool)


def caption_counts(ids: Tensor, mask: Tensor, vocab_size: int) -> Tensor:
    """(V,) number of captions that contain each term (ids are distinct per caption), on the CPU
    (CUDA's bincount refuses deterministic mode)."""
    return torch.bincount(ids[mask.bool()].long().cpu(), minlength=vocab_size).to(torch.float32)


def idf_weights(ids: Tensor, mask: Tensor, content: Tensor) -> Tensor:
    """IDF over the captions, log(1 + (N - df + 0.5) / (df + 0.5)) (BM25's, never negative), at
    content terms the captions contain; 0 elsewhere."""
    n = float(ids.shape[0])
    df = caption_counts(ids, mask, content.shape[0]).to(content.device)
    idf = torch.log1p((n - df + 0.5) / (df + 0.5))
    return torch.where((df > 0) & content, idf, torch.zeros_like(idf))


def idf_init(ids: Tensor, mask: Tensor, content: Tensor) -> Tensor:
    """Where training starts: `idf_weights`, scaled to a mean of 1 over the terms it weights."""
    idf = idf_weights(ids, mask, content)
    return idf / idf[idf > 0].mean().clamp(min=1e-6)


@torch.no_grad()
def mean_own_token_weights(head, txt: Tensor, ids: Tensor, mask: Tensor, content: Tensor,
                           chunk: int = 4096) -> Tensor:
    """Each content term's mean weight over the captions that contain it, in the head's own-token
    (no-expansion) encoding of those captions; 0 at terms no caption contains."""
    vocab = content.shape[0]
    total = torch.zeros(vocab, device=txt.device)
    for s in range(0, txt.shape[0], chunk):
        w = head.own_token_weights(txt[s:s + chunk], ids[s:s + chunk], mask[s:s + chunk]).float()
        total.index_add_(0, ids[s:s + chunk].reshape(-1).long(), w.reshape(-1))
    df = caption_counts(ids, mask, vocab).to(txt.device)
    mean = total / df.clamp(min=1)
    return torch.where(content.to(txt.device), mean, torch.zeros_like(mean))


class QueryTable(nn.Module):
    """The trainable table: one weight per vocabulary term, >= 0, zero outside `allowed`."""

    def __init__(self, init: Tensor, allowed: Tensor):
        super().__init__()
        self.register_buffer("allowed", allowed.to(torch.bool))
        self.weight = nn.Parameter((init.float() * self.allowed).clamp(min=0))

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        """(B x L) weights of each caption's token ids (0 at padding)."""
        return self.weight[ids.long()] * mask.to(self.weight.dtype)

    @torch.no_grad()
    def project(self) -> None:
        """Back into the feasible set after an optimiser step: >= 0, zero where not allowed."""
        self.weight.clamp_(min=0).mul_(self.allowed)

    def table(self) -> Tensor:
        return self.weight.detach().float().cpu().clone()


def allowed_terms(content: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
    """Content terms that at least one training caption contains: the ones training can set."""
    return content & (caption_counts(ids, mask, content.shape[0]).to(content.device) > 0)


def flops_regulariser(ids: Tensor, weights: Tensor, vocab_size: int) -> Tensor:
    """SPLADE's FLOPs on the queries of a batch: Σ_t (mean over the batch of q[t])²."""
    mean = torch.zeros(vocab_size, device=weights.device, dtype=torch.float32)
    mean.index_add_(0, ids.reshape(-1).long(), weights.reshape(-1).float())
    return ((mean / ids.shape[0]) ** 2).sum()


def doc_scores_at(z_img: Tensor, ids: Tensor, weights: Tensor, leak: float = 0.0) -> Tensor:
    """(images x captions) scores of queries weighted at their own token ids (`weights[j, l]` at
    `ids[j, l]`) against image weights log1p(relu(z)), in fp32, from the image logits gathered at
    those ids only (never the images' 30,522-wide vectors a second time). With `leak`, the gradient
    below zero keeps that slope; the values are unchanged (see the module docstring)."""
    z = z_img[:, ids.reshape(-1).long()].view(z_img.shape[0], *ids.shape).float()
    s = torch.log1p(torch.relu(z))
    if leak > 0:
        below = z.clamp(max=0)
        s = s + leak * (below - below.detach())
    return (s * weights.float().unsqueeze(0)).sum(dim=2)


def static_query_rows(weights: Tensor, ids: Tensor, mask: Tensor, vocab_size: int) -> Tensor:
    """(n x V) inference-free query vectors of captions (for exact scoring)."""
    rows = torch.zeros(ids.shape[0], vocab_size, device=ids.device, dtype=torch.float32)
    return rows.scatter_(1, ids.long(), weights.to(ids.device)[ids.long()] * mask.to(torch.float32))


def fit_after(head, train_data, val_data, epochs: int, batch_size: int, lr: float, reg: float, temperature: float,
              seed: int, init: Tensor, evaluate: Callable[[Tensor], float], warmup_ratio: float = 0.2,
              progress: bool = True) -> tuple[Tensor, list[dict]]:
    """Train the table alone, the head's image vectors fixed; returns the table of the epoch with the
    best validation R@1 (`evaluate(table)`) and one row of figures per epoch."""
    from tqdm.auto import tqdm

    from lsr_os.train import distillation_loss, lr_factor, reg_weight

    device = train_data.img.device
    tokens = train_data.tokens
    table = QueryTable(init.to(device), allowed_terms(content_mask(head).to(device), tokens.ids, tokens.mask))
    optimizer = torch.optim.Adam(table.parameters(), lr=lr)
    n = train_data.txt.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    total, warmup = steps_per_epoch * epochs, int(steps_per_epoch * epochs * warmup_ratio)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, warmup, total))
    gen = torch.Generator().manual_seed(seed)
    head.eval()
    best, best_r1, history, step = table.table(), -1.0, [], 0
    for epoch in tqdm(range(epochs), desc="query weights (documents fixed)", unit="epoch", disable=not progress):
        perm = torch.randperm(n, generator=gen).to(device)
        sums = torch.zeros(2, device=device)
        for b in range(steps_per_epoch):
            idx = perm[b * batch_size:(b + 1) * batch_size]
            img_dense = train_data.img[train_data.caption_image[idx]]
            with torch.no_grad():
                z_img = head.logits(img_dense)
            ids, mask = tokens.ids[idx], tokens.mask[idx]
            wq = table(ids, mask)
            distill = distillation_loss(doc_scores_at(z_img, ids, wq), img_dense, train_data.txt[idx], temperature)
            loss = distill + reg_weight(reg, step, warmup) * flops_regulariser(ids, wq, head.vocab_size)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            table.project()
            step += 1
            sums += torch.stack([loss.detach(), distill.detach()])
        r1 = evaluate(table.table())
        loss_m, distill_m = (sums / steps_per_epoch).tolist()
        history.append({"epoch": epoch, "loss": loss_m, "loss_distill": distill_m, "val_t2i_R@1": r1})
        if r1 > best_r1:
            best, best_r1 = table.table(), r1
    return best, history
