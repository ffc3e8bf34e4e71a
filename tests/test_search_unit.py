"""Unit tier for lsr_os.search: query preparation, the DSL, explain, TREC runs, bad queries, query
modes, and the demo's defaults in every command."""

import json

import pytest
from click.testing import CliRunner

from lsr_os import search as se
from lsr_os.engines import ENGINES, engine_class
from lsr_os.errors import DataError
from lsr_os.sparse import quantize
from lsr_os.vocab import Vocabulary, content_tokens, feature_to_term


def test_prepare_query_caps_to_the_heaviest_terms_and_cleans():
    q = {f"t{i}": float(i) for i in range(1, 11)}
    q["neg"] = -1.0
    kept = se.prepare_query(q, max_terms=3)
    assert kept == {"t10": 10.0, "t9": 9.0, "t8": 8.0}


def test_empty_query_and_query_without_known_terms_are_clear_errors():
    with pytest.raises(DataError, match="empty query"):
        se.prepare_query({}, 10)
    with pytest.raises(DataError, match="no known term"):
        se.prepare_query({"zzzznotaword": 1.0, "qqqqq": 2.0}, 10, Vocabulary.default())
    with pytest.raises(DataError, match="no known term"):
        se.prepare_query({"dog": 0.0}, 10)
    assert se.prepare_query({"dog": 1.0, "zzzznotaword": 1.0}, 10, Vocabulary.default()) == {"dog": 1.0}


def offline_ops(name: str):
    """An engine's operations without a connection: they are pure functions of their input."""
    cls = engine_class(name)
    return cls.operations_class(cls.features_class(None))


@pytest.fixture(params=ENGINES)
def ops(request):
    return offline_ops(request.param)


def test_the_body_is_the_engines_sparse_query_and_filters_only_select(ops):
    body = se.build_query(ops, {"dog": 1.5, ".": 0.25}, size=7)
    assert body["size"] == 7 and body["query"] == ops.sparse_query({"dog": 1.5, ".": 0.25})
    assert "sparse" not in body["_source"]["includes"]
    filtered = se.build_query(ops, {"dog": 1.0}, filters=[{"term": {"split": "test"}}], with_vectors=True)
    assert filtered["query"] == {"bool": {"must": [ops.sparse_query({"dog": 1.0})],
                                          "filter": [{"term": {"split": "test"}}]}}
    assert "sparse" in filtered["_source"]["includes"]
    assert filtered["_source"] == ops.source_filter(se.DISPLAY_FIELDS, with_vectors=True)


def test_opensearch_scores_linear_rank_feature_clauses_boosted_by_the_query_weights():
    should = offline_ops("opensearch").sparse_query({"dog": 1.5, ".": 0.25})["bool"]["should"]
    assert should == [{"rank_feature": {"field": "sparse.dog", "linear": {}, "boost": 1.5}},
                      {"rank_feature": {"field": "sparse.%2E", "linear": {}, "boost": 0.25}}]


def test_elasticsearch_scores_one_exact_sparse_vector_query_of_raw_terms():
    ops = offline_ops("elasticsearch")
    assert ops.sparse_query({".": 0.25, "dog": 1.5}) == {"sparse_vector": {
        "field": "sparse", "query_vector": {"dog": 1.5, ".": 0.25}, "prune": False}}
    assert list(ops.sparse_query({".": 0.25, "dog": 1.5})["sparse_vector"]["query_vector"]) == ["dog", "."]
    # vectors come back in _source only when the search asks (9.2 leaves them out otherwise)
    assert ops.source_filter(["id"], with_vectors=True) == {"includes": ["id", "sparse"], "exclude_vectors": False}
    assert ops.source_filter(["id"]) == {"includes": ["id"]}


def test_explain_contributions_use_the_stored_9_bit_weights(ops):
    query = {"dog": 2.0, ".": 0.5, "cat": 1.0}
    stored = {"dog": 1.2345678, ".": 0.333333, "tree": 9.0}
    hit = {"_id": "x", "_source": {"sparse": {ops.feature(t): w for t, w in stored.items()}}}
    rows = se.explain_hit(ops, query, hit)
    assert [r["term"] for r in rows] == ["dog", "."]
    assert rows[0]["doc_weight"] == float(quantize(1.2345678)) != 1.2345678
    assert sum(r["contribution"] for r in rows) == pytest.approx(2.0 * float(quantize(1.2345678))
                                                                 + 0.5 * float(quantize(0.333333)))


def test_trec_run_is_ranked_per_query(tmp_path):
    path = tmp_path / "run.trec"
    se.write_trec(path, {"q1": {"a": 0.5, "b": 2.0}, "q2": {"c": 1.0}}, "test")
    assert path.read_text().splitlines() == ["q1 Q0 b 1 2.000000 test", "q1 Q0 a 2 0.500000 test",
                                             "q2 Q0 c 1 1.000000 test"]


def test_unreadable_query_image_is_a_clear_error(tmp_path):
    bad = tmp_path / "not-an-image.jpg"
    bad.write_bytes(b"this is text")
    with pytest.raises(DataError, match="cannot read query image"):
        se.read_query_image(bad)
    with pytest.raises(DataError, match="does not exist"):
        se.read_query_image(tmp_path / "missing.png")


def _cli(*args):
    from lsr_os.cli import main

    return CliRunner().invoke(main, list(args))


def test_cli_bad_queries_fail_before_any_cluster_call(tmp_path):
    unreachable = "http://127.0.0.1:9"  # discard port: nothing answers
    res = _cli("search", "   ", "--url", unreachable)
    assert res.exit_code != 0 and "empty query" in res.output
    res = _cli("search", "--vector-json", '{"zzzznotaword": 1}', "--url", unreachable)
    assert res.exit_code != 0 and "no known term" in res.output
    res = _cli("search", "--vector-json", '{"dog": "heavy"}', "--url", unreachable)
    assert res.exit_code != 0 and "--vector-json: the weight of 'dog' is \"heavy\", not a number" in res.output
    img = tmp_path / "broken.png"
    img.write_bytes(b"\x89PNG broken")
    res = _cli("search", "--image", str(img), "--url", unreachable)
    assert res.exit_code != 0 and "cannot read query image" in res.output
    res = _cli("search", "a dog", "--url", unreachable)
    assert res.exit_code == 2 and "--model and --head" in res.output


def test_cli_unreachable_cluster_is_one_line_with_exit_code_3():
    res = _cli("search", "--vector-json", '{"dog": 1}', "--url", "http://127.0.0.1:9", "--timeout", "2")
    assert res.exit_code == 3
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "no cluster answered at http://127.0.0.1:9" in lines[0]


@pytest.mark.parametrize("text", ["🦄", "the a of and", "... !!", "To be or not to be"])
def test_a_text_without_content_words_is_refused_naming_its_tokens(text):
    from lsr_os.vocab import load_tokenizer

    with pytest.raises(DataError, match="no content word to search for .* tokenizes to"):
        content_tokens(text, load_tokenizer())


def test_content_tokens_keep_word_pieces_of_content_words():
    from lsr_os.vocab import load_tokenizer

    tok = load_tokenizer()
    assert content_tokens("a dog on the beach", tok) == ["dog", "beach"]
    pieces = content_tokens("xylophonequux", tok)  # an odd word is still a word: its pieces stay
    assert pieces == tok.tokenize("xylophonequux") and len(pieces) > 1


def query_terms(query: dict) -> list[str]:
    """The terms of an engine's sparse query, in the order it lists them (as the user wrote them)."""
    if "sparse_vector" in query:  # Elasticsearch: one query, raw terms
        return list(query["sparse_vector"]["query_vector"])
    return [feature_to_term(c["rank_feature"]["field"].split(".", 1)[1]) for c in query["bool"]["should"]]


def test_two_phase_query_matches_with_the_heaviest_terms_and_rescores_with_all(ops):
    vector = {f"t{i}": float(i) for i in range(1, 21)}
    body = se.build_query(ops, vector, size=10, first_terms=5, window=50)
    assert query_terms(body["query"]) == [f"t{i}" for i in range(20, 15, -1)]
    rescore = body["rescore"]
    assert rescore["window_size"] == 50 and rescore["query"]["query_weight"] == 0.0
    assert rescore["query"]["rescore_query"] == ops.sparse_query(vector)
    assert "rescore" not in se.build_query(ops, vector, first_terms=20)  # nothing left out: one phase


def test_search_result_splits_own_and_expansion_terms():
    result = se.SearchResult("i", 1, {"dog": 2.0, "puppy": 1.0, "beach": 3.0}, [], {}, False, "dog beach",
                             frozenset({"dog", "beach"}))
    assert result.to_dict()["query"] == {"text": "dog beach", "own": {"beach": 3.0, "dog": 2.0},
                                         "expansion": {"puppy": 1.0}}


def test_no_model_loads_before_the_cluster_and_collection_are_checked(tmp_path):
    from lsr_os.config import ClusterConfig
    from lsr_os.errors import ClusterUnreachable
    from lsr_os.models import register_encoder
    from lsr_os.models.dense import DenseEncoder
    from lsr_os.models.head import SparseHead

    loads = []

    class SlowToLoad(DenseEncoder):
        """Stands for BLIP: a model that would take many seconds to load."""

        @classmethod
        def load(cls, source, device=None, dtype=None):
            loads.append(source)
            raise AssertionError("the model was loaded before the cluster was checked")

    register_encoder("slow-test", SlowToLoad)
    SparseHead(dense_size=8, hidden_size=4).save_pretrained(tmp_path / "head")
    with pytest.raises(ClusterUnreachable):
        se.run_search(ClusterConfig(urls=("http://127.0.0.1:9",), timeout=2), text="a dog", model="slow-test:x",
                      head=tmp_path / "head")
    assert loads == []


def test_explain_reads_the_engines_explanation_when_the_hit_carries_one(ops):
    """The shape Lucene's FeatureField gives a linear clause (OpenSearch's rank_feature and
    Elasticsearch's sparse_vector query alike; recorded from Elasticsearch 9.2, where the feature
    is the raw term, and OpenSearch 3.8, where it is escaped); a two-phase search explains the
    first phase and the rescore, and each term counts once."""
    def clause(term, w, s):
        return {"value": w * s, "description": f"Linear function on the sparse field for the {ops.feature(term)} "
                                               "feature, computed as w * S from:",
                "details": [{"value": w, "description": "w, weight of this function", "details": []},
                            {"value": s, "description": "S, feature value", "details": []}]}
    explanation = {"value": 2.625, "description": "sum of:", "details": [
        {"value": 0.0, "description": "product of:", "details": [clause("dog", 2.0, 1.25),
                                                                  {"value": 0.0, "description": "primaryWeight"}]},
        {"value": 2.625, "description": "product of:", "details": [
            {"value": 2.625, "description": "sum of:", "details": [clause("dog", 2.0, 1.25), clause(".", 0.5, 0.25)]},
            {"value": 1.0, "description": "secondaryWeight", "details": []}]},
        {"value": 0.0, "description": "match on required clause, product of:", "details": [
            {"value": 0.0, "description": "# clause", "details": []},
            {"value": 1.0, "description": "split:test", "details": []}]}]}
    rows = se.explain_hit(ops, {"dog": 2.0, ".": 0.5, "cat": 1.0}, {"_id": "x", "_source": {}, "_explanation": explanation})
    assert [(r["term"], r["doc_weight"], r["contribution"]) for r in rows] == [("dog", 1.25, 2.5), (".", 0.25, 0.125)]


def test_explain_asks_the_engine_for_explanations(ops):
    body = se.build_query(ops, {"dog": 1.0}, explain=True)
    assert body["explain"] is True and "sparse" not in body["_source"]["includes"]
    assert "explain" not in se.build_query(ops, {"dog": 1.0})


def test_one_order_heaviest_first_ties_by_term_everywhere_terms_are_listed(ops):
    from lsr_os.sparse import heaviest_first, prune

    vector = {"b": 1.0, "a": 1.0, "c": 2.0, "d": 0.5}
    assert heaviest_first(vector.items()) == [("c", 2.0), ("a", 1.0), ("b", 1.0), ("d", 0.5)]
    assert list(prune(vector, top_k=2)) == ["c", "a"]  # the tie at the cut goes to the first term
    assert query_terms(se.build_query(ops, vector)["query"]) == ["c", "a", "b", "d"]
    assert list(se.split_terms(vector, frozenset({"b", "d"}))["own"]) == ["b", "d"]


def test_a_vector_s_weights_are_checked_in_one_place_with_one_message():
    from lsr_os.sparse import numeric_weights

    assert numeric_weights({"dog": 1, "cat": 0.5}, "vector") == {"dog": 1.0, "cat": 0.5}
    with pytest.raises(DataError, match=r"^vector: the weight of 'dog' is \"heavy\", not a number$"):
        numeric_weights({"dog": "heavy"}, "vector")
    with pytest.raises(DataError, match="the weight of 'dog' is true, not a number"):
        numeric_weights({"dog": True}, "vector")
    with pytest.raises(DataError, match="^vector must be an object of term: weight, not list$"):
        numeric_weights([["dog", 1.0]], "vector")
    with pytest.raises(DataError, match=r"--vector-json: the weight of 'dog' is null, not a number"):
        se.parse_vector_json('{"dog": null}')


# --------------------------------------------------------------------------- query modes


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    """A head with query weights on every content term (weight 1 + id / V) and one without."""
    import torch

    from lsr_os import static_query as sq
    from lsr_os.models.head import SparseHead
    from lsr_os.vocab import fast_tokenizer

    root = tmp_path_factory.mktemp("heads")
    tok = fast_tokenizer()
    mask = torch.tensor(sq.content_term_mask([tok.id_to_token(i) for i in range(len(tok))], tok.all_special_tokens))
    head = SparseHead.init_offline(dense_size=256)
    head.save_pretrained(root / "plain")
    head.query_weights = (1.0 + torch.arange(len(tok)) / len(tok)) * mask
    head.query_weights_info = {"method": "test"}
    head.save_pretrained(root / "weighted")
    return root / "weighted", root / "plain"


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    from serve_helpers import make_demo_encoder

    return str(make_demo_encoder(tmp_path_factory.mktemp("encoder") / "demo"))


def test_the_mode_follows_what_is_given(heads):
    weighted, plain = heads
    assert se.QueryEncoder(None, weighted).mode() == "inference-free"
    assert se.QueryEncoder("demo:x", weighted).mode() == "expanded"
    assert se.QueryEncoder("demo:x", plain).mode(expand=False) == "own-tokens"
    assert se.QueryEncoder("demo:x", weighted).mode("inference-free") == "inference-free"
    assert se.QueryEncoder("demo:x", weighted).modes == ("expanded", "own-tokens", "inference-free")
    assert se.QueryEncoder(None, weighted).modes == ("inference-free",)


def test_a_mode_that_cannot_run_or_conflicts_is_one_clear_error(heads):
    from lsr_os.errors import ConfigError
    from lsr_os.static_query import QueryWeightsMissing

    weighted, plain = heads
    with pytest.raises(ConfigError, match="no expansion .* is mode own-tokens; it conflicts with mode expanded"):
        se.QueryEncoder("demo:x", weighted).mode("expanded", expand=False)
    with pytest.raises(ConfigError, match="mode expanded runs a dense model, and there is none .*inference-free"):
        se.QueryEncoder(None, weighted).mode("expanded")
    with pytest.raises(QueryWeightsMissing, match=rf"the head {plain} has no query weights.*add-query-weights"):
        se.QueryEncoder("demo:x", plain).mode("inference-free")
    with pytest.raises(QueryWeightsMissing, match=rf"the head {plain} has no query weights"):
        se.QueryEncoder(None, plain).mode()


def test_each_mode_s_own_terms_and_a_bad_text_fails_alone(heads, encoder):
    """expanded: the text's content word pieces are its own, the rest is expansion; own-tokens and
    inference-free: every term is the text's own. One tokenisation each, one model call a batch."""
    weighted, _ = heads
    queries = se.QueryEncoder(encoder, weighted, "cpu")
    texts = ["two green stars", "the of and", "a red ring at night"]
    for mode in se.MODES:
        good, bad, other = queries.encode_texts(texts, mode)
        assert isinstance(bad, DataError) and "no content word" in str(bad), mode
        vector, own = good
        assert vector and isinstance(other, tuple)
        if mode == "expanded":
            assert own == {"two", "green", "stars"} and len(vector) > len(own)
        else:
            # (a head that does not block the special tokens, as this one, may weigh [CLS] and [SEP])
            assert own == set(vector) and set(vector) <= {"two", "green", "stars", "[CLS]", "[SEP]"}
    static = queries.encode_texts(["two green stars"], "inference-free")[0][0]
    assert static == queries.static.encode("two green stars")


def test_a_query_left_without_its_own_terms_says_every_hit_comes_from_expansion():
    expansion_only = se.SearchResult("i", 1, {"star": 1.0, "night": 0.5}, [], {}, False, "qwzx",
                                     frozenset({"q", "##w", "##z", "##x"}), "expanded")
    (warning,) = expansion_only.warnings
    assert "no word of 'qwzx' has a weight in its query" in warning
    assert "every hit comes from the model's expansion" in warning
    assert expansion_only.to_dict()["warnings"] == [warning] and expansion_only.to_dict()["mode"] == "expanded"
    kept = se.SearchResult("i", 1, {"star": 1.0, "q": 0.5}, [], {}, False, "qwzx", frozenset({"q", "##w"}), "expanded")
    assert kept.warnings == []
    vector = se.SearchResult("i", 1, {"star": 1.0}, [], {}, False, None, frozenset({"star"}), "vector")
    assert vector.warnings == []


def test_cli_modes_and_their_mistakes_fail_before_any_cluster_call(heads, tmp_path):
    weighted, plain = heads
    unreachable = "http://127.0.0.1:9"
    res = _cli("search", "two stars", "--head", str(plain), "--url", unreachable)
    assert res.exit_code == 1 and f"the head {plain} has no query weights" in res.output
    assert "lsr-os add-query-weights" in res.output
    res = _cli("search", "two stars", "--head", str(weighted), "--no-expansion", "--mode", "inference-free",
               "--url", unreachable)
    assert res.exit_code == 2 and "conflicts with mode inference-free" in res.output
    res = _cli("search", "two stars", "--head", str(weighted), "--mode", "expanded", "--url", unreachable)
    assert res.exit_code == 2 and "runs a dense model, and there is none" in res.output
    image = tmp_path / "q.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(image)
    res = _cli("search", "--image", str(image), "--head", str(weighted), "--url", unreachable)
    assert res.exit_code == 2 and "image queries run the dense model" in res.output
    res = _cli("search", "--vector-json", '{"dog": 1}', "--mode", "expanded", "--url", unreachable)
    assert res.exit_code == 2 and "--mode is for text queries" in res.output
    res = _cli("search", "the a of .", "--model", "demo:nowhere", "--head", str(weighted), "--url", unreachable)
    assert res.exit_code == 1 and "no content word" in res.output  # the text first: no cluster, no model


def test_the_cli_and_the_server_offer_every_query_mode():
    import typing

    from lsr_os.cli import main
    from lsr_os.serve import SearchRequest

    choices = next(p for p in main.commands["search"].params if p.name == "mode").type.choices
    assert tuple(choices) == ("auto", *se.MODES)
    assert typing.get_args(SearchRequest.model_fields["mode"].annotation) == ("auto", *se.MODES)


# --------------------------------------------------------------------------- the demo's defaults


class Stop(Exception):
    """Raised where a command would start its work: the options it received are recorded."""


@pytest.fixture
def demo_folder(tmp_path):
    (tmp_path / "images.jsonl").write_text('{"id": "a", "vector": {"dog": 1.0}}\n')
    (tmp_path / "head").mkdir()
    (tmp_path / "world").mkdir()
    (tmp_path / se.DEMO_SEARCH_FILE).write_text(json.dumps(
        {"model": str(tmp_path / "encoder"), "head": str(tmp_path / "head"), "prefix": "demo",
         "images": str(tmp_path / "world")}))
    return tmp_path


def _received(monkeypatch, target: str, *args) -> dict:
    """The keyword arguments (or the options object) the command passes to `target`."""
    import importlib

    module, name = target.rsplit(".", 1)
    seen: dict = {}

    def record(*a, **kw):
        seen.update(kw, args=a)
        raise Stop

    monkeypatch.setattr(importlib.import_module(module), name, record)
    monkeypatch.setattr("lsr_os.engines.connect", lambda *a, **kw: None)  # no cluster: the work stops before
    from lsr_os.cli import main

    res = CliRunner().invoke(main, list(args))
    assert isinstance(res.exception, Stop), res.output
    return seen


def test_every_command_that_takes_a_model_takes_the_demo_s_as_defaults(monkeypatch, demo_folder, tmp_path):
    demo = ["--demo", str(demo_folder)]
    model, head = str(demo_folder / "encoder"), demo_folder / "head"
    captions = demo_folder / "captions.csv"
    captions.write_text("image,caption\na.png,a dog\n")
    for command in ("ingest", "evaluate", "sparsify"):  # the models each source runs, and no other
        extra = ["--out", str(tmp_path / "out")] if command == "sparsify" else []
        for source, models in ((["--dense", str(tmp_path)], (None, head)), (["--captions", str(captions)], (model, head)),
                               (["--sparse", str(demo_folder / "images.jsonl")], (None, None))):
            (opts,) = _received(monkeypatch, "lsr_os.records.open_source", command, *source, *demo, *extra)["args"]
            assert (opts.model, opts.head) == models, (command, source)
    seen = _received(monkeypatch, "lsr_os.encode.encode_folder", "encode", "--captions", str(demo_folder / "search.json"),
                     "--out", str(tmp_path / "enc"), *demo)
    assert seen["args"][0] == model
    seen = _received(monkeypatch, "lsr_os.search.run_search", "search", "two stars", *demo)
    assert (seen["model"], seen["head"], seen["prefix"]) == (model, head, "demo")
    seen = _received(monkeypatch, "lsr_os.serve.listen", "serve", *demo)
    assert seen["args"] == ("127.0.0.1", 8080)  # got as far as the port: the demo's model and head were taken


def test_given_options_win_over_the_demo_and_ingest_keeps_its_own_prefix(monkeypatch, demo_folder, tmp_path):
    demo = ["--demo", str(demo_folder)]
    seen = _received(monkeypatch, "lsr_os.search.run_search", "search", "two stars", "--model", "demo:mine",
                     "--prefix", "mine", *demo)
    assert (seen["model"], seen["prefix"]) == ("demo:mine", "mine")
    evaluate = _received(monkeypatch, "lsr_os.evaluate.evaluate_source", "evaluate", "--sparse",
                         str(demo_folder / "images.jsonl"), *demo)
    assert evaluate["args"][3:5] == ("demo-images", "demo-captions")  # evaluating the demo's collections
    ingest = _received(monkeypatch, "lsr_os.index.ingest_collections", "ingest", "--sparse",
                       str(demo_folder / "images.jsonl"), "--collection", "images", *demo)
    assert ingest["args"][5] == "lsr"  # a load never replaces the demo's collections unless told: --prefix demo


def test_every_shard_failing_at_once_is_retried_like_a_partial_answer_but_a_bad_query_is_not():
    """A search that meets a node as it leaves can fail on every shard at once (HTTP 500
    search_phase_execution_exception, the CI failure that a lost node caused): retried as a
    partial answer is. The same exception with a 4xx is the query's fault and fails at once."""
    lost = {"error": {"type": "search_phase_execution_exception", "reason": "all shards failed",
                      "root_cause": [{"type": "node_disconnected_exception", "reason": "[node-2] disconnected"}]},
            "status": 500}
    assert se._all_shards_failed(500, lost) and se._all_shards_failed(503, lost)
    assert se._missing_shards(lost) == "every shard failed (search_phase_execution_exception: [node-2] disconnected)"
    assert not se._all_shards_failed(400, lost)
    assert not se._all_shards_failed(500, {"error": {"type": "illegal_state_exception"}})
    assert not se._all_shards_failed(None, "not json")
    assert se._missing_shards({"_shards": {"total": 2, "failed": 0}, "hits": {"hits": []}}) is None
