"""`lsr-os demo`, reduced, end to end against each engine's node: thresholds only a working
pipeline meets, and the same table on both engines for the same head and records."""

import json
import uuid

import pytest

from index_helpers import cli
from lsr_os.demo import world

pytestmark = pytest.mark.integration

# Reduced settings: a world of 800 images (80 test images, so chance R@10 is 0.125). Measured
# offline with these settings: dense t2i R@10 1.00, sparse 1.00; colour / shape words among a
# test image's top-16 terms for 0.66 / 0.875 of them; about two minutes on 2 cores.
SETTINGS = ["--num-images", "800", "--encoder-epochs", "60", "--head-epochs", "4", "-k", "4"]
N_TEST = 80
TRAINING = "[2/7] dense encoder: training the image and text encoder"


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One demo folder for every engine: the world, encoder and head are built once (by the first
    run, on whichever engine) and each engine's run loads the same records. Each engine's
    collections are deleted at the end."""
    state = {"out": tmp_path_factory.mktemp("demo"), "runs": {}, "engines": []}
    yield state
    for engine in state["engines"]:
        engine.delete_indices(f"{state['runs'][engine.name]['prefix']}-*", missing_ok=True)


def demo_on(engine, state: dict) -> dict:
    """`lsr-os demo --url <the engine's node>` into the shared folder, twice (the second reuses
    every finished step); run once per engine and module."""
    if engine.name not in state["runs"]:
        prefix = f"test-demo-{uuid.uuid4().hex[:8]}"
        args = ["demo", "--url", ",".join(engine.config.urls), "--no-node", "--out", state["out"], "--prefix", prefix,
                "--json", *SETTINGS]
        state["engines"].append(engine)
        state["runs"][engine.name] = {"prefix": prefix}  # for the clean-up, even if the run fails
        first = cli(engine, *args)
        assert first.exit_code == 0, first.output
        second = cli(engine, *args)
        assert second.exit_code == 0, second.output
        state["runs"][engine.name].update(out=state["out"], first=json.loads(first.stdout),
                                          second=json.loads(second.stdout), said=(first.stderr, second.stderr))
    return state["runs"][engine.name]


@pytest.fixture(scope="module")
def demo_run(engine, shared):
    return demo_on(engine, shared)


def test_sparse_retrieval_through_the_cluster_is_far_above_chance_and_close_to_dense(demo_run):
    t2i = demo_run["first"]["report"]["t2i"]
    sparse, dense = t2i["cluster"]["metrics"], t2i["dense"]["metrics"]
    assert sparse["R@10"] >= 0.7  # chance: 10 / 80 test images = 0.125
    assert sparse["R@10"] >= 0.8 * dense["R@10"]
    assert t2i["parity"]["top10_overlap"] >= 0.99  # the cluster scores what exact scoring scores
    assert demo_run["first"]["report"]["i2t"]["cluster"]["metrics"]["R@10"] >= 0.7


def test_test_images_carry_their_colour_and_shape_among_their_top_terms(demo_run, engine):
    scenes = world.load_scenes(demo_run["out"] / "world")
    hits = engine.search(f"{demo_run['prefix']}-images", {
        "size": 100, "query": {"term": {"split": "test"}}, "_source": ["terms"]})["hits"]["hits"]
    assert len(hits) == N_TEST
    colour = shape = 0
    for hit in hits:
        scene, terms = scenes[hit["_id"]], set(hit["_source"]["terms"])
        colour += bool(terms & scene.words_for("colour"))
        shape += bool(terms & scene.words_for("shape"))
    assert colour / len(hits) >= 0.5 and shape / len(hits) >= 0.6, (colour, shape)


def test_examples_have_contact_sheets_and_a_rerun_reuses_finished_steps(demo_run, shared):
    first, second = demo_run["first"], demo_run["second"]
    assert len(first["examples"]) == 5
    for ex in first["examples"]:
        assert len(ex["hits"]) == 4
        with open(ex["sheet"], "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    # every step says which it is before its progress bars (stderr; stdout holds the JSON)
    said_first, said_second = demo_run["said"]
    assert "[2/7] dense encoder: " in said_first and "[7/7] evaluate:" in said_first
    # the folder's first run, on whichever engine, trained; every other run reused its output
    trained = [name for name, run in shared["runs"].items() if TRAINING in run["said"][0]]
    assert len(trained) == 1 and TRAINING not in said_second
    if TRAINING in said_first:
        assert "[4/7] sparse head: training it on the dense vectors" in said_first
    assert "[2/7] dense encoder: reusing the earlier output" in said_second
    assert "[4/7] sparse head: reusing the earlier output" in said_second
    # the second run trains nothing and loads nothing again: it goes straight to the searches
    assert second["seconds"]["dense encoder"] < 1 and second["seconds"]["sparse head"] < 1
    assert second["report"]["t2i"]["cluster"]["metrics"] == first["report"]["t2i"]["cluster"]["metrics"]


def test_the_demo_is_searchable_by_the_command_it_prints(demo_run, engine):
    out = str(demo_run["out"])
    printed = cli(engine, "demo", "--url", ",".join(engine.config.urls), "--no-node", "--out", out, "--prefix",
                  demo_run["prefix"], *SETTINGS).output
    assert f'lsr-os search "two green stars" --demo {out}' in printed
    assert f"text -> image, sparse via {engine.display_name}" in printed
    sheet = demo_run["out"] / "search-sheet.png"
    res = cli(engine, "search", "two green stars", "--demo", out, "--json", "-k", "3", "--sheet", sheet)
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert result["index"] == f"{demo_run['prefix']}-images" and len(result["hits"]) == 3
    assert {"green", "stars"} <= set(result["query"]["own"]) and result["query"]["expansion"]
    from PIL import Image

    with Image.open(sheet) as im:  # three tiles of 160 px side by side, with a title above
        assert im.width >= 3 * 160 and im.height > 160


def test_the_demo_images_rank_typed_text_in_the_cluster_as_inference_free_search(demo_run, engine):
    """On a cluster with the lsr-os plugin the demo's images index gets the `text` field by
    itself (its head has query weights), and a plain `match` sent straight to the node ranks as
    `lsr-os search TEXT --demo OUT --mode inference-free` (top 10, ties counted)."""
    from lsr_os import plugin
    from lsr_os.demo.pipeline import DEFAULT_QUERIES
    from plugin_helpers import assert_same_top

    if not engine.features.has_lsr_os_plugin:
        pytest.skip(f"the {engine.display_name} node does not run the lsr-os plugin")
    index = f"{demo_run['prefix']}-images"
    ((_, mappings),) = engine.mappings(index).items()
    assert mappings["_meta"]["lsr_os"]["text_field"]["scale"] == plugin.DEFAULT_SCALE
    for text in (*DEFAULT_QUERIES, "two green stars"):
        res = cli(engine, "search", text, "--demo", demo_run["out"], "--mode", "inference-free", "-k", "100", "--json",
                  "--url", ",".join(engine.config.urls))
        assert res.exit_code == 0, res.output
        answer = json.loads(res.stdout)
        searched = [(h["id"], h["score"]) for h in answer["hits"]]
        hits = engine.search(index, {"size": 10, "query": {"match": {plugin.FIELD: text}}})["hits"]["hits"]
        terms = len(answer["query"]["own"]) + len(answer["query"]["expansion"])
        assert_same_top([(h["_id"], h["_score"]) for h in hits], searched, 10,
                        terms * 0.5 / plugin.DEFAULT_SCALE + 1e-4)


def test_both_engines_serve_the_demo_alike(opensearch, elasticsearch, shared):
    """The same head and records on OpenSearch and Elasticsearch (both store 9 bits): the same R@k
    in both directions and every text query mode, exact parity on both, the same example hits,
    and the same top 10 for each example query."""
    from lsr_os.demo.pipeline import DEFAULT_QUERIES
    from lsr_os.search import run_search

    runs = {engine.name: demo_on(engine, shared) for engine in (opensearch, elasticsearch)}
    reports = {name: run["first"]["report"] for name, run in runs.items()}
    ours, theirs = reports["opensearch"], reports["elasticsearch"]
    for direction in ("t2i", "i2t"):
        assert ours[direction]["cluster"]["metrics"] == pytest.approx(theirs[direction]["cluster"]["metrics"], abs=1e-9)
        assert ours[direction]["parity"]["top10_overlap"] == theirs[direction]["parity"]["top10_overlap"] == 1.0
    assert set(ours["t2i_modes"]) == set(theirs["t2i_modes"]) and ours["t2i_modes"]
    for mode in ours["t2i_modes"]:
        assert (ours["t2i_modes"][mode]["cluster"]["metrics"]
                == pytest.approx(theirs["t2i_modes"][mode]["cluster"]["metrics"], abs=1e-9)), mode
    examples = {name: [[(h["id"], h["matched_terms"]) for h in ex["hits"]] for ex in run["first"]["examples"]]
                for name, run in runs.items()}
    assert examples["opensearch"] == examples["elasticsearch"]
    settings = json.loads((shared["out"] / "search.json").read_text())
    for text in (*DEFAULT_QUERIES, "two green stars"):
        tops = [[(h["id"], h["score"]) for h in run_search(
            engine, text=text, model=settings["model"], head=settings["head"], index=f"{runs[engine.name]['prefix']}-images",
            k=10, device="cpu").hits] for engine in (opensearch, elasticsearch)]
        assert len(tops[0]) == 10 and [d for d, _ in tops[0]] == [d for d, _ in tops[1]], text
        assert [s for _, s in tops[0]] == pytest.approx([s for _, s in tops[1]], rel=1e-6), text
