"""Local node provisioning, both engines: the parts that need no download or JVM."""

import hashlib
import json
import re
from dataclasses import asdict
from pathlib import Path

import pytest
from click.testing import CliRunner

from lsr_os import node
from lsr_os.cli import main
from lsr_os.engines.elasticsearch.node import DEFAULT_VERSION as ES_VERSION
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


def test_mapper_extras_module_is_laid_out_with_a_descriptor(tmp_path):
    jar = tmp_path / "mapper-extras-client-3.8.0.jar"
    jar.write_bytes(b"PK")
    fetched = []
    dist = tmp_path / "opensearch-3.8.0"
    (dist / "bin").mkdir(parents=True)
    (dist / "bin" / "opensearch").write_text("")
    layout = node.layout("opensearch")
    assert not layout.is_complete(dist)
    layout.complete(dist, "3.8.0", lambda *coords: fetched.append(coords) or jar)
    assert fetched == [("org.opensearch.plugin", "mapper-extras-client", "jar", "3.8.0")]
    module = dist / "modules" / "mapper-extras"
    props = dict(line.split("=", 1) for line in (module / "plugin-descriptor.properties").read_text().splitlines())
    assert props["classname"] == "org.opensearch.index.mapper.MapperExtrasModulePlugin"
    assert props["version"] == props["opensearch.version"] == "3.8.0" and props["java.version"] == "21"
    assert (module / jar.name).exists() and layout.is_complete(dist)


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
    assert node.status(9555) == {"running": False, "engine": None, "nodes": [], "url": None, "version": None,
                                 "cluster_name": None, "health": None, "number_of_nodes": 0, "security": None}


def test_start_refuses_a_running_node_on_other_data_or_version(tmp_path, monkeypatch):
    monkeypatch.setenv("LSR_OS_HOME", str(tmp_path))
    node_dir = node.cluster_dir(9555) / "node-1"
    node_dir.mkdir(parents=True)
    state = node.NodeState(name="node-1", pid=4242, version=node.DEFAULT_VERSION, url="http://127.0.0.1:9555",
                           http_port=9555, transport_port=9655, log_file="x.log", data=str(tmp_path / "a"))
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


# ----------------------------------------------------------------------------- Elasticsearch and the engine layouts


def config_settings(conf: Path, name: str) -> dict:
    return {k: json.loads(v) for k, v in (line.split(": ", 1) for line in (conf / name).read_text().splitlines())}


def write_state(port: int, engine: str, version: str, url: str | None = None) -> None:
    node_dir = node.cluster_dir(port) / "node-1"
    node_dir.mkdir(parents=True)
    state = node.NodeState(name="node-1", pid=4242, version=version, url=url or f"http://127.0.0.1:{port}",
                           http_port=port, transport_port=port + 100, log_file="x.log", data=str(node_dir / "data"),
                           engine=engine)
    (node_dir / "node.json").write_text(json.dumps(asdict(state)))


def test_each_engine_pins_its_version_and_port_once_and_both_run_side_by_side():
    opensearch, elasticsearch = node.NodeSpec(), node.NodeSpec(engine="elasticsearch")
    assert (opensearch.version, opensearch.port) == (node.DEFAULT_VERSION, 9200)
    assert (elasticsearch.version, elasticsearch.port) == (ES_VERSION, 9400)
    assert re.fullmatch(r"9\.\d+\.\d+", ES_VERSION)
    ports = [{s.http_port(0), s.transport_port(0)} for s in (opensearch, elasticsearch)]
    assert not ports[0] & ports[1]
    assert node.layout("elasticsearch").checksums[ES_VERSION]  # Maven Central publishes no .sha1 for it


@pytest.mark.parametrize("kwargs, message", [
    ({"engine": "solr"}, "engine 'solr' is not one of opensearch, elasticsearch"),
    ({"engine": "elasticsearch", "version": "9"}, "Elasticsearch version '9' is not of the form X.Y.Z"),
    ({"secure": True}, "no security plugin; docker-compose.secure.yml runs a secured OpenSearch"),
    ({"port": 65500}, "port 65500: 1 node.s. need HTTP ports 65500-65500 and transport ports 65600-65600"),
    ({"port": 0}, "port 0: "),
])
def test_engine_spec_argument_errors(kwargs, message):
    with pytest.raises(NodeError, match=message):
        node.NodeSpec(**kwargs)


def test_elasticsearch_config_for_a_two_node_cluster_without_security(tmp_path, monkeypatch):
    monkeypatch.setenv("LSR_OS_HOME", str(tmp_path / "home"))
    dist = tmp_path / "dist"
    (dist / "config").mkdir(parents=True)
    spec = node.NodeSpec(engine="elasticsearch", port=9600, nodes=2, heap="512m")
    conf = node._write_config(spec, dist, 1, tmp_path / "n2")
    settings = config_settings(conf, "elasticsearch.yml")
    assert not (conf / "opensearch.yml").exists()
    assert settings["http.port"] == 9601 and settings["transport.port"] == 9701
    assert settings["cluster.initial_master_nodes"] == ["node-1", "node-2"]
    assert "cluster.initial_cluster_manager_nodes" not in settings and "discovery.type" not in settings
    assert settings["xpack.security.enabled"] is False
    assert (conf / "jvm.options.d" / "heap.options").read_text() == "-Xms512m\n-Xmx512m\n"


def test_a_secured_elasticsearch_config_has_tls_and_the_clusters_certificate_and_users(tmp_path, monkeypatch):
    monkeypatch.setenv("LSR_OS_HOME", str(tmp_path / "home"))
    dist = tmp_path / "dist"
    (dist / "config").mkdir(parents=True)
    security = node.security_dir(9600)
    (security / "certs").mkdir(parents=True)
    (security / "config").mkdir()
    for name in ("ca.crt", "ca.key", "node.crt", "node.key"):
        (security / "certs" / name).write_text(f"PEM {name}")
    (security / "config" / "users").write_text("admin:$2a$10$hash\n")
    (security / "config" / "users_roles").write_text("superuser:admin\n")
    conf = node._write_config(node.NodeSpec(engine="elasticsearch", port=9600, secure=True), dist, 0, tmp_path / "n1")
    settings = config_settings(conf, "elasticsearch.yml")
    for layer in ("http", "transport"):
        assert settings[f"xpack.security.{layer}.ssl.enabled"] is True
        assert settings[f"xpack.security.{layer}.ssl.certificate"] == "certs/node.crt"
        assert settings[f"xpack.security.{layer}.ssl.key"] == "certs/node.key"
        assert settings[f"xpack.security.{layer}.ssl.certificate_authorities"] == ["certs/ca.crt"]
    assert settings["xpack.security.enabled"] is True and settings["discovery.type"] == "single-node"
    assert [(conf / "certs" / n).read_text() for n in ("ca.crt", "node.crt", "node.key")] == \
        ["PEM ca.crt", "PEM node.crt", "PEM node.key"]
    assert not (conf / "certs" / "ca.key").exists()  # no node needs the CA's key
    assert (conf / "users_roles").read_text() == "superuser:admin\n"


def test_elasticsearch_9_needs_java_21(tmp_path, monkeypatch):
    monkeypatch.setattr(node, "JVM_ROOT", tmp_path / "jvm")
    fake_jdk(tmp_path / "jvm", "jdk17", "17.0.1")
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(NodeError, match=f"Elasticsearch {ES_VERSION} needs Java 21 or newer; JDKs found: .*jdk17"):
        node.find_java(ES_VERSION, "elasticsearch")
    assert node.find_java("8.19.0", "elasticsearch") == tmp_path / "jvm" / "jdk17"


def test_preflight_fails_in_one_line_without_java_or_maven_central(tmp_path, monkeypatch):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setattr(node, "JVM_ROOT", tmp_path / "jvm")
    with pytest.raises(NodeError, match="OpenSearch 3.8.0 needs Java 21 or newer") as no_java:
        node.preflight()
    fake_jdk(tmp_path / "jvm", "jdk25", "25.0.1")
    monkeypatch.setattr(node, "MAVEN_CENTRAL", "http://127.0.0.1:1")  # nothing listens there
    with pytest.raises(NodeError, match=r"cannot reach Maven Central \(http://127.0.0.1:1: .*refused") as no_central:
        node.preflight()
    assert "\n" not in str(no_java.value) + str(no_central.value)


def test_a_download_with_another_digest_is_refused(tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(b"not what was pinned")
    node._check_digest(archive, "sha256", hashlib.sha256(b"not what was pinned").hexdigest(), "g:a:1:zip")
    with pytest.raises(NodeError, match="g:a:1:zip does not have the sha256 lsr-os expects"):
        node._check_digest(archive, "sha256", "0" * 64, "g:a:1:zip")


def test_start_refuses_another_engine_or_security_on_the_port(tmp_path, monkeypatch):
    monkeypatch.setenv("LSR_OS_HOME", str(tmp_path))
    monkeypatch.setattr(node, "provision", lambda *a, **k: pytest.fail("must not provision"))
    write_state(9555, "elasticsearch", ES_VERSION)
    monkeypatch.setattr(node, "_alive", lambda pid: True)
    with pytest.raises(NodeError, match=f"node-1 on port 9555 already runs Elasticsearch {ES_VERSION} on data .*, "
                                        "not OpenSearch 3.8.0"):
        node.start(node.NodeSpec(port=9555))
    assert [s.already_running for s in node.start(node.NodeSpec(engine="elasticsearch", port=9555))] == [True]
    with pytest.raises(NodeError, match="already runs without security .--secure.; stop it first"):
        node.start(node.NodeSpec(engine="elasticsearch", port=9555, secure=True))
    monkeypatch.setattr(node, "_alive", lambda pid: False)  # stopped: its data is still Elasticsearch's
    with pytest.raises(NodeError, match="clusters/9555 holds an earlier Elasticsearch cluster's state and data, which "
                                        "OpenSearch cannot use: remove that folder or choose another --port"):
        node.start(node.NodeSpec(port=9555))


def test_the_port_of_stop_status_and_logs(tmp_path, monkeypatch):
    monkeypatch.setenv("LSR_OS_HOME", str(tmp_path))
    assert node.resolve_port(None, None) == 9200 and node.resolve_port(None, "elasticsearch") == 9400
    write_state(9555, "elasticsearch", ES_VERSION)
    assert node.resolve_port(9555, None) == node.resolve_port(9555, "elasticsearch") == 9555
    with pytest.raises(NodeError, match="the local cluster on port 9555 is Elasticsearch, not OpenSearch"):
        node.resolve_port(9555, "opensearch")
    result = CliRunner().invoke(main, ["node", "status", "--engine", "elasticsearch"])
    assert result.exit_code == 1 and "no node running on port 9400" in result.output
    result = CliRunner().invoke(main, ["node", "stop", "--port", "9555", "--engine", "opensearch"])
    assert result.exit_code == 1 and "is Elasticsearch, not OpenSearch" in result.output


def test_status_of_a_secured_cluster_names_the_password_file_never_the_password(tmp_path, monkeypatch):
    monkeypatch.setenv("LSR_OS_HOME", str(tmp_path))
    write_state(9555, "elasticsearch", ES_VERSION, url="https://127.0.0.1:9555")
    security = node.security_dir(9555)
    (security / "certs").mkdir(parents=True)
    (security / "certs" / "ca.crt").write_text("PEM")
    node._write_secret(security / "admin.password", "s3cret-never-shown")
    (security / "security.json").write_text(json.dumps({
        "ca_certs": str(security / "certs" / "ca.crt"), "superuser": "admin",
        "users": {"admin": {"role": "superuser", "password_file": str(security / "admin.password")}}}))
    assert (security / "admin.password").stat().st_mode & 0o777 == 0o600
    facts = node.status(9555)
    assert facts["engine"] == "elasticsearch" and facts["security"]["user"] == "admin"
    assert facts["security"]["password_file"] == str(security / "admin.password")
    out = CliRunner().invoke(main, ["node", "status", "--port", "9555"]).output
    assert f"user admin (role superuser): password in {security / 'admin.password'}" in out
    assert "s3cret" not in out and "s3cret" not in json.dumps(facts)


def test_users_are_added_only_to_a_secured_cluster_with_plain_names(tmp_path, monkeypatch):
    monkeypatch.setenv("LSR_OS_HOME", str(tmp_path))
    with pytest.raises(NodeError, match="the local cluster on port 9555 is not secured .start it with --secure."):
        node.add_user(9555, "viewer", "viewer")
    with pytest.raises(NodeError, match="user name 'a b' must be letters, digits"):
        node.add_user(9555, "a b", "viewer")
    with pytest.raises(NodeError, match="role '../x' must be letters, digits"):
        node.add_user(9555, "viewer", "../x")
    result = CliRunner().invoke(main, ["node", "start", "--secure", "--port", "9555"])
    assert result.exit_code == 1 and "no security plugin" in result.output


def test_node_start_help_names_both_engines_and_their_versions():
    out = " ".join(CliRunner().invoke(main, ["node", "start", "--help"]).output.split())
    assert "--engine [opensearch|elasticsearch]" in out
    assert f"Elasticsearch [default: {ES_VERSION}]" in out and "--secure" in out
