"""lsr-os: multimodal learned sparse retrieval served from OpenSearch or Elasticsearch.

The public API: what an application needs to load the models, encode queries and documents,
load records into a cluster and search it::

    import lsr_os

    encoder = lsr_os.load_encoder("lsr-os-demo/encoder")
    head = lsr_os.load_head("lsr-os-demo/head/best")
    query = head.encode_captions(encoder.encode_texts(["two green stars"]), ["two green stars"])[0]
    engine = lsr_os.connect(lsr_os.ClusterConfig(urls=("http://localhost:9200",)))  # OpenSearch or Elasticsearch
    result = lsr_os.Searcher.of(engine).search("demo-images", query, k=5)

Every name is imported on first use (PEP 562), so `import lsr_os` costs almost nothing and
imports neither torch, transformers nor numpy: a command or an application that needs no model
never loads one. The names' homes are the modules in `_EXPORTS`.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

try:
    __version__ = version("lsr-os")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

# public name -> the module that defines it
_EXPORTS = {
    # models: the dense encoders and the sparse head
    "DenseEncoder": "lsr_os.models.dense",
    "load_encoder": "lsr_os.models",
    "register_encoder": "lsr_os.models",
    "SparseHead": "lsr_os.models.head",
    "load_head": "lsr_os.models.head",
    # queries and search
    "QueryEncoder": "lsr_os.search",
    "StaticQueryEncoder": "lsr_os.static_query",
    "Searcher": "lsr_os.search",
    "SearchResult": "lsr_os.search",
    "run_search": "lsr_os.search",
    # records and ingest
    "SparseRecord": "lsr_os.sparse",
    "RecordStream": "lsr_os.sparse",
    "read_jsonl": "lsr_os.sparse",
    "write_jsonl": "lsr_os.sparse",
    "SourceOptions": "lsr_os.records",
    "open_source": "lsr_os.records",
    "sparsify": "lsr_os.records",
    "IngestOptions": "lsr_os.index",
    "IngestReport": "lsr_os.index",
    "ingest": "lsr_os.index",
    "ingest_collections": "lsr_os.index",
    # the cluster
    "ClusterConfig": "lsr_os.config",
    "connect": "lsr_os.engines",
    "Engine": "lsr_os.engines.base.base",
    # errors
    "LsrOsError": "lsr_os.errors",
    "ConfigError": "lsr_os.errors",
    "DataError": "lsr_os.errors",
    "ModelError": "lsr_os.errors",
    "ClusterError": "lsr_os.errors",
    "ClusterUnreachable": "lsr_os.errors",
    "CollectionMissing": "lsr_os.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    """Import a public name's module on first access, and keep the name here for the next one."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lsr_os' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # for type checkers, IDEs and the API reference; never run
    from lsr_os.config import ClusterConfig
    from lsr_os.engines import connect
    from lsr_os.engines.base.base import Engine
    from lsr_os.errors import (ClusterError, ClusterUnreachable, CollectionMissing, ConfigError, DataError,
                               LsrOsError, ModelError)
    from lsr_os.index import IngestOptions, IngestReport, ingest, ingest_collections
    from lsr_os.models import load_encoder, register_encoder
    from lsr_os.models.dense import DenseEncoder
    from lsr_os.models.head import SparseHead, load_head
    from lsr_os.records import SourceOptions, open_source, sparsify
    from lsr_os.search import QueryEncoder, SearchResult, Searcher, run_search
    from lsr_os.sparse import RecordStream, SparseRecord, read_jsonl, write_jsonl
    from lsr_os.static_query import StaticQueryEncoder
