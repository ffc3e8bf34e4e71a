"""`lsr-os serve` without a node: the batcher, upload decoding, image paths, request checks, how a
cluster's errors become HTTP statuses, and a cluster of either engine that does not answer (503,
never a 500)."""

from __future__ import annotations

import asyncio
import io
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from encode_helpers import jpeg_bytes, rgb
from lsr_os.config import ClusterConfig
from lsr_os.engines import ENGINES, engine_class
from lsr_os.errors import (AccessDenied, BadRequest, ClusterError, CollectionMissing, ConfigError, EngineError, NoAnswer,
                           NotFound, TLSFailure)
from lsr_os.serve import ApiError, Batcher, Overloaded, SearchService, ServeConfig, create_app, decode_image


def run_with_gate(max_batch: int, max_pending: int, n: int, fn=None):
    """Submit `n` items while the worker thread is held, then let it go; the results and each call's items."""
    calls: list[list] = []

    def double(items):
        calls.append(list(items))
        return [x * 2 for x in items]

    async def main():
        pool = ThreadPoolExecutor(1)
        batcher = Batcher(fn or double, pool, max_batch=max_batch, max_wait_s=0.0, max_pending=max_pending)
        batcher.start()
        gate = threading.Event()
        pool.submit(gate.wait)
        tasks = [asyncio.create_task(batcher.submit(i)) for i in range(n)]
        while batcher.pending < min(n, max_pending) and not all(t.done() for t in tasks):
            await asyncio.sleep(0.001)
        gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await batcher.stop()
        pool.shutdown()
        return results, batcher

    results, batcher = asyncio.run(main())
    return results, calls, batcher


def test_queries_waiting_together_share_calls_of_at_most_max_batch():
    results, calls, batcher = run_with_gate(max_batch=4, max_pending=100, n=10)
    assert results == [2 * i for i in range(10)]
    assert sorted(x for call in calls for x in call) == list(range(10))
    assert all(len(call) <= 4 for call in calls) and len(calls) <= 4  # the first may go alone, then full calls
    assert batcher.largest == 4 and batcher.items == 10 and batcher.pending == 0


def test_max_batch_one_is_one_call_per_query():
    results, calls, _ = run_with_gate(max_batch=1, max_pending=100, n=5)
    assert results == [0, 2, 4, 6, 8] and calls == [[0], [1], [2], [3], [4]]


def test_beyond_max_pending_a_query_is_refused_at_once():
    results, calls, _ = run_with_gate(max_batch=8, max_pending=3, n=5)
    assert results[:3] == [0, 2, 4]
    assert all(isinstance(r, Overloaded) and "3 queries already wait" in str(r) for r in results[3:])


def test_an_item_s_error_fails_that_item_alone_and_a_failed_call_fails_its_batch():
    def picky(items):
        if 99 in items:
            raise RuntimeError("model broke")
        return [ValueError(f"bad {x}") if x % 2 else x for x in items]

    results, _, _ = run_with_gate(max_batch=8, max_pending=100, n=4, fn=picky)
    assert results[0] == 0 and results[2] == 2
    assert [str(r) for r in results[1::2]] == ["bad 1", "bad 3"]

    async def main():
        pool = ThreadPoolExecutor(1)
        batcher = Batcher(picky, pool, 8, 0.0, 10)
        batcher.start()
        out = await asyncio.gather(batcher.submit(99), batcher.submit(4), return_exceptions=True)
        await batcher.stop()
        return out

    assert [str(r) for r in asyncio.run(main())] == ["model broke", "model broke"]


def test_a_batch_waits_for_queries_on_their_way_and_a_lone_query_does_not_wait():
    calls: list[list] = []

    def echo(items):
        calls.append(list(items))
        return items

    async def main():
        pool = ThreadPoolExecutor(1)
        batcher = Batcher(echo, pool, max_batch=8, max_wait_s=60.0, max_pending=10)  # a wait no test sits out
        batcher.start()
        alone = await asyncio.wait_for(batcher.submit("alone"), 30)  # nothing else on its way
        coming = batcher.arrival()
        first = asyncio.create_task(batcher.submit("first"))
        await asyncio.sleep(0.05)  # the batcher holds "first" back for the query announced as coming
        second = await asyncio.wait_for(batcher.submit("second", coming), 30)
        given_up = batcher.arrival()
        third = asyncio.create_task(batcher.submit("third"))
        await asyncio.sleep(0.05)
        given_up.close()  # that request failed before reaching the model: stop waiting for it
        out = [alone, await first, second, await asyncio.wait_for(third, 30)]
        await batcher.stop()
        pool.shutdown()
        return out, batcher.arriving

    assert asyncio.run(main()) == (["alone", "first", "second", "third"], 0)
    assert calls == [["alone"], ["first", "second"], ["third"]]


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_uploads_decode_to_upright_rgb():
    rgba = rgb(1).convert("RGBA")
    assert decode_image(png(rgba), 10_000).mode == "RGB"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to display
    buf = io.BytesIO()
    rgb(2, size=(40, 20)).save(buf, format="JPEG", exif=exif)
    assert decode_image(buf.getvalue(), 10_000).size == (20, 40)


@pytest.mark.parametrize("data, status, message", [
    (b"", 400, "empty (0 bytes)"),
    (b"GIF89a but not really", 400, "not an image"),
    (jpeg_bytes(rgb(9, (200, 200)))[:400], 400, "truncated or corrupt"),
    (png(Image.new("L", (101, 100))), 413, "101 x 100 = 10,100 pixels, more than this server's limit of 10,000 "
                                           "pixels (--max-image-mpix)"),
])
def test_bad_uploads_are_refused_with_what_is_wrong(data, status, message):
    with pytest.raises(ApiError) as caught:
        decode_image(data, 10_000)
    assert caught.value.status == status and message in str(caught.value)


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height and holds no pixel: what an upload's header claims is
    all that may be read of it before its size is checked."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("width, height", [(10_000, 6_000), (10_000, 10_000), (20_000, 20_000)])
def test_an_upload_over_the_pixel_cap_names_the_server_s_limit_and_option(width, height):
    """60 megapixels is over the cap but under Pillow's own limit; 100 is in Pillow's warning range
    and 400 beyond its error: each answer names the server's limit and --max-image-mpix, never
    Pillow's sentence."""
    with pytest.raises(ApiError) as caught:
        decode_image(png_header(width, height), 50_000_000)
    message = str(caught.value)
    assert caught.value.status == 413 and "this server's limit of 50,000,000 pixels (--max-image-mpix)" in message
    assert "DOS attack" not in message and "could be decompression bomb" not in message
    if width * height < 2 * Image.MAX_IMAGE_PIXELS:  # beyond it Pillow gives no size
        assert f"{width:,} x {height:,} = {width * height:,} pixels" in message


def test_the_server_s_pixel_cap_replaces_pillow_s_bomb_limit(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5_000)
    assert decode_image(png(Image.new("L", (80, 80))), 10_000).size == (80, 80)  # Pillow would only warn
    with pytest.raises(ApiError, match="more than this server's limit of 10,000 pixels") as caught:
        decode_image(png(Image.new("L", (101, 100))), 10_000)
    assert caught.value.status == 413
    with pytest.raises(ApiError, match="over 10,000 pixels, more than this server's limit of 10,000 pixels"):
        decode_image(png(Image.new("L", (110, 110))), 10**9)  # beyond Pillow's hard limit no cap reaches


def test_load_image_reads_an_open_file_with_a_pixel_cap():
    from lsr_os.data import ImageLoadError, ImageTooLarge, load_image

    assert load_image(io.BytesIO(png(rgb(1).convert("RGBA")))).mode == "RGB"
    with pytest.raises(ImageTooLarge, match="101 x 100 = 10,100 pixels, more than the limit of 10,000") as caught:
        load_image(io.BytesIO(png(Image.new("L", (101, 100)))), max_pixels=10_000)
    assert (caught.value.pixels, caught.value.limit) == (10_100, 10_000)
    with pytest.raises(ImageLoadError, match="not an image Pillow can identify"):
        load_image(io.BytesIO(b"GIF89a but not really"))


DEAD = "http://127.0.0.1:9"  # nothing answers there


def dead_engine(name: str):
    """An engine of kind `name` whose cluster never answers. Built as `connect` builds it after
    telling the engine (which needs an answer); making it asks the cluster nothing."""
    return engine_class(name)(ClusterConfig(urls=(DEAD,), max_retries=0, timeout=2), "0")


@pytest.fixture(params=ENGINES)
def offline(request, tmp_path):
    """A service of each engine whose cluster never answers (port 9), with an image root."""
    root = tmp_path / "root"
    (root / "images").mkdir(parents=True)
    rgb(1).save(root / "images" / "a.png")
    (root / "notes.txt").write_text("not an image")
    (tmp_path / "outside.png").write_bytes(png(rgb(2)))
    (root / "images" / "link.png").symlink_to(tmp_path / "outside.png")
    service = SearchService(dead_engine(request.param), ServeConfig(images=root))
    yield service, TestClient(create_app(service))
    service.close()


def test_image_paths_resolve_under_the_root_only(offline):
    _, api = offline
    res = api.get("/media/images/a.png")
    assert res.status_code == 200 and res.headers["cache-control"] == "public, max-age=3600"
    for path in ("images/link.png", "notes.txt", "images", "images/missing.png", "%2E%2E/outside.png"):
        res = api.get(f"/media/{path}")
        assert res.status_code == 404 and "no image" in res.json()["error"], path


def test_a_cluster_that_does_not_answer_is_503_not_500(offline):
    service, api = offline
    res = api.post("/search", json={"vector": {"dog": 1.0}})
    assert res.status_code == 503 and f"{DEAD} cannot be reached" in res.json()["error"]
    res = api.post("/search", json={"text": "a red ball"})
    assert res.status_code == 400 and "need a model" in res.json()["error"]
    health = api.get("/healthz")
    assert health.status_code == 503 and health.json()["cluster"]["reachable"] is False
    assert health.json()["cluster"]["engine"] == service.engine.display_name  # the page shows it


def caused(error: ClusterError, cause: Exception) -> ClusterError:
    """`error` raised from `cause`, as the library wraps an engine's error (`raise ... from`)."""
    error.__cause__ = cause
    return error


CLUSTER_ERRORS = {
    "no answer": (NoAnswer("no answer from the cluster (ConnectionRefusedError)"), 503),
    "a search without an answer": (caused(ClusterError("search on lsr-images failed"), NoAnswer("no answer")), 503),
    "429": (EngineError("HTTP 429 es_rejected_execution_exception: rejected", 429), 503),
    "a search met 503": (caused(ClusterError("search on lsr-images failed"), EngineError("HTTP 503", 503)), 503),
    "500": (EngineError("HTTP 500 search_phase_execution_exception: all shards failed", 500), 503),
    "missing collection": (CollectionMissing("no collection lsr-images on the cluster"), 404),
    "a search met 400": (caused(ClusterError("search on lsr-images failed"), BadRequest("HTTP 400", 400)), 502),
    "403": (AccessDenied("HTTP 403 security_exception: unauthorized", 403), 502),
    "404": (NotFound("HTTP 404 index_not_found_exception", 404), 502),
    "TLS": (TLSFailure("TLS with https://localhost:9200 failed"), 502),
    "shards missing": (ClusterError("search on lsr-images: 1 of 2 shards did not answer, 3 retries later"), 502),
}


@pytest.mark.parametrize("case", list(CLUSTER_ERRORS))
@pytest.mark.parametrize("name", ENGINES)
def test_a_cluster_s_error_is_404_503_or_502_on_every_engine(name, case):
    """Gone or overloaded (no answer, 429, 5xx) is 503, worth a retry; a missing collection 404;
    any other refusal 502. The same on every engine: the errors are lsr-os's, not a client's."""
    error, status = CLUSTER_ERRORS[case]
    service = SearchService(dead_engine(name), ServeConfig(images=None))
    try:
        mapped = service._cluster_error(error)
    finally:
        service.close()
    assert mapped.status == status and str(error) in str(mapped)
    if isinstance(error.__cause__ or error, NoAnswer):
        assert f"the cluster at {DEAD} cannot be reached" in str(mapped)


def test_unknown_routes_and_methods_answer_json(offline):
    _, api = offline
    assert api.get("/nowhere").json() == {"error": "Not Found"}
    assert api.get("/search").status_code == 405 and "error" in api.get("/search").json()
    assert api.get("/").status_code == 200 and "lsr-os" in api.get("/").text
    assert api.get("/static/app.js").status_code == 200


def test_a_model_needs_a_head_and_a_head_alone_needs_query_weights(tmp_path):
    from lsr_os.models.head import SparseHead
    from lsr_os.static_query import QueryWeightsMissing

    with pytest.raises(ConfigError, match="--model needs --head"):
        ServeConfig(model="demo:x")
    SparseHead(dense_size=8, hidden_size=4).save_pretrained(tmp_path / "head")
    with pytest.raises(QueryWeightsMissing, match=r"the head .*head has no query weights.*lsr-os add-query-weights"):
        ServeConfig(head=tmp_path / "head")
    with pytest.raises(ConfigError, match="not a folder"):
        ServeConfig(images=tmp_path / "missing")


def test_the_listening_socket_gets_tcp_nodelay_on_its_connections():
    """asyncio sets TCP_NODELAY only on IPPROTO_TCP sockets; without it each response's body waited
    for the ACK of its headers (Nagle + delayed ACK)."""
    import socket

    from lsr_os.serve import listen

    async def main():
        accepted = asyncio.get_running_loop().create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport):
                sock = transport.get_extra_info("socket")
                accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        sock = listen("127.0.0.1", 0)
        server = await asyncio.get_running_loop().create_server(Probe, sock=sock)
        reader, writer = await asyncio.open_connection(*sock.getsockname())
        nodelay = await asyncio.wait_for(accepted, 10)
        writer.close()
        server.close()
        return nodelay

    assert asyncio.run(main()) == 1
