"""`lsr-os ingest` writes the lsr-os plugin's `text` field, on a real node of each engine with the
plugin (OPENSEARCH_URL, ELASTICSEARCH_URL; CI's nodes run it): typed text sent as a plain `match`
over HTTP ranks the images as `lsr-os search --mode inference-free` does (Discover's Lucene
request too, on OpenSearch), and the field's rules (captions never, forced on or off, resume,
replacement) hold."""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
import subprocess
import urllib.request
import uuid

import pytest
from click.testing import CliRunner

from lsr_os import plugin
from lsr_os.cli import main
from lsr_os.config import ClusterConfig
from lsr_os.demo import world
from plugin_helpers import (assert_same_top, discover, discover_body, head_with_query_weights, reference,
                            require_plugin, saved_search)

pytestmark = pytest.mark.integration

N_IMAGES = 1500




def _pieces(text: str) -> list[str]:
    return reference().encode(text, add_special_tokens=False).tokens


def _vector(rng: random.Random, texts: list[str]) -> dict[str, float]:
    """An image's sparse vector: its captions' pieces (stop words and punctuation included) and a
    few expansion terms, weights on a coarse grid so that 9-bit ties are common."""
    vector = {t: round(rng.uniform(0.05, 3.0), 2) for text in texts for t in _pieces(text)}
    for term in rng.sample(["shape", "colour", "picture", "bright", "##s", "[CLS]", "."], 3):
        vector[term] = round(rng.uniform(0.05, 1.0), 2)
    return vector


@pytest.fixture(scope="module")
def world_files(tmp_path_factory):
    """Images (and captions) of the demo world as sparse JSONL, a head with query weights and one
    without; the test queries are captions of other scenes."""
    root = tmp_path_factory.mktemp("plugin-world")
    rng = random.Random(11)
    with (root / "images.jsonl").open("w") as images, (root / "captions.jsonl").open("w") as captions:
        for i in range(N_IMAGES):
            texts = world.captions(world.random_scene(rng), rng, n=2)
            images.write(json.dumps({"id": f"img{i}", "vector": _vector(rng, texts), "image": f"{i}.png"}) + "\n")
            for j, text in enumerate(texts):
                captions.write(json.dumps({"id": f"cap{i}-{j}", "vector": {t: 1.0 for t in _pieces(text)},
                                           "image_id": f"img{i}", "caption": text}) + "\n")
    head = head_with_query_weights(root / "head", seed=3)
    bare = root / "bare"
    shutil.copytree(head, bare)
    cfg = json.loads((bare / "config.json").read_text())
    del cfg["query_weights"]
    (bare / "config.json").write_text(json.dumps(cfg))
    (bare / "query_weights.safetensors").unlink()
    queries = [world.captions(world.random_scene(rng), rng, n=1)[0] for _ in range(6)]
    return {"root": root, "head": head, "bare": bare, "queries": queries}


@pytest.fixture(scope="module")
def worlds(world_files):
    """The world loaded into each engine asked for, once (`loaded`), by `lsr-os ingest --sparse DIR
    --head HEAD`; its indices are deleted at the end."""
    made = {}

    def loaded(engine):
        if engine.name not in made:
            prefix = f"test-plugin-ingest-{uuid.uuid4().hex[:8]}"
            url = engine.config.urls[0]
            made[engine.name] = {**world_files, "engine": engine, "prefix": prefix, "url": url}
            result = CliRunner().invoke(main, ["ingest", "--url", url, "--sparse", str(world_files["root"]), "--head",
                                               str(world_files["head"]), "--prefix", prefix, "--json"])
            assert result.exit_code == 0, result.output
            made[engine.name]["reports"] = {r["collection"]: r for r in _reports(result.stdout)}
        return made[engine.name]

    yield loaded
    for world_ in made.values():
        world_["engine"].delete_indices(f"{world_['prefix']}-*", missing_ok=True)


@pytest.fixture(scope="module")
def client(engine):
    """The engine's test node, which must run the plugin."""
    require_plugin(engine)
    return engine


@pytest.fixture(scope="module")
def small_world(client, worlds):
    return worlds(client)


@pytest.fixture(scope="module")
def os_world(opensearch, worlds):
    """The world on OpenSearch, for Dashboards."""
    require_plugin(opensearch)
    return worlds(opensearch)


def _reports(stdout: str) -> list[dict]:
    """The JSON reports `lsr-os ingest --json` prints, one a collection."""
    decoder, out, at = json.JSONDecoder(), [], 0
    while stdout[at:].strip():
        report, at = decoder.raw_decode(stdout, at + len(stdout[at:]) - len(stdout[at:].lstrip()))
        out.append(report)
    return out


def _ingest(world_: dict, *args: str):
    return CliRunner().invoke(main, ["ingest", "--url", world_["url"], *args])


def _curl_match(url: str, index: str, text: str, size: int = 10) -> list[tuple[str, float]]:
    """The acceptance's curl: a plain `match` on `text`, straight to the node."""
    body = json.dumps({"size": size, "query": {"match": {plugin.FIELD: text}}})
    if shutil.which("curl"):
        out = subprocess.run(["curl", "-s", f"{url}/{index}/_search", "-H", "Content-Type: application/json",
                              "-d", body], capture_output=True, text=True, check=True).stdout
    else:
        request = urllib.request.Request(f"{url}/{index}/_search", body.encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as resp:
            out = resp.read().decode()
    return [(h["_id"], h["_score"]) for h in json.loads(out)["hits"]["hits"]]


def _inference_free(world_: dict, text: str, k: int) -> tuple[list[tuple[str, float]], dict[str, float]]:
    """`lsr-os search TEXT --mode inference-free`: its hits and its query's terms."""
    result = CliRunner().invoke(main, ["search", text, "--url", world_["url"], "--head", str(world_["head"]),
                                       "--index", f"{world_['prefix']}-images", "--mode", "inference-free",
                                       "-k", str(k), "--json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    return [(h["id"], h["score"]) for h in answer["hits"]], {**answer["query"]["own"], **answer["query"]["expansion"]}


def _mapping(client, alias: str) -> tuple[dict, dict]:
    ((index, mappings),) = client.mappings(alias).items()
    return mappings.get("properties", {}), mappings["_meta"]["lsr_os"]


def _tolerance(n_terms: int) -> float:
    return n_terms * 0.5 / plugin.DEFAULT_SCALE + 1e-4


# ----------------------------------------------------------------------------- what ingest writes


def test_the_images_get_the_text_field_and_the_captions_never(small_world, client):
    reports = small_world["reports"]
    assert reports["images"]["text_field"] and reports["images"]["count"] == N_IMAGES
    assert not reports["captions"]["text_field"] and reports["captions"]["text_field_off"] is None
    props, meta = _mapping(client, f"{small_world['prefix']}-images")
    assert props[plugin.FIELD]["similarity"] == plugin.SIMILARITY
    from safetensors.numpy import load_file

    table = load_file(str(small_world["head"] / "query_weights.safetensors"))["query_weights"]
    assert meta["text_field"] == {"field": plugin.FIELD, "vocab_sha256": plugin.vocab_sha256(),
                                  "scale": plugin.DEFAULT_SCALE, "head": str(small_world["head"].resolve()),
                                  "query_weights_sha256": hashlib.sha256(table.astype("<f4").tobytes()).hexdigest()}
    listed = CliRunner().invoke(main, ["collections", "list", "--url", small_world["url"], "--json"])
    rows = {r["alias"]: r for r in json.loads(listed.stdout) if r["alias"].startswith(small_world["prefix"])}
    assert rows[f"{small_world['prefix']}-images"]["text_field"] == meta["text_field"]
    assert rows[f"{small_world['prefix']}-captions"]["text_field"] is None
    props, meta = _mapping(client, f"{small_world['prefix']}-captions")
    assert plugin.FIELD not in props and "text_field" not in meta
    hit = client.search(f"{small_world['prefix']}-images", {"size": 1})["hits"]["hits"][0]
    assert plugin.FIELD not in hit["_source"]  # derived data, kept out of _source (and of Discover)


@pytest.mark.parametrize("n", range(6))
def test_a_plain_match_over_http_ranks_as_lsr_os_search_inference_free(small_world, n):
    text = small_world["queries"][n]
    matched = _curl_match(small_world["url"], f"{small_world['prefix']}-images", text)
    searched, query = _inference_free(small_world, text, k=200)
    assert matched and len(searched) > 10
    assert_same_top(matched, searched, 10, _tolerance(len(query)))


def test_the_acceptance_query_two_green_stars(small_world):
    text = "two green stars"
    searched, query = _inference_free(small_world, text, k=200)
    assert_same_top(_curl_match(small_world["url"], f"{small_world['prefix']}-images", text), searched, 10,
                    _tolerance(len(query)))


@pytest.mark.parametrize("text", ["two green stars", "a small red circle on the left", "striped squares"])
def test_discover_lucene_body_ranks_as_the_match_query(os_world, opensearch, text):
    """The request Discover sends for free text over the saved search `lsr-os dashboards` writes
    for this prefix, replayed on the index `lsr-os ingest` made."""
    index = f"{os_world['prefix']}-images"
    hits = discover(opensearch, index, discover_body(text, saved_search(os_world["prefix"])))
    matched = _curl_match(os_world["url"], index, text, size=500)
    assert [(h["_id"], h["_score"]) for h in hits] == matched and matched


def test_lucene_syntax_counts_a_repeated_word_once_unless_operators_split_it(small_world, client):
    """query_string analyses a run of plain words as one text (the analyzer's `unique` keeps a
    piece once), but each clause between operators or parentheses on its own: there a repeated
    word counts once per clause."""
    index = f"{small_world['prefix']}-images"

    def scores(query: dict) -> dict[str, float]:
        hits = client.search(index, {"size": N_IMAGES, "query": query, "_source": False})["hits"]["hits"]
        return {h["_id"]: h["_score"] for h in hits}

    once = scores({"match": {plugin.FIELD: "green stars"}})
    assert scores({"query_string": {"query": "green green stars"}}) == once
    assert scores({"query_string": {"query": "green stars green"}}) == once
    green = scores({"match": {plugin.FIELD: "green"}})
    twice = scores({"query_string": {"query": "green OR green stars"}})
    assert set(twice) == set(once)
    for doc, score in twice.items():
        assert score == pytest.approx(once[doc] + green.get(doc, 0.0), abs=1e-4)


# ----------------------------------------------------------------------------- the field's rules


def test_no_text_field_and_a_head_without_query_weights_load_without_it(small_world, client, caplog):
    alias = f"{small_world['prefix']}-off"
    off = _ingest(small_world, "--sparse", str(small_world["root"] / "images.jsonl"), "--head",
                  str(small_world["head"]), "--index", alias, "--no-text-field", "--json")
    assert off.exit_code == 0, off.output
    assert _reports(off.stdout)[0]["text_field_off"] == "--no-text-field"
    assert plugin.FIELD not in _mapping(client, alias)[0]
    with caplog.at_level(logging.INFO, logger="lsr_os.index"):
        bare = _ingest(small_world, "--sparse", str(small_world["root"] / "images.jsonl"), "--head",
                       str(small_world["bare"]), "--index", f"{alias}-bare", "--json")
    assert bare.exit_code == 0, bare.output
    assert "has no query weights" in _reports(bare.stdout)[0]["text_field_off"]
    assert any("typed-text search in the cluster is off" in r.getMessage() for r in caplog.records)
    assert plugin.FIELD not in _mapping(client, f"{alias}-bare")[0]


def test_text_field_forced_without_query_weights_is_one_line_and_creates_nothing(small_world, client):
    alias = f"{small_world['prefix']}-forced"
    for head, said in ((small_world["bare"], "has no query weights (add them with `lsr-os add-query-weights"),
                       (None, "no head names the query weights")):
        result = _ingest(small_world, "--sparse", str(small_world["root"] / "images.jsonl"), "--index", alias,
                         "--text-field", *(["--head", str(head)] if head else []))
        assert result.exit_code == 2 and said in result.output, result.output
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
        assert client.index(f"{alias}*") == {}


def test_a_served_text_field_is_not_replaced_by_an_index_without_one_unless_asked(small_world, client):
    alias = f"{small_world['prefix']}-images"
    (served,) = client.alias_targets(alias)
    refused = _ingest(small_world, "--sparse", str(small_world["root"]), "--collection", "images", "--head",
                      str(small_world["bare"]), "--prefix", small_world["prefix"], "--fresh")
    assert refused.exit_code == 2 and f"{alias} serves {served}, whose 'text' field" in refused.output
    assert "pass --no-text-field" in refused.output
    assert client.alias_targets(alias) == [served]
    assert sorted(client.index(f"{alias}-v*")) == [served]  # nothing was created


def test_a_resumed_load_never_mixes_foldings(small_world, client, tmp_path):
    """An unfinished load (not swapped: a bad line while replacing a served collection) resumes
    with the same folding only: another table, or no field, starts a new index."""
    alias = f"{small_world['prefix']}-resume"
    source = tmp_path / "images.jsonl"
    shutil.copy(small_world["root"] / "images.jsonl", source)
    args = ["--sparse", str(source), "--index", alias, "--json"]
    assert _ingest(small_world, *args, "--head", str(small_world["head"])).exit_code == 0
    with source.open("a") as handle:
        handle.write("not json\n")
    first = _ingest(small_world, *args, "--head", str(small_world["head"]))
    assert first.exit_code == 5, first.output
    unfinished = _reports(first.stdout)[0]["index"]
    again = _reports(_ingest(small_world, *args, "--head", str(small_world["head"])).stdout)[0]
    assert again["resumed"] and again["index"] == unfinished and again["already_indexed"] == N_IMAGES

    other = head_with_query_weights(tmp_path / "other", seed=4)
    fresh = _reports(_ingest(small_world, *args, "--head", str(other)).stdout)[0]
    assert not fresh["resumed"] and fresh["index"] != unfinished and fresh["text_field"]
    assert not client.exists(unfinished)
    assert _mapping(client, fresh["index"])[1]["text_field"]["head"] == str(other.resolve())
    without = _reports(_ingest(small_world, *args, "--head", str(other), "--no-text-field").stdout)[0]
    assert not without["resumed"] and plugin.FIELD not in _mapping(client, without["index"])[0]


def test_a_document_whose_folded_weights_overflow_is_a_failure_naming_it(small_world, client, tmp_path):
    alias = f"{small_world['prefix']}-overflow"
    source = tmp_path / "images.jsonl"
    source.write_text(json.dumps({"id": "ok", "vector": {"green": 1.0, "stars": 2.0}}) + "\n"
                      + json.dumps({"id": "huge", "vector": {"green": 60000.0, "stars": 1.0}}) + "\n")
    failures = tmp_path / "failures.jsonl"
    result = _ingest(small_world, "--sparse", str(source), "--index", alias, "--head", str(small_world["head"]),
                     "--failures", str(failures), "--json")
    assert result.exit_code == 4, result.output
    report = _reports(result.stdout)[0]
    assert report["count"] == 1 and report["failed"] == 1
    (failure,) = map(json.loads, failures.read_text().splitlines())
    assert failure["id"] == "huge" and "'green' folds to" in failure["reason"], failure
    assert [d for d, _ in _curl_match(small_world["url"], alias, "green stars")] == ["ok"]


# ----------------------------------------------------------------------------- one truth for the weights


def test_new_query_weights_are_told_by_search_serve_and_collections_list_until_a_load_folds_them(
        small_world, client, tmp_path):
    """After the head's query weights change (add-query-weights, a new training), the field still
    ranks by the old ones: `collections list`, `search` and `serve` say so, and a load with the head
    folds them anew (then all three are quiet)."""
    from lsr_os import serve as serve_lib

    head = shutil.copytree(small_world["head"], tmp_path / "head")
    prefix = f"{small_world['prefix']}-weights"
    alias = f"{prefix}-images"
    args = ["--sparse", str(small_world["root"] / "images.jsonl"), "--index", alias, "--head", str(head), "--json"]
    assert _ingest(small_world, *args).exit_code == 0

    def told() -> dict:
        listed = CliRunner().invoke(main, ["collections", "list", "--url", small_world["url"], "--json"])
        (row,) = [r for r in json.loads(listed.stdout) if r["alias"] == alias]
        searched = CliRunner().invoke(main, ["search", "two green stars", "--url", small_world["url"], "--head",
                                             str(head), "--index", alias, "--json"])
        assert searched.exit_code == 0, searched.output
        service = serve_lib.open_service(ClusterConfig(urls=(small_world["url"],)), serve_lib.ServeConfig(
            prefix=prefix, head=head))
        try:
            health = service.health()["collections"]["images"]["text_field_stale"]
        finally:
            service.close()
        return {"list": row["text_field_stale"], "search": json.loads(searched.stdout)["warnings"], "serve": health}

    assert told() == {"list": None, "search": [], "serve": []}
    head_with_query_weights(head, seed=5)  # new weights in the same folder
    stale = told()
    assert stale["list"] and stale["list"].startswith(f"{_served(client, alias)}'s 'text' field was folded from "
                                                      "older query weights of that head")
    said = f"{alias}'s 'text' field was folded from older query weights of that head"
    assert [w for w in stale["search"] if w.startswith(said)] == stale["search"] and len(stale["search"]) == 1
    assert stale["serve"] == stale["search"] and f"load the images again with --head {head}" in stale["serve"][0]
    # the world's own images were folded from the old weights too: against this head, they are told as well
    against = CliRunner().invoke(main, ["collections", "list", "--url", small_world["url"], "--head", str(head)])
    lines = {line.split()[1]: line for line in against.stdout.splitlines() if line.startswith("* ")}
    assert against.exit_code == 0 and lines[alias].endswith("text (other weights)")
    images = f"{small_world['prefix']}-images"
    assert lines[images].endswith("text (other weights)")
    assert f"Warning: {_served(client, images)}'s 'text' field was folded from the query weights of" in against.stderr

    assert _ingest(small_world, *args).exit_code == 0  # the same load, with the head as it is now
    assert told() == {"list": None, "search": [], "serve": []}
    assert _mapping(client, alias)[1]["text_field"]["query_weights_sha256"] == plugin.head_weights_sha256(head)


def _served(client, alias: str) -> str:
    (index,) = client.alias_targets(alias)
    return index
