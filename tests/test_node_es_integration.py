"""`lsr-os node --engine elasticsearch` for real: a plain node, a secured one and a 2-node cluster,
each on its own fixed port, started and stopped."""

import http.client
import json
import os
import ssl
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path

import pytest
from click.testing import CliRunner

from lsr_os import node
from lsr_os.cli import main
from lsr_os.engines.elasticsearch.node import DEFAULT_VERSION as ES_VERSION
from lsr_os.errors import NodeError

pytestmark = pytest.mark.integration
PORT, SECURE_PORT, CLUSTER_PORT = 9920, 9925, 9930  # transport ports: +100 (docs/development.md)


@pytest.fixture
def fresh_home(tmp_path, monkeypatch):
    """An lsr-os home of its own (fresh cluster state and security), sharing the real home's
    downloads and unpacked distributions so nothing is fetched twice."""
    real = node.home()
    for name in ("downloads", "dist"):
        (real / name).mkdir(parents=True, exist_ok=True)
        (tmp_path / "home" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "home" / name).symlink_to(real / name)
    monkeypatch.setenv("LSR_OS_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def request(url: str, ca: str | None = None, user: str | None = None, password: str | None = None,
            method: str = "GET", body: dict | None = None) -> tuple[int, dict, dict]:
    """status, headers (lower-case names) and JSON body; an HTTP error status is an answer too."""
    headers = {"Content-Type": "application/json"}
    if user:
        headers["Authorization"] = "Basic " + b64encode(f"{user}:{password}".encode()).decode()
    req = urllib.request.Request(url, method=method, headers=headers,
                                 data=json.dumps(body).encode() if body is not None else None)
    context = ssl.create_default_context(cafile=ca) if ca else None
    try:
        with urllib.request.urlopen(req, timeout=30, context=context) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, json.loads(exc.read() or b"{}")


def test_a_plain_elasticsearch_node_starts_answers_as_elasticsearch_and_stops(fresh_home, tmp_path):
    runner = CliRunner()
    try:
        # the plugin has tests of its own (test_plugin_node_integration): a build here would only slow this down
        first = runner.invoke(main, ["node", "start", "--engine", "elasticsearch", "--port", str(PORT), "--heap", "512m",
                                     "--data", str(tmp_path / "data"), "--no-plugin"])
        assert first.exit_code == 0, first.output
        assert f"Elasticsearch {ES_VERSION} started at http://127.0.0.1:{PORT}" in first.output
        pid = node.status(PORT)["nodes"][0]["pid"]
        assert (tmp_path / "data" / "node.lock").exists()  # the node really writes where --data says

        status, headers, body = request(f"http://127.0.0.1:{PORT}/_nodes/_local")
        assert status == 200 and headers["x-elastic-product"] == "Elasticsearch"
        assert [n["version"] for n in body["nodes"].values()] == [ES_VERSION]
        config = (fresh_home / "clusters" / str(PORT) / "node-1" / "config" / "elasticsearch.yml").read_text()
        assert 'xpack.security.enabled: false' in config and 'discovery.type: "single-node"' in config

        again = runner.invoke(main, ["node", "start", "--engine", "elasticsearch", "--port", str(PORT)])
        assert again.exit_code == 0 and "already running" in again.output and str(pid) in again.output
        other = runner.invoke(main, ["node", "start", "--port", str(PORT)])  # OpenSearch asked where Elasticsearch runs
        assert other.exit_code == 1 and f"already runs Elasticsearch {ES_VERSION}" in other.output

        facts = json.loads(runner.invoke(main, ["node", "status", "--port", str(PORT), "--json"]).output)
        assert facts["running"] and facts["engine"] == "elasticsearch" and facts["version"] == ES_VERSION
        assert facts["health"] in ("green", "yellow") and facts["security"] is None
        wrong = runner.invoke(main, ["node", "status", "--port", str(PORT), "--engine", "opensearch"])
        assert wrong.exit_code == 1 and f"port {PORT} is Elasticsearch, not OpenSearch" in wrong.output
        assert "lsr-os.log" in runner.invoke(main, ["node", "logs", "--port", str(PORT), "-n", "5"]).output
    finally:
        stopped = runner.invoke(main, ["node", "stop", "--port", str(PORT)])  # no --engine: the state says
    assert stopped.exit_code == 0 and str(pid) in stopped.output
    assert not node._alive(pid)
    after = runner.invoke(main, ["node", "status", "--port", str(PORT)])
    assert after.exit_code == 1 and "no node running" in after.output


def test_a_secured_elasticsearch_node_has_https_a_superuser_and_a_viewer(fresh_home):
    runner = CliRunner()
    url = f"https://127.0.0.1:{SECURE_PORT}"
    try:
        started = runner.invoke(main, ["node", "start", "--engine", "elasticsearch", "--port", str(SECURE_PORT),
                                       "--heap", "512m", "--secure", "--no-plugin"])
        assert started.exit_code == 0, started.output
        security = node.security_info(SECURE_PORT)
        ca, password_file = security["ca_certs"], Path(security["password_file"])
        password = password_file.read_text().strip()
        assert f"started at {url}" in started.output and f"CA {ca}" in started.output
        assert f"user admin (role superuser): password in {password_file}" in started.output
        assert password not in started.output and len(password) >= 20
        assert password_file.stat().st_mode & 0o777 == 0o600
        assert not any(password in p.read_text(errors="replace")
                       for p in (fresh_home / "clusters" / str(SECURE_PORT)).rglob("*.log"))

        status, headers, body = request(f"{url}/_nodes/_local", ca, "admin", password)
        assert status == 200 and headers["x-elastic-product"] == "Elasticsearch"
        assert [n["version"] for n in body["nodes"].values()] == [ES_VERSION]
        assert request(f"{url}/_cluster/health", ca, "admin", "not-the-password")[0] == 401
        assert request(f"{url}/_cluster/health", ca)[0] == 401  # no credentials
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            request(f"{url}/_cluster/health", None, "admin", password)  # the system CAs do not know ours
        with pytest.raises((OSError, http.client.HTTPException)):  # plain http to the https port
            request(f"http://127.0.0.1:{SECURE_PORT}/_cluster/health", None, "admin", password)

        viewer_file = node.add_user(SECURE_PORT, "viewer", "viewer")
        assert node.add_user(SECURE_PORT, "viewer", "viewer") == viewer_file  # again: harmless
        with pytest.raises(NodeError, match="user viewer already exists .* with role viewer, not superuser"):
            node.add_user(SECURE_PORT, "viewer", "superuser")
        viewer = viewer_file.read_text().strip()
        assert viewer_file.stat().st_mode & 0o777 == 0o600 and viewer != password
        status, _, who = request(f"{url}/_security/_authenticate", ca, "viewer", viewer)
        assert status == 200 and who["roles"] == ["viewer"]
        status, _, refused = request(f"{url}/made-by-a-viewer", ca, "viewer", viewer, method="PUT", body={})
        assert status == 403 and "is unauthorized for user [viewer]" in refused["error"]["reason"]
        assert request(f"{url}/made-by-admin", ca, "admin", password, method="PUT", body={})[0] == 200

        facts = json.loads(runner.invoke(main, ["node", "status", "--port", str(SECURE_PORT), "--json"]).output)
        assert facts["url"] == url and facts["security"]["ca_certs"] == ca
        assert facts["security"]["users"]["viewer"] == {"role": "viewer", "password_file": str(viewer_file)}
        plain = runner.invoke(main, ["node", "start", "--engine", "elasticsearch", "--port", str(SECURE_PORT)])
        assert plain.exit_code == 1 and "already runs with security" in plain.output
    finally:
        stopped = runner.invoke(main, ["node", "stop", "--port", str(SECURE_PORT)])
    assert stopped.exit_code == 0 and "stopped 1 node(s)" in stopped.output


def test_a_two_node_elasticsearch_cluster_forms_and_loses_a_node(fresh_home):
    spec = node.NodeSpec(engine="elasticsearch", port=CLUSTER_PORT, nodes=2, heap="512m", plugin="skip")
    try:
        states = node.start(spec, timeout=300)
        assert [s.url for s in states] == [f"http://127.0.0.1:{CLUSTER_PORT}", f"http://127.0.0.1:{CLUSTER_PORT + 1}"]
        facts = node.status(CLUSTER_PORT)
        assert facts["number_of_nodes"] == 2 and [n["version"] for n in facts["nodes"]] == [ES_VERSION] * 2
        config = (fresh_home / "clusters" / str(CLUSTER_PORT) / "node-2" / "config" / "elasticsearch.yml").read_text()
        assert 'cluster.initial_master_nodes: ["node-1", "node-2"]' in config
        assert node.stop(CLUSTER_PORT, ["node-2"]) == [states[1].pid]
        assert [n["running"] for n in node.status(CLUSTER_PORT)["nodes"]] == [True, False]
    finally:
        node.stop(CLUSTER_PORT)
    assert not any(node._alive(s.pid) for s in states)
    assert os.path.isdir(fresh_home / "clusters" / str(CLUSTER_PORT) / "node-2" / "data")
