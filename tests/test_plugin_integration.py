"""The lsr-os plugin on a real node of each engine (OPENSEARCH_URL, ELASTICSEARCH_URL; CI's nodes
run it): the tokenizer equals Hugging Face's fast tokenizer through `_analyze`, and a plain `match`
on the folded `text` field ranks like the inference-free sparse query (rank_feature on OpenSearch,
sparse_vector on Elasticsearch); on OpenSearch, Dashboards' own request bodies too."""

from __future__ import annotations

import json
import random

import pytest

from lsr_os import plugin
from lsr_os.errors import BadRequest
from lsr_os.index import load_mapping, to_document
from lsr_os.search import build_query
from lsr_os.sparse import SparseRecord, quantize
from plugin_helpers import (analyzed, bulk_lines, char_table, discover, discover_body, expected, random_texts,
                            reference, require_plugin, saved_search, world_captions)

pytestmark = pytest.mark.integration

SCALE = plugin.DEFAULT_SCALE


@pytest.fixture(scope="module")
def client(engine):
    """The engine's test node, which must run the plugin."""
    require_plugin(engine)
    return engine


def _images_body(client, vocab: str, scale=SCALE) -> dict:
    return plugin.with_text_field(client.ops.collection_body(load_mapping("images")), vocab, scale)


def _mismatches(texts, got):
    return [(t, e, g) for t, e, g in zip(texts, expected(texts), got) if e != g]


# ----------------------------------------------------------------------------- the tokenizer


def test_tokens_and_offsets_equal_the_fast_tokenizer_on_10000_texts(client):
    texts = world_captions(4000, seed=1) + random_texts(6500, seed=2)
    bad = _mismatches(texts, analyzed(client, texts))
    assert not bad, f"{len(bad)} of {len(texts)} texts differ, e.g. {bad[:3]}"


def test_every_kind_of_character_between_letters_tokenizes_as_the_reference(client, index_name):
    """Code points as "a<c>b": whether c is dropped, a space, punctuation, CJK or part of the word,
    and what NFD and lowercasing make of it. All of Unicode below U+3400, every edge of the
    character tables (each range's first and last code point and their neighbours), and every
    37th code point above."""
    edges = {cp + d for ranges in char_table().classes().values() for a, b in ranges for cp in (a, b) for d in (-1, 0, 1)}
    cps = sorted(c for c in set(range(0x3400)) | edges | set(range(0x3400, 0x110000, 37))
                 if 0 <= c <= 0x10FFFF and not 0xD800 <= c <= 0xDFFF)
    texts = [f"a{chr(c)}b" for c in cps]
    client.create_index(index_name, {"settings": {"index": {
        "analyze.max_token_count": 100000,
        "analysis": {"analyzer": {"pieces": {"type": "custom", "tokenizer": plugin.TOKENIZER}}}}}})
    bad = _mismatches(texts, analyzed(client, texts, index=index_name, analyzer="pieces", max_tokens=60000))
    assert len(texts) > 40000
    assert not bad, f"{len(bad)} of {len(texts)} code points differ, e.g. {[(hex(ord(t[1])), e, g) for t, e, g in bad[:5]]}"


def test_hugging_face_bert_tokenizer_cases(client):
    """The cases of transformers' BERT tokenizer tests (basic tokenizer, lower case with accents
    stripped, Chinese, WordPiece, offsets around special tokens), against the real vocabulary."""
    cases = [" \tHeLLo!how  \n Are yoU?  ", " \tHäLLo!how  \n Are yoU?  ", "ah\u535a\u63a8zz",
             "unwanted running", "unwantedX running", "A, naïve [MASK] AllenNLP sentence.",
             "\u00e9t\u00e9 d\u2019\u00e9t\u00e9", "Hello\u00a0world\u3000!", "UNwant\u00e9d,running"]
    assert [t for t, *_ in analyzed(client, [cases[0]])[0]] == ["hello", "!", "how", "are", "you", "?"]
    assert [t for t, *_ in analyzed(client, [cases[1]])[0]] == ["hall", "##o", "!", "how", "are", "you", "?"]
    assert [t for t, *_ in analyzed(client, [cases[2]])[0]] == ["ah", "\u535a", "[UNK]", "z", "##z"]  # one piece per ideograph
    assert not _mismatches(cases, analyzed(client, cases))


def test_position_increments_are_one_and_the_index_analyzer_checks_the_vocabulary(client, index_name):
    tokens = client.analyze(None, {"tokenizer": plugin.TOKENIZER, "text": "unaffable 한국"})["tokens"]
    assert [t["position"] for t in tokens] == list(range(len(tokens))) and len(tokens) > 3
    client.create_index(index_name, _images_body(client, plugin.vocab_sha256()))
    texts = ["the dog the dog on a beach", "Dogs, DOGS and dogs!"]
    got = analyzed(client, texts, index=index_name, analyzer=plugin.QUERY_ANALYZER)
    assert [[t for t, *_ in g] for g in got] == [["the", "dog", "on", "a", "beach"], ["dogs", ",", "and", "!"]]

    wrong = "0" * 64
    with pytest.raises(BadRequest) as info:
        client.create_index(f"{index_name}-wrong", _images_body(client, wrong))
    assert f"vocab_sha256 [{wrong}] does not match the vocabulary" in client.error_text(info.value)


# ----------------------------------------------------------------------------- scoring


WORDS = ["dog", "beach", "cat", "red", "blue", "ball", "stars", "night", "grass", "car", "tree", "house", "river",
         "small", "large", "green", "circle", "square", "two", "three", "sky", "snow", "boat", "bird", "horse"]
STOP = ["the", "a", "of", "on", ".", ",", "and"]


@pytest.fixture(scope="module")
def scored_indices():
    """The scoring index of each engine asked for, made once (`scored`) and deleted at the end."""
    made = {}

    def scored(engine):
        if engine.name not in made:
            made[engine.name] = (engine, _scored_index(engine))
        return made[engine.name][1]

    yield scored
    for engine, (name, *_) in made.values():
        engine.delete_indices(name, missing_ok=True)


def _scored_index(engine):
    """Documents with known sparse vectors and a known weight table, indexed with both fields (as
    `lsr-os ingest` writes them)."""
    rng = random.Random(7)
    terms = WORDS + STOP + ["##s", "[CLS]"]
    weights = {t: round(rng.uniform(0.2, 3.0), 4) for t in WORDS} | {t: 0.0 for t in STOP + ["##s", "[CLS]"]}
    docs = {}
    for i in range(300):
        chosen = rng.sample(terms, rng.randint(3, 12))
        docs[f"d{i:03d}"] = {t: rng.uniform(0.01, 4.0) for t in chosen}
    folding = plugin.Folding(weights, plugin.vocab_sha256(), SCALE, "test", "test")
    name = f"test-plugin-scoring-{engine.name}"
    engine.delete_indices(name, missing_ok=True)
    engine.create_index(name, _images_body(engine, plugin.vocab_sha256()))
    bulk_lines(engine, name, {doc_id: to_document(SparseRecord(doc_id, vector), folding=folding,
                                                  escape_names=engine.features.escapes_feature_names)
                              for doc_id, vector in docs.items()})
    return name, docs, weights


@pytest.fixture(scope="module")
def scored_index(client, scored_indices):
    return scored_indices(client)


@pytest.fixture(scope="module")
def os_scored_index(opensearch, scored_indices):
    """The scoring index on OpenSearch, for Dashboards."""
    require_plugin(opensearch)
    return scored_indices(opensearch)


def _pieces(text: str) -> list[str]:
    return reference().encode(text, add_special_tokens=False).tokens


def _inference_free(text: str, weights: dict) -> dict:
    """The Python inference-free query: each distinct piece once, weight w_t > 0."""
    return {t: weights[t] for t in dict.fromkeys(_pieces(text)) if weights.get(t, 0) > 0}


def _hits(client, index, body) -> list[tuple[str, float]]:
    return [(h["_id"], h["_score"]) for h in client.search(index, body)["hits"]["hits"]]


QUERIES = ["dog beach", "the red ball on the grass", "two green stars at night", "a boat on a river",
           "horse horse horse", "Large HOUSE, small tree.", "snow sky bird car circle square three"]


@pytest.mark.parametrize("text", QUERIES)
def test_a_match_query_scores_the_inference_free_dot_product(scored_index, client, text):
    index, docs, weights = scored_index
    query = _inference_free(text, weights)
    tolerance = len(query) * 0.5 / SCALE + 1e-5  # rounding per term, plus float32 sums
    ranked = _hits(client, index, build_query(client.ops, query, size=len(docs)))
    matched = _hits(client, index, {"size": len(docs), "query": {"match": {plugin.FIELD: text}}})
    assert {d for d, _ in matched} == {d for d, _ in ranked}
    feature_score = dict(ranked)
    for doc_id, score in matched:
        exact = sum(w * float(quantize(docs[doc_id][t])) for t, w in query.items() if t in docs[doc_id])
        assert score == pytest.approx(feature_score[doc_id], abs=tolerance)
        assert score == pytest.approx(exact, abs=tolerance)
    tenth = ranked[9][1]
    sure = {d for d, s in ranked[:10] if abs(s - tenth) > 2 * tolerance}  # not tied with the 10th within tolerance
    assert sure <= {d for d, _ in matched[:10]} and len(sure) >= 8


def test_repeated_words_count_once_and_stop_words_add_nothing(scored_index, client):
    index, *_ = scored_index
    once = _hits(client, index, {"size": 20, "query": {"match": {plugin.FIELD: "dog beach"}}})
    assert _hits(client, index, {"size": 20, "query": {"match": {plugin.FIELD: "dog dog beach DOG, beach"}}}) == once
    assert _hits(client, index, {"size": 20, "query": {"match": {plugin.FIELD: "the dog on a beach ."}}}) == once
    assert _hits(client, index, {"size": 20, "query": {"match": {plugin.FIELD: "the of , ."}}}) == []


def test_the_match_is_term_queries_on_the_field_and_explains_as_the_dot_product(scored_index, client):
    index, docs, weights = scored_index
    text = "puppies on the beach, on the BEACH"
    with client.errors():  # a call lsr-os itself never makes: the same on both clients
        answer = client.client.indices.validate_query(index=index, explain=True,
                                                      body={"query": {"match": {plugin.FIELD: text}}})
    assert answer["valid"], answer
    pieces = list(dict.fromkeys(_pieces(text)))
    assert any(p.startswith("##") for p in pieces)
    assert answer["explanations"][0]["explanation"].split() == [f"{plugin.FIELD}:{p}" for p in pieces]
    hit = client.search(index, {"size": 1, "explain": True, "query": {"match": {plugin.FIELD: "beach"}}})
    detail = hit["hits"]["hits"][0]["_explanation"]
    assert "boost * freq / scale" in str(detail)
    doc = docs[hit["hits"]["hits"][0]["_id"]]
    assert detail["value"] == pytest.approx(round(weights["beach"] * float(quantize(doc["beach"])) * SCALE) / SCALE)


def test_track_total_hits_false_gives_the_top_hits_of_a_full_count(scored_index, client):
    """Top-score mode (what lets Lucene skip by the similarity's max scores) works on the field and
    agrees with a search that counts every hit. That skipping really happens is shown in the
    plugin's Java tests (DotSimilarityTests: Lucene visits fewer documents than match); the
    node's profiler cannot show it, as profiling turns bulk skipping off for every query."""
    index, *_ = scored_index
    query = {"match": {plugin.FIELD: "dog beach cat red blue ball"}}
    counted = client.search(index, {"size": 5, "query": query, "track_total_hits": True})
    top = client.search(index, {"size": 5, "query": query, "track_total_hits": False})
    assert "total" not in top["hits"] and counted["hits"]["total"]["value"] > 5
    assert [(h["_id"], h["_score"]) for h in top["hits"]["hits"]] == \
        [(h["_id"], h["_score"]) for h in counted["hits"]["hits"]]


# ----------------------------------------------------------------------------- OpenSearch Dashboards


@pytest.mark.parametrize("text", ["dog beach", "two green stars at night", "horse horse"])
def test_discover_lucene_free_text_ranks_as_the_match_query(os_scored_index, opensearch, text):
    index, *_ = os_scored_index
    hits = discover(opensearch, index, discover_body(text, saved_search()))
    matched = _hits(opensearch, index, {"size": 500, "query": {"match": {plugin.FIELD: text}}})
    assert [(h["_id"], h["_score"]) for h in hits] == matched and matched
    assert all(plugin.FIELD not in h["_source"] for h in hits)  # the folded field stays out of Discover


def test_the_saved_images_search_is_lucene_sorted_by_score_whatever_the_prefix():
    for prefix in ("lsr", "demo"):
        search = saved_search(prefix)
        assert json.loads(search["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"])["query"]["language"] == "lucene"
        assert search["attributes"]["sort"] == [["_score", "desc"]]


def test_discover_dql_free_text_filters_without_scores(os_scored_index, opensearch):
    """Why the images search is saved with Lucene: DQL puts free text in filter context, so every
    hit scores 0 and "sorted by _score" is no ranking at all."""
    index, *_ = os_scored_index
    dql = saved_search()
    source = json.loads(dql["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"])
    source["query"]["language"] = "kuery"
    dql["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"] = json.dumps(source)
    hits = discover(opensearch, index, discover_body("dog beach", dql))
    assert hits and {h["_score"] for h in hits} == {0.0}
