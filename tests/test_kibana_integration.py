"""Kibana's Discover on the saved objects `lsr-os dashboards --for kibana` writes, replayed on a
real Elasticsearch node with the lsr-os plugin (ELASTICSEARCH_URL): the request Discover sends for
words typed over the images search (rebuilt from Kibana's sources, tests/kibana_helpers.py) ranks
the images as `lsr-os search --mode inference-free` does, in Lucene syntax as saved and in KQL
too, and brings back what the thumbnails need but not the vectors."""

from __future__ import annotations

import json
import random
import uuid

import pytest
from click.testing import CliRunner

from kibana_helpers import SAMPLE_SIZE, discover, discover_request, search_language
from lsr_os import plugin
from lsr_os.cli import main
from lsr_os.demo import world
from lsr_os.index import dashboards_objects
from plugin_helpers import assert_same_top, head_with_query_weights, reference

pytestmark = pytest.mark.integration

N_IMAGES = 600
TEXTS = ["two green stars", "a small red circle on the left", "striped squares"]


@pytest.fixture(scope="module")
def es(elasticsearch):
    if not elasticsearch.features.has_lsr_os_plugin:
        pytest.skip(f"the Elasticsearch node at {', '.join(elasticsearch.config.urls)} does not run the lsr-os "
                    "plugin on every node (a node started by lsr-os gets it where Maven and a JDK 21+ can build it)")
    return elasticsearch


def _pieces(text: str) -> list[str]:
    return reference().encode(text, add_special_tokens=False).tokens


@pytest.fixture(scope="module")
def loaded(es, tmp_path_factory):
    """Demo-world images as sparse JSONL (their captions' pieces, weights on a coarse grid so that
    ties are common), loaded by `lsr-os ingest --head HEAD` with a head that has query weights;
    the Kibana saved objects for the load's prefix."""
    root = tmp_path_factory.mktemp("kibana-world")
    rng = random.Random(7)
    with (root / "images.jsonl").open("w") as out:
        for i in range(N_IMAGES):
            texts = world.captions(world.random_scene(rng), rng, n=2)
            vector = {t: round(rng.uniform(0.05, 3.0), 2) for text in texts for t in _pieces(text)}
            out.write(json.dumps({"id": f"img{i}", "vector": vector, "image": f"shapes/{i}.png",
                                  "split": rng.choice(["train", "test"])}) + "\n")
    head = head_with_query_weights(root / "head", seed=5)
    prefix = f"test-kibana-{uuid.uuid4().hex[:8]}"
    url = es.config.urls[0]
    result = CliRunner().invoke(main, ["ingest", "--url", url, "--sparse", str(root), "--head", str(head),
                                       "--prefix", prefix, "--failures", str(root / "failures.jsonl")])
    try:
        assert result.exit_code == 0, result.output
        objects = {o["id"]: o for o in map(json.loads, dashboards_objects(prefix, "kibana").splitlines())}
        search = objects[f"{prefix}-images-top-terms"]
        (ref,) = search["references"]
        yield {"url": url, "head": head, "prefix": prefix, "search": search, "data_view": objects[ref["id"]],
               "field_caps": es.client.field_caps(index=f"{prefix}-images", fields="*").body}
    finally:
        es.delete_indices(f"{prefix}-*", missing_ok=True)


def _discover(es, loaded: dict, text: str, language: str | None = None) -> list[dict]:
    index, params, body = discover_request(loaded["search"], loaded["data_view"], text, loaded["field_caps"],
                                           language)
    return discover(es.client, index, params, body)


def _match(es, index: str, text: str) -> list[tuple[str, float]]:
    hits = es.search(index, {"size": N_IMAGES, "query": {"match": {plugin.FIELD: text}}, "_source": False})
    return [(h["_id"], h["_score"]) for h in hits["hits"]["hits"]]


def _inference_free(loaded: dict, text: str) -> tuple[list[tuple[str, float]], int]:
    """`lsr-os search TEXT --mode inference-free`: its hits, and how many terms its query has."""
    result = CliRunner().invoke(main, ["search", text, "--url", loaded["url"], "--head", str(loaded["head"]),
                                       "--index", f"{loaded['prefix']}-images", "--mode", "inference-free",
                                       "-k", "200", "--json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    terms = {**answer["query"]["own"], **answer["query"]["expansion"]}
    return [(h["id"], h["score"]) for h in answer["hits"]], len(terms)


@pytest.mark.parametrize("text", TEXTS)
def test_discover_on_the_saved_search_ranks_as_inference_free_search(es, loaded, text):
    """The saved search's own request (Lucene, sorted by score): every hit and score of a plain
    `match`, and its top 10 that of `lsr-os search --mode inference-free` within the folding's
    rounding (0.5 / scale per term), ties counted."""
    hits = [(h["_id"], h["_score"]) for h in _discover(es, loaded, text)]
    assert hits and hits == _match(es, loaded["data_view"]["attributes"]["title"], text)[:SAMPLE_SIZE]
    searched, n_terms = _inference_free(loaded, text)
    assert len(searched) > 10
    assert_same_top(hits[:10], searched, 10, n_terms * 0.5 / plugin.DEFAULT_SCALE + 1e-4)


@pytest.mark.parametrize("text", TEXTS)
def test_kql_free_text_is_scored_because_the_search_is_sorted_by_score(es, loaded, text):
    """Switched to KQL, Discover puts free text in `must` (not a filter) when the sort has
    `_score`, as the saved search's does: the same ranking and scores as the Lucene request."""
    assert search_language(loaded["search"]) == "lucene"
    kql = [(h["_id"], h["_score"]) for h in _discover(es, loaded, text, language="kuery")]
    assert kql and kql == [(h["_id"], h["_score"]) for h in _discover(es, loaded, text)]


def test_discover_gets_each_image_path_for_its_thumbnail_and_no_vector(es, loaded):
    """The data view's source filters keep the sparse vector and the folded text out of the
    answer; the `image` path the URL formatter turns into a thumbnail is there for every hit."""
    hits = _discover(es, loaded, "two green stars")
    assert hits
    for hit in hits:
        assert hit["fields"]["image"] == [f"shapes/{hit['_id'][len('img'):]}.png"]
        assert "_source" not in hit and not {"sparse", plugin.FIELD} & set(hit["fields"])
