"""The web page of `lsr-os serve` in a real browser: Debian's Chromium, headless, driven by
Playwright pointed at the system binary (never a downloaded browser). On the tiny world of
serve_helpers: typing a scene's caption shows that scene's image first, uploading a scene's image
shows its captions, a bad query shows the server's message (and nothing of the query before) and the
page keeps working, the query mode that answered is shown (and can be chosen where the server has
more than one), no empty card shows before the first query, nothing the page asks for is missing
(no 404, no favicon request), the page names the engine that answers, and the API page renders
without the network. Each test runs on both engines.

Without Chromium (or the playwright package) the test is skipped with the reason; under CI=true
that is a failure, since `.ci/run` installs Chromium."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from serve_helpers import CAPTIONS_PER_IMAGE, N_SCENES, ServerThread, load_static_world, tiny_world, weighted_head
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
def tiny(engine, tmp_path_factory):
    with tiny_world(engine, tmp_path_factory, "page") as world:
        yield world


@pytest.fixture(scope="module")
def server(engine, tiny):
    config = ServeConfig(prefix=tiny.prefix, model=str(tiny.model), head=tiny.head, images=tiny.image_root,
                         device="cpu")
    with ServerThread(SearchService(engine, config)) as srv:
        yield srv


@pytest.fixture(scope="module")
def headonly(engine, tiny):
    """A server with the tiny world's head and its query weights, and no model."""
    head = weighted_head(tiny)
    config = ServeConfig(prefix=load_static_world(engine, tiny, head), head=head, images=tiny.image_root)
    with ServerThread(SearchService(engine, config)) as srv:
        yield srv


def open_page(browser, url: str):
    """A page that may load nothing but the server's own URLs, all of which must exist; returns the
    page and a check to run at the end."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    outside: list[str] = []
    missing: list[str] = []

    def only_the_server(route):
        if route.request.url.startswith(url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", only_the_server)
    page = context.new_page()
    page.on("response", lambda r: missing.append(r.url) if r.status == 404 else None)

    def check():
        context.close()
        assert not outside, f"the page asked for other servers: {outside}"
        assert not missing, f"the page asked for what the server does not have: {missing}"
    return page, check


@pytest.fixture
def page(browser, server):
    page, check = open_page(browser, server.url)
    yield page
    check()


def loaded(page, url: str, status: str) -> None:
    """Open the page and wait until the header shows the server's status."""
    page.goto(f"{url}/")
    page.wait_for_function("(text) => document.getElementById('status').textContent.includes(text)", arg=status)


def first_hit_is(page, section: str, attribute: str, value: str) -> None:
    page.wait_for_function(
        "([sel, attr, value]) => { const h = document.querySelector(sel); return h && h.getAttribute(attr) === value; }",
        arg=[f"#{section} .hit", attribute, value], timeout=60_000)


def test_a_typed_query_shows_its_image_first_and_an_upload_shows_its_captions(page, server, tiny, engine, tmp_path):
    searches = []
    page.on("request", lambda r: searches.append(r) if r.url.endswith("/search") else None)
    loaded(page, server.url, f"{tiny.prefix}-images {N_SCENES}")
    assert page.locator("#query").is_hidden() and page.locator("#error").is_hidden()  # nothing asked yet
    # the status line starts with the engine that answers and its version
    assert page.inner_text("#status").startswith(f"{engine.display_name} {engine.version} · {tiny.prefix}-images")

    scene = 3
    page.fill("#q", tiny.captions[scene][0])
    page.press("#q", "Enter")
    first_hit_is(page, "results", "data-id", str(scene))
    first = page.locator("#results .hit").first
    assert first.get_attribute("data-image") == tiny.images[scene]
    thumb = first.locator("img.thumb")
    thumb.wait_for()
    page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=thumb.element_handle())
    assert thumb.evaluate("img => img.naturalWidth") == 96  # the scene's own file, through /media/
    assert thumb.evaluate("img => new URL(img.src).pathname") == f"/media/{tiny.images[scene]}"
    assert page.inner_text("#query-mode") == "expanded"
    assert first.locator(".chip.match").count() >= 1 and page.locator("#chips .chip").count() >= 1
    assert f"hits from {tiny.prefix}-images" in page.inner_text("#summary")
    assert page.locator("#captions .hit").count() == 0
    assert page.inner_text("#engine-name") == engine.display_name  # "weights as sent to <engine>"
    page.wait_for_function("() => [...document.images].every((img) => img.complete)")
    shot = page.screenshot(path=tmp_path / f"page-{engine.name}.png", full_page=True)  # to look at: pytest --basetemp
    assert shot.startswith(b"\x89PNG")

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


def test_a_bad_query_shows_the_server_s_message_alone_and_the_page_keeps_working(page, server, tiny):
    loaded(page, server.url, f"{tiny.prefix}-images {N_SCENES}")
    page.fill("#q", tiny.captions[1][0])
    page.press("#q", "Enter")
    first_hit_is(page, "results", "data-id", "1")
    page.fill("#q", "the of and")
    page.press("#q", "Enter")
    page.wait_for_selector("#error:not([hidden])")
    assert "no content word" in page.inner_text("#error")
    # nothing of the query before stays under the error
    assert page.locator("#results .hit").count() == 0 and page.locator("#chips .chip").count() == 0
    assert page.locator("#query").is_hidden() and page.inner_text("#summary") == ""
    page.fill("#q", tiny.captions[0][0])
    page.click("#search-button")
    first_hit_is(page, "results", "data-id", "0")
    assert page.locator("#error").is_hidden()


def test_the_user_chooses_among_the_server_s_modes_and_sees_which_answered(page, server, tiny):
    loaded(page, server.url, f"{tiny.prefix}-images {N_SCENES}")
    assert page.locator("#mode option").all_inner_texts() == ["auto", "expanded", "own-tokens"]
    page.select_option("#mode", "own-tokens")
    page.fill("#q", tiny.captions[2][0])
    page.press("#q", "Enter")
    page.wait_for_function("() => document.getElementById('query-mode').textContent === 'own-tokens'")
    assert page.locator("#chips .chip.expansion").count() == 0 and page.locator("#chips .chip.own").count() >= 1


def test_a_server_without_a_model_answers_the_page_inference_free(browser, headonly, tiny):
    page, check = open_page(browser, headonly.url)
    loaded(page, headonly.url, "inference-free")
    assert page.locator("#mode-choice").is_hidden()  # one mode: nothing to choose
    page.fill("#q", tiny.captions[4][0])
    page.press("#q", "Enter")
    first_hit_is(page, "results", "data-id", "4")
    assert page.inner_text("#query-mode") == "inference-free"
    assert page.locator("#chips .chip.expansion").count() == 0
    page.set_input_files("#image-input", str(tiny.image_root / tiny.images[0]))
    page.wait_for_selector("#error:not([hidden])")
    assert "this server has none" in page.inner_text("#error")
    check()


def test_the_api_page_renders_offline(page, server):
    page.goto(f"{server.url}/docs")
    paths = page.locator(".opblock-summary-path")
    paths.first.wait_for(timeout=60_000)
    assert {"/search", "/encode", "/healthz", "/media/{path}"} <= {p.strip() for p in paths.all_inner_texts()}
