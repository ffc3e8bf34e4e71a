"""A real local 3-node cluster: snapshots (also moved to another cluster) and node loss.

One cluster (ports 9700-9702, transport 9800-9802) serves the whole module; the tests that
stop a node start it again before they end, and the cluster is stopped afterwards whatever
happens. Everything runs on loopback. The node-loss tests stop a node that is NOT the first
URL the client is given, while a load or an evaluation is in flight, and check the outcome
the operator cares about: nothing lost, nothing doubled, same results.
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
from opensearchpy import helpers

from lsr_os.cli import main
from lsr_os import node, snapshot
from lsr_os.config import ClusterConfig

pytestmark = pytest.mark.integration

PORT = 9700
MOVE_PORT = 9750  # a second, one-node cluster that restores the first one's snapshot
URLS = [f"http://127.0.0.1:{PORT + i}" for i in range(3)]


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


def client_over(urls, timeout=30.0):
    return ClusterConfig(urls=tuple(urls), timeout=timeout).client()


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


def all_ids(client, index: str) -> list[str]:
    return [hit["_id"] for hit in helpers.scan(client, index=index, query={"query": {"match_all": {}}},
                                                _source=False, size=2000)]


def invoke(*args: str):
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def invoke_out(*args: str) -> str:
    """What a command printed on stdout (progress bars and warnings go to stderr)."""
    return invoke(*args).stdout


def ingest(path: Path, alias: str, *extra: str):
    return invoke("ingest", "--url", ",".join(URLS), "--sparse", str(path), "--collection", "images",
                  "--index", alias, "--failures", str(path.with_suffix(".failures.jsonl")), "--json", *extra)


def read_trec(path: Path) -> dict[str, list[tuple[str, float]]]:
    run: dict[str, list[tuple[str, float]]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        qid, _, doc, _, score, _ = line.split()
        run.setdefault(qid, []).append((doc, float(score)))
    return run


def wait_green(client, timeout: float = 180.0) -> None:
    health = client.cluster.health(wait_for_status="green", wait_for_nodes=3, params={"timeout": f"{timeout:.0f}s"},
                                   request_timeout=timeout + 10)
    assert health["status"] == "green" and health["number_of_nodes"] == 3, health


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
    client = client_over(URLS)
    alias = f"snap-{uuid.uuid4().hex[:6]}"
    ids = write_sparse(tmp_path / "docs.jsonl", 300, "s")
    ingest(tmp_path / "docs.jsonl", alias)
    # The repository must lie inside the nodes' path.repo: ask the cluster where that is.
    repo_root = snapshot.path_repo(client)["node-1"][0]
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
    assert not client.indices.exists(index=index)
    restored = json.loads(invoke_out("snapshot", "restore", "first", "--url", url, "--repo", alias, "--index", index,
                                 "--json"))
    assert restored["indices"] == {index: 300}
    assert sorted(all_ids(client, alias)) == sorted(ids)  # served under its alias again

    # Move: a separate one-node cluster whose path.repo is the first cluster's snapshot folder.
    other = node.NodeSpec(port=MOVE_PORT, heap="512m", data=tmp_path / "other", repo=Path(repo_root),
                          cluster_name="lsr-os-other")
    try:
        node.start(other, timeout=240)
        other_url = f"http://127.0.0.1:{MOVE_PORT}"
        moved = json.loads(invoke_out("snapshot", "restore", "first", "--url", other_url, "--repo", "from-main",
                                  "--location", location, "--index", index, "--json"))
        assert moved["indices"] == {index: 300}
        other_client = client_over([other_url])
        assert sorted(all_ids(other_client, alias)) == sorted(ids)
        assert other_client.snapshot.get_repository(repository="from-main")["from-main"]["settings"]["readonly"] in ("true", True)
    finally:
        node.stop(MOVE_PORT)
    invoke("snapshot", "delete", "first", "--url", url, "--repo", alias)
    assert json.loads(invoke_out("snapshot", "list", "--url", url, "--repo", alias, "--json")) == []


def test_ingest_survives_losing_a_node_and_the_node_rejoins(cluster, tmp_path):
    client = client_over(URLS[:1])  # the watcher talks to node-1 only: it is never stopped
    alias = f"loss-{uuid.uuid4().hex[:6]}"
    n = 8000
    ids = write_sparse(tmp_path / "docs.jsonl", n, "d", seed=1)

    def indexed() -> int:
        stats = client.indices.stats(index=f"{alias}-v*", metric="indexing", ignore=404)
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
    all_urls = client_over(URLS)  # node-3's URL is in the list: the client must route around it
    health = all_urls.cluster.health()
    assert health["status"] == "yellow" and health["number_of_nodes"] == 2
    assert all_urls.count(index=alias)["count"] == n
    got = all_ids(all_urls, alias)
    assert len(got) == n and set(got) == set(ids)
    for _ in range(10):  # searches keep answering during the loss
        hits = all_urls.search(index=alias, body={"size": 3, "query": {"rank_feature": {"field": "sparse.t7",
                                                                                         "linear": {}}}})
        assert hits["hits"]["total"]["value"] > 0

    # node-3 rejoins with its data and the cluster is whole again.
    node.start(cluster, timeout=240)
    wait_green(client)
    assert client.count(index=alias)["count"] == n
    assert "node-3" in {n["name"] for n in client.cat.nodes(format="json", h="name")}


def test_evaluate_gives_the_same_results_when_a_node_is_lost(cluster, tmp_path):
    client = client_over(URLS[:1])
    prefix = f"ev{uuid.uuid4().hex[:6]}"
    n_images = 200
    write_sparse(tmp_path / "images.jsonl", n_images, "img", extra=lambda i: {"split": "test"}, seed=2)
    write_sparse(tmp_path / "captions.jsonl", 5 * n_images, "cap",
                 extra=lambda i: {"split": "test", "image_id": f"img{i // 5}"}, seed=3)
    for coll in ("images", "captions"):
        invoke("ingest", "--url", ",".join(URLS), "--sparse", str(tmp_path / f"{coll}.jsonl"), "--collection", coll,
               "--prefix", prefix, "--failures", str(tmp_path / f"{coll}.failures.jsonl"))
    # No --replicas: on a cluster of 3 data nodes the default is 1, so every shard survives a lost node.
    for settings in client.indices.get_settings(index=f"{prefix}-*").values():
        assert settings["settings"]["index"]["number_of_replicas"] == "1"

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
        stats = client.indices.stats(index=f"{prefix}-*", metric="search")
        return stats["_all"]["total"]["search"]["query_total"]

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
    wait_green(client)
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
