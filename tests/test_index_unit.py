"""Unit tier for lsr_os.index: mappings, documents, feature names, the retry policy."""

import json
import math
from importlib import resources

import pytest

from lsr_os import index as ix
from lsr_os.errors import ConfigError
from lsr_os.sparse import SparseRecord
from lsr_os.vocab import Vocabulary, feature_to_term, term_to_feature


@pytest.mark.parametrize("collection", ix.COLLECTIONS)
def test_packaged_mappings_serve_sparse_as_rank_features(collection):
    body = ix.load_mapping(collection)
    props = body["mappings"]["properties"]
    assert props["sparse"]["type"] == "rank_features"
    assert props["terms"]["type"] == "keyword"
    assert {"id", "dataset", "split", "image"} <= set(props)
    assert body["settings"]["index"]["number_of_shards"] >= 1


def test_unknown_collection_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown collection 'videos'"):
        ix.load_mapping("videos")


def test_every_vocabulary_term_has_a_dot_free_reversible_feature_name():
    vocab = Vocabulary.default()
    assert len(vocab) == 30522
    features = [term_to_feature(t) for t in vocab.terms]
    assert all("." not in f and f for f in features)
    assert [feature_to_term(f) for f in features] == vocab.terms
    assert len(set(features)) == len(features)  # no two terms share a field path
    # the escape itself round-trips and stays distinct from an escaped dot
    assert feature_to_term(term_to_feature("%2E")) == "%2E" != feature_to_term(term_to_feature("."))


def test_document_drops_unstorable_weights_and_encodes_feature_names():
    rec = SparseRecord("img1", {"dog": 2.0, ".": 1.5, "...": 0.7, "##s": 0.2, "bad": -1.0, "zero": 0.0,
                                "nan": math.nan, "inf": math.inf, "tiny": 1e-40, "café": 0.3},
                       {"split": "test", "image": "a.jpg", "extra": {"kept": True}})
    doc = ix.to_document(rec, top_terms=3)
    assert doc["id"] == "img1" and doc["split"] == "test" and doc["extra"] == {"kept": True}
    assert doc["sparse"] == {"dog": 2.0, "%2E": 1.5, "%2E%2E%2E": 0.7, "##s": 0.2, "café": 0.3}
    assert doc["terms"] == ["dog", ".", "..."]


def test_document_pruning_keeps_the_heaviest_terms():
    rec = SparseRecord("c", {"a": 0.1, "b": 0.5, "c": 0.9, "d": 0.05})
    assert set(ix.to_document(rec, prune_top_k=2)["sparse"]) == {"b", "c"}
    assert set(ix.to_document(rec, threshold=0.08)["sparse"]) == {"a", "b", "c"}


def test_retry_policy_retries_429_5xx_and_connection_failures_only():
    policy = ix.RetryPolicy(max_attempts=5, initial_backoff=0.5, max_backoff=3.0)
    assert policy.retryable(429) and policy.retryable(503) and policy.retryable(500)
    assert policy.retryable("N/A")  # opensearch-py's status when no HTTP answer came
    assert not policy.retryable(400) and not policy.retryable(409) and not policy.retryable(404)
    assert [policy.delay(a) for a in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    with pytest.raises(ValueError):
        policy.delay(0)


def test_a_burst_of_429s_is_absorbed_within_the_backoff_budget():
    """A burst lasting 20 s of refusals: the default policy keeps re-sending past it."""
    policy = ix.RetryPolicy()
    waited, attempt = 0.0, 0
    while waited < 20.0:
        attempt += 1
        assert attempt <= policy.max_attempts, "the default policy gives up inside a 20 s burst"
        waited += policy.delay(attempt)


def test_count_lines_and_source_key(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"id": "a", "vector": {}}\n\n{"id": "b", "vector": {}}\n')
    assert ix.count_lines(path) == 2
    assert ix.source_of(path).startswith(str(path.resolve()))


def test_dashboards_saved_objects_reference_packaged_fields():
    text = resources.files("lsr_os.mappings").joinpath("dashboards.ndjson").read_text(encoding="utf-8")
    objects = [json.loads(line) for line in text.splitlines() if line.strip()]
    patterns = {o["id"]: o for o in objects if o["type"] == "index-pattern"}
    searches = [o for o in objects if o["type"] == "search"]
    assert {p["attributes"]["title"] for p in patterns.values()} == {"lsr-images", "lsr-captions"}
    assert searches
    for s in searches:
        (ref,) = s["references"]
        pattern = patterns[ref["id"]]
        collection = pattern["attributes"]["title"].split("-", 1)[1]
        fields = set(ix.load_mapping(collection)["mappings"]["properties"])
        assert set(s["attributes"]["columns"]) <= fields
        assert json.loads(s["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"])["indexRefName"] == ref["name"]


def test_dense_records_skip_what_a_resumed_index_holds(tmp_path):
    from lsr_os.models.head import SparseHead
    from lsr_os.synthetic import write_synthetic

    write_synthetic(tmp_path / "w", n_images=12, seed=1, encoder="bag-of-words")
    head = SparseHead(dense_size=256, hidden_size=16)
    every = [r.id for r in ix.dense_records(tmp_path / "w", head, "captions")]
    rest = [r.id for r in ix.dense_records(tmp_path / "w", head, "captions", skip=frozenset(every[:25]))]
    assert len(every) == 60 and rest == every[25:]
