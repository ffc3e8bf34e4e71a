"""`lsr-os demo`, reduced, end to end against the real node: thresholds only a working pipeline meets."""

import json
import uuid

import pytest
from click.testing import CliRunner

from lsr_os.cli import main
from lsr_os.demo import world

pytestmark = pytest.mark.integration

# Reduced settings: a world of 800 images (80 test images, so chance R@10 is 0.125). Measured
# offline with these settings: dense t2i R@10 1.00, sparse 1.00; colour / shape words among a
# test image's top-16 terms for 0.66 / 0.875 of them; about two minutes on 2 cores.
SETTINGS = ["--num-images", "800", "--encoder-epochs", "60", "--head-epochs", "4", "-k", "4"]
N_TEST = 80


@pytest.fixture(scope="module")
def demo_run(os_client, cluster_config, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    prefix = f"test-demo-{uuid.uuid4().hex[:8]}"
    args = ["demo", "--url", ",".join(cluster_config.urls), "--no-node", "--out", str(out), "--prefix", prefix,
            "--json", *SETTINGS]
    first = CliRunner().invoke(main, args)
    try:
        assert first.exit_code == 0, first.output
        second = CliRunner().invoke(main, args)
        assert second.exit_code == 0, second.output
        yield {"out": out, "prefix": prefix, "first": json.loads(first.stdout), "second": json.loads(second.stdout),
               "said": (first.stderr, second.stderr)}
    finally:
        os_client.indices.delete(index=f"{prefix}-*", ignore_unavailable=True, expand_wildcards="all")


def test_sparse_retrieval_through_opensearch_is_far_above_chance_and_close_to_dense(demo_run):
    t2i = demo_run["first"]["report"]["t2i"]
    sparse, dense = t2i["cluster"]["metrics"], t2i["dense"]["metrics"]
    assert sparse["R@10"] >= 0.7  # chance: 10 / 80 test images = 0.125
    assert sparse["R@10"] >= 0.8 * dense["R@10"]
    assert t2i["parity"]["top10_overlap"] >= 0.99  # the cluster scores what exact scoring scores
    assert demo_run["first"]["report"]["i2t"]["cluster"]["metrics"]["R@10"] >= 0.7


def test_test_images_carry_their_colour_and_shape_among_their_top_terms(demo_run, os_client):
    scenes = world.load_scenes(demo_run["out"] / "world")
    hits = os_client.search(index=f"{demo_run['prefix']}-images", body={
        "size": 100, "query": {"term": {"split": "test"}}, "_source": ["terms"]})["hits"]["hits"]
    assert len(hits) == N_TEST
    colour = shape = 0
    for hit in hits:
        scene, terms = scenes[hit["_id"]], set(hit["_source"]["terms"])
        colour += bool(terms & scene.words_for("colour"))
        shape += bool(terms & scene.words_for("shape"))
    assert colour / len(hits) >= 0.5 and shape / len(hits) >= 0.6, (colour, shape)


def test_examples_have_contact_sheets_and_a_rerun_reuses_finished_steps(demo_run):
    first, second = demo_run["first"], demo_run["second"]
    assert len(first["examples"]) == 5
    for ex in first["examples"]:
        assert len(ex["hits"]) == 4
        with open(ex["sheet"], "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    # every step says which it is before its progress bars (stderr; stdout holds the JSON)
    said_first, said_second = demo_run["said"]
    assert "[2/7] dense encoder: training the image and text encoder" in said_first
    assert "[4/7] sparse head: training it on the dense vectors" in said_first and "[7/7] evaluate:" in said_first
    assert "[2/7] dense encoder: reusing the earlier output" in said_second
    assert "[4/7] sparse head: reusing the earlier output" in said_second
    # the second run trains nothing and loads nothing again: it goes straight to the searches
    assert second["seconds"]["dense encoder"] < 1 and second["seconds"]["sparse head"] < 1
    assert second["report"]["t2i"]["cluster"]["metrics"] == first["report"]["t2i"]["cluster"]["metrics"]


def test_the_demo_is_searchable_by_the_command_it_prints(demo_run, cluster_config):
    out = str(demo_run["out"])
    assert f'lsr-os search "two green stars" --demo {out}' in CliRunner().invoke(
        main, ["demo", "--url", ",".join(cluster_config.urls), "--no-node", "--out", out, "--prefix",
               demo_run["prefix"], *SETTINGS]).output
    sheet = demo_run["out"] / "search-sheet.png"
    res = CliRunner().invoke(main, ["search", "two green stars", "--demo", out, "--json", "-k", "3", "--sheet",
                                    str(sheet)])
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert result["index"] == f"{demo_run['prefix']}-images" and len(result["hits"]) == 3
    assert {"green", "stars"} <= set(result["query"]["own"]) and result["query"]["expansion"]
    from PIL import Image

    with Image.open(sheet) as im:  # three tiles of 160 px side by side, with a title above
        assert im.width >= 3 * 160 and im.height > 160


def test_the_demo_images_rank_typed_text_in_the_cluster_as_inference_free_search(demo_run, os_client, cluster_config):
    """On a cluster with the lsr-os plugin the demo's images index gets the `text` field by
    itself (its head has query weights), and a plain `match` sent straight to the node ranks as
    `lsr-os search TEXT --demo OUT --mode inference-free` (top 10, ties counted)."""
    from lsr_os import plugin
    from lsr_os.demo.pipeline import DEFAULT_QUERIES
    from plugin_helpers import assert_same_top, require_plugin

    require_plugin(os_client)
    index = f"{demo_run['prefix']}-images"
    ((_, body),) = os_client.indices.get_mapping(index=index).items()
    assert body["mappings"]["_meta"]["lsr_os"]["text_field"]["scale"] == plugin.DEFAULT_SCALE
    for text in (*DEFAULT_QUERIES, "two green stars"):
        res = CliRunner().invoke(main, ["search", text, "--demo", str(demo_run["out"]), "--mode", "inference-free",
                                        "-k", "100", "--json", "--url", ",".join(cluster_config.urls)])
        assert res.exit_code == 0, res.output
        answer = json.loads(res.stdout)
        searched = [(h["id"], h["score"]) for h in answer["hits"]]
        hits = os_client.transport.perform_request("POST", f"/{index}/_search", body={
            "size": 10, "query": {"match": {plugin.FIELD: text}}})["hits"]["hits"]
        terms = len(answer["query"]["own"]) + len(answer["query"]["expansion"])
        assert_same_top([(h["_id"], h["_score"]) for h in hits], searched, 10,
                        terms * 0.5 / plugin.DEFAULT_SCALE + 1e-4)
