"""docker-compose files: no Docker engine runs here, so check what the files promise."""

from pathlib import Path

import pytest

from lsr_os.engines.elasticsearch.node import DEFAULT_VERSION as ES_VERSION
from lsr_os.node import DEFAULT_VERSION

yaml = pytest.importorskip("yaml")
ROOT = Path(__file__).resolve().parent.parent


def env_version(name: str = "OPENSEARCH_VERSION") -> str:
    for line in (ROOT / ".env").read_text().splitlines():
        if line.startswith(f"{name}="):
            return line.split("=", 1)[1].strip()
    raise AssertionError(f".env does not set {name}")


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


COMPOSE_FILES = ("docker-compose.yml", "docker-compose.cluster.yml", "docker-compose.secure.yml")


def test_version_is_pinned_once_and_matches_the_local_node():
    assert env_version() == DEFAULT_VERSION
    for name in COMPOSE_FILES:
        for svc in load(name)["services"].values():
            assert svc["image"].split(":", 1)[1].startswith("${OPENSEARCH_VERSION"), svc["image"]
            if "build" in svc:
                assert svc["build"]["args"]["OPENSEARCH_VERSION"].startswith("${OPENSEARCH_VERSION"), name


def test_every_opensearch_node_runs_the_image_with_the_lsr_os_plugin():
    for name in COMPOSE_FILES:
        nodes = {k: v for k, v in load(name)["services"].items() if k != "dashboards"}
        assert nodes, name
        for svc in nodes.values():
            assert svc["build"]["context"] == "./plugin" and (ROOT / "plugin" / "Dockerfile").is_file()
            assert svc["image"].startswith("lsr-os-opensearch:"), name


def _dockerfile() -> list[str]:
    return [line.strip() for line in (ROOT / "plugin" / "Dockerfile").read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_the_dockerfile_builds_the_plugin_with_maven_and_installs_it_into_the_official_image():
    """Checked as text: no Docker engine runs here, so the image itself was never built."""
    lines = _dockerfile()
    froms = [ln for ln in lines if ln.startswith("FROM ")]
    assert lines[0] == "ARG OPENSEARCH_VERSION"  # no default: .env pins the version once
    assert len(froms) == 2 and froms[0].startswith("FROM maven:") and froms[0].endswith(" AS build")
    assert int(froms[0].split("temurin-")[1].split()[0]) >= 21  # a JDK the plugin's release 21 builds on
    assert froms[1] == "FROM opensearchproject/opensearch:${OPENSEARCH_VERSION}"
    text = "\n".join(lines)
    assert '-pl opensearch -am -Dmaven.test.skip=true -Dopensearch.version="$OPENSEARCH_VERSION" package' in text
    assert "cp opensearch/target/lsr-os-*.zip" in text
    assert "opensearch-plugin install -b file:///tmp/lsr-os.zip" in text
    copied = [part for ln in lines if ln.startswith("COPY ") and "--from" not in ln for part in ln.split()[1:-1]]
    # every pom of the reactor, the assembly, and the sources of the modules it builds
    assert sorted(copied) == sorted(["pom.xml", "assembly.xml", "core/pom.xml", "core/src/main", "opensearch/pom.xml",
                                     "opensearch/src/main", "elasticsearch/pom.xml"])
    assert all((ROOT / "plugin" / path).exists() for path in copied)
    parent = (ROOT / "plugin" / "pom.xml").read_text()
    assert all(f"<module>{path.split('/')[0]}</module>" in parent for path in copied if path.endswith("/pom.xml"))
    assert DEFAULT_VERSION not in text
    ignored = (ROOT / "plugin" / ".dockerignore").read_text().split()
    assert "**/target/" in ignored and not any("src/main" in i or "pom.xml" in i for i in ignored)


def test_single_node_compose():
    doc = load("docker-compose.yml")
    os_svc, dash = doc["services"]["opensearch"], doc["services"]["dashboards"]
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


def test_elasticsearch_compose_runs_the_pinned_official_image_with_security_as_elastic_ships_it():
    assert env_version("ELASTICSEARCH_VERSION") == ES_VERSION
    assert not any(line.startswith("ELASTIC_PASSWORD=") for line in (ROOT / ".env").read_text().splitlines())
    doc = load("docker-compose.elasticsearch.yml")
    (svc,) = doc["services"].values()
    assert svc["image"] == "docker.elastic.co/elasticsearch/elasticsearch:${ELASTICSEARCH_VERSION:?set ELASTICSEARCH_VERSION (see .env)}"
    env = svc["environment"]
    assert env["ELASTIC_PASSWORD"].startswith("${ELASTIC_PASSWORD:?")  # compose refuses to start without it
    # No xpack.security.* setting: the image's own auto-configuration turns on TLS and users.
    assert not [k for k in env if k.startswith("xpack.security")]
    assert env["discovery.type"] == "single-node"
    assert svc["ports"] == ["127.0.0.1:9400:9200"]  # beside OpenSearch's 9200, like the local node
    health = " ".join(svc["healthcheck"]["test"])
    assert "https://localhost:9200" in health and "--cacert config/certs/http_ca.crt" in health
    assert "$${ELASTIC_PASSWORD}" in (ROOT / "docker-compose.elasticsearch.yml").read_text()
    assert {v.split(":")[0] for v in svc["volumes"]} <= set(doc["volumes"])
