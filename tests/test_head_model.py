"""The D2S head: forward formula, own-token mask, checkpoints (own and authors' layout), init."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from lsr_os.errors import ModelError
from lsr_os.models.head import SparseHead, load_head, own_token_mask
from lsr_os.vocab import VOCAB_SIZE, default_vocab_dir


def _reference(dense, state, eps=1e-12, input_ids=None, attention_mask=None):
    """docs/method.md's formula written out with numpy, independent of the module."""
    x = np.asarray(dense, np.float64)
    h = x @ state["proj.weight"].double().numpy().T + state["proj.bias"].double().numpy()
    mu, var = h.mean(-1, keepdims=True), h.var(-1, keepdims=True)
    h = (h - mu) / np.sqrt(var + eps) * state["vocab_layer_norm.weight"].double().numpy() + \
        state["vocab_layer_norm.bias"].double().numpy()
    logits = h @ state["vocab_projector.weight"].double().numpy().T + state["vocab_projector.bias"].double().numpy()
    s = np.log1p(np.maximum(logits, 0))
    if input_ids is not None:
        mask = np.zeros_like(s)
        for b, (ids, am) in enumerate(zip(input_ids, attention_mask)):
            for i, a in zip(ids, am):
                mask[b, i] = max(mask[b, i], a)
        s = s * mask
    return s


def test_forward_hand_checked_tiny_case():
    head = SparseHead(dense_size=2, hidden_size=2, vocab_size=3)
    with torch.no_grad():
        head.proj.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        head.proj.bias.zero_()
        head.vocab_layer_norm.weight.fill_(1.0)
        head.vocab_layer_norm.bias.zero_()
        head.vocab_projector.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        head.vocab_projector.bias.copy_(torch.tensor([0.0, 0.0, 0.5]))
    # d = (3, 1): LayerNorm of (3, 1) is (1, -1); logits (1, -1, 0.5); log1p(relu) = (ln 2, 0, ln 1.5)
    out = head(torch.tensor([[3.0, 1.0]]))
    assert torch.allclose(out, torch.tensor([[np.log(2.0), 0.0, np.log(1.5)]], dtype=torch.float32), atol=1e-6)


def test_own_token_mask_keeps_only_attended_own_tokens():
    ids = torch.tensor([[101, 3899, 3899, 102, 0, 0], [101, 1996, 102, 7, 0, 0]])
    am = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 0.5, 0, 0]])
    mask = own_token_mask(ids, am, 12000)
    assert mask.shape == (2, 12000)
    assert set(mask[0].nonzero().flatten().tolist()) == {101, 3899, 102}
    assert mask[0, 0] == 0  # [PAD] positions carry attention 0
    assert mask[1, 7] == 0.5  # attention-mask weighted
    assert mask[1, 1996] == 1.0 and mask.sum() == 3 + 3.5


def test_forward_with_mask_matches_reference():
    torch.manual_seed(0)
    head = SparseHead(dense_size=8, hidden_size=16, vocab_size=50)
    dense = torch.randn(3, 8)
    ids = torch.tensor([[1, 5, 5, 9, 0], [2, 3, 0, 0, 0], [49, 48, 47, 46, 45]])
    am = (ids != 0).long()
    got = head(dense, ids, am).detach().numpy()
    want = _reference(dense, head.state_dict(), input_ids=ids.tolist(), attention_mask=am.tolist())
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert (got[1, [0, 1, 4, 9]] == 0).all()
    unmasked = head(dense).detach().numpy()
    assert (got <= unmasked + 1e-7).all() and (unmasked > 0).sum() > (got > 0).sum()


def test_own_token_weights_equal_the_masked_forward_at_the_ids():
    torch.manual_seed(0)
    head = SparseHead(dense_size=8, hidden_size=16, vocab_size=50, blocked_token_ids=[7])
    with torch.no_grad():
        head.vocab_projector.bias.fill_(0.5)
    dense = torch.randn(3, 8)
    ids = torch.tensor([[1, 5, 9, 7, 0], [2, 3, 0, 0, 0], [49, 48, 47, 46, 45]])  # distinct per row
    am = (ids != 0).long()
    want = head(dense, ids, am).gather(1, ids) * am
    got = head.own_token_weights(dense, ids, am)
    torch.testing.assert_close(got, want)
    assert got[0, 3] == 0 and (got[1, 2:] == 0).all() and (got[2] > 0).any()


def test_blocked_tokens_are_zero_everywhere_and_saved(tmp_path):
    torch.manual_seed(0)
    head = SparseHead(dense_size=8, hidden_size=16)
    with torch.no_grad():
        head.vocab_projector.bias.fill_(20.0)  # every term positive, the special ones too
    dense = torch.randn(2, 8)
    assert (head(dense)[:, [0, 100, 101, 102, 103]] > 0).all()
    head.block_special_tokens()
    assert head.blocked_token_ids == [0, 100, 101, 102, 103]
    assert (head(dense)[:, [0, 100, 101, 102, 103]] == 0).all() and (head(dense)[:, 104:] > 0).all()
    own = head.encode(dense.numpy(), texts=["a dog", "the dog runs"], expand=False)
    assert set(own[0]) == {"a", "dog"} and set(own[1]) == {"the", "dog", "runs"}
    head(dense).sum().backward()  # blocked terms get no gradient; the others the same as unblocked
    blocked_grad = head.vocab_projector.bias.grad.clone()
    head.zero_grad()
    head.blocked_token_ids = []
    head(dense).sum().backward()
    assert (blocked_grad[[0, 100, 101, 102, 103]] == 0).all()
    assert (head.vocab_projector.bias.grad[[0, 100, 101, 102, 103]] > 0).all()
    assert torch.equal(blocked_grad[104:], head.vocab_projector.bias.grad[104:])
    head.block_special_tokens()
    head.save_pretrained(tmp_path / "h")
    assert json.loads((tmp_path / "h" / "config.json").read_text())["blocked_token_ids"] == [0, 100, 101, 102, 103]
    again = load_head(tmp_path / "h")
    assert torch.equal(again(dense), head(dense))
    cfg = json.loads((tmp_path / "h" / "config.json").read_text())
    cfg["blocked_token_ids"] = [40000]
    (tmp_path / "h" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match=r"config.json: bad blocked_token_ids: .*got 40000"):
        load_head(tmp_path / "h")


def _random_authors_state(dense=16, hidden=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "proj.weight": torch.randn(hidden, dense, generator=g), "proj.bias": torch.randn(hidden, generator=g),
        "vocab_layer_norm.weight": 1 + 0.1 * torch.randn(hidden, generator=g),
        "vocab_layer_norm.bias": 0.1 * torch.randn(hidden, generator=g),
        "vocab_projector.weight": torch.randn(VOCAB_SIZE, hidden, generator=g),
        "vocab_projector.bias": torch.randn(VOCAB_SIZE, generator=g) - 1.0,
    }


@pytest.mark.parametrize("weights_file", ["model.safetensors", "pytorch_model.bin"])
def test_authors_checkpoint_loads_and_matches_direct_computation(tmp_path, weights_file):
    state = _random_authors_state()
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "d2s", "mlm_head": "distilbert-base-uncased", "dense_size": 16,
        "architectures": ["D2SModel"], "torch_dtype": "float32"}))
    if weights_file.endswith(".safetensors"):
        save_file(state, str(tmp_path / weights_file))
    else:
        torch.save(state, tmp_path / weights_file)
    head = load_head(tmp_path)
    assert (head.dense_size, head.hidden_size, head.vocab_size) == (16, 24, VOCAB_SIZE)
    assert head.init_info["method"] == "authors-d2s-checkpoint"
    dense = torch.randn(4, 16, generator=torch.Generator().manual_seed(1))
    np.testing.assert_allclose(head(dense).detach().numpy(), _reference(dense, state), atol=2e-4)
    assert head.terms[3899] == "dog"
    assert head.blocked_token_ids == []  # the authors' heads keep [CLS] and friends


def test_own_format_roundtrip_records_init_and_versions(tmp_path):
    head = SparseHead(dense_size=8, hidden_size=12, init={"method": "random", "seed": 3}, max_text_length=40)
    head.save_pretrained(tmp_path / "h")
    cfg = json.loads((tmp_path / "h" / "config.json").read_text())
    assert cfg["model_type"] == "lsr-os-d2s" and cfg["init"] == {"method": "random", "seed": 3}
    assert {"lsr_os", "torch", "transformers"} <= set(cfg["versions"]) and cfg["max_text_length"] == 40
    again = SparseHead.from_pretrained(tmp_path / "h")
    x = torch.randn(2, 8)
    assert torch.equal(head(x), again(x))
    assert again.tokenizer.convert_tokens_to_ids("dog") == 3899 and again.max_text_length == 40
    assert "algorithm" not in cfg and again.algorithm == {}  # only a trained head says how it was trained
    again.algorithm = {"paper": True, "summary": "the paper's algorithm"}
    again.save_pretrained(tmp_path / "h")
    assert SparseHead.from_pretrained(tmp_path / "h").algorithm == again.algorithm
    cfg = json.loads((tmp_path / "h" / "config.json").read_text())
    (tmp_path / "h" / "config.json").write_text(json.dumps({**cfg, "algorithm": "the paper's"}))
    with pytest.raises(ModelError, match=r"config.json: algorithm must be an object, got \"the paper's\""):
        SparseHead.from_pretrained(tmp_path / "h")


def test_encode_expand_and_own_tokens():
    torch.manual_seed(0)
    head = SparseHead(dense_size=8, hidden_size=16)
    with torch.no_grad():
        head.vocab_projector.bias.fill_(2.0)  # every term positive: expansion is visible
    dense = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    full = head.encode(dense, top_k=7)
    assert all(len(v) == 7 and all(w > 0 for w in v.values()) for v in full)
    own = head.encode(dense, texts=["a dog", "two cats", "the dog runs"], expand=False)
    assert set(own[0]) == {"[CLS]", "a", "dog", "[SEP]"}
    assert set(own[2]) == {"[CLS]", "the", "dog", "runs", "[SEP]"}
    with pytest.raises(ModelError, match="needs the texts"):
        head.encode(dense, expand=False)
    with pytest.raises(ModelError, match="dense size 8"):
        head.encode(np.zeros((2, 5), np.float32))


def test_offline_init_uses_minilm_word_embeddings_without_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the offline init tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    head = SparseHead.init_offline(dense_size=256, seed=7)
    from safetensors import safe_open

    with safe_open(str(default_vocab_dir() / "model.safetensors"), "pt") as f:
        emb = f.get_tensor("embeddings.word_embeddings.weight")
    assert head.hidden_size == 384 and torch.equal(head.vocab_projector.weight, emb.float())
    assert head.init_info["method"] == "minilm-word-embeddings" and head.init_info["seed"] == 7
    assert torch.equal(SparseHead.init_offline(256, seed=7).proj.weight, head.proj.weight)


def test_initialise_from_local_mlm_and_auto_fallback(tmp_path, monkeypatch):
    from transformers import DistilBertConfig, DistilBertForMaskedLM

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    cfg = DistilBertConfig(vocab_size=VOCAB_SIZE, dim=16, hidden_dim=32, n_layers=1, n_heads=2)
    mlm = DistilBertForMaskedLM(cfg)
    mlm.save_pretrained(tmp_path / "distil")
    head = SparseHead.initialise(str(tmp_path / "distil"), dense_size=32)
    assert head.init_info["method"] == "mlm-head" and head.hidden_size == 16
    assert torch.equal(head.vocab_projector.weight, mlm.vocab_projector.weight)
    assert torch.equal(head.vocab_layer_norm.weight, mlm.vocab_layer_norm.weight)
    # distilbert-base-uncased is not in the (empty) cache: auto falls back to MiniLM offline
    assert SparseHead.initialise("auto", dense_size=32).init_info["method"] == "minilm-word-embeddings"
    with pytest.raises(ModelError, match="no local masked-LM"):
        SparseHead.initialise(str(tmp_path / "missing"), dense_size=32)


def test_unreadable_checkpoints_give_clear_errors(tmp_path):
    with pytest.raises(ModelError, match="config.json does not exist"):
        load_head(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        load_head(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelError, match="model_type 'bert'"):
        load_head(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "d2s", "dense_size": 16}))
    with pytest.raises(ModelError, match="neither model.safetensors nor pytorch_model.bin"):
        load_head(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelError, match="cannot read .*model.safetensors"):
        load_head(tmp_path)
    state = _random_authors_state()
    del state["vocab_projector.bias"]
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ModelError, match="lacks the weights vocab_projector.bias"):
        load_head(tmp_path)
    state = _random_authors_state(dense=12)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ModelError, match="dense_size 16 but proj.weight has 12"):
        load_head(tmp_path)
