"""A small dense dual encoder, trained by the project on the built-in world (lsr_os.world).

It stands in for BLIP where no model hub is reachable: a small CNN for 64-px images and a
bag-of-word-pieces text encoder over the BERT-uncased vocabulary, trained contrastively on
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
from lsr_os.models.dense import DenseEncoder, ImagePreprocessor, register_encoder, resolve_device, resolve_dtype
from lsr_os.vocab import VOCAB_SIZE, load_tokenizer

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class DemoConfig:
    image_size: int = 64
    channels: tuple[int, ...] = (16, 32, 64, 64)
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
        # A 4x4 grid keeps where things are ("on the left"), which global pooling would lose.
        layers.append(nn.AdaptiveAvgPool2d(4))
        self.image_tower = nn.Sequential(*layers, nn.Flatten(), nn.Linear(c_in * 16, config.dim))
        self.token_embedding = nn.EmbeddingBag(VOCAB_SIZE, config.text_dim, mode="mean", padding_idx=0)
        self.text_tower = nn.Sequential(nn.Linear(config.text_dim, config.dim), nn.ReLU(inplace=True),
                                        nn.Linear(config.dim, config.dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.image_tower(pixels)

    def text_features(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_tower(self.token_embedding(input_ids))


class DemoEncoder(DenseEncoder):
    """The demo dual encoder behind the DenseEncoder interface."""

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


register_encoder("demo", DemoEncoder)


def tokenize(tokenizer, texts: list[str], max_tokens: int) -> torch.Tensor:
    """Word-piece ids without [CLS]/[SEP], padded with 0 (the bag's padding index)."""
    enc = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max_tokens,
                    padding="max_length", return_tensors="pt")
    return enc["input_ids"] * enc["attention_mask"]


def train_demo_encoder(meta_path: str | Path, image_root: str | Path, out: str | Path, epochs: int = 12,
                       batch_size: int = 256, lr: float = 2e-3, seed: int = 0) -> DemoEncoder:
    """Train the dual encoder contrastively on the training split of a built world and save it.

    Each step takes distinct images with one random caption each, so the only positives in a
    batch are true pairs; the loss is the symmetric InfoNCE of CLIP with a learnt temperature.
    """
    from PIL import Image

    from lsr_os.dense_files import DatasetMeta

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    meta = DatasetMeta.load(meta_path)
    train = meta.split("train")
    config = DemoConfig()
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

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = max(1, len(train.image_ids) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.15)
    model.train()
    bar = tqdm(total=epochs * steps_per_epoch, desc="train demo encoder", unit="step")
    for epoch in range(epochs):
        order = rng.permutation(len(train.image_ids))
        for s in range(steps_per_epoch):
            idx = order[s * batch_size:(s + 1) * batch_size]
            caps = [caption_rows[i][rng.integers(len(caption_rows[i]))] for i in idx]
            img = nn.functional.normalize(model.image_features(pre.normalize(pixels[idx])), dim=-1)
            txt = nn.functional.normalize(model.text_features(tokens[caps]), dim=-1)
            logits = model.logit_scale.exp().clamp(max=100) * img @ txt.T
            target = torch.arange(len(idx))
            loss = (nn.functional.cross_entropy(logits, target) + nn.functional.cross_entropy(logits.T, target)) / 2
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update()
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    encoder.save(out)
    log.info("demo encoder saved to %s", out)
    return encoder
