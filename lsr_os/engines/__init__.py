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
