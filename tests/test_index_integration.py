"""Integration tier for ingest against a real node of each engine: hygiene, parity, idempotence,
resume, bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from index_helpers import cli, cli_env, load
from lsr_os import index as ix
from lsr_os.errors import EXIT_FAILURES, ClusterError
from lsr_os.evaluate import ExactScorer, parity
from lsr_os.search import search_run
from lsr_os.sparse import SparseRecord, quantize, write_jsonl
from lsr_os.vocab import Vocabulary

pytestmark = pytest.mark.integration

SPECIAL = [".", "...", "##s", "[UNK]", "café", "日本", "ñ", "%", "a.b", "##.", "[CLS]"]


def synthetic_records(n: int, seed: int = 0, per_doc: int = 30) -> list[SparseRecord]:
    """Docs over special, common and very rare terms (each rare term in one document)."""
    rng = np.random.default_rng(seed)
    common = SPECIAL + [f"w{i}" for i in range(300)]
    out = []
    for d in range(n):
        picks = rng.choice(len(common), per_doc, replace=False)
        vec = {common[j]: float(rng.uniform(0.01, 3.0)) for j in picks}
        vec[f"rare{d}"] = float(rng.uniform(0.5, 2.0))
        out.append(SparseRecord(f"doc-{d}", vec, {"split": "test"}))
    return out


def test_special_and_rare_terms_rank_like_exact_dot_product(engine, index_name):
    docs = synthetic_records(600)
    report = load(engine, iter(docs), index_name)
    assert report.count == 600 and report.failed == 0
    rng = np.random.default_rng(1)
    vocab_terms = SPECIAL + [f"w{i}" for i in range(300)] + [f"rare{i}" for i in range(600)]
    queries = []
    for q in range(100):
        picks = rng.choice(len(vocab_terms), int(rng.integers(10, 40)), replace=False)
        queries.append((f"q{q}", {vocab_terms[j]: float(rng.uniform(0.1, 2.0)) for j in picks}))
    queries.append(("specials", {t: 1.0 + i for i, t in enumerate(SPECIAL)}))
    queries.append(("rare", {"rare17": 1.0}))
    cluster, _ = search_run(engine, index_name, queries, k=10, progress=False)
    exact, _ = ExactScorer((d.id, d.vector) for d in docs).run(queries, 10)
    # Tolerance: both sides score the 9-bit stored weights; only float32 summation order differs,
    # which can swap near-ties at rank 10, hence >= 0.99 and not == 1.
    figures = parity(cluster, exact)
    assert figures["top10_overlap"] >= 0.99
    assert list(cluster["rare"]) == ["doc-17"]
    for doc_id, score in cluster["specials"].items():
        assert score == pytest.approx(exact["specials"][doc_id], rel=1e-5)


def test_reingest_is_idempotent_and_swaps_the_alias(engine, index_name):
    docs = synthetic_records(200)
    first = load(engine, iter(docs), index_name)
    second = load(engine, iter(docs), index_name)
    assert first.count == second.count == 200
    assert second.index != first.index and second.replaced == [first.index]
    assert engine.alias_targets(index_name) == [second.index]
    assert not engine.exists(first.index)
    assert engine.count(index_name) == 200
    assert engine.index_setting(second.index, "index.refresh_interval") == "1s"
    assert engine.index_setting(second.index, "index.number_of_replicas") == "0"


class Stop(Exception):
    pass


def test_injected_stop_then_rerun_resumes_with_the_exact_count(engine, index_name):
    docs = synthetic_records(1500)

    def stops_halfway():
        for i, d in enumerate(docs):
            if i == 800:
                raise Stop
            yield d

    with pytest.raises(Stop):
        load(engine, stops_halfway(), index_name, source="file-a", chunk_docs=100)
    assert not engine.is_alias(index_name)  # nothing half-loaded is served
    report = load(engine, iter(docs), index_name, source="file-a", chunk_docs=100)
    # the chunk being filled when the stop came was never sent: whole chunks only
    assert report.resumed and 0 < report.docs_before <= 800 and report.docs_before % 100 == 0
    assert report.count == 1500 and report.created == 1500 - report.docs_before
    # what the unfinished index held is not sent again
    assert report.already_indexed == report.docs_before and report.sent == 1500 - report.docs_before
    assert engine.count(index_name) == 1500


def test_killed_cli_ingest_rerun_ends_with_exact_count(engine, index_name, tmp_path):
    path = tmp_path / "docs.jsonl"
    write_jsonl(path, synthetic_records(20000, per_doc=40))
    cmd = [sys.executable, "-m", "lsr_os", "ingest", "--sparse", str(path), "--collection", "images",
           "--index", index_name, "--chunk-docs", "200", "--failures", str(tmp_path / "f.jsonl")]
    env = {**os.environ, **cli_env(engine)}  # the node of the engine under test
    env = {name: value for name, value in env.items() if value is not None}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        loaded = 0
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
            pending = list(engine.mappings(f"{index_name}-v*"))
            if pending and n_docs(engine, pending[0]) >= 2000:
                loaded = n_docs(engine, pending[0])
                break
        assert proc.poll() is None, "the ingest finished before it could be killed; give it more documents"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert 0 < loaded < 20000
    assert not engine.is_alias(index_name)
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert "resumed" in res.stdout
    assert engine.count(index_name) == 20000


def n_docs(engine, index: str) -> int:
    engine.refresh(index)
    return engine.count(index)


def test_bad_lines_and_rejected_documents_are_listed_and_the_rest_indexed(engine, index_name, tmp_path):
    path = tmp_path / "docs.jsonl"
    lines = [json.dumps({"id": "ok1", "vector": {"dog": 1.0}, "split": "test"}),
             "{not json",
             json.dumps({"id": "rejected", "vector": {"cat": 1.0}, "split": {"not": "a keyword"}}),
             json.dumps({"id": "noweights", "vector": {"cat": "heavy"}}),
             json.dumps({"id": "ok2", "vector": {"cat": 2.0, "bad": -1.0}})]
    path.write_text("\n".join(lines) + "\n")
    failures = tmp_path / "failures.jsonl"
    res = cli(engine, "ingest", "--sparse", str(path), "--collection", "captions", "--index", index_name,
              "--failures", str(failures))
    assert res.exit_code == EXIT_FAILURES, res.output  # a first load serves what was indexed, and says so
    assert "2 documents" in res.output and "3 failed" in res.output
    listed = [json.loads(line) for line in failures.read_text().splitlines()]
    by_where = {(f["id"] or f["where"]): f for f in listed}
    assert by_where[f"{path}:2"]["what"] == "record" and "not valid JSON" in by_where[f"{path}:2"]["reason"]
    assert by_where["noweights"]["where"] == f"{path}:4" and "not a number" in by_where["noweights"]["reason"]
    rejected = by_where["rejected"]
    assert rejected["what"] == "document" and "HTTP 400" in rejected["reason"] and "split" in rejected["reason"]
    assert engine.count(index_name) == 2


def test_alias_name_taken_by_a_conflicting_index_is_refused_untouched(engine, index_name):
    engine.create_index(index_name, {"mappings": {"properties": {"sparse": {"type": "float"}}}})
    engine.bulk(f'{json.dumps({"index": {"_index": index_name, "_id": "keep"}})}\n{{"sparse": 1.0}}\n'.encode())
    engine.refresh(index_name)
    with pytest.raises(ClusterError, match=f"conflicts with {engine.features.sparse_field_type}"):
        load(engine, iter(synthetic_records(3)), index_name)
    assert engine.count(index_name) == 1  # nothing already indexed is lost


def test_missing_index_and_unknown_credentials_paths(engine, index_name):
    res = cli(engine, "search", "--vector-json", '{"dog": 1}', "--index", index_name)
    assert res.exit_code == 1 and f"no collection {index_name} on the cluster" in res.output
    res = cli(engine, "collections", "delete", index_name, "--yes")
    assert res.exit_code == 1 and f"no lsr-os collection named {index_name}" in res.output


def test_a_document_with_every_vocabulary_term_is_indexed_and_each_term_matches(engine, index_name):
    terms = Vocabulary.default().terms
    doc = SparseRecord("all", {t: 1.0 + (i % 97) / 97 for i, t in enumerate(terms)})
    other = SparseRecord("none", {"zzz-not-a-term": 1.0})
    report = load(engine, iter([doc, other]), index_name)
    assert report.count == 2 and report.failed == 0
    # Every term matches: 31 queries of <= 1000 terms (boost 1) score exactly the sum of their
    # terms' stored weights (each >= 1), so one term that matched nothing would show as >= 1 less.
    stored = {t: float(quantize(w)) for t, w in doc.vector.items()}
    chunks = [terms[i:i + 1000] for i in range(0, len(terms), 1000)]
    run, _ = search_run(engine, index_name, [(str(n), dict.fromkeys(c, 1.0)) for n, c in enumerate(chunks)],
                        k=2, max_terms=1000, progress=False)
    for n, chunk in enumerate(chunks):
        assert list(run[str(n)]) == ["all"]
        assert run[str(n)]["all"] == pytest.approx(sum(stored[t] for t in chunk), abs=0.5)
    # and single-term queries, for the special terms and a sample of the rest
    sample = [t for t in terms if not t.isalnum()][:300] + terms[::300]
    run, _ = search_run(engine, index_name, [(t, {t: 1.0}) for t in sample], k=2, progress=False)
    assert all(run[t] == {"all": pytest.approx(stored[t], rel=1e-6)} for t in sample)


def test_load_settings_are_restored_and_options_shape_the_served_index(engine, index_name):
    """During the load: refresh off, translog async; served: the mapping's refresh and a per-request
    translog again. --shards, --force-merge and --exclude-vectors shape the index that serves.
    An engine that keeps vectors out of `_source` by itself (`vectors_only_on_request`) rebuilds
    them from the field for a search that asks, --exclude-vectors or not."""
    records = list(synthetic_records(40))
    report = load(engine, iter(records), index_name, shards=2, force_merge=True, exclude_vectors=True)
    assert report.count == 40 and report.shards == 2 and not report.not_swapped
    (served,) = engine.alias_targets(index_name)
    assert engine.index_setting(served, "index.refresh_interval") == "1s"
    assert engine.index_setting(served, "index.translog.durability") == "request"
    assert engine.index_setting(served, "index.number_of_shards") == "2"
    shards = engine.stats(served, metric="segments", level="shards")["indices"][served]["shards"]
    assert len(shards) == 2 and all(copy["segments"]["count"] == 1 for copies in shards.values() for copy in copies)
    doc = engine.get_document(index_name, records[0].id)["_source"]
    assert "sparse" not in doc and doc["id"] == records[0].id
    asked = engine.search(index_name, {"query": {"ids": {"values": [records[0].id]}},
                                       "_source": engine.ops.source_filter(["id"], with_vectors=True)})
    (hit,) = asked["hits"]["hits"]
    assert ("sparse" in hit["_source"]) == engine.features.vectors_only_on_request
    # such an engine needs no _source filter (see ix.filters_vectors)
    filtered = engine.mappings(served)[served].get("_source", {}).get("excludes", [])
    assert filtered == ([] if engine.features.vectors_only_on_request else ["sparse"])
    # the postings still hold the vectors: the served index ranks like exact scoring
    query = dict(list(records[0].vector.items())[:20])
    run, _ = search_run(engine, index_name, [("q", query)], k=10)
    exact, _ = ExactScorer((r.id, r.vector) for r in records).run([("q", query)], 10)
    assert parity(run, exact, 10)["top10_overlap"] == 1.0


def test_a_resumed_load_keeps_the_vectors_choice_of_the_index_it_resumes(engine, index_name):
    """An unfinished index built with the vector in _source is not resumed by a load without it:
    the _source mapping cannot change, so that load starts a new index. On an engine that keeps
    vectors out of _source by itself the two loads build the same index, so it is resumed."""
    records = list(synthetic_records(10))
    first = ix.prepare_index(engine, index_name, "images", "same-source")[0]
    again, resumed = ix.prepare_index(engine, index_name, "images", "same-source")
    assert resumed and again == first
    other, resumed = ix.prepare_index(engine, index_name, "images", "same-source", exclude_vectors=True)
    if engine.features.vectors_only_on_request:
        assert resumed and other == first
    else:
        assert not resumed and other != first and not engine.exists(first)
    report = load(engine, iter(records), index_name, source="same-source", exclude_vectors=True)
    assert report.resumed and report.index == other and report.count == 10
