"""Snapshots on the test node (the integration tier's OPENSEARCH_URL node).

The registration error needs no path.repo; the round trip needs the node to have one
(`lsr-os node start` sets it; CI's node has it) and is skipped with the reason otherwise.
The 3-node cluster test (tests/test_cluster_integration.py) also moves a snapshot to another
cluster.
"""

import json
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from lsr_os.cli import main
from lsr_os import snapshot
from lsr_os.errors import ClusterError

pytestmark = pytest.mark.integration


def test_a_location_outside_path_repo_is_refused_naming_the_allowed_folders(os_client, tmp_path):
    name = f"outside-{uuid.uuid4().hex[:6]}"
    allowed = sorted({p for paths in snapshot.path_repo(os_client).values() for p in paths})
    with pytest.raises(ClusterError, match="is not inside the nodes' path.repo") as err:
        snapshot.register_repository(os_client, name, str(tmp_path / "elsewhere"))
    assert (", ".join(allowed) if allowed else "not set") in str(err.value)
    assert snapshot.get_repository(os_client, name) is None


@pytest.fixture
def repository(os_client, cluster_config):
    """A fresh fs repository under the node's path.repo, unregistered (snapshots deleted) afterwards."""
    roots = [p for paths in snapshot.path_repo(os_client).values() for p in paths]
    if not roots or not Path(roots[0]).is_dir():
        pytest.skip("the test node has no path.repo on this machine (start it with `lsr-os node start`)")
    name = f"test-{uuid.uuid4().hex[:8]}"
    snapshot.register_repository(os_client, name, str(Path(roots[0]) / name))
    yield name
    for snap in snapshot.list_snapshots(os_client, name):
        snapshot.delete_snapshot(os_client, name, snap["snapshot"])
    os_client.snapshot.delete_repository(repository=name)


def test_snapshot_delete_restore_round_trip(os_client, cluster_config, index_name, repository):
    os_client.indices.create(index=index_name, body={"settings": {"number_of_replicas": 0},
                                                     "aliases": {f"{index_name}-alias": {}}})
    docs = [{"_index": index_name, "_id": f"d{i}", "_source": {"n": i}} for i in range(57)]
    from opensearchpy import helpers

    helpers.bulk(os_client, docs, refresh=True)
    url = ",".join(cluster_config.urls)

    def run(*args):
        result = CliRunner().invoke(main, [*args, "--url", url, "--repo", repository])
        assert result.exit_code == 0, result.output
        return result.stdout

    created = json.loads(run("snapshot", "create", f"{index_name}-alias", "--name", "one", "--json"))
    assert created["indices"] == [index_name] and created["state"] == "SUCCESS"
    beside = json.loads(run("snapshot", "restore", "one", "--rename-suffix", "-copy", "--json"))
    assert beside["indices"] == {f"{index_name}-copy": 57}
    assert not os_client.indices.exists_alias(name=f"{index_name}-alias", index=f"{index_name}-copy")
    os_client.indices.delete(index=index_name)
    restored = json.loads(run("snapshot", "restore", "one", "--index", index_name, "--json"))
    assert restored["indices"] == {index_name: 57}
    assert os_client.count(index=f"{index_name}-alias")["count"] == 57  # the alias came back too

    missing = CliRunner().invoke(main, ["snapshot", "restore", "nope", "--url", url, "--repo", repository])
    assert missing.exit_code == 1 and f"no snapshot nope in repository {repository}" in missing.output
