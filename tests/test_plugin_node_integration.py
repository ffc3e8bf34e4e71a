"""`lsr-os node start` and the plugin for real, on each engine: nodes of its own, with the plugin
and without, on fixed ports (OpenSearch 9230 and 9235, Elasticsearch 9840 and 9845; transport
+100), started and stopped here. Needs Maven and a JDK 21+ (skipped with the reason without
them; a failure under CI=true)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import urllib.request
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from lsr_os import node, plugin
from lsr_os.cli import main
from lsr_os.config import ClusterConfig
from lsr_os.engines import connect
from lsr_os.errors import BadRequest, NodeError
from lsr_os.index import load_mapping, to_document
from lsr_os.search import build_query
from lsr_os.sparse import SparseRecord
from plugin_helpers import bulk_lines, head_with_query_weights

pytestmark = pytest.mark.integration
# engine -> (HTTP port of the node with the plugin, of the node without it)
PORTS = {"opensearch": (9230, 9235), "elasticsearch": (9840, 9845)}
# engine -> (another version to build a zip for, what the engine's own installer says of it)
OTHER_VERSION = {"opensearch": ("3.7.0", "was built for OpenSearch version 3.7.0 but version {version} is running"),
                 "elasticsearch": ("9.5.2", "was built for Elasticsearch version 9.5.2 but version {version} is running")}


@pytest.fixture(scope="module", params=list(PORTS))
def engine_name(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def java(engine_name):
    try:
        java_home = node.find_java(node.layout(engine_name).default_version, engine_name)
    except NodeError as exc:
        reason = str(exc)
    else:
        if shutil.which("mvn"):
            return java_home
        reason = "Maven (mvn) is not installed"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI builds the lsr-os plugin: {reason}")
    pytest.skip(f"the lsr-os plugin cannot be built here: {reason}")


def _get(port: int, path: str):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as resp:
        return json.loads(resp.read())


def _start(engine_name: str, port: int, *flags: str):
    result = CliRunner().invoke(main, ["node", "start", "--engine", engine_name, "--port", str(port), "--heap", "512m",
                                       *flags])
    assert result.exit_code == 0, result.output
    return result


def test_node_start_installs_the_plugin_once_and_a_restart_reuses_the_build(java, engine_name):
    port = PORTS[engine_name][0]
    version = node.layout(engine_name).default_version
    node.stop(port)
    key = node.plugin_build_key(version, engine_name)
    try:
        first = _start(engine_name, port, "--plugin")
        assert f"lsr-os plugin {key}" in first.stdout
        plugins = _get(port, "/_cat/plugins?format=json")
        assert [(p["component"], p["version"]) for p in plugins] == [("lsr-os", f"{version}.0")]
        (built,) = (node.home() / "plugins" / key).glob("lsr-os-*.zip")
        stamp = built.stat().st_mtime_ns

        node.stop(port)
        second = _start(engine_name, port, "--plugin")
        assert "building the lsr-os plugin" not in second.output and "installing the lsr-os plugin" not in second.output
        assert built.stat().st_mtime_ns == stamp and f"lsr-os plugin {key}" in second.stdout
        assert [p["component"] for p in _get(port, "/_cat/plugins?format=json")] == ["lsr-os"]
        assert "already running" in _start(engine_name, port, "--plugin").stdout
        refused = CliRunner().invoke(main, ["node", "start", "--engine", engine_name, "--port", str(port),
                                            "--no-plugin"])
        assert refused.exit_code == 1 and "already runs with the lsr-os plugin; stop it first" in refused.output
    finally:
        node.stop(port)


def test_a_node_without_the_plugin_serves_everything_else(java, engine_name, tmp_path, caplog):
    port = PORTS[engine_name][1]
    node.stop(port)
    try:
        started = _start(engine_name, port, "--no-plugin")
        assert "without the lsr-os plugin" in started.stdout and "building" not in started.output
        engine = connect(ClusterConfig(urls=(f"http://127.0.0.1:{port}",), timeout=60.0))
        assert _get(port, "/_cat/plugins?format=json") == [] and not engine.features.has_lsr_os_plugin
        engine.delete_indices("bare-*", missing_ok=True)  # an earlier run's

        engine.create_index("bare-images", engine.ops.collection_body(load_mapping("images")))
        bulk_lines(engine, "bare-images", {
            doc_id: to_document(SparseRecord(doc_id, vector), escape_names=engine.features.escapes_feature_names)
            for doc_id, vector in (("a", {"dog": 2.0, "sky": 0.5}), ("b", {"dog": 0.5, "sky": 3.0}))})
        hits = engine.search("bare-images", build_query(engine.ops, {"dog": 2.0, "sky": 0.1}))["hits"]["hits"]
        assert [h["_id"] for h in hits] == ["a", "b"]

        with pytest.raises(BadRequest) as refused:  # the text field needs the plugin
            engine.create_index("bare-folded", plugin.with_text_field(
                engine.ops.collection_body(load_mapping("images")), plugin.vocab_sha256()))
        assert "lsr_os_" in engine.error_text(refused.value)
        _ingest_a_head_with_query_weights_without_the_plugin(f"http://127.0.0.1:{port}", tmp_path, caplog)
    finally:
        node.stop(port)


def _ingest_a_head_with_query_weights_without_the_plugin(url: str, tmp_path: Path, caplog) -> None:
    """Ingest of a head with query weights loads without the text field and says so in one line;
    inference-free search works on it; --text-field is a one-line error that creates nothing."""
    head = head_with_query_weights(tmp_path / "head")
    records = tmp_path / "images.jsonl"
    records.write_text("".join(json.dumps({"id": f"i{n}", "vector": {"green": 0.5 + n, "stars": 2.0 - n / 2}}) + "\n"
                               for n in range(3)))
    args = ["ingest", "--url", url, "--sparse", str(records), "--head", str(head), "--prefix", "bare-lsr"]
    with caplog.at_level(logging.WARNING, logger="lsr_os.index"):
        loaded = CliRunner().invoke(main, [*args, "--json"])
    assert loaded.exit_code == 0, loaded.output
    report = json.loads(loaded.stdout)
    assert report["count"] == 3 and not report["text_field"]
    assert report["text_field_off"] == "the cluster has no lsr-os plugin (on every node)"
    (said,) = [r.getMessage() for r in caplog.records if r.name == "lsr_os.index"]
    assert said == ("ingest bare-lsr-images: the cluster has no lsr-os plugin (on every node): typed-text search "
                    "in the cluster is off; lsr-os search --mode inference-free works anyway")
    searched = CliRunner().invoke(main, ["search", "green stars", "--url", url, "--head", str(head), "--index",
                                         "bare-lsr-images", "--mode", "inference-free", "--json"])
    assert searched.exit_code == 0, searched.output
    answer = json.loads(searched.stdout)
    assert answer["mode"] == "inference-free" and sorted(h["id"] for h in answer["hits"]) == ["i0", "i1", "i2"]
    forced = CliRunner().invoke(main, [*args, "--index", "bare-forced", "--text-field"])
    assert forced.exit_code == 2 and "--text-field: bare-forced cannot get its 'text' field: the cluster has no " \
        "lsr-os plugin" in forced.output


def test_the_engines_installer_refuses_a_zip_built_for_another_version(java, engine_name, tmp_path):
    """Beside lsr-os' own check (test_plugin_unit), the installer of the node refuses it too."""
    lay = node.layout(engine_name)
    version = lay.default_version
    other_version, said = OTHER_VERSION[engine_name]
    built = node.build_plugin(version, java, engine=engine_name)
    other = tmp_path / f"lsr-os-{other_version}.0.zip"
    with zipfile.ZipFile(built) as src, zipfile.ZipFile(other, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "plugin-descriptor.properties":
                data = data.replace(f"{engine_name}.version={version}".encode(),
                                    f"{engine_name}.version={other_version}".encode())
            dst.writestr(item, data)
    source, dist = node.provision(version, engine=engine_name), tmp_path / "dist"
    shutil.copytree(source, dist, copy_function=node._link_or_copy,
                    ignore=lambda folder, names: ["config"] if Path(folder) == source else [])
    shutil.copytree(source / "config", dist / "config")
    env = {**os.environ, lay.java_home_env: str(java), lay.path_conf_env: str(dist / "config")}
    proc = subprocess.run([str(dist / "bin" / lay.plugin_tool), "install", "--batch", other.as_uri()], env=env,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    assert proc.returncode != 0
    assert said.format(version=version) in proc.stdout + proc.stderr
    assert not (dist / "plugins" / "lsr-os").exists()
