"""The core promise of the project, against a real node: rank_feature queries score a dot product."""

import numpy as np
import pytest

pytestmark = pytest.mark.integration


def test_linear_rank_feature_query_ranks_in_exact_dot_product_order(os_client, index_name):
    from lsr_os.sparse import dot, quantize

    rng = np.random.default_rng(7)
    terms = [f"t{i}" for i in range(40)]
    os_client.indices.create(index=index_name, body={
        "settings": {"number_of_shards": 1, "number_of_replicas": 0},
        "mappings": {"properties": {"sparse": {"type": "rank_features"}}},
    })
    docs = {}
    for d in range(60):
        chosen = rng.choice(len(terms), size=8, replace=False)
        docs[f"d{d}"] = {terms[i]: float(rng.uniform(0.05, 3.0)) for i in chosen}
        os_client.index(index=index_name, id=f"d{d}", body={"sparse": docs[f"d{d}"]})
    os_client.indices.refresh(index=index_name)

    query = {terms[i]: float(rng.uniform(0.1, 2.0)) for i in rng.choice(len(terms), size=6, replace=False)}
    body = {"size": 60, "query": {"bool": {"should": [
        {"rank_feature": {"field": f"sparse.{t}", "linear": {}, "boost": w}} for t, w in query.items()
    ]}}}
    hits = os_client.search(index=index_name, body=body)["hits"]["hits"]

    # rank_features keeps 9 significant bits of each stored weight: score against those.
    stored = {d: {t: float(quantize(w)) for t, w in v.items()} for d, v in docs.items()}
    expected = {d: dot(query, v) for d, v in stored.items()}
    matching = {d: s for d, s in expected.items() if s > 0}
    assert len(hits) == len(matching)
    for hit in hits:
        assert hit["_score"] == pytest.approx(expected[hit["_id"]], rel=1e-5)
    # Exact dot-product order (ties, within float error, may come in either order).
    ranked = [expected[h["_id"]] for h in hits]
    assert all(a >= b - 1e-6 for a, b in zip(ranked, ranked[1:]))
