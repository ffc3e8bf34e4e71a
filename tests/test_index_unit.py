"""Unit tier for lsr_os.index: mappings, documents, feature names, the retry policy. Engine
differences come from each backend's pure features and operations (no node needed)."""

import json
import math
from importlib import resources

import pytest

from lsr_os import index as ix
from lsr_os.engines import ENGINES, engine_class
from lsr_os.errors import ConfigError
from lsr_os.sparse import SparseRecord
from lsr_os.vocab import Vocabulary, feature_to_term, term_to_feature


def offline(name: str):
    """(features, operations) of an engine's backend, without a connection: both are pure."""
    cls = engine_class(name)
    features = cls.features_class(None)
    return features, cls.operations_class(features)


@pytest.mark.parametrize("name", ENGINES)
@pytest.mark.parametrize("collection", ix.COLLECTIONS)
def test_each_engine_maps_the_packaged_collections_sparse_field_as_its_sparse_type(collection, name):
    packaged = ix.load_mapping(collection)
    features, ops = offline(name)
    body = ops.collection_body(packaged)
    props = body["mappings"]["properties"]
    assert features.sparse_field_type and props["sparse"]["type"] == features.sparse_field_type
    assert props["terms"]["type"] == "keyword"
    assert {"id", "dataset", "split", "image"} <= set(props)
    assert body["settings"]["index"]["number_of_shards"] >= 1
    # the engine's body is a copy: the packaged mapping and every other field stay as written
    assert ix.load_mapping(collection) == packaged
    assert {k: v for k, v in props.items() if k != "sparse"} == {
        k: v for k, v in packaged["mappings"]["properties"].items() if k != "sparse"}


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
    # an engine whose feature names are raw terms gets the terms as they are
    raw = ix.to_document(rec, top_terms=3, escape_names=False)
    assert raw["sparse"] == {"dog": 2.0, ".": 1.5, "...": 0.7, "##s": 0.2, "café": 0.3}
    assert raw["terms"] == doc["terms"]


@pytest.mark.parametrize("name", ENGINES)
def test_each_engine_stores_a_term_under_the_feature_name_its_documents_use(name):
    """`ops.feature` (queries, explanations) and `to_document` (documents) name a term alike."""
    features, ops = offline(name)
    terms = [".", "a.b", "100%", "##s", "café", "[CLS]"]
    doc = ix.to_document(SparseRecord("x", dict.fromkeys(terms, 1.0)), escape_names=features.escapes_feature_names)
    assert sorted(doc["sparse"]) == sorted(ops.feature(t) for t in terms)
    assert [ops.term(ops.feature(t)) for t in terms] == terms
    assert all("." not in ops.feature(t) for t in terms) == features.escapes_feature_names


def test_document_pruning_keeps_the_heaviest_terms():
    rec = SparseRecord("c", {"a": 0.1, "b": 0.5, "c": 0.9, "d": 0.05})
    assert set(ix.to_document(rec, top_k=2)["sparse"]) == {"b", "c"}
    assert set(ix.to_document(rec, threshold=0.08)["sparse"]) == {"a", "b", "c"}
    with pytest.raises(ix.InvalidRecord, match="after pruning"):
        ix.to_document(rec, threshold=1.0)


def test_retry_policy_retries_429_5xx_and_connection_failures_only():
    policy = ix.RetryPolicy(max_attempts=5, initial_backoff=0.5, max_backoff=3.0)
    assert policy.retryable(429) and policy.retryable(503) and policy.retryable(500)
    assert policy.retryable("N/A")  # the status BulkLoader reports when no HTTP answer came
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


@pytest.mark.parametrize("record, reason", [
    (SparseRecord("x" * 513, {"dog": 1.0}), "513 bytes; the engine takes at most 512"),
    (SparseRecord("é" * 300, {"dog": 1.0}), "600 bytes"),
    (SparseRecord("empty", {}), "no term with a finite weight > 0"),
    (SparseRecord("nan", {"dog": math.nan, "cat": -1.0}), "no term with a finite weight > 0"),
    (SparseRecord("immense", {"a" * 40000: 1.0}), "Lucene takes at most 32766"),
    (SparseRecord("many", {f"t{i}": 1.0 for i in range(80000)}), "per-field limit"),
])
def test_records_the_engine_would_refuse_are_invalid_before_sending(record, reason):
    with pytest.raises(ix.InvalidRecord, match=reason):
        ix.to_document(record)


def test_a_whole_vocabulary_of_heavy_weights_stays_within_the_field_limit():
    terms = Vocabulary.default().terms
    doc = ix.to_document(SparseRecord("all", {t: 3.0e38 for t in terms}))
    assert len(doc["sparse"]) == len(terms)


def test_dashboards_objects_for_another_prefix_rename_every_id_and_reference():
    objects = [json.loads(line) for line in ix.dashboards_objects("demo").splitlines()]
    ids = {o["id"] for o in objects}
    assert all(i.startswith("demo-") for i in ids)
    assert {o["attributes"]["title"] for o in objects if o["type"] == "index-pattern"} == {"demo-images",
                                                                                            "demo-captions"}
    assert all(ref["id"] in ids for o in objects for ref in o.get("references", []))
    assert ix.dashboards_objects("lsr") == "\n".join(
        json.dumps(json.loads(line), ensure_ascii=False) for line in resources.files("lsr_os.mappings").joinpath(
            "dashboards.ndjson").read_text(encoding="utf-8").splitlines() if line.strip()) + "\n"


def test_clean_vectors_take_the_fast_path_with_the_same_document_as_cleaning():
    """A clean vector skips per-term work; the document is what clean + prune + escaping give."""
    vec = {"dog": 2.0, "a.b": 0.5, "100%": 0.25, "cat": 1, "##s": 3.0e38}
    doc = ix.to_document(SparseRecord("x", dict(vec)), top_terms=2)
    assert doc["sparse"] == {"dog": 2.0, "a%2Eb": 0.5, "100%25": 0.25, "cat": 1.0, "##s": 3.0e38}
    assert doc["terms"] == ["##s", "dog"]
    assert ix.to_document(SparseRecord("x", dict(vec)), escape_names=False)["sparse"] == vec
    for bad in (math.nan, math.inf, -1.0, 0.0, 1e-40):
        doc = ix.to_document(SparseRecord("x", {**vec, "bad": bad}))
        assert "bad" not in doc["sparse"] and len(doc["sparse"]) == len(vec)


def test_top_terms_break_ties_by_term_whatever_the_input_order():
    tied = {"b": 1.0, "d": 1.0, "a": 1.0, "c": 1.0, "z": 2.0}
    assert ix.to_document(SparseRecord("x", tied), top_terms=3)["terms"] == ["z", "a", "b"]
    assert ix.to_document(SparseRecord("x", dict(reversed(tied.items()))), top_terms=3)["terms"] == ["z", "a", "b"]
    assert ix.to_document(SparseRecord("x", tied), top_terms=0)["terms"] == []


def test_bulk_lines_are_one_action_and_one_source_in_utf8_json():
    import numpy as np

    loader = ix.BulkLoader(None, 'idx "quoted"')
    doc = ix.to_document(SparseRecord('id-é"1', {"café": 0.5}, {"n": np.int64(3), "w": np.float32(0.25)}))
    action, source, end = loader.doc('id-é"1', doc).lines.split(b"\n")
    assert end == b"" and json.loads(action) == {"index": {"_index": 'idx "quoted"', "_id": 'id-é"1'}}
    assert json.loads(source) == {**doc, "n": 3, "w": 0.25} and "café".encode() in source
    with pytest.raises(ix.InvalidRecord, match="cannot be written as JSON"):
        loader.doc("x", {"id": "x", "what": object()})


def test_default_shards_one_per_data_node_and_more_only_past_the_shard_size():
    assert ix.default_shards(None, 1) == 1 and ix.default_shards(None, 3) == 3
    assert ix.default_shards(1_000_000, 1) == 1 and ix.default_shards(100_000, 3) == 3
    per_shard = ix.SHARD_BYTES // ix.DOC_BYTES[False]
    assert ix.default_shards(per_shard, 1) == 1 and ix.default_shards(per_shard + 1, 1) == 2
    assert ix.default_shards(per_shard + 1, 1, exclude_vectors=True) == 1
    assert ix.default_shards(20 * per_shard, 3) == 20
