"""Local node provisioning: the parts that need no download or JVM."""

import json
from pathlib import Path

import pytest

from lsr_os import node
from lsr_os.errors import NodeError


def fake_jdk(root: Path, name: str, version: str) -> Path:
    jdk = root / name
    (jdk / "bin").mkdir(parents=True)
    (jdk / "bin" / "java").write_text("")
    (jdk / "release").write_text(f'JAVA_VERSION="{version}"\n')
    return jdk


def test_java_major_reads_release_files(tmp_path):
    assert node.java_major(fake_jdk(tmp_path, "a", "17.0.15")) == 17
    assert node.java_major(fake_jdk(tmp_path, "b", "1.8.0_402")) == 8
    assert node.java_major(fake_jdk(tmp_path, "c", "25")) == 25
    assert node.java_major(tmp_path / "missing") is None


def test_find_java_prefers_java_home_when_new_enough_else_newest(tmp_path, monkeypatch):
    jvm = tmp_path / "jvm"
    j17, j25 = fake_jdk(jvm, "jdk17", "17.0.1"), fake_jdk(jvm, "jdk25", "25.0.1")
    monkeypatch.setattr(node, "JVM_ROOT", jvm)
    monkeypatch.setenv("JAVA_HOME", str(j17))
    assert node.find_java("3.8.0") == j25  # 3.x needs 21+
    assert node.find_java("2.19.6") == j17  # JAVA_HOME is enough for 2.x
    monkeypatch.delenv("JAVA_HOME")
    (j25 / "release").unlink()
    with pytest.raises(NodeError, match="needs Java 21 or newer; JDKs found: .*jdk17 \\(17\\)"):
        node.find_java("3.8.0")


@pytest.mark.parametrize("kwargs, message", [
    ({"version": "latest"}, "X.Y.Z"), ({"heap": "1GB"}, "512m"), ({"nodes": 0}, "at least one")])
def test_spec_validation(kwargs, message):
    with pytest.raises(NodeError, match=message):
        node.NodeSpec(**kwargs)


def test_config_for_a_three_node_cluster(tmp_path, monkeypatch):
    monkeypatch.setenv("LSR_OS_HOME", str(tmp_path / "home"))
    dist = tmp_path / "dist"
    (dist / "config").mkdir(parents=True)
    (dist / "config" / "jvm.options").write_text("-Xms1g\n")
    spec = node.NodeSpec(port=9500, nodes=3, heap="512m")
    conf = node._write_config(spec, dist, 1, tmp_path / "n2")
    settings = {k: json.loads(v) for k, v in
                (line.split(": ", 1) for line in (conf / "opensearch.yml").read_text().splitlines())}
    assert settings["node.name"] == "node-2" and settings["http.port"] == 9501 and settings["transport.port"] == 9601
    assert settings["network.host"] == "127.0.0.1"
    assert settings["discovery.seed_hosts"] == ["127.0.0.1:9600", "127.0.0.1:9601", "127.0.0.1:9602"]
    assert settings["cluster.initial_cluster_manager_nodes"] == ["node-1", "node-2", "node-3"]
    assert "discovery.type" not in settings
    assert (conf / "jvm.options.d" / "heap.options").read_text() == "-Xms512m\n-Xmx512m\n"
    single = node._write_config(node.NodeSpec(port=9500), dist, 0, tmp_path / "n1")
    assert 'discovery.type: "single-node"' in (single / "opensearch.yml").read_text()


def test_mapper_extras_module_is_laid_out_with_a_descriptor(tmp_path, monkeypatch):
    jar = tmp_path / "mapper-extras-client-3.8.0.jar"
    jar.write_bytes(b"PK")
    monkeypatch.setattr(node, "fetch_artifact", lambda *a: jar)
    module = tmp_path / "modules" / "mapper-extras"
    node._add_mapper_extras(module, "3.8.0")
    props = dict(line.split("=", 1) for line in (module / "plugin-descriptor.properties").read_text().splitlines())
    assert props["classname"] == "org.opensearch.index.mapper.MapperExtrasModulePlugin"
    assert props["version"] == props["opensearch.version"] == "3.8.0" and props["java.version"] == "21"
    assert (module / jar.name).exists()


def test_port_in_use_is_refused_before_anything_is_fetched(tmp_path, monkeypatch):
    import socket

    monkeypatch.setenv("LSR_OS_HOME", str(tmp_path))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        monkeypatch.setattr(node, "provision", lambda v: pytest.fail("must not provision"))
        with pytest.raises(NodeError, match=f"port {port} .* in use"):
            node.start(node.NodeSpec(port=port))


def test_logs_of_a_node_never_started(tmp_path, monkeypatch):
    monkeypatch.setenv("LSR_OS_HOME", str(tmp_path))
    with pytest.raises(NodeError, match="no local node was ever started on port 9555"):
        node.logs(9555)


def test_status_of_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("LSR_OS_HOME", str(tmp_path))
    assert node.status(9555) == {"running": False, "nodes": [], "url": None, "version": None,
                                 "cluster_name": None, "health": None, "number_of_nodes": 0}


def test_start_refuses_a_running_node_on_other_data_or_version(tmp_path, monkeypatch):
    monkeypatch.setenv("LSR_OS_HOME", str(tmp_path))
    node_dir = node.cluster_dir(9555) / "node-1"
    node_dir.mkdir(parents=True)
    state = node.NodeState(name="node-1", pid=4242, version=node.DEFAULT_VERSION, url="http://127.0.0.1:9555",
                           http_port=9555, transport_port=9655, log_file="x.log", data=str(tmp_path / "a"))
    from dataclasses import asdict

    (node_dir / "node.json").write_text(json.dumps(asdict(state)))
    monkeypatch.setattr(node, "_alive", lambda pid: pid == 4242)
    monkeypatch.setattr(node, "provision", lambda v: pytest.fail("must not provision"))
    again = node.start(node.NodeSpec(port=9555, data=tmp_path / "a"))
    assert [s.already_running for s in again] == [True]
    assert [s.already_running for s in node.start(node.NodeSpec(port=9555))] == [True]  # no --data: any
    with pytest.raises(NodeError, match=r"already runs OpenSearch .* on data .*/a, not .* on .*/b; stop it first"):
        node.start(node.NodeSpec(port=9555, data=tmp_path / "b"))
    with pytest.raises(NodeError, match="already runs OpenSearch"):
        node.start(node.NodeSpec(port=9555, data=tmp_path / "a", version="2.19.0"))
