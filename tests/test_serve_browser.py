"""The web page of `lsr-os serve` in a real browser: Debian's Chromium, headless, driven by
Playwright pointed at the system binary (never a downloaded browser). On the tiny world of
serve_helpers: typing a scene's caption shows that scene's image first, uploading a scene's image
shows its captions, a bad query shows the server's message and the page keeps working, and the
API page renders without the network.

Without Chromium (or the playwright package) the test is skipped with the reason; under CI=true
that is a failure, since `.ci/run` installs Chromium."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from serve_helpers import CAPTIONS_PER_IMAGE, N_SCENES, ServerThread, tiny_world
from lsr_os.serve import SearchService, ServeConfig

pytestmark = pytest.mark.integration

CHROMIUM = os.environ.get("LSR_OS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]


def _need(reason: str | None) -> None:
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI needs the browser test: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    _need(None if Path(CHROMIUM).exists() else f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need("the playwright package is missing (pip install -e '.[test]')")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def tiny(os_client, tmp_path_factory):
    with tiny_world(os_client, tmp_path_factory, "page") as world:
        yield world


@pytest.fixture(scope="module")
def server(os_client, cluster_config, tiny):
    config = ServeConfig(prefix=tiny.prefix, model=str(tiny.model), head=tiny.head, images=tiny.image_root,
                         device="cpu")
    with ServerThread(SearchService(os_client, config, cluster_config.urls)) as srv:
        yield srv


@pytest.fixture
def page(browser, server):
    """A page that may load nothing but the server's own URLs."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    outside: list[str] = []

    def only_the_server(route):
        if route.request.url.startswith(server.url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", only_the_server)
    yield context.new_page()
    context.close()
    assert not outside, f"the page asked for other servers: {outside}"


def first_hit_is(page, section: str, attribute: str, value: str) -> None:
    page.wait_for_function(
        "([sel, attr, value]) => { const h = document.querySelector(sel); return h && h.getAttribute(attr) === value; }",
        arg=[f"#{section} .hit", attribute, value], timeout=60_000)


def test_a_typed_query_shows_its_image_first_and_an_upload_shows_its_captions(page, server, tiny):
    searches = []
    page.on("request", lambda r: searches.append(r) if r.url.endswith("/search") else None)
    page.goto(f"{server.url}/")
    page.wait_for_function("(text) => document.getElementById('status').textContent.includes(text)",
                           arg=f"{tiny.prefix}-images {N_SCENES}")

    scene = 3
    page.fill("#q", tiny.captions[scene][0])
    page.press("#q", "Enter")
    first_hit_is(page, "results", "data-id", str(scene))
    first = page.locator("#results .hit").first
    assert first.get_attribute("data-image") == tiny.images[scene]
    thumb = first.locator("img.thumb")
    thumb.wait_for()
    page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=thumb.element_handle())
    assert thumb.evaluate("img => img.naturalWidth") == 96  # the scene's own file, through /images/
    assert first.locator(".chip.match").count() >= 1 and page.locator("#chips .chip").count() >= 1
    assert f"hits from {tiny.prefix}-images" in page.inner_text("#summary")
    assert page.locator("#captions .hit").count() == 0

    scene = 5
    page.set_input_files("#image-input", str(tiny.image_root / tiny.images[scene]))
    first_hit_is(page, "captions", "data-image", tiny.images[scene])
    rows = page.locator("#captions .hit")
    top = [rows.nth(i) for i in range(CAPTIONS_PER_IMAGE)]
    assert {row.locator(".caption-text").inner_text() for row in top} == set(tiny.captions[scene])
    assert all(row.get_attribute("data-image") == tiny.images[scene] for row in top)
    assert page.locator("#results .hit").count() == 0 and page.locator("#query-image").is_visible()
    assert page.inner_text("#query-label") == "image query"

    # Both searches carry the tab's session id (hits tied on score then keep their order).
    session = searches[0].post_data_json["session"]
    assert len(searches) == 2 and len(session) == 24 and int(session, 16) >= 0
    assert f'name="session"\r\n\r\n{session}'.encode() in searches[1].post_data_buffer


def test_a_bad_query_shows_the_server_s_message_and_the_page_keeps_working(page, server, tiny):
    page.goto(f"{server.url}/")
    page.fill("#q", "the of and")
    page.press("#q", "Enter")
    page.wait_for_selector("#error:not([hidden])")
    assert "no content word" in page.inner_text("#error")
    page.fill("#q", tiny.captions[0][0])
    page.click("#search-button")
    first_hit_is(page, "results", "data-id", "0")
    assert page.locator("#error").is_hidden()


def test_the_api_page_renders_offline(page, server):
    page.goto(f"{server.url}/docs")
    paths = page.locator(".opblock-summary-path")
    paths.first.wait_for(timeout=60_000)
    assert {"/search", "/encode", "/healthz", "/images/{path}"} <= {p.strip() for p in paths.all_inner_texts()}
