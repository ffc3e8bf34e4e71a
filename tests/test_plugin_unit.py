"""The lsr-os plugin without a node: the folded field, the index settings, the character table
against tokenizers, the packaged sources, and how `node start` copes without Maven or a JDK."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from importlib import resources
from pathlib import Path

import pytest
from click.testing import CliRunner

from lsr_os import node, plugin
from lsr_os.cli import main
from lsr_os.errors import DataError, NodeError, PluginUnavailable
from lsr_os.index import load_mapping
from lsr_os.sparse import quantize
from plugin_helpers import ROOT, char_table, head_with_query_weights


# ----------------------------------------------------------------------------- the index side


def test_folded_text_carries_query_weight_times_stored_weight_times_scale():
    vector = {"dog": 1.3, "the": 0.5, "beach": 0.2, "rare": 1e-7, "##s": 2.0}
    weights = {"dog": 2.0, "beach": 1.5, "rare": 1.0, "the": 0.0}
    text = plugin.folded_text(vector, weights, scale=65536, doc_id="img-1")
    pairs = dict(part.split("\u0001") for part in text.split(" "))
    assert set(pairs) == {"dog", "beach", "rare"}  # no query weight, no term: "the" and "##s" are left out
    assert int(pairs["dog"]) == round(2.0 * float(quantize(1.3)) * 65536)
    assert int(pairs["beach"]) == round(1.5 * float(quantize(0.2)) * 65536)
    assert pairs["rare"] == "1"  # a positive product never folds to 0 (delimited_term_freq needs >= 1)
    assert plugin.folded_text({"the": 1.0}, weights) == ""


def test_folded_text_refuses_what_lucene_cannot_hold_naming_the_document():
    with pytest.raises(DataError, match=r"document img-7: term 'dog' folds to \d+, more than Lucene's limit 2147483647"):
        plugin.folded_text({"dog": 3.0}, {"dog": 20000.0}, scale=65536, doc_id="img-7")
    many = {f"t{i}": 3.0 for i in range(40)}
    with pytest.raises(DataError, match="document img-8: its folded weights sum to over 2147483647"):
        plugin.folded_text(many, {t: 500.0 for t in many}, scale=65536, doc_id="img-8")
    with pytest.raises(DataError, match=r"document x: term 'new york' cannot be folded"):
        plugin.folded_text({"new york": 1.0}, {"new york": 1.0}, doc_id="x")


def test_an_images_index_body_gets_the_field_its_analysis_and_similarity():
    base = load_mapping("images")
    body = plugin.with_text_field(base, "ab" * 32, scale=1000)
    index = body["settings"]["index"]
    assert index["number_of_shards"] == base["settings"]["index"]["number_of_shards"]  # kept
    assert index["similarity"] == {"lsr_os_dot": {"type": "lsr_os_dot", "scale": 1000}}
    assert index["query"]["default_field"] == ["text"]
    analysis = index["analysis"]
    # only the plugin's own analysis types: an engine without analysis-common runs them too
    assert analysis["analyzer"]["lsr_os_folded"] == {"type": "lsr_os_folded", "delimiter": "\u0001"}
    query = analysis["analyzer"]["lsr_os_query"]
    assert query["filter"] == ["lsr_os_unique"] and set(analysis) == {"analyzer", "tokenizer"}
    assert analysis["tokenizer"][query["tokenizer"]] == {"type": "lsr_os_wordpiece", "vocab_sha256": "ab" * 32}
    assert body["mappings"]["properties"]["text"] == {
        "type": "text", "analyzer": "lsr_os_folded", "search_analyzer": "lsr_os_query", "index_options": "freqs",
        "norms": False, "similarity": "lsr_os_dot"}
    assert body["mappings"]["properties"]["sparse"] == base["mappings"]["properties"]["sparse"]
    assert body["mappings"]["_source"]["excludes"] == ["text"]
    assert plugin.with_text_field(body, "ab" * 32, 1000) == body and "text" not in base["mappings"]["properties"]


def test_the_vocabulary_checksum_is_the_shipped_files():
    shipped = ROOT / "plugin" / "core" / "src" / "main" / "resources" / "org" / "lsros" / "lucene" / "vocab.txt"
    assert plugin.vocab_sha256() == plugin.vocab_sha256(shipped)
    with pytest.raises(DataError, match="cannot read the vocabulary"):
        plugin.vocab_sha256(ROOT / "nope.txt")


def test_the_cluster_has_the_plugin_only_when_every_node_runs_it():
    from lsr_os.engines.base.features import BaseFeatures

    class Nodes:  # the one cluster call the flag makes, answered as a cluster of these nodes would
        def __init__(self, *plugins):
            self.plugins = plugins

        def node_plugins(self):
            return {f"n{i}": set(ps) for i, ps in enumerate(self.plugins)}

    assert BaseFeatures(Nodes(["lsr-os"], ["lsr-os", "x"])).has_lsr_os_plugin
    assert not BaseFeatures(Nodes(["lsr-os"], [])).has_lsr_os_plugin
    assert not BaseFeatures(Nodes()).has_lsr_os_plugin


# ----------------------------------------------------------------------------- the plugin's sources


def test_a_heads_folding_keeps_its_positive_weights_by_term_and_fingerprints_the_table(tmp_path):
    import torch
    from safetensors.numpy import load_file

    from lsr_os.vocab import Vocabulary

    terms = Vocabulary.default().terms
    weights = torch.zeros(len(terms))
    weights[terms.index("dog")], weights[terms.index("##s")] = 1.25, 0.5
    folder = head_with_query_weights(tmp_path / "head", weights=weights)
    folding = plugin.Folding.from_head(folder, scale=1000)
    assert dict(folding.weights) == {"dog": 1.25, "##s": 0.5}
    table = load_file(str(folder / "query_weights.safetensors"))["query_weights"]
    assert folding.meta() == {"field": "text", "vocab_sha256": plugin.vocab_sha256(), "scale": 1000,
                              "query_weights_sha256": hashlib.sha256(table.astype("<f4").tobytes()).hexdigest(),
                              "head": str(folder.resolve())}
    assert folding.text({"dog": 2.0, "cat": 1.0}) == f"dog\u0001{round(1.25 * 2.0 * 1000)}"
    moved = shutil.copytree(folder, tmp_path / "moved")  # a resumed load may name the head anywhere
    assert plugin.Folding.from_head(moved, scale=1000).folds_like(folding.meta())
    assert not plugin.Folding.from_head(moved, scale=100).folds_like(folding.meta())
    assert not folding.folds_like(folding.meta() | {"query_weights_sha256": "other"}) and not folding.folds_like(None)


def test_a_text_field_folded_from_other_weights_is_told_and_the_same_ones_are_not(tmp_path):
    head = head_with_query_weights(tmp_path / "head", seed=1)
    recorded = plugin.Folding.from_head(head).meta()
    assert plugin.head_weights_sha256(head) == recorded["query_weights_sha256"]
    assert plugin.stale_text_field("x-images", recorded) is None  # the head it was folded from, unchanged
    assert plugin.stale_text_field("x-images", recorded, shutil.copytree(head, tmp_path / "copy")) is None
    assert plugin.stale_text_field("x-images", None, head) is None  # no field, nothing to say

    other = head_with_query_weights(tmp_path / "other", seed=2)
    said = plugin.stale_text_field("x-images", recorded, other)
    old, new = recorded["query_weights_sha256"][:12], plugin.head_weights_sha256(other)[:12]
    assert said == (f"x-images's 'text' field was folded from the query weights of {head.resolve()} (table {old}), "
                    f"not those of {other} (table {new}): a `match` on it in the cluster ranks typed text by those, "
                    f"unlike inference-free search with {other}; load the images again with --head {other} to fold "
                    f"it anew (docs/plugin.md)")
    head_with_query_weights(head, seed=3)  # new weights in the same folder (as add-query-weights writes them)
    said = plugin.stale_text_field("x-images", recorded)
    assert said.startswith(f"x-images's 'text' field was folded from older query weights of that head (table {old}, now ")
    shutil.rmtree(head)  # a recorded head that is gone: nothing to compare with
    assert plugin.stale_text_field("x-images", recorded) is None
    assert plugin.stale_text_field("x-images", recorded, tmp_path) is None  # a folder without query weights


def test_a_head_of_another_vocabulary_cannot_be_folded(tmp_path):
    import torch

    from lsr_os.errors import ModelError

    folder = head_with_query_weights(tmp_path / "head", weights=torch.ones(8))
    shutil.rmtree(folder / "tokenizer")
    (folder / "tokenizer").mkdir()
    terms = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "c"]
    (folder / "tokenizer" / "vocab.txt").write_text("\n".join(terms))
    with pytest.raises(ModelError, match=r"has its own vocabulary \(8 terms\), not the BERT-uncased one"):
        plugin.Folding.from_head(folder)


def test_a_document_gets_the_folded_text_of_its_stored_vector(tmp_path):
    from lsr_os.index import InvalidRecord, to_document
    from lsr_os.sparse import SparseRecord
    from lsr_os.vocab import term_to_feature

    folding = plugin.Folding({"dog": 2.0, "beach": 1.0, "sky.blue": 1.0}, "sha", 100, "w", "h")
    record = SparseRecord("img-1", {"dog": 1.0, "beach": 0.1, "sky.blue": 0.5, "the": 3.0, "nan": float("nan")})
    doc = to_document(record, top_k=2, folding=folding)  # pruned to dog and the: beach is not folded either
    assert doc["text"] == f"dog\u0001{round(2.0 * 100)}"
    escaped = to_document(SparseRecord("img-2", {"sky.blue": 0.5}), folding=folding)
    assert list(escaped["sparse"]) == [term_to_feature("sky.blue")] != ["sky.blue"]
    assert escaped["text"] == f"sky.blue\u0001{round(0.5 * 100)}"  # vocabulary terms, not feature names
    assert "text" not in to_document(SparseRecord("img-3", {"the": 1.0}), folding=folding)
    with pytest.raises(InvalidRecord, match="document img-4: term 'dog' folds to"):
        to_document(SparseRecord("img-4", {"dog": 3e7}), folding=folding)


def test_captions_and_no_text_field_are_decided_without_asking_the_cluster():
    from lsr_os.errors import ConfigError
    from lsr_os.index import IngestOptions, text_folding

    assert text_folding(None, "x-captions", "captions", "any-head", IngestOptions(text_field=True)) == (None, None)
    assert text_folding(None, "x-images", "images", "any-head", IngestOptions(text_field=False)) == \
        (None, "--no-text-field")
    with pytest.raises(ConfigError, match="--text-field: x-images cannot get its 'text' field: no head names"):
        text_folding(None, "x-images", "images", None, IngestOptions(text_field=True))
    with pytest.raises(ConfigError, match="--text-scale must be > 0"):
        IngestOptions(text_scale=0).check()


def test_ingest_help_names_the_text_field_switch():
    out = " ".join(CliRunner().invoke(main, ["ingest", "--help"]).output.split())
    assert "--text-field / --no-text-field" in out and "--text-scale" in out and "--head names the query" in out


def test_the_character_table_is_what_tokenizers_does_now():
    """BertCharTable.java is read off tokenizers; a tokenizers release that classifies a character
    differently must show up here (rerun plugin/tools/bert_char_table.py)."""
    table = char_table()
    assert table.TARGET.read_text(encoding="utf-8") == table.java_source(table.classes())


def test_the_package_ships_every_file_the_build_reads():
    plugin_dir = ROOT / "plugin"
    modules = ("core", "opensearch", "elasticsearch")
    in_tree = [p.relative_to(plugin_dir).as_posix()
               for m in modules for p in (plugin_dir / m / "src" / "main").rglob("*") if p.is_file()]
    poms = ["pom.xml", "assembly.xml", *(f"{m}/pom.xml" for m in modules)]
    assert [rel for rel, _ in node._plugin_files()] == sorted([*poms, *in_tree])
    assert all(f"<module>{m}</module>" in (plugin_dir / "pom.xml").read_text() for m in modules)
    shipped = resources.files(node.PLUGIN_SOURCES)
    assert shipped.joinpath("pom.xml").read_bytes() == (plugin_dir / "pom.xml").read_bytes()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"lsr_os.plugin_sources" = "plugin"' in pyproject
    assert '"lsr_os.plugin_sources" = ["pom.xml", "assembly.xml", "*/pom.xml", "*/src/main/**/*"]' in pyproject


def test_the_build_key_follows_the_sources_the_engine_and_the_version(monkeypatch):
    key = node.plugin_build_key("3.8.0")
    assert key.startswith("opensearch-3.8.0-") and key == node.plugin_build_key("3.8.0", "opensearch")
    assert node.plugin_build_key("3.7.0").split("-")[2] == key.split("-")[2]
    assert node.plugin_build_key("9.2.0", "elasticsearch") == f"elasticsearch-9.2.0-{key.split('-')[2]}"
    files = node._plugin_files()
    monkeypatch.setattr(node, "_plugin_files", lambda: files[:-1] + [(files[-1][0], files[-1][1] + b" ")])
    assert node.plugin_build_key("3.8.0") != key


# ----------------------------------------------------------------------------- node start without what it needs


def fake_dist(tmp_path: Path, name: str = "opensearch-3.8.0") -> Path:
    dist = tmp_path / "dist" / name
    (dist / "plugins").mkdir(parents=True)
    return dist


@pytest.mark.parametrize("engine", ["opensearch", "elasticsearch"])
def test_without_maven_the_node_starts_without_the_plugin_in_one_line(tmp_path, monkeypatch, engine):
    monkeypatch.setenv("LSR_OS_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(node.shutil, "which", lambda name: None)
    told: list[str] = []
    dist = fake_dist(tmp_path, engine)
    assert node._node_distribution(node.NodeSpec(engine=engine), dist, tmp_path, told.append) == (dist, None)
    assert len(told) == 1 and "\n" not in told[0]
    assert told[0].startswith("starting without the lsr-os plugin: Maven (mvn) is not installed")
    assert "Everything else in lsr-os works without it" in told[0] and "typed-text search" in told[0]
    with pytest.raises(PluginUnavailable, match="Maven"):
        node._node_distribution(node.NodeSpec(engine=engine, plugin="require"), dist, tmp_path, told.append)
    assert node._node_distribution(node.NodeSpec(engine=engine, plugin="skip"), dist, tmp_path, told.append) == \
        (dist, None)
    assert len(told) == 1


def test_without_a_jdk_21_the_start_says_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("LSR_OS_HOME", str(tmp_path))
    monkeypatch.setattr(node, "JVM_ROOT", tmp_path / "no-jvm")
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setattr(node, "provision", lambda version, step, engine: fake_dist(tmp_path))
    with pytest.raises(NodeError, match="OpenSearch 3.8.0 needs Java 21 or newer; JDKs found: none"):
        node.start(node.NodeSpec(port=9599))


def test_a_plugin_for_an_older_engine_is_not_built(tmp_path):
    with pytest.raises(PluginUnavailable, match="built for OpenSearch 3.x, not 2.19.0"):
        node.build_plugin("2.19.0", tmp_path)
    with pytest.raises(PluginUnavailable, match="built for Elasticsearch 9.x, not 8.19.0"):
        node.build_plugin("8.19.0", tmp_path, engine="elasticsearch")
    with pytest.raises(PluginUnavailable, match="built for opensearch or elasticsearch, not 'solr'"):
        node.build_plugin("9.0.0", tmp_path, engine="solr")


def test_a_maven_that_hangs_or_cannot_run_is_one_plugin_error(tmp_path, monkeypatch):
    monkeypatch.setenv("LSR_OS_HOME", str(tmp_path / "home"))
    (tmp_path / "home" / "plugins").mkdir(parents=True)
    mvn = tmp_path / "bin" / "mvn"
    mvn.parent.mkdir()
    mvn.write_text("#!/bin/sh\nsleep 30\n")
    mvn.chmod(0o755)
    monkeypatch.setenv("PATH", f"{mvn.parent}:{os.environ['PATH']}")
    monkeypatch.setattr(node, "PLUGIN_BUILD_TIMEOUT_S", 0.5)
    with pytest.raises(PluginUnavailable, match=r"Maven did not build the lsr-os plugin within 0 s"):
        node.build_plugin("3.8.0", tmp_path)
    mvn.chmod(0o644)  # on PATH by name, but not executable
    monkeypatch.setattr(node.shutil, "which", lambda name: str(mvn))
    with pytest.raises(PluginUnavailable, match=r"could not run Maven .* to build the lsr-os plugin"):
        node.build_plugin("3.8.0", tmp_path)
    assert not list((tmp_path / "home" / "plugins").glob("build-*"))  # the build folder is removed either way


def _zip(path: Path, descriptor: str) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("plugin-descriptor.properties", f"# built\nname=lsr-os\n{descriptor}\n")
    return path


def test_a_zip_built_for_another_version_or_engine_is_refused_before_installing(tmp_path):
    old = _zip(tmp_path / "lsr-os-3.7.0.0.zip", "version=3.7.0.0\nopensearch.version=3.7.0")
    with pytest.raises(PluginUnavailable, match=r"lsr-os-3.7.0.0.zip was built for OpenSearch 3.7.0, but the node runs "
                                                r"OpenSearch 3.8.0: build it for 3.8.0 \(in plugin/: mvn -B -pl "
                                                r"opensearch -am package -Dmaven.test.skip=true "
                                                r"-Dopensearch.version=3.8.0\)"):
        node.install_plugin(fake_dist(tmp_path), old, "3.8.0", tmp_path)
    es_dist = fake_dist(tmp_path, "elasticsearch-9.5.3")
    older = _zip(tmp_path / "lsr-os-9.5.2.0.zip", "version=9.5.2.0\nelasticsearch.version=9.5.2")
    with pytest.raises(PluginUnavailable, match=r"^lsr-os-9.5.2.0.zip was built for Elasticsearch 9.5.2, but the node "
                                                r"runs Elasticsearch 9.5.3: build it for 9.5.3 \(in plugin/: mvn -B -pl "
                                                r"elasticsearch -am package -Dmaven.test.skip=true "
                                                r"-Delasticsearch.version=9.5.3\)$"):
        node.install_plugin(es_dist, older, "9.5.3", tmp_path, engine="elasticsearch")
    with pytest.raises(PluginUnavailable, match=r"lsr-os-3.7.0.0.zip was built for OpenSearch 3.7.0, but the node "
                                                r"runs Elasticsearch 9.5.3"):
        node.install_plugin(es_dist, old, "9.5.3", tmp_path, engine="elasticsearch")
    nameless = _zip(tmp_path / "lsr-os.zip", "version=1")
    with pytest.raises(PluginUnavailable, match=r"lsr-os.zip was built for no engine version, but the node runs"):
        node.install_plugin(es_dist, nameless, "9.5.3", tmp_path, engine="elasticsearch")
    assert not (es_dist / "plugins" / "lsr-os").exists()
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(PluginUnavailable, match="junk.zip is not a plugin zip"):
        node.plugin_descriptor(tmp_path / "junk.zip")


def test_a_running_node_without_the_plugin_is_not_taken_for_one_with_it(tmp_path, monkeypatch):
    from dataclasses import asdict

    monkeypatch.setenv("LSR_OS_HOME", str(tmp_path))
    node_dir = node.cluster_dir(9555) / "node-1"
    node_dir.mkdir(parents=True)
    state = node.NodeState(name="node-1", pid=4242, version=node.DEFAULT_VERSION, url="http://127.0.0.1:9555",
                           http_port=9555, transport_port=9655, log_file="x.log", data=str(tmp_path / "a"))
    (node_dir / "node.json").write_text(json.dumps(asdict(state)))
    monkeypatch.setattr(node, "_alive", lambda pid: pid == 4242)
    with pytest.raises(NodeError, match="node-1 on port 9555 already runs without the lsr-os plugin; stop it first"):
        node.start(node.NodeSpec(port=9555, plugin="require"))
    assert [s.already_running for s in node.start(node.NodeSpec(port=9555))] == [True]
    assert [s.plugin for s in node.start(node.NodeSpec(port=9555, plugin="skip"))] == [None]


def test_node_start_help_shows_the_real_default_version_the_wait_and_the_plugin_switch():
    out = " ".join(CliRunner().invoke(main, ["node", "start", "--help"]).output.split())
    assert f"[default: {node.DEFAULT_VERSION}]" in out and "DEFAULT_VERSION" not in out
    assert "--wait" in out and "for the cluster to answer" in out
    assert "--plugin / --no-plugin" in out
