"""Elasticsearch's sparse field and query: `sparse_vector`, and the `sparse_vector` query, whose
score is the dot product of its `query_vector` with the document's stored weights."""

from __future__ import annotations

from lsr_os.engines.base.operations import SPARSE_FIELD, BaseOperations
from lsr_os.sparse import SparseVector, heaviest_first


class Operations(BaseOperations):
    def sparse_mapping(self) -> dict:
        # Indices of 9.1+ may prune query terms by default; lsr-os scores exactly unless asked.
        return {"type": "sparse_vector", "index_options": {"prune": False}}

    def sparse_query(self, vector: SparseVector) -> dict:
        return {"sparse_vector": {"field": SPARSE_FIELD, "query_vector": dict(heaviest_first(vector.items())),
                                  "prune": False}}
