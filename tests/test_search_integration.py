"""Integration tier for search: the clause cap read from the node, explain through the CLI."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from lsr_os.cli import main
from index_helpers import load
from lsr_os.search import build_query, max_clause_count, prepare_query, search
from lsr_os.sparse import SparseRecord, quantize
from lsr_os.vocab import Vocabulary

pytestmark = pytest.mark.integration


def test_max_clause_count_is_read_and_a_full_capped_query_with_a_filter_runs(os_client, index_name):
    cap = max_clause_count(os_client)
    assert cap >= 1024
    terms = Vocabulary.default().terms[2000:2000 + cap + 50]
    load(os_client, iter([SparseRecord("all", dict.fromkeys(terms, 1.0), {"split": "test"})]), index_name)
    filters = [{"term": {"split": "test"}}]
    query = prepare_query(dict.fromkeys(terms, 1.0), cap - len(filters))
    hits, _ = search(os_client, index_name, build_query(query, 5, filters))
    assert [h["_id"] for h in hits] == ["all"] and hits[0]["_score"] == pytest.approx(cap - 1, rel=1e-5)


def test_cli_explain_prints_pasteable_dsl_and_contributions_summing_to_the_score(os_client, index_name):
    docs = [SparseRecord("a", {"dog": 2.0, "beach": 1.0, ".": 0.5}, {"caption": "a dog on a beach"}),
            SparseRecord("b", {"cat": 2.0, "beach": 0.25})]
    load(os_client, iter(docs), index_name, "captions")
    res = CliRunner().invoke(main, ["search", "--vector-json", '{"dog": 1.0, "beach": 2.0, ".": 1.0}',
                                    "--index", index_name, "--explain", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert [h["id"] for h in out["hits"]] == ["a", "b"]
    for hit in out["hits"]:
        assert sum(m["contribution"] for m in hit["matches"]) == pytest.approx(hit["score"], rel=1e-5)
    assert {m["term"] for m in out["hits"][0]["matches"]} == {"dog", "beach", "."}
    assert os_client.search(index=index_name, body=out["dsl"])["hits"]["hits"][0]["_id"] == "a"


def test_a_missing_collection_names_the_ones_that_exist_and_their_prefix(os_client, index_name):
    load(os_client, iter([SparseRecord("a", {"dog": 1.0})]), f"{index_name}-images")
    res = CliRunner().invoke(main, ["search", "--vector-json", '{"dog": 1}'])  # default prefix: lsr
    assert res.exit_code == 1 and "no collection lsr-images on the cluster" in res.output
    assert f"{index_name}-images" in res.output and f"--prefix {index_name}" in res.output


def test_text_queries_without_content_fail_with_one_line_in_both_modes(os_client, index_name, tmp_path):
    from lsr_os.models.head import SparseHead

    load(os_client, iter([SparseRecord("a", {"dog": 1.0})]), f"{index_name}-images")
    SparseHead(dense_size=8, hidden_size=4).save_pretrained(tmp_path / "head")
    for text in ("🦄", "the a of and"):
        for mode in ([], ["--no-expansion"]):
            res = CliRunner().invoke(main, ["search", text, "--prefix", index_name, "--model", "blip:nowhere",
                                            "--head", str(tmp_path / "head"), *mode])
            lines = [ln for ln in res.output.splitlines() if ln.strip()]
            assert res.exit_code == 1 and len(lines) == 1 and "no content word" in lines[0], res.output


def test_explain_takes_contributions_from_the_engine_when_vectors_are_left_out_of_source(os_client, index_name):
    docs = [SparseRecord("a", {"dog": 1.2345678, "beach": 1.0, ".": 0.5}, {"caption": "a dog on a beach"}),
            SparseRecord("b", {"cat": 2.0, "beach": 0.25})]
    load(os_client, iter(docs), index_name, "captions", exclude_vectors=True)
    stored = os_client.get(index=index_name, id="a")["_source"]
    assert "sparse" not in stored and stored["caption"] == "a dog on a beach"
    for extra in ([], ["--first-terms", "1", "--window", "5"]):  # two-phase: first phase and rescore explained
        res = CliRunner().invoke(main, ["search", "--vector-json", '{"dog": 1.0, "beach": 2.0, ".": 1.0}',
                                        "--index", index_name, "--explain", "--json", *extra])
        assert res.exit_code == 0, res.output
        out = json.loads(res.output)
        assert [h["id"] for h in out["hits"]] == ["a", "b"]
        for hit in out["hits"]:
            assert sum(m["contribution"] for m in hit["matches"]) == pytest.approx(hit["score"], rel=1e-5)
        first = {m["term"]: m for m in out["hits"][0]["matches"]}
        assert set(first) == {"dog", "beach", "."}
        assert first["dog"]["doc_weight"] == float(quantize(1.2345678)) != 1.2345678


def test_a_vector_search_through_the_cli_sends_one_request_and_imports_no_model_stack(os_client, index_name):
    load(os_client, iter([SparseRecord("a", {"dog": 1.0}), SparseRecord("b", {"cat": 1.0})]), index_name)
    probe = ("import sys, json; from lsr_os.cli import main; from opensearchpy import Transport; sent = []; "
             "send = Transport.perform_request; "
             "Transport.perform_request = lambda self, method, url, *a, **k: (sent.append((method, url)), "
             "send(self, method, url, *a, **k))[1]\n"
             "try: main.main(args=sys.argv[1:], prog_name='lsr-os', standalone_mode=False)\n"
             "finally: print(json.dumps({'sent': sent, 'heavy': [m for m in ('torch', 'transformers', 'numpy') "
             "if m in sys.modules]}))")
    out = subprocess.run([sys.executable, "-c", probe, "search", "--vector-json", '{"dog": 1.0}', "--index",
                          index_name, "--json", "--url", _url(os_client)],
                         capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1])
    lines = out.stdout.strip().splitlines()
    facts = json.loads(lines[-1])
    assert json.loads("\n".join(lines[:-1]))["hits"][0]["id"] == "a"
    searches = [url for _, url in facts["sent"] if url.endswith("/_search")]
    assert searches == [f"/{index_name}/_search"] and len(facts["sent"]) <= 2  # the search (+ the clause cap)
    assert facts["heavy"] == []


def _url(client) -> str:
    host = client.transport.hosts[0]
    return f"{'https' if host.get('use_ssl') else 'http'}://{host['host']}:{host['port']}"


def test_an_answer_missing_a_shard_is_retried_and_then_an_error_not_a_short_top_k(os_client, index_name, monkeypatch):
    """A shard that cannot answer (here: an index where `sparse.dog` is a keyword, so a
    rank_feature query fails on it) would leave the other shards' hits as the top k. search and msearch send it
    again, then fail naming the shards."""
    from lsr_os import search as se
    from lsr_os.errors import ClusterError

    load(os_client, [SparseRecord("a", {"dog": 1.0}), SparseRecord("b", {"dog": 0.5, "cat": 1.0})], index_name)
    broken = f"{index_name}-broken"
    os_client.indices.create(index=broken, body={"mappings": {"properties": {"sparse": {"properties": {
        "dog": {"type": "keyword"}}}}}})
    os_client.index(index=broken, body={"sparse": {"dog": "x"}}, refresh=True)
    monkeypatch.setattr(se, "PARTIAL_RETRY_S", (0.01, 0.01))
    body = build_query(prepare_query({"dog": 1.0}, 10), 10)
    assert [h["_id"] for h in search(os_client, index_name, body)[0]] == ["a", "b"]  # whole: as before
    both = f"{index_name},{broken}"
    with pytest.raises(ClusterError, match=r"1 of 2 shards did not answer \(.*exception.*\), 2 retries later"):
        search(os_client, both, body)
    with pytest.raises(ClusterError, match=r"query q1 on .*: 1 of 2 shards did not answer"):
        se.search_run(os_client, both, [("q1", {"dog": 1.0})], progress=False)


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


def test_an_inference_free_text_search_needs_only_the_head(os_client, index_name, tmp_path):
    load(os_client, iter([SparseRecord("stars", {"two": 1.0, "green": 1.0, "stars": 1.0}, {"image": "s.png"}),
                          SparseRecord("ring", {"red": 1.0, "ring": 2.0}, {"image": "r.png"})]), f"{index_name}-images")
    head = _weighted_head(tmp_path / "head")
    res = CliRunner().invoke(main, ["search", "two green stars at night", "--head", str(head), "--prefix", index_name,
                                    "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["mode"] == "inference-free" and [h["id"] for h in out["hits"]] == ["stars"]
    assert set(out["query"]["own"]) == {"two", "green", "stars", "night"} and out["query"]["expansion"] == {}
    assert out["warnings"] == []
    plain = CliRunner().invoke(main, ["search", "two green stars", "--head", str(head), "--prefix", index_name])
    assert plain.exit_code == 0 and plain.output.startswith("mode: inference-free\n"), plain.output


def test_a_text_searched_by_its_expansion_alone_says_so(os_client, index_name, tmp_path):
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
    load(os_client, iter([SparseRecord("a", vector, {"image": "a.png"})]), f"{index_name}-images")
    res = CliRunner().invoke(main, ["search", "qwzx", "--model", model, "--head", str(tmp_path / "head"),
                                    "--prefix", index_name, "--device", "cpu"])
    assert res.exit_code == 0 and "Warning: no word of 'qwzx' has a weight in its query" in res.output, res.output
    assert "every hit comes from the model's expansion" in res.output and "  a  " in res.output


def test_a_contact_sheet_finds_its_images_where_the_collection_was_ingested_from(os_client, index_name, tmp_path):
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
    ix.ingest(os_client, RecordStream.of(docs, "t"), f"{index_name}-images", "images", ix.IngestOptions(progress=False),
              images=mine)
    demo = tmp_path / "demo"
    (demo / "world").mkdir(parents=True)
    (demo / "search.json").write_text(json.dumps({"model": "demo:x", "head": str(tmp_path), "prefix": "demo",
                                                  "images": str(demo / "world")}))
    query = ["search", "--vector-json", '{"red": 1, "ring": 1}', "--demo", str(demo), "--prefix", index_name, "-k", "3"]
    res = CliRunner().invoke(main, [*query, "--sheet", str(tmp_path / "mine.png")])
    assert res.exit_code == 0 and "Warning" not in res.output, res.output
    with Image.open(tmp_path / "mine.png") as sheet:
        y = sheet.height // 2
        assert sheet.getpixel((8 + TILE // 2, y)) == (255, 0, 0) and sheet.getpixel((16 + TILE * 3 // 2, y)) == (0, 0, 255)
    res = CliRunner().invoke(main, [*query, "--sheet", str(tmp_path / "wrong.png"), "--images", str(demo / "world")])
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    assert f"Warning: 2 of the hits' images are not under {demo / 'world'}" in res.output
    with Image.open(tmp_path / "wrong.png") as sheet:
        assert sheet.getpixel((8 + TILE // 2, sheet.height // 2)) != (255, 0, 0)
