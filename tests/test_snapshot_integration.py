"""Snapshots on every engine's test node.

The registration error needs no path.repo; the round trip needs the node to have one
(`lsr-os node start` sets it; CI's nodes have it) and is skipped with the reason otherwise.
The 3-node cluster test (tests/test_cluster_integration.py) also moves a snapshot to another
cluster.
"""

import json
import uuid
from pathlib import Path

import pytest

from index_helpers import cli
from lsr_os import snapshot
from lsr_os.errors import ClusterError

pytestmark = pytest.mark.integration


def test_a_location_outside_path_repo_is_refused_naming_the_allowed_folders(engine, tmp_path):
    name = f"outside-{uuid.uuid4().hex[:6]}"
    allowed = sorted({p for paths in engine.repository_paths().values() for p in paths})
    with pytest.raises(ClusterError, match="is not inside the nodes' path.repo") as err:
        snapshot.register_repository(engine, name, str(tmp_path / "elsewhere"))
    assert (", ".join(allowed) if allowed else "not set") in str(err.value)
    assert engine.repository(name) is None


@pytest.fixture
def repository(engine):
    """A fresh fs repository under the node's path.repo, unregistered (snapshots deleted) afterwards."""
    roots = [p for paths in engine.repository_paths().values() for p in paths]
    if not roots or not Path(roots[0]).is_dir():
        pytest.skip(f"the {engine.display_name} test node has no path.repo on this machine "
                    "(start it with `lsr-os node start`)")
    name = f"test-{uuid.uuid4().hex[:8]}"
    snapshot.register_repository(engine, name, str(Path(roots[0]) / name))
    yield name
    for snap in snapshot.list_snapshots(engine, name):
        snapshot.delete_snapshot(engine, name, snap["snapshot"])
    engine.delete_repository(name)


def test_snapshot_delete_restore_round_trip(engine, index_name, repository):
    engine.create_index(index_name, {"settings": {"number_of_replicas": 0}, "aliases": {f"{index_name}-alias": {}}})
    engine.bulk("".join(f'{{"index": {{"_index": "{index_name}", "_id": "d{i}"}}}}\n{{"n": {i}}}\n'
                        for i in range(57)).encode())
    engine.refresh(index_name)

    def run(*args):
        result = cli(engine, *args, "--repo", repository)
        assert result.exit_code == 0, result.output
        return result.stdout

    created = json.loads(run("snapshot", "create", f"{index_name}-alias", "--name", "one", "--json"))
    assert created["indices"] == [index_name] and created["state"] == "SUCCESS"
    assert [s["snapshot"] for s in json.loads(run("snapshot", "list", "--json"))] == ["one"]
    beside = json.loads(run("snapshot", "restore", "one", "--rename-suffix", "-copy", "--json"))
    assert beside["indices"] == {f"{index_name}-copy": 57}
    assert engine.alias_targets(f"{index_name}-alias") == [index_name]  # the copy came without the alias
    engine.delete_indices(index_name)
    restored = json.loads(run("snapshot", "restore", "one", "--index", index_name, "--json"))
    assert restored["indices"] == {index_name: 57}
    assert engine.count(f"{index_name}-alias") == 57  # the alias came back too

    missing = cli(engine, "snapshot", "restore", "nope", "--repo", repository)
    assert missing.exit_code == 1 and f"no snapshot nope in repository {repository}" in missing.output
