"""Which Karpathy splits a selection means: the one split rule of every lsr-os command.

Kept apart from the dense-file readers so that the search path can use it without importing
pyarrow.
"""

from __future__ import annotations

from typing import Iterable

# Karpathy's MSCOCO split has a "restval" part that the standard 113k training set includes.
TRAIN_SPLITS = ("train", "restval")


def select_splits(spec: str | Iterable[str] | None) -> frozenset[str] | None:
    """The split labels a selection means; None = every split. The one split rule of lsr-os.

    `spec` is "all" (or None/empty), a comma-separated string, or several names. "train" means
    Karpathy's "train" plus "restval" (the 113k MSCOCO training images, as BLIP fine-tunes on).
    """
    names = spec.split(",") if isinstance(spec, str) else list(spec or ())
    names = [n.strip() for n in names if n and n.strip()]
    if not names or any(n.lower() == "all" for n in names):
        return None
    wanted: set[str] = set()
    for name in names:
        wanted.update(TRAIN_SPLITS if name == "train" else (name,))
    return frozenset(wanted)


def split_label(spec: str | Iterable[str] | None) -> str:
    """How a selection is named in messages and resume keys: "all" or the sorted names given."""
    names = sorted({n.strip() for n in (spec.split(",") if isinstance(spec, str) else spec or ()) if n.strip()})
    return ",".join(names) if names and "all" not in names else "all"


def split_labels(spec: str) -> tuple[str, ...]:
    """The literal labels of a comma-separated list, in order, once each: training names exactly the
    labels it uses ("train" does not add restval here, see lsr_os.train.AUTHORS_TRAIN_SPLITS)."""
    return tuple(dict.fromkeys(s.strip() for s in spec.split(",") if s.strip()))
