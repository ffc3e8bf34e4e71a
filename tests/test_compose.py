"""docker-compose files: no Docker engine runs here, so check what the files promise."""

from pathlib import Path

import pytest

from lsr_os.node import DEFAULT_VERSION

yaml = pytest.importorskip("yaml")
ROOT = Path(__file__).resolve().parent.parent


def env_version() -> str:
    for line in (ROOT / ".env").read_text().splitlines():
        if line.startswith("OPENSEARCH_VERSION="):
            return line.split("=", 1)[1].strip()
    raise AssertionError(".env does not set OPENSEARCH_VERSION")


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def test_version_is_pinned_once_and_matches_the_local_node():
    assert env_version() == DEFAULT_VERSION
    for name in ("docker-compose.yml", "docker-compose.cluster.yml"):
        for svc in load(name)["services"].values():
            assert svc["image"].split(":", 1)[1].startswith("${OPENSEARCH_VERSION"), svc["image"]


def test_single_node_compose():
    doc = load("docker-compose.yml")
    os_svc, dash = doc["services"]["opensearch"], doc["services"]["dashboards"]
    assert os_svc["image"].startswith("opensearchproject/opensearch:")
    assert dash["image"].startswith("opensearchproject/opensearch-dashboards:")
    assert "127.0.0.1:9200:9200" in os_svc["ports"] and "127.0.0.1:5601:5601" in dash["ports"]
    assert os_svc["environment"]["discovery.type"] == "single-node"
    assert os_svc["environment"]["DISABLE_SECURITY_PLUGIN"] == "true"
    assert dash["environment"]["DISABLE_SECURITY_DASHBOARDS_PLUGIN"] == "true"
    assert "opensearch-data" in doc["volumes"]
    assert any(v.startswith("opensearch-data:") for v in os_svc["volumes"])
    assert "healthcheck" in os_svc and "healthcheck" in dash
    assert dash["depends_on"]["opensearch"]["condition"] == "service_healthy"


def test_three_node_compose_matches_local_cluster_layout():
    doc = load("docker-compose.cluster.yml")
    nodes = [doc["services"][f"node-{i}"] for i in (1, 2, 3)]
    for i, svc in enumerate(nodes, 1):
        env = svc["environment"]
        assert env["node.name"] == f"node-{i}" and env["cluster.name"] == "lsr-os"
        assert env["cluster.initial_cluster_manager_nodes"] == "node-1,node-2,node-3"
        assert svc["ports"] == [f"127.0.0.1:{9199 + i}:9200"]
        assert "healthcheck" in svc
        assert svc["volumes"][0].split(":")[0] in doc["volumes"]
