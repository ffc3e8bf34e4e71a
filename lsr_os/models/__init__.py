"""Models: dense image-text encoders (by kind, in a registry) and the sparse (D2S) head.

`load_encoder` turns a name, folder or checkpoint into a `DenseEncoder`. The built-in kinds are
listed here by module and imported on first use, so an encoder module never imports this
registry (no cycle); a plug-in registers its own class with `register_encoder`.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from lsr_os.errors import ModelError
from lsr_os.models.dense import MARKER_FILE, DenseEncoder

_BUILTIN = {"blip": "lsr_os.models.blip:BlipEncoder", "albef": "lsr_os.models.albef:AlbefEncoder",
            "demo": "lsr_os.demo.encoder:DemoEncoder"}
_REGISTRY: dict[str, type[DenseEncoder]] = {}


def register_encoder(kind: str, cls: type[DenseEncoder]) -> None:
    """Make `cls` loadable by `load_encoder` under `kind` (marker files and `kind:source` names)."""
    if not (isinstance(cls, type) and issubclass(cls, DenseEncoder)):
        raise TypeError(f"{cls!r} is not a DenseEncoder subclass")
    cls.kind = kind
    _REGISTRY[kind] = cls


def _load_builtin() -> None:
    for kind, target in _BUILTIN.items():
        if kind not in _REGISTRY:
            module, name = target.split(":")
            register_encoder(kind, getattr(importlib.import_module(module), name))


def load_encoder(name_or_path: str | Path, device: str | None = None, dtype: str | None = None) -> DenseEncoder:
    """Load a dense encoder from a name, a `kind:source` string, a saved folder or a checkpoint file.

    Resolution order: `kind:source` for a registered kind; a local folder with a marker file
    (its kind); a local path that a registered kind claims (a BLIP transformers folder, an
    ALBEF `.pth` file); a known checkpoint name (the BLIP retrieval checkpoints).
    """
    _load_builtin()
    text = str(name_or_path)
    kind, sep, rest = text.partition(":")
    if sep and kind in _REGISTRY and not Path(text).exists():
        return _REGISTRY[kind].load(rest, device=device, dtype=dtype)
    path = Path(text).expanduser()
    if path.exists():
        marker = path / MARKER_FILE
        if path.is_dir() and marker.is_file():
            try:
                kind = json.loads(marker.read_text())["kind"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ModelError(f"{marker}: not a valid marker file ({exc})") from exc
            if kind not in _REGISTRY:
                raise ModelError(f"{marker} names kind {kind!r}, which is not registered "
                                 f"(known: {', '.join(sorted(_REGISTRY))})")
            return _REGISTRY[kind].load(path, device=device, dtype=dtype)
        for cls in _REGISTRY.values():
            if cls.claims(path):
                return cls.load(path, device=device, dtype=dtype)
        raise ModelError(f"{path} is neither a saved encoder folder ({MARKER_FILE}), a BLIP transformers "
                         f"folder nor a checkpoint file that a registered kind recognises")
    from lsr_os.models.blip import BLIP_CHECKPOINTS

    if text in BLIP_CHECKPOINTS:
        return _REGISTRY["blip"].load(text, device=device, dtype=dtype)
    raise ModelError(f"unknown encoder {text!r}: not a local path, not one of {', '.join(BLIP_CHECKPOINTS)}, "
                     f"and not 'kind:source' for a registered kind ({', '.join(sorted(_REGISTRY))})")
