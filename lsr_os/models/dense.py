"""The dense image-text encoder interface, its image preprocessing, and the registry by kind.

A dense encoder maps images and captions into one space (BLIP, ALBEF: 256-d ITC features,
L2-normalised). The encoding pipeline (lsr_os.encode) splits the image side in two so that
decoding and resizing run in DataLoader workers while the model runs on the device:
`image_preprocessor()` is a small picklable callable (PIL image -> uint8 tensor), and
`encode_pixels()` takes a batch of those tensors, normalises them on the device and embeds
them. A new model is one subclass plus one `lsr_os.models.register_encoder` call.
"""

from __future__ import annotations

import contextlib
import json
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from lsr_os.errors import ConfigError, ModelError

log = logging.getLogger(__name__)

MARKER_FILE = "lsr_os_encoder.json"  # {"kind": "<registered kind>", ...} inside a saved folder

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}

ImageInput = Image.Image | str | Path


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`None` means the GPU when there is one, else the CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} was asked for but torch sees no CUDA device")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The compute dtype: `None` means bfloat16 on a GPU that has it, float16 on an older GPU,
    float32 on the CPU (reduced precision on the CPU is slower there, not faster)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return DTYPES[dtype.lower()]
    except KeyError as exc:
        raise ConfigError(f"unknown dtype {dtype!r}; use one of {', '.join(sorted(DTYPES))}") from exc


@dataclass(frozen=True)
class ImagePreprocessor:
    """Resize an RGB PIL image to the model's input size as a uint8 CHW tensor.

    Picklable and model-free, so DataLoader workers can run it. Rescaling and normalisation
    happen later on the device (`normalize`), which keeps host->device copies at one byte a
    pixel. The result equals the checkpoint's image processor (PIL resize, then rescale and
    normalise) up to float rounding.
    """

    height: int
    width: int
    resample: int = int(Image.Resampling.BICUBIC)
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    rescale_factor: float = 1 / 255

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if image.mode != "RGB":
            image = image.convert("RGB")
        if image.size != (self.width, self.height):
            image = image.resize((self.width, self.height), resample=self.resample)
        arr = np.asarray(image, dtype=np.uint8)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1)

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) on any device -> float32 normalised pixel values there."""
        mean = torch.tensor(self.mean, device=batch.device, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=batch.device, dtype=torch.float32).view(1, 3, 1, 1)
        return (batch.to(torch.float32) * self.rescale_factor - mean) / std


class DenseEncoder(ABC):
    """A frozen image-text encoder with L2-normalised outputs of `dim` dimensions."""

    kind: str = ""  # the registry kind (lsr_os.models); also written into saved folders' marker files
    name: str
    dim: int
    device: torch.device
    dtype: torch.dtype

    # ---- what a model provides

    @abstractmethod
    def image_preprocessor(self) -> ImagePreprocessor:
        """The picklable PIL -> uint8 tensor step of this model's image pipeline."""

    @abstractmethod
    def _image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Normalised float pixel values on the device -> unnormalised (B, dim) features."""

    @abstractmethod
    def _text_features(self, texts: list[str]) -> torch.Tensor:
        """Captions -> unnormalised (B, dim) features (tokenisation included)."""

    @classmethod
    @abstractmethod
    def load(cls, source: str | Path, device: str | None = None, dtype: str | None = None) -> "DenseEncoder":
        """Build the encoder from a folder, file or known name."""

    @classmethod
    def claims(cls, path: Path) -> bool:
        """Whether an unmarked local path is this kind's checkpoint (e.g. a BLIP config folder)."""
        return False

    def save(self, folder: str | Path) -> None:
        """Write a folder that `load_encoder` can read back (kinds that support it override this)."""
        raise ModelError(f"{self.kind or type(self).__name__} encoders cannot be saved to a folder")

    # ---- shared machinery

    def autocast(self):
        """Autocast to the compute dtype on the device; a no-op in float32."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    @torch.inference_mode()
    def encode_pixels(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) from `image_preprocessor()` -> (B, dim) float32 unit vectors on the device."""
        batch = batch.to(self.device, non_blocking=True)
        pixels = self.image_preprocessor().normalize(batch)
        with self.autocast():
            feats = self._image_features(pixels)
        return torch.nn.functional.normalize(feats.float(), dim=-1)

    @torch.inference_mode()
    def encode_text_batch(self, texts: list[str]) -> torch.Tensor:
        """Captions -> (B, dim) float32 unit vectors on the device."""
        with self.autocast():
            feats = self._text_features(list(texts))
        return torch.nn.functional.normalize(feats.float(), dim=-1)

    def encode_images(self, images: Sequence[ImageInput], batch_size: int = 64) -> np.ndarray:
        """Images (PIL or paths) -> (N, dim) float32, L2-normalised.

        A path that cannot be loaded raises `lsr_os.data.ImageLoadError` naming it; the dataset
        pipeline (lsr_os.encode) skips such items instead.
        """
        from lsr_os.data import load_image

        pre = self.image_preprocessor()
        out = []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            pil = [im if isinstance(im, Image.Image) else load_image(Path(im)) for im in chunk]
            out.append(self.encode_pixels(torch.stack([pre(im) for im in pil])).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), dtype=np.float32)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Captions -> (N, dim) float32, L2-normalised."""
        out = [self.encode_text_batch(list(texts[s:s + batch_size])).cpu().numpy()
               for s in range(0, len(texts), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.dim), dtype=np.float32)

    def write_marker(self, folder: Path, **extra) -> None:
        """Name this encoder's kind inside a saved folder, so `load_encoder` finds the class."""
        (folder / MARKER_FILE).write_text(json.dumps({"kind": self.kind, "name": self.name, "dim": self.dim,
                                                      **extra}, indent=2))

    def describe(self) -> dict:
        return {"kind": self.kind, "name": self.name, "dim": self.dim, "device": str(self.device),
                "dtype": str(self.dtype).replace("torch.", "")}


def itc_text_features(encoder: DenseEncoder, cleaned: list[str], max_tokens: int) -> torch.Tensor:
    """The [CLS] output of a BLIP-style text tower through its ITC projection (BLIP and ALBEF).

    `encoder` has `tokenizer` and `model.text_encoder` / `model.text_proj`; captions arrive
    already cleaned the way the model's own retrieval code cleans them.
    """
    tok = encoder.tokenizer(cleaned, padding="longest", truncation=True, max_length=max_tokens,
                            return_tensors="pt")
    out = encoder.model.text_encoder(input_ids=tok["input_ids"].to(encoder.device),
                                     attention_mask=tok["attention_mask"].to(encoder.device))
    return encoder.model.text_proj(out.last_hidden_state[:, 0, :])
