"""A small dense dual encoder, trained by the project on the built-in world (lsr_os.demo.world).

It stands in for BLIP where no model hub is reachable: a small CNN that sees the world's images
at 32 px and a bag-of-word-pieces text encoder over the BERT-uncased vocabulary, trained contrastively on
CPU in a few minutes. It registers as the dense kind "demo", so everything downstream
(encoding, the sparse head, serving) runs through exactly the code that BLIP uses.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from lsr_os.errors import ModelError
from lsr_os.models.dense import DenseEncoder, ImagePreprocessor, resolve_device, resolve_dtype
from lsr_os.vocab import VOCAB_SIZE, load_tokenizer

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class DemoConfig:
    # 32 px keeps every shape recognisable (the world draws objects large) at a quarter of the
    # compute of 64 px; four conv layers with pooling reach a 4x4 grid.
    image_size: int = 32
    channels: tuple[int, ...] = (16, 32, 64, 128)
    text_dim: int = 256
    dim: int = 256
    max_tokens: int = 32


class DemoDualEncoder(nn.Module):
    """CNN image tower and bag-of-word-pieces text tower mapping into one `dim`-d space."""

    def __init__(self, config: DemoConfig):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        c_in = 3
        for i, c in enumerate(config.channels):
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            if i < len(config.channels) - 1:
                layers.append(nn.MaxPool2d(2))
            c_in = c
        self.image_tower = nn.Sequential(*layers)
        # Global max pooling sees a shape wherever it is (a flattened grid would have to learn each
        # shape once per cell); a 2x2 grid of averages keeps where things are ("on the left").
        self.image_proj = nn.Linear(c_in * 5, config.dim)
        # Sparse gradients: a step touches a few hundred of the 30,522 rows, so updating only those
        # (SparseAdam) keeps the optimiser step cheap.
        self.token_embedding = nn.EmbeddingBag(VOCAB_SIZE, config.text_dim, mode="mean", padding_idx=0, sparse=True)
        self.text_tower = nn.Sequential(nn.Linear(config.text_dim, config.dim), nn.ReLU(inplace=True),
                                        nn.Linear(config.dim, config.dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        maps = self.image_tower(pixels)
        pooled = torch.cat([maps.amax(dim=(2, 3)), nn.functional.adaptive_avg_pool2d(maps, 2).flatten(1)], dim=1)
        return self.image_proj(pooled)

    def text_features(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_tower(self.token_embedding(input_ids))


class DemoEncoder(DenseEncoder):
    """The demo dual encoder behind the DenseEncoder interface."""

    kind = "demo"

    def __init__(self, model: DemoDualEncoder, device: torch.device, dtype: torch.dtype, name: str):
        self.model = model.to(device).eval()
        self.device, self.dtype, self.name = device, dtype, name
        self.dim = model.config.dim
        self.tokenizer = load_tokenizer()
        size = model.config.image_size
        self._pre = ImagePreprocessor(height=size, width=size, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))

    def image_preprocessor(self) -> ImagePreprocessor:
        return self._pre

    def _image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.image_features(pixel_values)

    def _text_features(self, texts: list[str]) -> torch.Tensor:
        return self.model.text_features(tokenize(self.tokenizer, texts, self.model.config.max_tokens).to(self.device))

    @classmethod
    def load(cls, source: str | Path, device: str | None = None, dtype: str | None = None) -> "DemoEncoder":
        folder = Path(source)
        try:
            raw = json.loads((folder / CONFIG_FILE).read_text())
            config = DemoConfig(**{**raw, "channels": tuple(raw["channels"])})
            model = DemoDualEncoder(config)
            model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
        except (OSError, KeyError, TypeError, RuntimeError, json.JSONDecodeError) as exc:
            raise ModelError(f"cannot load the demo encoder from {folder}: {exc}") from exc
        dev = resolve_device(device)
        return cls(model, dev, resolve_dtype(dtype, dev), name=f"demo:{folder.name}")

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_FILE).write_text(json.dumps(asdict(self.model.config), indent=2))
        save_file({k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}, str(folder / WEIGHTS_FILE))
        self.write_marker(folder)


def tokenize(tokenizer, texts: list[str], max_tokens: int) -> torch.Tensor:
    """Word-piece ids without [CLS]/[SEP], padded with 0 (the bag's padding index)."""
    enc = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max_tokens,
                    padding="max_length", return_tensors="pt")
    return enc["input_ids"] * enc["attention_mask"]


def train_demo_encoder(meta_path: str | Path, image_root: str | Path, out: str | Path, epochs: int = 40,
                       batch_size: int = 64, lr: float = 3e-3, seed: int = 0,
                       config: DemoConfig | None = None, progress: bool = True) -> DemoEncoder:
    """Train the dual encoder contrastively on the training split of a built world and save it.

    Each step takes distinct images with one random caption each, so the only positives in a
    batch are true pairs; the loss is the symmetric InfoNCE of CLIP with a learnt temperature.
    Shapes need about a thousand steps (small batches give more steps for the same compute).
    When the world's ground truth (scenes.jsonl) is there, linear probes on the image embedding
    add an attribute-prediction loss (see `_attribute_labels`). Each batch is shifted by up to
    2 px (padding with the border), which keeps the CNN from memorising a few thousand images.
    """
    from PIL import Image

    from lsr_os.dense_files import DatasetMeta
    from lsr_os.train import lr_factor

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    meta = DatasetMeta.load(meta_path)
    train = meta.split("train")
    config = config or DemoConfig()
    model = DemoDualEncoder(config)
    encoder = DemoEncoder(model, torch.device("cpu"), torch.float32, name=f"demo:{Path(out).name}")
    pre = encoder.image_preprocessor()
    by_image: dict[str, list[int]] = {}
    for k, image_id in enumerate(train.caption_image):
        by_image.setdefault(image_id, []).append(k)
    files = {str(img["imgid"]): Path(image_root) / img.get("filepath", "") / img["filename"] for img in meta.images}
    pixels = torch.stack([pre(Image.open(files[i]).convert("RGB")) for i in train.image_ids])
    tokens = tokenize(encoder.tokenizer, train.captions, config.max_tokens)
    caption_rows = [by_image[i] for i in train.image_ids]
    labels = _attribute_labels(Path(image_root), train.image_ids)
    # Linear probes on the image embedding for the auxiliary loss; trained along, never saved.
    probes = nn.ModuleDict({a: nn.Linear(config.dim, int(y.max()) + 1) for a, y in (labels or {}).items()})

    dense_params = [p for n, p in model.named_parameters() if not n.startswith("token_embedding")]
    dense_params += list(probes.parameters())
    opts = [torch.optim.AdamW(dense_params, lr=lr, weight_decay=1e-4),
            torch.optim.SparseAdam(list(model.token_embedding.parameters()), lr=lr)]
    steps_per_epoch = max(1, len(train.image_ids) // batch_size)
    total = epochs * steps_per_epoch
    warmup = max(1, int(0.1 * total))
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda step: lr_factor(step, warmup, total, decay="cosine"))
              for o in opts]
    model.train()
    bar = tqdm(total=total, desc="train demo encoder", unit="step", disable=not progress)
    for epoch in range(epochs):
        order = rng.permutation(len(train.image_ids))
        for s in range(steps_per_epoch):
            idx = order[s * batch_size:(s + 1) * batch_size]
            caps = [caption_rows[i][rng.integers(len(caption_rows[i]))] for i in idx]
            batch = _random_shift(pre.normalize(pixels[idx]), 2, rng)
            feats = model.image_features(batch)
            img = nn.functional.normalize(feats, dim=-1)
            txt = nn.functional.normalize(model.text_features(tokens[caps]), dim=-1)
            logits = model.logit_scale.exp().clamp(max=100) * img @ txt.T
            target = torch.arange(len(idx))
            loss = (nn.functional.cross_entropy(logits, target) + nn.functional.cross_entropy(logits.T, target)) / 2
            if labels is not None:
                rows = torch.from_numpy(idx)
                loss = loss + sum(nn.functional.cross_entropy(probes[a](feats), y[rows]) for a, y in labels.items())
            for o in opts:
                o.zero_grad(set_to_none=True)
            loss.backward()
            for o, sc in zip(opts, scheds):
                o.step()
                sc.step()
            bar.update()
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    encoder.save(out)
    log.info("demo encoder saved to %s", out)
    return encoder


ATTRIBUTES = ("shape", "colour", "size", "texture", "position", "background", "count")


def _attribute_labels(world_dir: Path, image_ids: list[str]) -> dict[str, torch.Tensor] | None:
    """Each training image's attribute values as class indices, when the world's ground truth is there.

    The contrastive loss alone teaches colour and background (mean pixel colours) within the
    demo's few hundred steps, but hardly shape: every caption names it, yet colour, background
    and position already tell almost every in-batch pair apart. Predicting the attributes from
    the image embedding, as an auxiliary loss, makes the CNN learn shapes in the same budget.
    """
    from lsr_os.demo import world

    if not (world_dir / "scenes.jsonl").exists():
        return None
    scenes = world.load_scenes(world_dir)
    if any(i not in scenes for i in image_ids):
        return None
    labels = {}
    for attr in ATTRIBUTES:
        values = sorted({str(getattr(s, attr)) for s in scenes.values()})
        labels[attr] = torch.tensor([values.index(str(getattr(scenes[i], attr))) for i in image_ids])
    return labels


def _random_shift(batch: torch.Tensor, max_shift: int, rng: np.random.Generator) -> torch.Tensor:
    """Shift the whole batch by one random offset, padding with the replicated border."""
    dx, dy = (int(v) for v in rng.integers(-max_shift, max_shift + 1, size=2))
    if dx == 0 and dy == 0:
        return batch
    padded = nn.functional.pad(batch, (max_shift,) * 4, mode="replicate")
    h, w = batch.shape[-2:]
    return padded[..., max_shift + dy:max_shift + dy + h, max_shift + dx:max_shift + dx + w]
