"""Integration tier for search on every engine: the clause cap read from the node, explain through
the CLI (from the engine's own explanation too), two-phase search, retried partial answers, text
query modes and contact sheets."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from index_helpers import cli, load
from lsr_os.search import build_query, prepare_query, search
from lsr_os.sparse import SparseRecord, quantize
from lsr_os.vocab import Vocabulary

pytestmark = pytest.mark.integration


def test_max_clause_count_is_read_and_a_full_capped_query_with_a_filter_runs(engine, index_name):
    cap = engine.max_clause_count
    assert cap >= 1024
    terms = Vocabulary.default().terms[2000:2000 + cap + 50]
    load(engine, iter([SparseRecord("all", dict.fromkeys(terms, 1.0), {"split": "test"})]), index_name)
    filters = [{"term": {"split": "test"}}]
    query = prepare_query(dict.fromkeys(terms, 1.0), cap - len(filters))
    hits, _ = search(engine, index_name, build_query(engine.ops, query, 5, filters))
    assert [h["_id"] for h in hits] == ["all"] and hits[0]["_score"] == pytest.approx(cap - 1, rel=1e-5)


def test_cli_explain_prints_pasteable_dsl_and_contributions_summing_to_the_score(engine, index_name):
    docs = [SparseRecord("a", {"dog": 2.0, "beach": 1.0, ".": 0.5}, {"caption": "a dog on a beach"}),
            SparseRecord("b", {"cat": 2.0, "beach": 0.25})]
    load(engine, iter(docs), index_name, "captions")
    res = cli(engine, "search", "--vector-json", '{"dog": 1.0, "beach": 2.0, ".": 1.0}', "--index", index_name,
              "--explain", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert [h["id"] for h in out["hits"]] == ["a", "b"]
    for hit in out["hits"]:
        assert sum(m["contribution"] for m in hit["matches"]) == pytest.approx(hit["score"], rel=1e-5)
    assert {m["term"] for m in out["hits"][0]["matches"]} == {"dog", "beach", "."}
    assert engine.search(index_name, out["dsl"])["hits"]["hits"][0]["_id"] == "a"


def test_a_missing_collection_names_the_ones_that_exist_and_their_prefix(engine, index_name):
    load(engine, iter([SparseRecord("a", {"dog": 1.0})]), f"{index_name}-images")
    res = cli(engine, "search", "--vector-json", '{"dog": 1}')  # default prefix: lsr
    assert res.exit_code == 1 and "no collection lsr-images on the cluster" in res.output
    assert f"{index_name}-images" in res.output and f"--prefix {index_name}" in res.output


def test_text_queries_without_content_fail_with_one_line_in_both_modes(engine, index_name, tmp_path):
    from lsr_os.models.head import SparseHead

    load(engine, iter([SparseRecord("a", {"dog": 1.0})]), f"{index_name}-images")
    SparseHead(dense_size=8, hidden_size=4).save_pretrained(tmp_path / "head")
    for text in ("🦄", "the a of and"):
        for mode in ([], ["--no-expansion"]):
            res = cli(engine, "search", text, "--prefix", index_name, "--model", "blip:nowhere", "--head",
                      tmp_path / "head", *mode)
            lines = [ln for ln in res.output.splitlines() if ln.strip()]
            assert res.exit_code == 1 and len(lines) == 1 and "no content word" in lines[0], res.output


def test_explain_takes_contributions_from_the_engine_when_vectors_are_left_out_of_source(engine, index_name):
    docs = [SparseRecord("a", {"dog": 1.2345678, "beach": 1.0, ".": 0.5}, {"caption": "a dog on a beach"}),
            SparseRecord("b", {"cat": 2.0, "beach": 0.25})]
    load(engine, iter(docs), index_name, "captions", exclude_vectors=True)
    stored = engine.get_document(index_name, "a")["_source"]
    assert "sparse" not in stored and stored["caption"] == "a dog on a beach"
    for extra in ([], ["--first-terms", "1", "--window", "5"]):  # two-phase: first phase and rescore explained
        res = cli(engine, "search", "--vector-json", '{"dog": 1.0, "beach": 2.0, ".": 1.0}', "--index", index_name,
                  "--explain", "--json", *extra)
        assert res.exit_code == 0, res.output
        out = json.loads(res.output)
        assert [h["id"] for h in out["hits"]] == ["a", "b"]
        for hit in out["hits"]:
            assert sum(m["contribution"] for m in hit["matches"]) == pytest.approx(hit["score"], rel=1e-5)
        first = {m["term"]: m for m in out["hits"][0]["matches"]}
        assert set(first) == {"dog", "beach", "."}
        assert first["dog"]["doc_weight"] == float(quantize(1.2345678)) != 1.2345678


def test_a_vector_search_through_the_cli_sends_one_search_and_imports_no_model_stack(engine, index_name):
    """Every HTTP request the process makes (the engine's detection included) is counted where
    both engines' clients send them: urllib3's connection pool."""
    load(engine, iter([SparseRecord("a", {"dog": 1.0}), SparseRecord("b", {"cat": 1.0})]), index_name)
    probe = ("import sys, json; from lsr_os.cli import main; from urllib3.connectionpool import HTTPConnectionPool; "
             "sent = []; send = HTTPConnectionPool.urlopen; "
             "HTTPConnectionPool.urlopen = lambda self, method, url, *a, **k: (sent.append((method, url)), "
             "send(self, method, url, *a, **k))[1]\n"
             "try: main.main(args=sys.argv[1:], prog_name='lsr-os', standalone_mode=False)\n"
             "finally: print(json.dumps({'sent': sent, 'heavy': [m for m in ('torch', 'transformers', 'numpy') "
             "if m in sys.modules]}))")
    out = subprocess.run([sys.executable, "-c", probe, "search", "--vector-json", '{"dog": 1.0}', "--index",
                          index_name, "--json", "--url", ",".join(engine.config.urls)],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    lines = out.stdout.strip().splitlines()
    facts = json.loads(lines[-1])
    assert json.loads("\n".join(lines[:-1]))["hits"][0]["id"] == "a"
    paths = [url.split("?")[0] for _, url in facts["sent"]]
    assert [p for p in paths if p.endswith("/_search")] == [f"/{index_name}/_search"]
    assert paths[0] == "/_nodes/_local" and len(paths) <= 3  # the engine, (the clause cap,) the search
    # nothing heavy but what the engine's own client imports by itself (elasticsearch-py's
    # serializers import pyarrow, and with it numpy, where they are installed)
    client = type(engine.client).__module__.split(".")[0]
    assert not {"torch", "transformers"} & set(facts["heavy"])
    assert set(facts["heavy"]) <= imported_by(f"import {client}")


ROOT = Path(__file__).resolve().parents[1]


def imported_by(code: str) -> set[str]:
    """The heavy modules a fresh interpreter has imported after `code`."""
    out = subprocess.run([sys.executable, "-c", f"import sys; {code}; print(','.join(m for m in "
                          f"('torch', 'transformers', 'numpy') if m in sys.modules))"],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    return set(filter(None, out.stdout.strip().split(",")))


def test_an_answer_missing_a_shard_is_retried_and_then_an_error_not_a_short_top_k(engine, index_name, monkeypatch):
    """A shard that cannot answer (here: an index where `sparse` and `sparse.dog` are keywords, so
    either engine's sparse query fails on it) would leave the other shards' hits as the top k.
    search and msearch send it again, then fail naming the shards."""
    from lsr_os import search as se
    from lsr_os.errors import ClusterError

    load(engine, [SparseRecord("a", {"dog": 1.0}), SparseRecord("b", {"dog": 0.5, "cat": 1.0})], index_name)
    broken = f"{index_name}-broken"
    engine.create_index(broken, {"settings": {"number_of_shards": 1, "number_of_replicas": 0},
                                 "mappings": {"properties": {"sparse": {"type": "keyword",
                                                                         "fields": {"dog": {"type": "keyword"}}}}}})
    engine.bulk(b'{"index": {"_index": "%s", "_id": "x"}}\n{"sparse": "x"}\n' % broken.encode())
    engine.refresh(broken)
    monkeypatch.setattr(se, "PARTIAL_RETRY_S", (0.01, 0.01))
    body = build_query(engine.ops, prepare_query({"dog": 1.0}, 10), 10)
    assert [h["_id"] for h in search(engine, index_name, body)[0]] == ["a", "b"]  # whole: as before
    both = f"{index_name},{broken}"
    shards = 1 + engine.search(index_name, body)["_shards"]["total"]
    with pytest.raises(ClusterError, match=rf"1 of {shards} shards did not answer \(.*exception.*\), 2 retries later"):
        search(engine, both, body)
    with pytest.raises(ClusterError, match=r"query q1 on .*: 1 of \d+ shards did not answer"):
        se.search_run(engine, both, [("q1", {"dog": 1.0})], progress=False)


def _weighted_head(folder: Path) -> Path:
    """A head whose query weights give every content term 1 + id / V."""
    import torch

    from lsr_os import static_query as sq
    from lsr_os.models.head import SparseHead
    from lsr_os.vocab import fast_tokenizer

    tok = fast_tokenizer()
    head = SparseHead(dense_size=8, hidden_size=16)
    mask = torch.tensor(sq.content_term_mask([tok.id_to_token(i) for i in range(len(tok))], tok.all_special_tokens))
    head.query_weights = (1.0 + torch.arange(len(tok)) / len(tok)) * mask
    head.save_pretrained(folder)
    return folder


def test_an_inference_free_text_search_needs_only_the_head(engine, index_name, tmp_path):
    load(engine, iter([SparseRecord("stars", {"two": 1.0, "green": 1.0, "stars": 1.0}, {"image": "s.png"}),
                          SparseRecord("ring", {"red": 1.0, "ring": 2.0}, {"image": "r.png"})]), f"{index_name}-images")
    head = _weighted_head(tmp_path / "head")
    res = cli(engine, "search", "two green stars at night", "--head", head, "--prefix", index_name, "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["mode"] == "inference-free" and [h["id"] for h in out["hits"]] == ["stars"]
    assert set(out["query"]["own"]) == {"two", "green", "stars", "night"} and out["query"]["expansion"] == {}
    assert out["warnings"] == []
    plain = cli(engine, "search", "two green stars", "--head", head, "--prefix", index_name)
    assert plain.exit_code == 0 and plain.output.startswith("mode: inference-free\n"), plain.output


def test_a_text_searched_by_its_expansion_alone_says_so(engine, index_name, tmp_path):
    """"qwzx": a word the model does not know. Here the head gives its word pieces no weight at
    all (they are blocked), so every term of the query is expansion; the hits come with a warning."""
    from serve_helpers import make_demo_encoder
    from lsr_os.models.head import SparseHead
    from lsr_os.search import QueryEncoder
    from lsr_os.vocab import fast_tokenizer

    head = SparseHead.init_offline(dense_size=256)
    head.blocked_token_ids = fast_tokenizer().token_ids("qwzx")
    head.save_pretrained(tmp_path / "head")
    model = str(make_demo_encoder(tmp_path / "encoder"))
    (vector, own), = QueryEncoder(model, tmp_path / "head", "cpu").encode_texts(["qwzx"], "expanded")
    assert own and own.isdisjoint(vector)
    load(engine, iter([SparseRecord("a", vector, {"image": "a.png"})]), f"{index_name}-images")
    res = cli(engine, "search", "qwzx", "--model", model, "--head", tmp_path / "head", "--prefix", index_name,
              "--device", "cpu")
    assert res.exit_code == 0 and "Warning: no word of 'qwzx' has a weight in its query" in res.output, res.output
    assert "every hit comes from the model's expansion" in res.output and "  a  " in res.output


def test_a_contact_sheet_finds_its_images_where_the_collection_was_ingested_from(engine, index_name, tmp_path):
    """The demo's models searching another collection (`--demo D --prefix mine`): the sheet takes
    that collection's image root, recorded at ingest, not the demo's; a wrong root gives tiles that
    say so and a warning, never a traceback."""
    from PIL import Image

    from lsr_os import index as ix
    from lsr_os.sheet import TILE
    from lsr_os.sparse import RecordStream

    mine = tmp_path / "mine"
    (mine / "images").mkdir(parents=True)
    Image.new("RGB", (32, 32), "red").save(mine / "images" / "ring.png")
    Image.new("RGB", (32, 32), "blue").save(mine / "images" / "ball.png")
    docs = [SparseRecord("ring", {"red": 1.0, "ring": 1.0}, {"image": "images/ring.png"}),
            SparseRecord("ball", {"red": 0.5, "ball": 1.0}, {"image": "images/ball.png"})]
    ix.ingest(engine, RecordStream.of(docs, "t"), f"{index_name}-images", "images", ix.IngestOptions(progress=False),
              images=mine)
    demo = tmp_path / "demo"
    (demo / "world").mkdir(parents=True)
    (demo / "search.json").write_text(json.dumps({"model": "demo:x", "head": str(tmp_path), "prefix": "demo",
                                                  "images": str(demo / "world")}))
    query = ["search", "--vector-json", '{"red": 1, "ring": 1}', "--demo", str(demo), "--prefix", index_name, "-k", "3"]
    res = cli(engine, *query, "--sheet", tmp_path / "mine.png")
    assert res.exit_code == 0 and "Warning" not in res.output, res.output
    with Image.open(tmp_path / "mine.png") as sheet:
        y = sheet.height // 2
        assert sheet.getpixel((8 + TILE // 2, y)) == (255, 0, 0) and sheet.getpixel((16 + TILE * 3 // 2, y)) == (0, 0, 255)
    res = cli(engine, *query, "--sheet", tmp_path / "wrong.png", "--images", demo / "world")
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    assert f"Warning: 2 of the hits' images are not under {demo / 'world'}" in res.output
    with Image.open(tmp_path / "wrong.png") as sheet:
        assert sheet.getpixel((8 + TILE // 2, sheet.height // 2)) != (255, 0, 0)


def test_both_engines_rank_score_and_explain_alike(opensearch, elasticsearch, index_name):
    """The same records and queries on OpenSearch and Elasticsearch: the same hits with the same
    scores (both store 9 bits), the same matched terms and contributions from each engine's own
    explanation, in one phase, two phases and under a split filter."""
    import random

    from lsr_os.search import Searcher

    rng = random.Random(11)
    terms = Vocabulary.default().terms[3000:3300] + [".", "##s", "u.s.", "[UNK]"]
    docs = [SparseRecord(f"d{i}", {t: rng.uniform(0.05, 3.0) for t in rng.sample(terms, 30)},
                         {"split": "test" if i % 3 else "train", "caption": f"doc {i}"}) for i in range(400)]
    for engine in (opensearch, elasticsearch):
        load(engine, iter(docs), index_name, "captions", exclude_vectors=True)
    for q in range(12):
        vector = {t: rng.uniform(0.1, 2.0) for t in rng.sample(terms, 25)}
        for options in ({}, {"split": "test"}, {"first_terms": 8, "window": 50}, {"explain": True, "split": "train"},
                        {"explain": True, "first_terms": 5, "window": 30}):
            results = [Searcher.of(engine).search(index_name, vector, k=10, **options)
                       for engine in (opensearch, elasticsearch)]
            ours, theirs = ([(h["id"], h["score"]) for h in r.hits] for r in results)
            assert len(ours) == 10 and [d for d, _ in ours] == [d for d, _ in theirs], (q, options)
            assert [s for _, s in ours] == pytest.approx([s for _, s in theirs], rel=1e-6), (q, options)
            if options.get("explain"):
                for mine, other in zip(*(r.hits for r in results)):
                    assert mine["matches"] == other["matches"] and mine["matches"], (q, options, mine["id"])
                    assert sum(m["contribution"] for m in mine["matches"]) == pytest.approx(mine["score"], rel=1e-5)
