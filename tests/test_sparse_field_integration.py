"""The core promise of the project, against a real node of each engine: the engine's sparse field
and query (`ops.sparse_mapping`, `ops.sparse_query`) score the exact dot product of the query
weights with the stored weights, terms with dots and symbols included."""

import json

import numpy as np
import pytest

from lsr_os.sparse import dot, quantize

pytestmark = pytest.mark.integration

SPECIAL = [".", "a.b", "##s", "[CLS]", "café", "100%"]


def test_the_sparse_query_ranks_in_exact_dot_product_order(engine, index_name):
    rng = np.random.default_rng(7)
    terms = [f"t{i}" for i in range(34)] + SPECIAL
    engine.create_index(index_name, {
        "settings": {"number_of_shards": 1, "number_of_replicas": 0},
        "mappings": {"properties": {"sparse": engine.ops.sparse_mapping()}},
    })
    mapped = engine.mappings(index_name)[index_name]["properties"]["sparse"]["type"]
    assert mapped == engine.features.sparse_field_type
    docs = {}
    lines = []
    for d in range(60):
        chosen = rng.choice(len(terms), size=8, replace=False)
        docs[f"d{d}"] = {terms[i]: float(rng.uniform(0.05, 3.0)) for i in chosen}
        source = {"sparse": {engine.ops.feature(t): w for t, w in docs[f"d{d}"].items()}}
        lines += [json.dumps({"index": {"_index": index_name, "_id": f"d{d}"}}), json.dumps(source)]
    answer = engine.bulk(("\n".join(lines) + "\n").encode())
    assert not answer["errors"]
    engine.refresh(index_name)

    query = {terms[i]: float(rng.uniform(0.1, 2.0)) for i in rng.choice(len(terms), size=6, replace=False)}
    query.update({t: float(rng.uniform(0.1, 2.0)) for t in SPECIAL[:3]})
    hits = engine.search(index_name, {"size": 60, "query": engine.ops.sparse_query(query)})["hits"]["hits"]

    # Both engines keep 9 significant bits of each stored weight (Lucene's FeatureField): score
    # against those.
    stored = {d: {t: float(quantize(w)) for t, w in v.items()} for d, v in docs.items()}
    expected = {d: dot(query, v) for d, v in stored.items()}
    matching = {d: s for d, s in expected.items() if s > 0}
    assert len(hits) == len(matching)
    for hit in hits:
        assert hit["_score"] == pytest.approx(expected[hit["_id"]], rel=1e-5)
    # Exact dot-product order (ties, within float error, may come in either order).
    ranked = [expected[h["_id"]] for h in hits]
    assert all(a >= b - 1e-6 for a, b in zip(ranked, ranked[1:]))
    # every special term matched where it is stored
    for term in SPECIAL[:3]:
        holders = {d for d, v in docs.items() if term in v}
        alone = engine.search(index_name, {"size": 60, "query": engine.ops.sparse_query({term: 1.0})})["hits"]["hits"]
        assert {h["_id"] for h in alone} == holders and holders
