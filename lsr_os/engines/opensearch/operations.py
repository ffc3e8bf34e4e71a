"""OpenSearch's sparse field and query: `rank_features`, and `bool.should` of linear `rank_feature`
clauses whose boosts are the query weights, so a document's score is the dot product."""

from __future__ import annotations

from lsr_os.engines.base.operations import SPARSE_FIELD, BaseOperations
from lsr_os.sparse import SparseVector, heaviest_first
from lsr_os.vocab import term_to_feature


class Operations(BaseOperations):
    def sparse_mapping(self) -> dict:
        return {"type": "rank_features"}

    def sparse_query(self, vector: SparseVector) -> dict:
        return {"bool": {"should": [
            {"rank_feature": {"field": f"{SPARSE_FIELD}.{term_to_feature(t)}", "linear": {}, "boost": w}}
            for t, w in heaviest_first(vector.items())]}}
