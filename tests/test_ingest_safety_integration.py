"""A re-ingest never leaves a served collection worse than it found it (a real node of each engine)."""

import json

import pytest

from index_helpers import cli, load
from lsr_os import index as ix
from lsr_os.errors import EXIT_FAILURES, EXIT_NOT_SWAPPED
from lsr_os.sparse import SparseRecord, write_jsonl

pytestmark = pytest.mark.integration


def good(n: int, prefix: str = "d") -> list[SparseRecord]:
    return [SparseRecord(f"{prefix}{i}", {"dog": 1.0 + i, f"t{i}": 0.5}, {"split": "test"}) for i in range(n)]


def served(engine, alias: str) -> tuple[list[str], int]:
    """The indices the alias points to and the documents it answers with."""
    return engine.alias_targets(alias), engine.count(alias)


@pytest.fixture
def serving(engine, index_name, tmp_path):
    """A collection of 5 documents, served from a sparse file through the CLI."""
    path = tmp_path / "good.jsonl"
    write_jsonl(path, good(5))
    res = cli(engine, "ingest", "--sparse", str(path), "--collection", "images", "--index", index_name,
              "--failures", str(tmp_path / "f0.jsonl"))
    assert res.exit_code == 0, res.output
    return served(engine, index_name)


@pytest.mark.parametrize("content", ["", "{garbage\nnot json either\n",
                                     '{"id": "x", "vector": {"dog": "heavy"}}\n{"id": "y", "vector": []}\n'],
                         ids=["empty", "garbage", "all-invalid"])
def test_a_reingest_of_nothing_usable_keeps_the_old_collection_served(engine, index_name, tmp_path, serving,
                                                                     content):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    res = cli(engine, "ingest", "--sparse", str(path), "--collection", "images", "--index", index_name,
              "--failures", str(tmp_path / "f.jsonl"))
    assert res.exit_code == EXIT_NOT_SWAPPED, res.output
    assert "not swapped" in res.output and f"still serves {serving[0][0]}" in res.output
    assert served(engine, index_name) == serving  # same index, all 5 documents


def test_failed_records_keep_the_old_collection_until_allowed(engine, index_name, tmp_path, serving):
    path = tmp_path / "mixed.jsonl"
    lines = [r.to_json() for r in good(7, "n")] + ['{"id": "bad", "vector": {"dog": "heavy"}}']
    path.write_text("\n".join(lines) + "\n")
    args = ["ingest", "--sparse", str(path), "--collection", "images", "--index", index_name,
            "--failures", str(tmp_path / "f.jsonl")]
    res = cli(engine, *args)
    assert res.exit_code == EXIT_NOT_SWAPPED, res.output
    assert "1 records failed" in res.output and "--max-failed 1" in res.output
    assert served(engine, index_name) == serving
    pending = [r for r in ix.list_collections(engine, f"{index_name}*") if not r["served"]]
    assert [r["state"] for r in pending] == ["loading"] and pending[0]["docs"] == 7  # named and resumable
    assert pending[0]["index"] in res.output
    # The same command with the failure allowed resumes that index and serves it, exit 4 (one failed).
    res = cli(engine, *args, "--max-failed", "1")
    assert res.exit_code == EXIT_FAILURES, res.output
    assert "resumed: 7 already there" in res.output
    indices, count = served(engine, index_name)
    assert indices == [pending[0]["index"]] and count == 7
    assert not engine.exists(serving[0][0])  # deleted only after the swap


def test_empty_is_served_only_when_allowed(engine, index_name, tmp_path, serving):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    res = cli(engine, "ingest", "--sparse", str(path), "--collection", "images", "--index", index_name,
              "--allow-empty", "--failures", str(tmp_path / "f.jsonl"), "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["count"] == 0 and report["not_swapped"] is None and report["replaced"] == serving[0]
    assert served(engine, index_name)[1] == 0


def test_first_load_with_failures_is_served_and_exits_4(engine, index_name):
    records = good(3) + [SparseRecord("nan", {"dog": float("nan")})]
    report = load(engine, iter(records), index_name)
    assert report.not_swapped is None and report.count == 3
    # the library's own default for a replacement: any failure keeps the old one
    again = load(engine, iter(records), index_name, source="t2")
    assert again.not_swapped and served(engine, index_name)[0] == [report.index]


def test_a_600_byte_id_and_a_huge_vector_are_listed_while_their_batch_mates_are_indexed(engine, index_name,
                                                                                         tmp_path):
    path = tmp_path / "mixed.jsonl"
    long_id = SparseRecord("x" * 600, {"dog": 1.0})
    huge = SparseRecord("huge", {f"t{i}": 1.0 for i in range(80000)})  # 80,000 terms, about 2 MB of JSON
    write_jsonl(path, good(4) + [long_id, huge] + good(3, "m"))
    failures = tmp_path / "f.jsonl"
    res = cli(engine, "ingest", "--sparse", str(path), "--collection", "images", "--index", index_name,
              "--chunk-docs", "100", "--failures", str(failures))
    assert res.exit_code == EXIT_FAILURES, res.output
    listed = {f["id"][:8]: f for f in map(json.loads, failures.read_text().splitlines())}
    assert set(listed) == {"x" * 8, "huge"} and all(f["what"] == "record" for f in listed.values())
    assert "600 bytes" in listed["x" * 8]["reason"] and "per-field limit" in listed["huge"]["reason"]
    assert served(engine, index_name)[1] == 7


def test_a_request_the_cluster_refuses_as_a_whole_is_split_until_the_bad_document_fails_alone(engine, index_name):
    # Past the checks of to_document (a caller of BulkLoader that skipped them): both engines refuse
    # the whole bulk request over a 600-byte id, so the loader bisects it and indexes the other nine.
    index, _ = ix.prepare_index(engine, index_name, "images", "t")
    loader = ix.BulkLoader(engine, index, chunk_docs=10, concurrency=1)
    docs = [loader.doc(f"ok{i}", {"id": f"ok{i}", "sparse": {"dog": 1.0}}) for i in range(9)]
    docs.insert(4, loader.doc("y" * 600, {"id": "long", "sparse": {"dog": 1.0}}))
    outcomes = list(loader.load(docs))
    assert len(outcomes) == 10
    (bad,) = [o for o in outcomes if not o.ok]
    assert bad.id == "y" * 600 and "HTTP 400" in bad.reason and "too long" in bad.reason
    engine.refresh(index)
    assert engine.count(index) == 9
