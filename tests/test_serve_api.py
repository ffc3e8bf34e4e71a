"""`lsr-os serve`'s JSON API against a real node of each engine: queries of every kind find what the tiny world
says they must (see serve_helpers), every bad input is a 4xx JSON error naming what was wrong and
the server answers the next good query, queries that arrive together share a model call, a full
queue and a cluster that went away are 503s, and the server recovers from both."""

from __future__ import annotations

import io
import threading
import time

import httpx
import pytest
from PIL import Image

from encode_helpers import jpeg_bytes, rgb
from serve_helpers import (CAPTIONS_PER_IMAGE, N_SCENES, Forwarder, ServerThread, load_static_world, tiny_world,
                           weighted_head)
from lsr_os.config import ClusterConfig
from lsr_os.engines import connect
from lsr_os.serve import MAX_K, SearchService, ServeConfig
from lsr_os.vocab import load_tokenizer

pytestmark = pytest.mark.integration

LIMITS = {"max_upload_bytes": 200_000, "max_pixels": 1_000_000}


@pytest.fixture(scope="module")
def tiny(engine, tmp_path_factory):
    with tiny_world(engine, tmp_path_factory, "serve") as world:
        yield world


def make_service(engine, tiny, models=True, **overrides) -> SearchService:
    model = {"model": str(tiny.model), "head": tiny.head, "device": "cpu"} if models else {}
    config = ServeConfig(prefix=overrides.pop("prefix", tiny.prefix), images=tiny.image_root, **model,
                         **{**LIMITS, **overrides})
    return SearchService(engine, config)


@pytest.fixture(scope="module")
def server(engine, tiny):
    with ServerThread(make_service(engine, tiny)) as srv:
        yield srv


@pytest.fixture
def api(server):
    with httpx.Client(base_url=server.url, timeout=120) as client:
        yield client


def good_query(api, tiny, scene: int = 1) -> None:
    """The server still answers: a text query brings its scene's image first."""
    res = api.post("/search", json={"text": tiny.captions[scene][0], "k": 3})
    assert res.status_code == 200, res.text
    assert res.json()["hits"][0]["id"] == str(scene)


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- good queries


def test_each_scene_s_caption_finds_its_image_first_with_terms_that_sum_to_the_score(api, tiny):
    for scene in range(N_SCENES):
        res = api.post("/search", json={"text": tiny.captions[scene][0], "k": 4})
        assert res.status_code == 200, res.text
        body = res.json()
        assert body["collection"] == f"{tiny.prefix}-images" and body["query"]["text"] == tiny.captions[scene][0]
        top = body["hits"][0]
        assert top["id"] == str(scene) and top["label"] == tiny.images[scene]
        assert top["image_url"] == f"/media/{tiny.images[scene]}"
        assert [h["rank"] for h in body["hits"]] == [1, 2, 3, 4]
        for hit in body["hits"]:
            assert hit["terms"] and sum(t["contribution"] for t in hit["terms"]) == pytest.approx(hit["score"], rel=1e-4)
        assert api.get(top["image_url"]).content == (tiny.image_root / tiny.images[scene]).read_bytes()


def test_an_uploaded_image_finds_its_captions_first(api, tiny):
    for scene in (0, 4):
        upload = (tiny.image_root / tiny.images[scene]).read_bytes()
        res = api.post("/search", files={"image": ("q.png", upload, "image/png")}, data={"k": "5", "session": "t-1"})
        assert res.status_code == 200, res.text
        body = res.json()
        assert body["collection"] == f"{tiny.prefix}-captions" and body["query"]["text"] is None
        top = body["hits"][:CAPTIONS_PER_IMAGE]
        assert {h["image_id"] for h in top} == {str(scene)}
        assert {h["caption"] for h in top} == set(tiny.captions[scene])
        assert all(h["label"] == h["caption"] and h["image_url"] == f"/media/{tiny.images[scene]}" for h in top)


def test_a_session_searches_the_same_copies_and_finds_the_same_hits(api, tiny):
    text = tiny.captions[1][0]
    plain = api.post("/search", json={"text": text, "k": 5}).json()["hits"]
    for _ in range(2):  # one node holds one copy of each shard: the session changes nothing else
        res = api.post("/search", json={"text": text, "k": 5, "session": "tab-7f3a"})
        assert res.status_code == 200, res.text
        assert [(h["id"], h["score"]) for h in res.json()["hits"]] == [(h["id"], h["score"]) for h in plain]


def test_expand_false_keeps_the_query_s_own_word_pieces_only(api, tiny):
    text = tiny.captions[2][0]
    body = api.post("/search", json={"text": text, "expand": False, "k": 2}).json()
    own, expansion = body["query"]["own"], body["query"]["expansion"]
    tokenizer = load_tokenizer()
    assert own and not expansion  # (a random head gives some of the text's pieces weight 0)
    assert set(own) <= set(tokenizer.tokenize(text)) | set(tokenizer.all_special_tokens)


def test_a_vector_query_with_split_and_collection_filters(api, tiny):
    vector = api.post("/encode", files={"image": ("q.png", (tiny.image_root / tiny.images[3]).read_bytes())},
                      data={"k": "50"}).json()["vector"]
    per_scene = {"test": CAPTIONS_PER_IMAGE - 1, "train": 1, None: CAPTIONS_PER_IMAGE}  # see build_world
    for split, count in per_scene.items():
        res = api.post("/search", json={"vector": vector, "collection": "captions", "k": 50, "split": split})
        assert res.status_code == 200, res.text
        hits = res.json()["hits"]
        assert len(hits) == N_SCENES * count and hits[0]["image_id"] == "3"
        assert {h["split"] for h in hits} == ({split} if split else {"test", "train"})
    body = api.post("/search", json={"vector": {"dog": 1.0, "zzzqqq": 2.0}, "k": 1}).json()
    assert body["query"]["own"] == {"dog": 1.0} and body["query"]["expansion"] == {}  # unknown terms dropped


def test_encode_gives_the_exact_dsl_that_search_sends(api, tiny, engine):
    request = {"text": tiny.captions[5][0], "k": 4, "split": "test"}
    encoded = api.post("/encode", json=request).json()
    searched = api.post("/search", json=request).json()
    assert encoded["collection"] == searched["collection"] and encoded["query"] == searched["query"]
    # the whole vector, as the engine's sparse query, under the split filter
    assert encoded["dsl"]["query"]["bool"]["must"] == [engine.ops.sparse_query(encoded["vector"])]
    direct = engine.search(encoded["collection"], encoded["dsl"])["hits"]["hits"]
    assert [(h["_id"], h["_score"]) for h in direct] == [(h["id"], h["score"]) for h in searched["hits"]]


def test_healthz_reports_cluster_collections_models_and_device(api, tiny):
    res = api.get("/healthz")
    assert res.status_code == 200
    health = res.json()
    assert health["ok"] and health["cluster"]["reachable"]
    assert health["collections"]["images"] == {"alias": f"{tiny.prefix}-images", "documents": N_SCENES,
                                               "text_field_stale": []}
    assert health["collections"]["captions"]["documents"] == N_SCENES * CAPTIONS_PER_IMAGE
    assert health["models"]["loaded"] and health["models"]["device"] == "cpu"


def test_images_are_served_with_caching_headers_and_nothing_outside_the_root(api, tiny):
    res = api.get(f"/media/{tiny.images[0]}")
    assert res.status_code == 200 and res.headers["content-type"] == "image/png"
    assert "max-age" in res.headers["cache-control"] and res.headers["etag"] and res.headers["last-modified"]
    again = api.get(f"/media/{tiny.images[0]}", headers={"If-None-Match": res.headers["etag"]})
    assert again.status_code == 304 and not again.content
    (tiny.root / "secret.png").write_bytes(res.content)  # exists, but outside the image root
    for path in ("%2E%2E/secret.png", "images/%2E%2E/%2E%2E/secret.png", "%2Fetc%2Fhostname", "images/missing.png",
                 "images", "..%2Fhead%2Fconfig.json"):
        bad = api.get(f"/media/{path}")
        assert bad.status_code == 404 and "error" in bad.json(), path
    good_query(api, tiny)


# --------------------------------------------------------------------------- bad input


BOMB = png(Image.new("L", (1500, 1500)))  # 2.25 megapixels in a few kilobytes; the test limit is 1
BAD = {
    "empty text": ({"json": {"text": "   "}}, 400, "empty query"),
    "stop words only": ({"json": {"text": "the of and a"}}, 400, "no content word"),
    "out-of-vocabulary text": ({"json": {"text": "🦄🦄"}}, 400, "no content word"),
    "text too long": ({"json": {"text": "dog " * 1000}}, 400, "text: String should have at most"),
    "no query": ({"json": {"k": 3}}, 400, "give exactly one query"),
    "two queries": ({"json": {"text": "red ball", "vector": {"red": 1.0}}}, 400, "got text and vector"),
    "unknown field": ({"json": {"text": "red ball", "query": "x"}}, 400, "unknown field 'query'"),
    "k zero": ({"json": {"text": "red ball", "k": 0}}, 400, "k: Input should be greater than or equal to 1"),
    "k too large": ({"json": {"text": "red ball", "k": MAX_K + 1}}, 400, f"less than or equal to {MAX_K}"),
    "k not a number": ({"json": {"text": "red ball", "k": "many"}}, 400, "k: Input should be a valid integer"),
    "unknown collection": ({"json": {"text": "red ball", "collection": "videos"}}, 400,
                           "collection: Input should be 'images' or 'captions'"),
    "vector not an object": ({"json": {"vector": [["dog", 1.0]]}}, 400, "vector must be an object"),
    "vector weight a string": ({"json": {"vector": {"dog": "heavy"}}}, 400, "the weight of 'dog' is \"heavy\""),
    "vector weight a boolean": ({"json": {"vector": {"dog": True}}}, 400, "the weight of 'dog' is true"),
    "vector empty": ({"json": {"vector": {}}}, 400, "empty query"),
    "vector of unknown terms": ({"json": {"vector": {"zzzqqq": 1.0}}}, 400, "no known term"),
    "vector of negative weights": ({"json": {"vector": {"dog": -1.0}}}, 400, "no known term with a positive"),
    "vector form field not JSON": ({"data": {"vector": "{dog: 1"}}, 400, "vector: not valid JSON"),
    "body not JSON": ({"content": b"{text: red", "headers": {"content-type": "application/json"}}, 400,
                      "not valid JSON"),
    "body a JSON list": ({"json": ["red ball"]}, 400, "must be a JSON object, not list"),
    "plain text body": ({"content": b"red ball", "headers": {"content-type": "text/plain"}}, 415, "send JSON"),
    "upload not an image": ({"files": {"image": ("a.jpg", b"this is a text file, not a picture\n" * 20)}}, 400,
                            "not an image"),
    "upload truncated": ({"files": {"image": ("t.jpg", jpeg_bytes(rgb(9, (200, 200)))[:400])}}, 400,
                         "truncated or corrupt"),
    "upload empty": ({"files": {"image": ("e.png", b"")}}, 400, "empty (0 bytes)"),
    "upload decompression bomb": ({"files": {"image": ("bomb.png", BOMB)}}, 413, "1,000,000"),
    "upload over the cap": ({"files": {"image": ("big.png", b"\x89PNG" + bytes(230_000))}}, 413,
                            "more than this server's limit of 200,000 bytes"),
    "body far over the cap": ({"files": {"image": ("huge.png", bytes(400_000))}}, 413, "more than this server's limit"),
    "chunked body over the cap": ({"content": [b"x" * 50_000] * 10,  # no Content-Length
                                   "headers": {"content-type": "application/json"}}, 413,
                                  "more than this server's limit"),
    "upload under another name": ({"files": {"picture": ("a.png", png(rgb(1)))}}, 400, "upload the query image as 'image'"),
    "image and text": ({"files": {"image": ("a.png", png(rgb(1)))}, "data": {"text": "red"}}, 400, "got text and image"),
    "session with a space": ({"json": {"text": "red ball", "session": "a b"}}, 400, "session: String should match"),
    "session too long": ({"json": {"text": "red ball", "session": "s" * 65}}, 400, "session: String should have at most"),
}


@pytest.mark.parametrize("case", list(BAD))
@pytest.mark.parametrize("endpoint", ["/search", "/encode"])
def test_bad_input_is_a_4xx_naming_it_and_the_next_query_succeeds(api, tiny, case, endpoint):
    request, status, message = BAD[case]
    res = api.post(endpoint, **request)
    assert res.status_code == status, res.text
    assert message in res.json()["error"]
    good_query(api, tiny)


def test_a_collection_the_cluster_lacks_is_404_naming_what_it_serves(engine, tiny):
    service = make_service(engine, tiny, models=False, prefix=f"{tiny.prefix}-nothing")
    with ServerThread(service) as srv, httpx.Client(base_url=srv.url, timeout=60) as api:
        res = api.post("/search", json={"vector": {"dog": 1.0}})
        assert res.status_code == 404
        error = res.json()["error"]
        assert f"no collection {tiny.prefix}-nothing-images" in error and f"--prefix {tiny.prefix}" in error
        res = api.post("/search", json={"text": "red ball"})  # started without models
        assert res.status_code == 400 and "need a model" in res.json()["error"]
        health = api.get("/healthz")
        assert health.status_code == 503 and health.json()["collections"]["images"]["documents"] is None
        assert health.json()["models"] is None


# --------------------------------------------------------------------------- concurrency


def _post_all(url: str, bodies: list[dict]) -> list[httpx.Response]:
    """Post every body at once, each from its own thread."""
    out: list = [None] * len(bodies)

    def post(i: int) -> None:
        out[i] = httpx.post(f"{url}/search", json=bodies[i], timeout=120)

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def _wait(predicate, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_queries_that_arrive_together_share_one_model_call(server, tiny):
    batcher = server.service.batcher
    gate = threading.Event()
    server.service.model_pool.submit(gate.wait)  # the model thread is busy: queries gather
    before, largest = batcher.batches, batcher.largest
    results: list = []
    sender = threading.Thread(target=lambda: results.extend(_post_all(
        server.url, [{"text": tiny.captions[s][0], "k": 2} for s in range(N_SCENES)])))
    sender.start()
    _wait(lambda: batcher.pending == N_SCENES, f"{N_SCENES} queries waiting")
    gate.set()
    sender.join()
    assert [r.status_code for r in results] == [200] * N_SCENES
    assert [r.json()["hits"][0]["id"] for r in results] == [str(s) for s in range(N_SCENES)]
    # the first query may have been taken before the others arrived; the rest shared one call
    assert largest < N_SCENES // 2 and batcher.batches - before <= 2 and batcher.largest >= N_SCENES // 2


def test_a_full_queue_is_503_and_the_server_recovers(engine, tiny):
    service = make_service(engine, tiny, max_pending=1)
    with ServerThread(service) as srv, httpx.Client(base_url=srv.url, timeout=120) as api:
        gate = threading.Event()
        service.model_pool.submit(gate.wait)
        first: list = []
        sender = threading.Thread(target=lambda: first.extend(_post_all(srv.url, [{"text": tiny.captions[0][0]}])))
        sender.start()
        _wait(lambda: service.batcher.pending == 1, "one query waiting")
        res = api.post("/search", json={"text": tiny.captions[1][0]})
        assert res.status_code == 503 and "the server is busy" in res.json()["error"]
        assert api.post("/search", json={"vector": {"dog": 1.0}}).status_code == 200  # needs no model
        gate.set()
        sender.join()
        assert first[0].status_code == 200 and first[0].json()["hits"][0]["id"] == "0"
        good_query(api, tiny)


def test_a_cluster_that_went_away_is_503_with_the_reason_and_the_server_recovers(cluster_config, tiny):
    proxy = Forwarder(cluster_config.urls[0]).start()
    try:
        cluster = ClusterConfig(urls=(proxy.url,), timeout=10.0, max_retries=1)
        service = make_service(connect(cluster), tiny)
        with ServerThread(service) as srv, httpx.Client(base_url=srv.url, timeout=120) as api:
            good_query(api, tiny)
            proxy.stop()
            for request in ({"text": tiny.captions[2][0]}, {"vector": {"dog": 1.0}}):
                res = api.post("/search", json=request)
                assert res.status_code == 503, res.text
                assert "cannot be reached" in res.json()["error"] and proxy.url in res.json()["error"]
            health = api.get("/healthz")
            assert health.status_code == 503 and not health.json()["cluster"]["reachable"]
            proxy.start()
            good_query(api, tiny, 2)
            assert api.get("/healthz").status_code == 200
    finally:
        proxy.stop()


# --------------------------------------------------------------------------- query modes


@pytest.fixture(scope="module")
def static(engine, tiny):
    """The tiny world's head with query weights, and the prefix of its inference-free collection."""
    head = weighted_head(tiny)
    return head, load_static_world(engine, tiny, head)


@pytest.fixture(scope="module")
def headonly(engine, tiny, static):
    """A server with a head and its query weights, and no model."""
    head, prefix = static
    config = ServeConfig(prefix=prefix, head=head, images=tiny.image_root, **LIMITS)
    with ServerThread(SearchService(engine, config)) as srv, \
            httpx.Client(base_url=srv.url, timeout=60) as api:
        yield srv, api


def test_a_server_without_a_model_answers_text_queries_inference_free(headonly, tiny):
    srv, api = headonly
    for scene in range(N_SCENES):
        res = api.post("/search", json={"text": tiny.captions[scene][0], "k": 3})
        assert res.status_code == 200, res.text
        body = res.json()
        assert body["mode"] == "inference-free" and body["hits"][0]["id"] == str(scene)
        assert body["query"]["own"] and body["query"]["expansion"] == {} and body["warnings"] == []
        assert api.get(body["hits"][0]["image_url"]).content == (tiny.image_root / tiny.images[scene]).read_bytes()
    assert srv.service.batcher.items == 0  # no query went to the model thread
    health = api.get("/healthz").json()
    assert health["models"]["loaded"] and health["models"]["modes"] == ["inference-free"] and health["models"]["model"] is None
    encoded = api.post("/encode", json={"text": tiny.captions[0][0]}).json()
    assert encoded["mode"] == "inference-free" and set(encoded["vector"]) == set(encoded["query"]["own"])


@pytest.mark.parametrize("request_, message", [
    ({"text": "red ball", "mode": "expanded"}, "mode expanded runs a dense model, and there is none"),
    ({"text": "red ball", "expand": False}, "mode own-tokens runs a dense model, and there is none"),
    ({"text": "red ball", "mode": "inference-free", "expand": False}, "conflicts with mode inference-free"),
    ({"text": "the of and"}, "no content word"),
    ({"text": "🦄🦄", "mode": "inference-free"}, "no content word"),
    ({"vector": {"red": 1.0}, "mode": "expanded"}, "mode is for text queries"),
    ({"text": "red ball", "mode": "fast"}, "mode: Input should be 'auto', 'expanded', 'own-tokens' or 'inference-free'"),
])
def test_a_mode_the_server_cannot_answer_is_a_400_naming_what_is_missing(headonly, tiny, request_, message):
    _, api = headonly
    res = api.post("/search", json=request_)
    assert res.status_code == 400 and message in res.json()["error"], res.text
    assert api.post("/search", json={"text": tiny.captions[1][0], "k": 1}).json()["hits"][0]["id"] == "1"


def test_an_image_query_without_a_model_is_a_400_saying_so(headonly, tiny):
    _, api = headonly
    res = api.post("/search", files={"image": ("q.png", (tiny.image_root / tiny.images[0]).read_bytes())})
    assert res.status_code == 400 and "image queries run the dense model, and this server has none" in res.json()["error"]


def test_with_a_model_every_mode_answers_and_says_which(api, tiny):
    text = tiny.captions[2][0]
    expanded = api.post("/search", json={"text": text, "k": 2}).json()
    own = api.post("/search", json={"text": text, "k": 2, "mode": "own-tokens"}).json()
    alias = api.post("/search", json={"text": text, "k": 2, "expand": False}).json()
    assert expanded["mode"] == "expanded" and expanded["query"]["expansion"]
    assert own["mode"] == alias["mode"] == "own-tokens" and own["query"] == alias["query"]
    res = api.post("/search", json={"text": text, "mode": "inference-free"})
    assert res.status_code == 400 and f"the head {tiny.head} has no query weights" in res.json()["error"]
    assert "lsr-os add-query-weights" in res.json()["error"]
    res = api.post("/search", json={"text": text, "mode": "expanded", "expand": False})
    assert res.status_code == 400 and "conflicts with mode expanded" in res.json()["error"]
    image = api.post("/search", files={"image": ("q.png", (tiny.image_root / tiny.images[0]).read_bytes())}).json()
    assert image["mode"] == "expanded"
    assert api.post("/search", json={"vector": {"dog": 1.0}}).json()["mode"] == "vector"


def test_inference_free_queries_do_not_wait_for_the_model_thread(engine, tiny, static):
    """With a model and query weights both: while the model thread is busy, an inference-free
    query still answers at once, and a model query waits for the model."""
    head, prefix = static
    config = ServeConfig(prefix=prefix, model=str(tiny.model), head=head, device="cpu", images=tiny.image_root,
                         **LIMITS)
    service = SearchService(engine, config)
    with ServerThread(service) as srv, httpx.Client(base_url=srv.url, timeout=60) as api:
        assert api.get("/healthz").json()["models"]["modes"] == ["expanded", "own-tokens", "inference-free"]
        gate = threading.Event()
        service.model_pool.submit(gate.wait)
        waiting: list = []
        sender = threading.Thread(target=lambda: waiting.extend(_post_all(srv.url, [{"text": tiny.captions[0][0]}])))
        sender.start()
        try:
            _wait(lambda: service.batcher.pending == 1, "the model query waiting")
            res = api.post("/search", json={"text": tiny.captions[3][0], "mode": "inference-free", "k": 1})
            assert res.status_code == 200 and res.json()["hits"][0]["id"] == "3" and service.batcher.pending == 1
        finally:
            gate.set()
            sender.join()
        assert waiting[0].status_code == 200 and waiting[0].json()["mode"] == "expanded"


def test_the_image_root_is_the_one_recorded_at_ingest_and_the_demo_s_only_for_its_own(engine, tiny, tmp_path):
    """`serve --demo D --prefix mine` shows mine's images from where they were ingested, never the
    demo's world (they are not there); the demo's collections take the demo's world."""
    import json

    from lsr_os import index as ix
    from lsr_os.sparse import RecordStream, SparseRecord

    mine = f"{tiny.prefix}-recorded"
    ix.ingest(engine, RecordStream.of([SparseRecord("0", {"dog": 1.0}, {"image": tiny.images[0]})], "t"),
              f"{mine}-images", "images", ix.IngestOptions(progress=False), images=tiny.image_root)
    demo = tmp_path / "demo"
    (demo / "world").mkdir(parents=True)
    (demo / "search.json").write_text(json.dumps({"model": "demo:x", "head": "h", "prefix": tiny.prefix,
                                                  "images": str(demo / "world")}))
    for prefix, root in ((mine, tiny.image_root), (tiny.prefix, demo / "world"), (f"{tiny.prefix}-other", None)):
        service = SearchService(engine, ServeConfig(prefix=prefix, demo=demo))
        try:
            assert service.image_root == (root.resolve() if root else None), prefix
        finally:
            service.close()
