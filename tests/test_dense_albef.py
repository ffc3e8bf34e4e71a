"""The ALBEF key mapping, on a random state dict with the public checkpoints' key names and
(tiny) shapes, checked against a reference forward written straight from those raw tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from encode_helpers import rgb
from lsr_os.errors import ModelError
from lsr_os.models.albef import AlbefEncoder, clean_caption, map_albef_state_dict
from lsr_os.models import load_encoder

# hidden/heads = 64, as in ViT-B and BERT-base: a raw .pth does not record heads, so they are inferred
H, HEADS, PATCH, GRID, BLOCKS, TEXT_LAYERS, FUSION, VOCAB, EMBED = 128, 2, 16, 2, 2, 4, 2, 30522, 16


def _vit_keys(prefix: str, g: torch.Generator) -> dict:
    r = lambda *s: torch.randn(*s, generator=g) * 0.2  # noqa: E731
    sd = {f"{prefix}cls_token": r(1, 1, H), f"{prefix}pos_embed": r(1, GRID * GRID + 1, H),
          f"{prefix}patch_embed.proj.weight": r(H, 3, PATCH, PATCH), f"{prefix}patch_embed.proj.bias": r(H),
          f"{prefix}norm.weight": 1 + r(H), f"{prefix}norm.bias": r(H)}
    for i in range(BLOCKS):
        b = f"{prefix}blocks.{i}."
        sd.update({b + "norm1.weight": 1 + r(H), b + "norm1.bias": r(H), b + "attn.qkv.weight": r(3 * H, H),
                   b + "attn.qkv.bias": r(3 * H), b + "attn.proj.weight": r(H, H), b + "attn.proj.bias": r(H),
                   b + "norm2.weight": 1 + r(H), b + "norm2.bias": r(H), b + "mlp.fc1.weight": r(4 * H, H),
                   b + "mlp.fc1.bias": r(4 * H), b + "mlp.fc2.weight": r(H, 4 * H), b + "mlp.fc2.bias": r(H)})
    return sd


def _bert_keys(prefix: str, g: torch.Generator) -> dict:
    r = lambda *s: torch.randn(*s, generator=g) * 0.2  # noqa: E731
    sd = {f"{prefix}embeddings.word_embeddings.weight": r(VOCAB, H),
          f"{prefix}embeddings.position_embeddings.weight": r(512, H),
          f"{prefix}embeddings.token_type_embeddings.weight": r(2, H),
          f"{prefix}embeddings.LayerNorm.weight": 1 + r(H), f"{prefix}embeddings.LayerNorm.bias": r(H),
          f"{prefix}embeddings.position_ids": torch.arange(512)[None]}
    for i in range(TEXT_LAYERS):
        b = f"{prefix}encoder.layer.{i}."
        subs = ["attention"] + (["crossattention"] if i >= FUSION else [])
        for att in subs:
            for n in ("self.query", "self.key", "self.value", "output.dense"):
                sd[f"{b}{att}.{n}.weight"], sd[f"{b}{att}.{n}.bias"] = r(H, H), r(H)
            sd[f"{b}{att}.output.LayerNorm.weight"], sd[f"{b}{att}.output.LayerNorm.bias"] = 1 + r(H), r(H)
        sd.update({b + "intermediate.dense.weight": r(4 * H, H), b + "intermediate.dense.bias": r(4 * H),
                   b + "output.dense.weight": r(H, 4 * H), b + "output.dense.bias": r(H),
                   b + "output.LayerNorm.weight": 1 + r(H), b + "output.LayerNorm.bias": r(H)})
    return sd


def albef_checkpoint(text_prefix: str = "text_encoder.", seed: int = 0) -> dict:
    """The public retrieval checkpoint's structure: model + momentum copies, ITM head, queues."""
    g = torch.Generator().manual_seed(seed)
    sd = {**_vit_keys("visual_encoder.", g), **_vit_keys("visual_encoder_m.", g),
          **_bert_keys(text_prefix, g), **_bert_keys(text_prefix.replace("text_encoder", "text_encoder_m"), g)}
    for p in ("vision_proj", "text_proj", "vision_proj_m", "text_proj_m"):
        sd[f"{p}.weight"], sd[f"{p}.bias"] = torch.randn(EMBED, H, generator=g), torch.randn(EMBED, generator=g)
    sd.update({"itm_head.weight": torch.randn(2, H), "itm_head.bias": torch.randn(2), "temp": torch.tensor(0.07),
               "image_queue": torch.randn(EMBED, 8), "text_queue": torch.randn(EMBED, 8),
               "idx_queue": torch.full((1, 8), -100), "queue_ptr": torch.zeros(1, dtype=torch.long)})
    return {"model": sd, "epoch": 5, "config": {"image_res": GRID * PATCH}}


def reference_image_feats(sd: dict, pixels: torch.Tensor) -> torch.Tensor:
    """ALBEF's timm-style ViT written from the raw keys: pre-norm blocks, fused qkv, final norm."""
    v = lambda k: sd[f"visual_encoder.{k}"]  # noqa: E731
    x = F.conv2d(pixels, v("patch_embed.proj.weight"), v("patch_embed.proj.bias"), stride=PATCH)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([v("cls_token").expand(len(x), -1, -1), x], dim=1) + v("pos_embed")
    for i in range(BLOCKS):
        b = lambda k: v(f"blocks.{i}.{k}")  # noqa: E731
        h = F.layer_norm(x, (H,), b("norm1.weight"), b("norm1.bias"), eps=1e-6)
        q, k, vv = F.linear(h, b("attn.qkv.weight"), b("attn.qkv.bias")).reshape(
            len(x), -1, 3, HEADS, H // HEADS).permute(2, 0, 3, 1, 4)
        att = ((q @ k.transpose(-2, -1)) * (H // HEADS) ** -0.5).softmax(-1)
        x = x + F.linear((att @ vv).transpose(1, 2).reshape(len(x), -1, H), b("attn.proj.weight"), b("attn.proj.bias"))
        h = F.layer_norm(x, (H,), b("norm2.weight"), b("norm2.bias"), eps=1e-6)
        x = x + F.linear(F.gelu(F.linear(h, b("mlp.fc1.weight"), b("mlp.fc1.bias"))), b("mlp.fc2.weight"),
                         b("mlp.fc2.bias"))
    x = F.layer_norm(x, (H,), v("norm.weight"), v("norm.bias"), eps=1e-6)
    return F.normalize(F.linear(x[:, 0], sd["vision_proj.weight"], sd["vision_proj.bias"]), dim=-1)


def reference_text_feats(sd: dict, prefix: str, input_ids, attention_mask) -> torch.Tensor:
    """BERT text mode: only the layers below the fusion layer, [CLS] -> text_proj."""
    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(vocab_size=VOCAB, hidden_size=H, num_hidden_layers=FUSION, num_attention_heads=HEADS,
                                intermediate_size=4 * H), add_pooling_layer=False).eval()
    own = {k[len(prefix):]: t for k, t in sd.items() if k.startswith(prefix) and "crossattention" not in k
           and not k.endswith("position_ids") and not any(f"layer.{i}." in k for i in range(FUSION, TEXT_LAYERS))}
    bert.load_state_dict(own, strict=False)
    hidden = bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return F.normalize(F.linear(hidden[:, 0], sd["text_proj.weight"], sd["text_proj.bias"]), dim=-1)


@pytest.mark.parametrize("text_prefix", ["text_encoder.", "text_encoder.bert."])
def test_mapping_reproduces_albef_itc_features(tmp_path, text_prefix):
    ckpt = albef_checkpoint(text_prefix)
    path = tmp_path / "mscoco.pth"
    torch.save(ckpt, path)
    enc = load_encoder(str(path), device="cpu")  # an ALBEF .pth is recognised by its suffix
    assert isinstance(enc, AlbefEncoder)
    assert enc.config["bert"]["num_hidden_layers"] == FUSION and enc.config["vit"]["image_size"] == GRID * PATCH

    images = [rgb(1), rgb(2, (50, 70))]
    pre = enc.image_preprocessor()
    pixels = pre.normalize(torch.stack([pre(im) for im in images]))
    with torch.no_grad():
        ref_img = reference_image_feats(ckpt["model"], pixels)
    np.testing.assert_allclose(enc.encode_images(images), ref_img.numpy(), atol=1e-5)

    texts = ["a dog runs on the grass", "two cats"]
    tok = enc.tokenizer(texts, padding="longest", return_tensors="pt")
    with torch.no_grad():
        ref_txt = reference_text_feats(ckpt["model"], text_prefix, tok["input_ids"], tok["attention_mask"])
    np.testing.assert_allclose(enc.encode_texts(texts), ref_txt.numpy(), atol=1e-5)


def test_mapping_drops_momentum_fusion_and_itm_weights():
    state, config = map_albef_state_dict(albef_checkpoint()["model"], vision_heads=HEADS, text_heads=HEADS)
    assert not any("_m." in k or "crossattention" in k or "itm_head" in k or "queue" in k for k in state)
    assert not any(f"encoder.layer.{i}." in k for k in state for i in range(FUSION, TEXT_LAYERS))
    assert config["embed_dim"] == EMBED and config["vit"]["num_hidden_layers"] == BLOCKS


def test_save_and_reload_folder(tmp_path):
    enc = AlbefEncoder.from_state_dict(albef_checkpoint(seed=3), "tiny", device="cpu")
    enc.save(tmp_path / "albef")
    again = load_encoder(tmp_path / "albef", device="cpu")
    np.testing.assert_allclose(again.encode_images([rgb(4)]), enc.encode_images([rgb(4)]), atol=1e-6)
    np.testing.assert_allclose(again.encode_texts(["a cat"]), enc.encode_texts(["a cat"]), atol=1e-6)


def test_not_an_albef_checkpoint(tmp_path):
    torch.save({"model": {"foo.weight": torch.zeros(2)}}, tmp_path / "x.pth")
    with pytest.raises(ModelError, match="missing visual_encoder.cls_token"):
        load_encoder(tmp_path / "x.pth")


def test_albef_caption_cleaning():
    assert clean_caption("A man's T-shirt, red/blue!") == "a mans t shirt red blue"
