"""Cluster administration without a server: choosing nodes to stop, path.repo, the ingest count check."""

import json

import pytest
from click.testing import CliRunner

from lsr_os.cli import main
from lsr_os import node
from lsr_os.errors import NodeError


def write_state(port: int, name: str, pid: int) -> None:
    d = node.cluster_dir(port) / name
    d.mkdir(parents=True)
    (d / "node.json").write_text(json.dumps({
        "name": name, "pid": pid, "version": "3.8.0", "url": "http://127.0.0.1:1", "http_port": 1,
        "transport_port": 2, "log_file": "x.log", "data": "data"}))


def test_stopping_an_unknown_node_names_the_known_ones(tmp_path, monkeypatch):
    monkeypatch.setenv("LSR_OS_HOME", str(tmp_path))
    write_state(9555, "node-1", 999999)
    write_state(9555, "node-2", 999998)
    with pytest.raises(NodeError, match="no node node-7 on port 9555 \\(nodes: node-1, node-2\\)"):
        node.stop(9555, ["node-7"])
    result = CliRunner().invoke(main, ["node", "stop", "--port", "9555", "--node", "node-7"])
    assert result.exit_code == 1 and "no node node-7" in result.output
    # A named node whose process is gone: nothing to stop, no error.
    assert node.stop(9555, ["node-2"]) == []


@pytest.mark.parametrize("engine", node.ENGINES)
def test_path_repo_defaults_to_the_cluster_folder_and_can_be_shared(tmp_path, monkeypatch, engine):
    monkeypatch.setenv("LSR_OS_HOME", str(tmp_path / "home"))
    dist = tmp_path / "dist"
    (dist / "config").mkdir(parents=True)

    def path_repo(spec: node.NodeSpec) -> str:
        conf = node._write_config(spec, dist, 0, tmp_path / f"n{spec.port}")
        lines = dict(line.split(": ", 1) for line in (conf / spec.layout.config_file).read_text().splitlines())
        return json.loads(lines["path.repo"])

    assert path_repo(node.NodeSpec(port=9500, engine=engine)) == str(tmp_path / "home" / "clusters" / "9500" / "snapshots")
    shared = tmp_path / "home" / "clusters" / "9500" / "snapshots"
    assert path_repo(node.NodeSpec(port=9510, repo=shared, engine=engine)) == str(shared)


def test_snapshot_commands_report_an_unreachable_cluster_in_one_line():
    for args in (["create", "x"], ["list"], ["restore", "snap-1"], ["delete", "snap-1"]):
        result = CliRunner().invoke(main, ["snapshot", *args, "--url", "http://127.0.0.1:1", "--timeout", "1"])
        assert result.exit_code == 3 and "no cluster answered at http://127.0.0.1:1" in result.output


def test_ingest_count_check_tolerates_resent_bulks_but_not_lost_documents():
    from lsr_os.errors import ClusterError
    from lsr_os.index import IngestReport, _check_count

    def report(count, created, indexed, before=0):
        return IngestReport(alias="a", index="a-v1", collection="images", count=count, created=created,
                            indexed=indexed, docs_before=before)

    _check_count(report(8000, 8000, 8000))
    # 329 documents applied by a first attempt whose answer was lost, then re-sent: "updated".
    _check_count(report(8000, 7671, 8000))
    _check_count(report(110, 10, 12, before=100))
    with pytest.raises(ClusterError, match="holds 7990 documents, expected 8000"):
        _check_count(report(7990, 8000, 8000))
    with pytest.raises(ClusterError, match=r"expected 7671 to 8000 \(0 before this run \+ 7671 created, 329 updated\)"):
        _check_count(report(7600, 7671, 8000))
