"""ALBEF retrieval checkpoints as dense encoders, natively (no LAVIS, no timm).

ALBEF's contrastive (ITC) features are a ViT-B/16 image encoder and the first `fusion_layer`
(6) layers of a BERT-base text encoder, each followed by a linear projection to 256-d and L2
normalisation. Those pieces are standard, so they are built here from transformers' `ViTModel`
and `BertModel`, and the public checkpoints (`mscoco.pth`, `flickr30k.pth`, the pre-trained
`ALBEF.pth`) load by renaming their state-dict keys (`map_albef_state_dict`). The momentum
copies (`*_m`), the fusion layers (with cross-attention), the ITM head and the queues are not
needed for ITC features and are dropped. Sizes come from the weights' shapes; attention heads
are not visible in shapes and default to hidden/64 (12 for ViT-B and BERT-base).

Captions are cleaned as ALBEF's retrieval evaluation does (lower case, punctuation removed,
'-' and '/' as spaces, at most 30 words) and tokenised with the BERT-uncased tokenizer to at
most 30 tokens; images are resized (bicubic) to the checkpoint's resolution and normalised
with the CLIP mean and std, as ALBEF's test transform does.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch
from torch import nn

from lsr_os.errors import ModelError
from lsr_os.models.dense import (DenseEncoder, ImagePreprocessor, itc_text_features,
                                 resolve_device, resolve_dtype)

log = logging.getLogger(__name__)

MAX_TOKENS = 30
MAX_WORDS = 30
MAX_CHARS = 4000
CONFIG_FILE = "albef_config.json"
WEIGHTS_FILE = "model.safetensors"

_PUNCT = re.compile(r"[,.'!?\"()*#:;~]")
_SPACES = re.compile(r"\s+")


def clean_caption(text: str, max_words: int = MAX_WORDS) -> str:
    """ALBEF's caption cleaning: lower case, drop , . ' ! ? " ( ) * # : ; ~, '-' and '/' as spaces."""
    text = _PUNCT.sub("", text[:MAX_CHARS].lower()).replace("-", " ").replace("/", " ").replace("<person>", "person")
    text = _SPACES.sub(" ", text).strip()
    return " ".join(text.split(" ")[:max_words])


class AlbefItc(nn.Module):
    """The ITC half of ALBEF: image tower, the text layers below fusion, and both projections."""

    def __init__(self, vit_config, bert_config, embed_dim: int):
        from transformers import BertModel, ViTModel

        super().__init__()
        self.visual_encoder = ViTModel(vit_config, add_pooling_layer=False)
        self.text_encoder = BertModel(bert_config, add_pooling_layer=False)
        self.vision_proj = nn.Linear(vit_config.hidden_size, embed_dim)
        self.text_proj = nn.Linear(bert_config.hidden_size, embed_dim)


def _strip(sd: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def map_albef_state_dict(checkpoint: dict, vision_heads: int | None = None,
                         text_heads: int | None = None) -> tuple[dict, dict]:
    """Rename an ALBEF checkpoint's keys to `AlbefItc`'s; returns (state_dict, config).

    Accepts the raw checkpoint (`{"model": state_dict, ...}`) or the state dict, with or
    without a `module.` prefix, and text keys under `text_encoder.` or `text_encoder.bert.`.
    """
    sd = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(sd, dict) or not sd:
        raise ModelError("not an ALBEF checkpoint: expected a state dict or {'model': state dict}")
    sd = {(k[7:] if k.startswith("module.") else k): v for k, v in sd.items()}
    vis = _strip(sd, "visual_encoder.")
    txt = _strip(sd, "text_encoder.bert.") or _strip(sd, "text_encoder.")
    need = ["cls_token", "pos_embed", "patch_embed.proj.weight", "norm.weight"]
    missing = [f"visual_encoder.{k}" for k in need if k not in vis]
    missing += [f"text_encoder.{k}" for k in ["embeddings.word_embeddings.weight"] if k not in txt]
    missing += [k for k in ["vision_proj.weight", "text_proj.weight"] if k not in sd]
    if missing:
        raise ModelError(f"not an ALBEF checkpoint: missing {', '.join(missing)}")

    hidden = int(vis["cls_token"].shape[-1])
    patch = int(vis["patch_embed.proj.weight"].shape[-1])
    grid = int(round((vis["pos_embed"].shape[1] - 1) ** 0.5))
    n_blocks = 1 + max(int(k.split(".")[1]) for k in vis if k.startswith("blocks."))
    out: dict[str, torch.Tensor] = {
        "visual_encoder.embeddings.cls_token": vis["cls_token"],
        "visual_encoder.embeddings.position_embeddings": vis["pos_embed"],
        "visual_encoder.embeddings.patch_embeddings.projection.weight": vis["patch_embed.proj.weight"],
        "visual_encoder.embeddings.patch_embeddings.projection.bias": vis["patch_embed.proj.bias"],
        "visual_encoder.layernorm.weight": vis["norm.weight"],
        "visual_encoder.layernorm.bias": vis["norm.bias"],
    }
    renames = {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.o_proj",
               "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
    for i in range(n_blocks):
        src, dst = f"blocks.{i}.", f"visual_encoder.layers.{i}."
        for kind in ("weight", "bias"):
            q, k, v = vis[f"{src}attn.qkv.{kind}"].chunk(3, dim=0)
            out[f"{dst}attention.q_proj.{kind}"] = q
            out[f"{dst}attention.k_proj.{kind}"] = k
            out[f"{dst}attention.v_proj.{kind}"] = v
            for a, b in renames.items():
                out[f"{dst}{b}.{kind}"] = vis[f"{src}{a}.{kind}"]

    # Text mode runs the layers below the first one with cross-attention (ALBEF's fusion_layer).
    layer_ids = sorted({int(k.split(".")[2]) for k in txt if k.startswith("encoder.layer.")})
    fusion = min((i for i in layer_ids if f"encoder.layer.{i}.crossattention.self.query.weight" in txt),
                 default=len(layer_ids))
    for k, v in txt.items():
        if k.startswith("embeddings.") and not k.endswith("position_ids"):
            out[f"text_encoder.{k}"] = v
        elif k.startswith("encoder.layer.") and int(k.split(".")[2]) < fusion and ".crossattention." not in k:
            out[f"text_encoder.{k}"] = v
    for proj in ("vision_proj", "text_proj"):
        out[f"{proj}.weight"] = sd[f"{proj}.weight"]
        out[f"{proj}.bias"] = sd[f"{proj}.bias"]

    text_hidden = int(txt["embeddings.word_embeddings.weight"].shape[1])
    config = {
        "embed_dim": int(sd["vision_proj.weight"].shape[0]),
        "vit": {"hidden_size": hidden, "patch_size": patch, "image_size": grid * patch,
                "num_hidden_layers": n_blocks, "num_attention_heads": vision_heads or max(1, hidden // 64),
                "intermediate_size": int(vis["blocks.0.mlp.fc1.weight"].shape[0]),
                "layer_norm_eps": 1e-6, "hidden_act": "gelu", "qkv_bias": True},
        "bert": {"vocab_size": int(txt["embeddings.word_embeddings.weight"].shape[0]), "hidden_size": text_hidden,
                 "max_position_embeddings": int(txt["embeddings.position_embeddings.weight"].shape[0]),
                 "type_vocab_size": int(txt["embeddings.token_type_embeddings.weight"].shape[0]),
                 "num_hidden_layers": fusion, "num_attention_heads": text_heads or max(1, text_hidden // 64),
                 "intermediate_size": int(txt["encoder.layer.0.intermediate.dense.weight"].shape[0]),
                 "layer_norm_eps": 1e-12, "hidden_act": "gelu"},
    }
    return out, config


class AlbefEncoder(DenseEncoder):
    """ALBEF ITC features from a public checkpoint file or a folder saved by `save`."""

    kind = "albef"

    def __init__(self, model: AlbefItc, config: dict, tokenizer, name: str, device: torch.device,
                 dtype: torch.dtype):
        self.model = model.eval().to(device)
        self.config = config
        self.tokenizer = tokenizer
        self.name = name
        self.device = device
        self.dtype = dtype
        self.dim = int(config["embed_dim"])
        size = int(config["vit"]["image_size"])
        self._pre = ImagePreprocessor(height=size, width=size)

    @classmethod
    def from_state_dict(cls, checkpoint: dict, name: str, device: str | None = None, dtype: str | None = None,
                        tokenizer=None, vision_heads: int | None = None,
                        text_heads: int | None = None) -> "AlbefEncoder":
        """Build from an ALBEF checkpoint already in memory (public key names)."""
        from lsr_os.vocab import load_tokenizer

        state, config = map_albef_state_dict(checkpoint, vision_heads, text_heads)
        return cls._build(state, config, tokenizer or load_tokenizer(), name, device, dtype)

    @classmethod
    def _build(cls, state: dict, config: dict, tokenizer, name: str, device: str | None,
               dtype: str | None) -> "AlbefEncoder":
        from transformers import BertConfig, ViTConfig

        vit = ViTConfig(**config["vit"])
        bert = BertConfig(**config["bert"])
        model = AlbefItc(vit, bert, config["embed_dim"])
        result = model.load_state_dict(state, strict=False)
        unexpected = list(result.unexpected_keys)
        missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
        if missing or unexpected:
            raise ModelError(f"{name}: weights do not fit the ALBEF ITC model "
                             f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
        dev = resolve_device(device)
        return cls(model, config, tokenizer, name, dev, resolve_dtype(dtype, dev))

    @classmethod
    def claims(cls, path: Path) -> bool:
        return path.is_file() and path.suffix in (".pth", ".pt")

    @classmethod
    def load(cls, source: str | Path, device: str | None = None, dtype: str | None = None) -> "AlbefEncoder":
        """A public ALBEF `.pth` checkpoint, or a folder written by `save`."""
        path = Path(source)
        if path.is_dir():
            from safetensors.torch import load_file

            from lsr_os.vocab import load_tokenizer

            try:
                config = json.loads((path / CONFIG_FILE).read_text())
                state = load_file(str(path / WEIGHTS_FILE))
            except (OSError, json.JSONDecodeError) as exc:
                raise ModelError(f"cannot read an ALBEF encoder folder at {path}: {exc}") from exc
            return cls._build(state, config, load_tokenizer(str(path)), str(path), device, dtype)
        if not path.is_file():
            raise ModelError(f"ALBEF checkpoint {path} does not exist")
        try:
            checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several unrelated types for a bad pickle
            raise ModelError(f"cannot read ALBEF checkpoint {path}: {exc}") from exc
        return cls.from_state_dict(checkpoint, str(path), device=device, dtype=dtype)

    def save(self, folder: str | Path) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()
                 if not k.endswith("position_ids")}
        save_file(state, str(folder / WEIGHTS_FILE))
        (folder / CONFIG_FILE).write_text(json.dumps(self.config, indent=2))
        self.tokenizer.save_pretrained(str(folder))
        self.write_marker(folder)

    def image_preprocessor(self) -> ImagePreprocessor:
        return self._pre

    def _image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.model.visual_encoder(pixel_values=pixel_values).last_hidden_state
        return self.model.vision_proj(hidden[:, 0, :])

    def _text_features(self, texts: list[str]) -> torch.Tensor:
        return itc_text_features(self, [clean_caption(t) for t in texts], MAX_TOKENS)
