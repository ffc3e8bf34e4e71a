"""Real local multi-node clusters: snapshots (also moved to another cluster) and node loss.

One OpenSearch cluster of 3 nodes (ports 9700-9702, transport 9800-9802) serves most of the
module; the tests that stop a node start it again before they end, and the cluster is stopped
afterwards whatever happens. Everything runs on loopback. The node-loss tests stop a node that
is NOT the first URL the client is given, while a load or an evaluation is in flight, and check
the outcome the operator cares about: nothing lost, nothing doubled, same results. A 2-node
Elasticsearch cluster (9940-9941) shows that a served collection survives losing a node there too.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from lsr_os.cli import main
from lsr_os import node
from lsr_os.config import ClusterConfig
from lsr_os.engines import connect
from lsr_os.errors import NotFound

pytestmark = pytest.mark.integration

PORT = 9700
MOVE_PORT = 9750  # a second, one-node cluster that restores the first one's snapshot
URLS = [f"http://127.0.0.1:{PORT + i}" for i in range(3)]
ES_PORT = 9940  # a 2-node Elasticsearch cluster (9940-9941, transport 10040-10041)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The running 3-node cluster's spec; stopped at the end if this module started it."""
    base = tmp_path_factory.mktemp("cluster")
    spec = node.NodeSpec(port=PORT, nodes=3, heap="512m", data=base / "data", repo=base / "snapshots")
    states = node.start(spec, timeout=300)
    started = not all(s.already_running for s in states)
    try:
        yield spec
    finally:
        if started:
            node.stop(PORT)


def engine_over(urls, timeout=30.0):
    """The cluster's engine, reached through `urls` (the first that answers is asked which engine it is)."""
    return connect(ClusterConfig(urls=tuple(urls), timeout=timeout))


def write_sparse(path: Path, n: int, prefix: str, extra=lambda i: {}, seed: int = 0) -> list[str]:
    """n records of 24 random terms out of 2,000 (a vocabulary is not needed for this)."""
    rng = random.Random(seed)
    ids = []
    with path.open("w") as handle:
        for i in range(n):
            doc_id = f"{prefix}{i}"
            terms = rng.sample(range(2000), 24)
            vector = {f"t{t}": round(rng.uniform(0.1, 3.0), 3) for t in terms}
            handle.write(json.dumps({"id": doc_id, "vector": vector, **extra(i)}) + "\n")
            ids.append(doc_id)
    return ids


def all_ids(engine, index: str) -> list[str]:
    return list(engine.ids(index))


def invoke(*args: str):
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def invoke_out(*args: str) -> str:
    """What a command printed on stdout (progress bars and warnings go to stderr)."""
    return invoke(*args).stdout


def ingest(path: Path, alias: str, *extra: str, urls: list[str] = URLS):
    return invoke("ingest", "--url", ",".join(urls), "--sparse", str(path), "--collection", "images",
                  "--index", alias, "--failures", str(path.with_suffix(".failures.jsonl")), "--json", *extra)


def read_trec(path: Path) -> dict[str, list[tuple[str, float]]]:
    run: dict[str, list[tuple[str, float]]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        qid, _, doc, _, score, _ = line.split()
        run.setdefault(qid, []).append((doc, float(score)))
    return run


def wait_green(engine, nodes: int = 3, timeout: float = 180.0) -> None:
    """Until the cluster has `nodes` nodes again and every shard copy is assigned."""
    deadline = time.monotonic() + timeout
    while engine.health()["number_of_nodes"] < nodes and time.monotonic() < deadline:
        time.sleep(1)
    health = engine.health(wait_for_status="green", wait_s=max(1.0, deadline - time.monotonic()))
    assert health["status"] == "green" and health["number_of_nodes"] == nodes, health


class StopWhen(threading.Thread):
    """Stop `victim` once `ready()` says so; records what was true at that moment."""

    def __init__(self, ready, victim: str, poll: float = 0.2, give_up: float = 240.0):
        super().__init__(daemon=True)
        self.ready, self.victim, self.poll, self.give_up = ready, victim, poll, give_up
        self.stopped_at: float | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            deadline = time.monotonic() + self.give_up
            while time.monotonic() < deadline:
                if self.ready():
                    node.stop(PORT, [self.victim])
                    self.stopped_at = time.monotonic()
                    return
                time.sleep(self.poll)
        except BaseException as exc:  # surfaced by the test
            self.error = exc


def test_snapshot_restore_and_move_to_another_cluster(cluster, tmp_path):
    engine = engine_over(URLS)
    alias = f"snap-{uuid.uuid4().hex[:6]}"
    ids = write_sparse(tmp_path / "docs.jsonl", 300, "s")
    ingest(tmp_path / "docs.jsonl", alias)
    # The repository must lie inside the nodes' path.repo: ask the cluster where that is.
    repo_root = engine.repository_paths()["node-1"][0]
    location = str(Path(repo_root) / alias)
    url = ",".join(URLS)

    # Back up every complete lsr-os collection (the default), with its alias.
    created = json.loads(invoke_out("snapshot", "create", "--url", url, "--repo", alias, "--location", location,
                                "--name", "first", "--json"))
    (index,) = [i for i in created["indices"] if i.startswith(alias)]
    assert created["state"] == "SUCCESS"
    listed = json.loads(invoke_out("snapshot", "list", "--url", url, "--repo", alias, "--json"))
    assert [s["snapshot"] for s in listed] == ["first"] and index in listed[0]["indices"]

    # Restoring over the served index is refused with a hint; after losing it, it comes back whole.
    refused = CliRunner().invoke(main, ["snapshot", "restore", "first", "--url", url, "--repo", alias,
                                        "--index", index])
    assert refused.exit_code == 1 and "--rename-suffix" in refused.output
    invoke("collections", "delete", alias, "--url", url, "--yes")
    assert not engine.exists(index)
    restored = json.loads(invoke_out("snapshot", "restore", "first", "--url", url, "--repo", alias, "--index", index,
                                 "--json"))
    assert restored["indices"] == {index: 300}
    assert sorted(all_ids(engine, alias)) == sorted(ids)  # served under its alias again

    # Move: a separate one-node cluster whose path.repo is the first cluster's snapshot folder.
    other = node.NodeSpec(port=MOVE_PORT, heap="512m", data=tmp_path / "other", repo=Path(repo_root),
                          cluster_name="lsr-os-other")
    try:
        node.start(other, timeout=240)
        other_url = f"http://127.0.0.1:{MOVE_PORT}"
        moved = json.loads(invoke_out("snapshot", "restore", "first", "--url", other_url, "--repo", "from-main",
                                  "--location", location, "--index", index, "--json"))
        assert moved["indices"] == {index: 300}
        other = engine_over([other_url])
        assert sorted(all_ids(other, alias)) == sorted(ids)
        assert other.repository("from-main")["settings"]["readonly"] in ("true", True)
    finally:
        node.stop(MOVE_PORT)
    invoke("snapshot", "delete", "first", "--url", url, "--repo", alias)
    assert json.loads(invoke_out("snapshot", "list", "--url", url, "--repo", alias, "--json")) == []


def test_ingest_survives_losing_a_node_and_the_node_rejoins(cluster, tmp_path):
    watcher = engine_over(URLS[:1])  # the watcher talks to node-1 only: it is never stopped
    alias = f"loss-{uuid.uuid4().hex[:6]}"
    n = 8000
    ids = write_sparse(tmp_path / "docs.jsonl", n, "d", seed=1)

    def indexed() -> int:
        try:
            stats = watcher.stats(f"{alias}-v*", metric="indexing")
        except NotFound:
            return 0
        return stats.get("_all", {}).get("primaries", {}).get("indexing", {}).get("index_total", 0)

    stopper = StopWhen(lambda: indexed() >= n // 5, "node-3")
    stopper.start()
    report = json.loads(ingest(tmp_path / "docs.jsonl", alias, "--shards", "3", "--replicas", "1").stdout)
    finished = time.monotonic()
    stopper.join(timeout=120)
    assert stopper.error is None and stopper.stopped_at is not None, stopper.error
    assert stopper.stopped_at < finished, "node-3 stopped only after the load ended; use a larger collection"

    # The load completed with every document, each once, while node-3 is still down.
    assert report["count"] == n and report["failed"] == 0
    assert node.status(PORT)["nodes"][2]["running"] is False
    all_urls = engine_over(URLS)  # node-3's URL is in the list: the client must route around it
    health = all_urls.health()
    assert health["status"] == "yellow" and health["number_of_nodes"] == 2
    assert all_urls.count(alias) == n
    got = all_ids(all_urls, alias)
    assert len(got) == n and set(got) == set(ids)
    searches_keep_answering(all_urls, alias)

    # node-3 rejoins with its data and the cluster is whole again.
    node.start(cluster, timeout=240)
    wait_green(watcher)
    assert watcher.count(alias) == n
    assert "node-3" in watcher.node_plugins()


def searches_keep_answering(engine, alias: str, times: int = 10) -> None:
    """Sparse searches of a common term all find documents (while a node is lost)."""
    body = {"size": 3, "query": engine.ops.sparse_query({"t7": 1.0})}
    for _ in range(times):
        assert engine.search(alias, body)["hits"]["hits"]


def test_evaluate_gives_the_same_results_when_a_node_is_lost(cluster, tmp_path):
    watcher = engine_over(URLS[:1])
    prefix = f"ev{uuid.uuid4().hex[:6]}"
    n_images = 200
    write_sparse(tmp_path / "images.jsonl", n_images, "img", extra=lambda i: {"split": "test"}, seed=2)
    write_sparse(tmp_path / "captions.jsonl", 5 * n_images, "cap",
                 extra=lambda i: {"split": "test", "image_id": f"img{i // 5}"}, seed=3)
    for coll in ("images", "captions"):
        invoke("ingest", "--url", ",".join(URLS), "--sparse", str(tmp_path / f"{coll}.jsonl"), "--collection", coll,
               "--prefix", prefix, "--failures", str(tmp_path / f"{coll}.failures.jsonl"))
    # No --replicas: on a cluster of 3 data nodes the default is 1, so every shard survives a lost node.
    indices = watcher.index(f"{prefix}-*")
    assert len(indices) == 2
    for name in indices:
        assert watcher.index_setting(name, "index.number_of_replicas") == "1"

    def evaluate(out: Path) -> dict:
        result = invoke("evaluate", "--url", ",".join(URLS), "--sparse", str(tmp_path), "--prefix", prefix,
                        "--query-batch", "4", "--out", str(out), "--json")
        return json.loads(result.stdout)

    before = evaluate(tmp_path / "before")
    # On the whole cluster, a second evaluation is identical to the file: one search preference
    # sends every run to the same shard copies, so even ties at rank 10 come in the same order.
    again = evaluate(tmp_path / "again")
    for direction in ("t2i", "i2t"):
        assert again[direction]["cluster"]["metrics"] == before[direction]["cluster"]["metrics"]
        assert again[direction]["parity"] == before[direction]["parity"]
    for run in sorted(p.name for p in (tmp_path / "before").glob("*.trec")):
        assert (tmp_path / "again" / run).read_text() == (tmp_path / "before" / run).read_text()

    def searched() -> int:
        return watcher.stats(f"{prefix}-*", metric="search")["_all"]["total"]["search"]["query_total"]

    start_total = searched()
    stopper = StopWhen(lambda: searched() - start_total >= 200, "node-2", poll=0.05)
    try:
        stopper.start()
        during = evaluate(tmp_path / "during")
        finished = time.monotonic()
        stopper.join(timeout=120)
        assert stopper.error is None and stopper.stopped_at is not None, stopper.error
        assert stopper.stopped_at < finished, "node-2 stopped only after the evaluation ended"
    finally:
        node.start(cluster, timeout=240)
    wait_green(watcher)
    # The same scores at every rank of every query; documents tied on a score may come in another
    # order (each shard copy breaks ties by its own document order, and searches go to either copy),
    # so tie-counted parity is equal and everything else may move only by such ties.
    for direction in ("t2i", "i2t"):
        assert during[direction]["parity"]["top10_overlap_ties"] == before[direction]["parity"]["top10_overlap_ties"]
        for key, value in before[direction]["cluster"]["metrics"].items():
            assert during[direction]["cluster"]["metrics"][key] == pytest.approx(value, abs=0.01), (direction, key)
    runs = sorted(p.name for p in (tmp_path / "before").glob("*.cluster.trec"))
    assert len(runs) == 2
    for run in runs:
        got, want = read_trec(tmp_path / "during" / run), read_trec(tmp_path / "before" / run)
        assert got.keys() == want.keys()
        for qid, hits in want.items():
            assert [s for _, s in got[qid]] == [s for _, s in hits], (run, qid)
            last = hits[-1][1]
            assert {d for d, s in got[qid] if s > last} == {d for d, s in hits if s > last}, (run, qid)


def test_an_elasticsearch_collection_survives_losing_a_node(tmp_path):
    """Two Elasticsearch nodes, a collection with its default replica (1 on 2 data nodes), then
    the node outside the voting configuration stops: every document is still served, through a
    URL list that names the stopped node too. (With 2 master-eligible nodes Elasticsearch votes
    with one of them only, so losing that one would stop the cluster: 3 are needed for that.)"""
    spec = node.NodeSpec(engine="elasticsearch", port=ES_PORT, nodes=2, heap="512m", data=tmp_path / "data",
                         plugin="skip")
    urls = [f"http://127.0.0.1:{ES_PORT + i}" for i in range(2)]
    alias = f"esloss-{uuid.uuid4().hex[:6]}"
    n = 500
    ids = write_sparse(tmp_path / "docs.jsonl", n, "e", seed=4)
    try:
        node.start(spec, timeout=300)
        report = json.loads(ingest(tmp_path / "docs.jsonl", alias, "--shards", "2", urls=urls).stdout)
        assert report["count"] == n and report["failed"] == 0
        engine = engine_over(urls)
        assert engine.name == "elasticsearch"
        assert engine.index_setting(report["index"], "index.number_of_replicas") == "1"
        wait_green(engine, nodes=2)
        voting = engine.client.cluster.state(metric="metadata", filter_path="metadata.cluster_coordination")
        voters = set(voting["metadata"]["cluster_coordination"]["last_committed_config"])
        names = {node_id: name for node_id, name in
                 ((row["id"], row["name"]) for row in engine.client.cat.nodes(format="json", h="id,name", full_id=True))}
        (victim,) = [name for node_id, name in names.items() if node_id not in voters]
        survivor = urls[1] if victim == "node-1" else urls[0]
        node.stop(ES_PORT, [victim])

        after = engine_over([survivor, *[u for u in urls if u != survivor]])
        health = after.health()
        assert health["status"] == "yellow" and health["number_of_nodes"] == 1
        assert after.count(alias) == n and sorted(all_ids(after, alias)) == sorted(ids)
        searches_keep_answering(after, alias)
    finally:
        node.stop(ES_PORT)
