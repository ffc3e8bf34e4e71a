"""An engine's field types, mappings, query bodies and explain format: pure functions, no I/O.

A collection's mapping (`mappings/<collection>.json`) is written for OpenSearch, where lsr-os began;
each engine's operations turn it into that engine's mapping by giving the `sparse` field its type.
Scores are dot products on both engines: Lucene's FeatureField stores each weight with 9
significant bits and a linear clause multiplies it by the query weight.
"""

from __future__ import annotations

import copy
import re
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from lsr_os.sparse import SparseVector, quantize
from lsr_os.vocab import feature_to_term, term_to_feature

if TYPE_CHECKING:
    from lsr_os.engines.base.features import BaseFeatures

SPARSE_FIELD = "sparse"

# Lucene's FeatureField explains a linear clause as "Linear function on the <field> field for the
# <feature> feature, computed as w * S from:" with the details "w, weight ..." and "S, feature
# value": on OpenSearch's rank_feature and Elasticsearch's sparse_vector query alike.
_LINEAR = re.compile(r"Linear function on the (.+) field for the (.+) feature, computed as w \* S")


class BaseOperations:
    def __init__(self, features: "BaseFeatures"):
        self.features = features

    def sparse_mapping(self) -> dict:
        """The mapping of the `sparse` field."""
        raise NotImplementedError

    def sparse_query(self, vector: SparseVector) -> dict:
        """The query whose score is the dot product of `vector` with each document's stored weights
        (clauses heaviest first, so an engine that stops early keeps the heaviest)."""
        raise NotImplementedError

    def collection_body(self, body: Mapping[str, Any]) -> dict:
        """A collection's index body (settings and mappings) for this engine."""
        out = copy.deepcopy(dict(body))
        out["mappings"]["properties"][SPARSE_FIELD] = self.sparse_mapping()
        return out

    def feature(self, term: str) -> str:
        """The feature name a term is stored under."""
        return term_to_feature(term) if self.features.escapes_feature_names else term

    def term(self, feature: str) -> str:
        return feature_to_term(feature) if self.features.escapes_feature_names else feature

    def source_filter(self, fields: Sequence[str], with_vectors: bool = False) -> dict:
        """`_source` of a search that returns `fields`, and the sparse vectors with `with_vectors`."""
        source: dict = {"includes": [*fields, *([SPARSE_FIELD] if with_vectors else [])]}
        if with_vectors and self.features.vectors_only_on_request:
            source["exclude_vectors"] = False
        return source

    def stored_weights(self, hit: Mapping[str, Any]) -> dict[str, float]:
        """{term: stored weight} of a hit: from the engine's own explanation when the search asked
        for one (it works whether or not the index keeps vectors in `_source`), else from the
        vector in `_source` (a search with vectors), quantized as the engine stores it."""
        if "_explanation" in hit:
            return {self.term(f): w for f, w in explained_weights(hit["_explanation"]).items()}
        doc = (hit.get("_source") or {}).get(SPARSE_FIELD) or {}
        return {self.term(f): float(quantize(w)) for f, w in doc.items()}


def explained_weights(node: Mapping[str, Any]) -> dict[str, float]:
    """{feature: stored weight} of every linear FeatureField clause on the sparse field in a score
    explanation (a two-phase search explains its first phase and its rescore: the same values,
    kept once)."""
    found: dict[str, float] = {}
    stack = [node]
    while stack:
        item = stack.pop()
        match = _LINEAR.match(item.get("description", ""))
        if match and match.group(1) == SPARSE_FIELD:
            value = next((d["value"] for d in item.get("details", []) if d.get("description", "").startswith("S,")),
                         None)
            if value is not None:
                found[match.group(2)] = float(value)
            continue
        stack.extend(item.get("details", []))
    return found
