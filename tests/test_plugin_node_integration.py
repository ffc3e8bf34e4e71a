"""`lsr-os node start` and the plugin for real: nodes of its own on 9230 (with the plugin) and
9235 (without), started and stopped here. Needs Maven and a JDK 21+ (skipped with the reason
without them; a failure under CI=true)."""

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
from lsr_os.config import ClusterConfig, connect
from lsr_os.errors import NodeError
from lsr_os.index import load_mapping
from plugin_helpers import head_with_query_weights

pytestmark = pytest.mark.integration
PLUGIN_PORT, BARE_PORT = 9230, 9235


@pytest.fixture(scope="module")
def java():
    try:
        java_home = node.find_java(node.DEFAULT_VERSION)
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


def _start(port: int, *flags: str):
    result = CliRunner().invoke(main, ["node", "start", "--port", str(port), "--heap", "512m", *flags])
    assert result.exit_code == 0, result.output
    return result


def test_node_start_installs_the_plugin_once_and_a_restart_reuses_the_build(java):
    node.stop(PLUGIN_PORT)
    key = node.plugin_build_key(node.DEFAULT_VERSION)
    try:
        first = _start(PLUGIN_PORT, "--plugin")
        assert f"lsr-os plugin {key}" in first.stdout
        plugins = _get(PLUGIN_PORT, "/_cat/plugins?format=json")
        assert [(p["component"], p["version"]) for p in plugins] == [("lsr-os", f"{node.DEFAULT_VERSION}.0")]
        (built,) = (node.home() / "plugins" / key).glob("lsr-os-*.zip")
        stamp = built.stat().st_mtime_ns

        node.stop(PLUGIN_PORT)
        second = _start(PLUGIN_PORT, "--plugin")
        assert "building the lsr-os plugin" not in second.output and "installing the lsr-os plugin" not in second.output
        assert built.stat().st_mtime_ns == stamp and f"lsr-os plugin {key}" in second.stdout
        assert [p["component"] for p in _get(PLUGIN_PORT, "/_cat/plugins?format=json")] == ["lsr-os"]
        assert "already running" in _start(PLUGIN_PORT, "--plugin").stdout
        refused = CliRunner().invoke(main, ["node", "start", "--port", str(PLUGIN_PORT), "--no-plugin"])
        assert refused.exit_code == 1 and "already runs with the lsr-os plugin; stop it first" in refused.output
    finally:
        node.stop(PLUGIN_PORT)


def test_a_node_without_the_plugin_serves_everything_else(java, tmp_path, caplog):
    node.stop(BARE_PORT)
    try:
        started = _start(BARE_PORT, "--no-plugin")
        assert "without the lsr-os plugin" in started.stdout and "building" not in started.output
        client = connect(ClusterConfig(urls=(f"http://127.0.0.1:{BARE_PORT}",), timeout=60.0))
        assert _get(BARE_PORT, "/_cat/plugins?format=json") == [] and not plugin.cluster_has_plugin(client)
        client.indices.delete(index="bare-*", ignore_unavailable=True, expand_wildcards="all")  # an earlier run's

        client.indices.create(index="bare-images", body=load_mapping("images"))
        client.bulk(refresh=True, body=[{"index": {"_index": "bare-images", "_id": "a"}}, {"sparse": {"dog": 2.0, "sky": 0.5}},
                                        {"index": {"_index": "bare-images", "_id": "b"}}, {"sparse": {"dog": 0.5, "sky": 3.0}}])
        query = {"bool": {"should": [{"rank_feature": {"field": "sparse.dog", "linear": {}, "boost": 2.0}},
                                     {"rank_feature": {"field": "sparse.sky", "linear": {}, "boost": 0.1}}]}}
        assert [h["_id"] for h in client.search(index="bare-images", body={"query": query})["hits"]["hits"]] == ["a", "b"]

        with pytest.raises(Exception, match="lsr_os_wordpiece|lsr_os_dot"):  # the text field needs the plugin
            client.indices.create(index="bare-folded", body=plugin.with_text_field(load_mapping("images"), plugin.vocab_sha256()))
        _ingest_a_head_with_query_weights_without_the_plugin(f"http://127.0.0.1:{BARE_PORT}", tmp_path, caplog)
    finally:
        node.stop(BARE_PORT)


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


def test_opensearch_refuses_a_zip_built_for_another_version(java, tmp_path):
    """Beside lsr-os' own check (test_plugin_unit), the installer of the node refuses it too."""
    built = node.build_plugin(node.DEFAULT_VERSION, java)
    other = tmp_path / "lsr-os-3.7.0.0.zip"
    with zipfile.ZipFile(built) as src, zipfile.ZipFile(other, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "plugin-descriptor.properties":
                data = data.replace(f"opensearch.version={node.DEFAULT_VERSION}".encode(), b"opensearch.version=3.7.0")
            dst.writestr(item, data)
    source, dist = node.provision(node.DEFAULT_VERSION), tmp_path / "dist"
    shutil.copytree(source, dist, copy_function=node._link_or_copy,
                    ignore=lambda folder, names: ["config"] if Path(folder) == source else [])
    shutil.copytree(source / "config", dist / "config")
    env = {**os.environ, "OPENSEARCH_JAVA_HOME": str(java), "OPENSEARCH_PATH_CONF": str(dist / "config")}
    proc = subprocess.run([str(dist / "bin" / "opensearch-plugin"), "install", "-b", other.as_uri()], env=env,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    assert proc.returncode != 0
    assert f"was built for OpenSearch version 3.7.0 but version {node.DEFAULT_VERSION} is running" in proc.stdout + proc.stderr
    assert not (dist / "plugins" / "lsr-os").exists()
