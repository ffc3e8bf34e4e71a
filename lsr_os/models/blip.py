"""BLIP retrieval checkpoints as dense encoders: the contrastive (ITC) features.

transformers' `BlipForImageTextRetrieval` has no method that returns the ITC features, so
they are computed here as BLIP's retrieval evaluation does:
image = normalize(vision_proj(vision_model(pixels).last_hidden_state[:, 0])) and
text = normalize(text_proj(text_encoder(ids, mask).last_hidden_state[:, 0])), both 256-d.
Captions go through BLIP's caption cleaning (lower case, some punctuation dropped, at most 30
words) and are tokenised with the checkpoint's own tokenizer, truncated to 35 tokens and
starting with [CLS], as the ITC text path expects. Images use the checkpoint's own processor
settings (size, resampling, mean, std).
"""

from __future__ import annotations

import logging
import re
import types
from pathlib import Path

import torch
import torch.nn.functional as F

from lsr_os.errors import ModelError
from lsr_os.models.dense import (DenseEncoder, ImagePreprocessor, itc_text_features,
                                 resolve_device, resolve_dtype)

log = logging.getLogger(__name__)

BLIP_CHECKPOINTS = (
    "Salesforce/blip-itm-base-coco",
    "Salesforce/blip-itm-large-coco",
    "Salesforce/blip-itm-base-flickr",
    "Salesforce/blip-itm-large-flickr",
)
MAX_TOKENS = 35  # BLIP's retrieval evaluation tokenises captions to at most 35 tokens
MAX_WORDS = 30  # ... after cutting them to 30 words
MAX_CHARS = 4000  # nothing past this can survive the 30-word cut; keeps pathological inputs cheap

_PUNCT = re.compile(r"[.!\"()*#:;~]")
_SPACES = re.compile(r"\s+")


def clean_caption(text: str, max_words: int = MAX_WORDS) -> str:
    """BLIP's caption cleaning: lower case, drop . ! " ( ) * # : ; ~, squeeze spaces, keep `max_words`."""
    text = _SPACES.sub(" ", _PUNCT.sub(" ", text[:MAX_CHARS].lower())).strip()
    return " ".join(text.split(" ")[:max_words])


def _sdpa_vision_attention(self, hidden_states: torch.Tensor, **kwargs):
    """BlipAttention.forward with torch's fused scaled-dot-product attention (same maths, no
    attention-probability tensor); transformers' BLIP has no SDPA path of its own."""
    bsz, seq, dim = hidden_states.shape
    qkv = self.qkv(hidden_states).reshape(bsz, seq, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], scale=self.scale)
    return self.projection(out.transpose(1, 2).reshape(bsz, seq, dim)), None


def use_sdpa(model) -> int:
    """Swap the vision tower's attention for SDPA in place; returns how many layers changed."""
    from transformers.models.blip.modeling_blip import BlipAttention

    n = 0
    for module in model.vision_model.modules():
        if isinstance(module, BlipAttention):
            module.forward = types.MethodType(_sdpa_vision_attention, module)
            n += 1
    return n


class BlipEncoder(DenseEncoder):
    """A `BlipForImageTextRetrieval` checkpoint with its processor."""

    kind = "blip"

    def __init__(self, model, processor, name: str, device: torch.device, dtype: torch.dtype, sdpa: bool = True):
        self.model = model.eval().to(device)
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.name = name
        self.device = device
        self.dtype = dtype
        self.dim = int(model.config.image_text_hidden_size)
        self.sdpa = bool(sdpa) and use_sdpa(self.model) > 0
        ip = processor.image_processor
        size = ip.size if isinstance(ip.size, dict) else dict(ip.size)
        height, width = size.get("height"), size.get("width")
        if not (height and width):
            raise ModelError(f"{name}: the image processor's size {size} is not a fixed height and width")
        resample = ip.resample if ip.resample is not None else 3
        self._pre = ImagePreprocessor(
            height=int(height), width=int(width), resample=int(resample),
            mean=tuple(float(x) for x in ip.image_mean), std=tuple(float(x) for x in ip.image_std),
            rescale_factor=float(ip.rescale_factor) if ip.do_rescale else 1.0)
        if not ip.do_normalize:
            self._pre = ImagePreprocessor(self._pre.height, self._pre.width, self._pre.resample,
                                          (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), self._pre.rescale_factor)

    @classmethod
    def claims(cls, path: Path) -> bool:
        import json

        config = path / "config.json"
        if not (path.is_dir() and config.is_file()):
            return False
        try:
            return json.loads(config.read_text()).get("model_type") == "blip"
        except (json.JSONDecodeError, OSError):
            return False

    @classmethod
    def load(cls, source: str | Path, device: str | None = None, dtype: str | None = None,
             sdpa: bool = True) -> "BlipEncoder":
        """A local folder (model + processor) or a hub name; hub names may download when allowed."""
        from transformers import BlipForImageTextRetrieval, BlipProcessor

        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        local = Path(source).is_dir()
        try:
            model = BlipForImageTextRetrieval.from_pretrained(str(source), local_files_only=local)
            processor = BlipProcessor.from_pretrained(str(source), local_files_only=local)
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load BLIP retrieval model and processor from {source}: {exc}") from exc
        return cls(model, processor, str(source), dev, dt, sdpa=sdpa)

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(folder)
        self.processor.save_pretrained(folder)
        self.write_marker(folder)

    def image_preprocessor(self) -> ImagePreprocessor:
        return self._pre

    def _image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.model.vision_model(pixel_values=pixel_values).last_hidden_state
        return self.model.vision_proj(hidden[:, 0, :])

    def _text_features(self, texts: list[str]) -> torch.Tensor:
        return itc_text_features(self, [clean_caption(t) for t in texts], MAX_TOKENS)
