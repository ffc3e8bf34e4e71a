"""The engine seam: one folder per search engine, the same module names in each.

Modelled on Django's database backends. `base/` holds what both engines share and the interface
they fill in; `opensearch/` and `elasticsearch/` override only what differs. Each backend offers:

- `features`: plain flags saying what the engine (and, where it depends on the cluster, the
  connected cluster) can do. Callers ask the features, never the engine's name.
- `operations`: the engine's field types, mappings, query bodies and explain format, as pure
  functions of their inputs (no I/O).
- `base`: the `Engine` a caller holds: the engine's own client, its features and operations,
  and the cluster calls lsr-os makes, each raising lsr-os's own errors.
- `node`: how a local node of that engine is fetched, configured and started.
"""

from __future__ import annotations

import logging
from importlib import import_module
from typing import TYPE_CHECKING

from lsr_os.errors import ConfigError

if TYPE_CHECKING:
    from lsr_os.config import ClusterConfig
    from lsr_os.engines.base.base import Engine

log = logging.getLogger(__name__)

ENGINES = ("opensearch", "elasticsearch")


def engine_class(name: str) -> type["Engine"]:
    """The `Engine` class of a backend, by its name (for what starts a node of a chosen engine)."""
    if name not in ENGINES:
        raise ConfigError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
    return import_module(f"lsr_os.engines.{name}.base").Engine


def connect(config: "ClusterConfig") -> "Engine":
    """The engine of the cluster at `config`'s URLs, connected: which engine answers is read from
    its answer (see `detect`), never from a flag. Raises one clear error when nothing usable answers."""
    from lsr_os.engines.detect import detect

    name, version = detect(config)
    engine = engine_class(name)(config, version)
    log.info("connected to %s %s at %s", engine.display_name, engine.version, engine.where)
    return engine
