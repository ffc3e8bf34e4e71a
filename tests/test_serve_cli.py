"""`lsr-os serve` as a command: every mistake a user can fix fails before the server starts, with
one line; `serve --demo DIR` needs no other flag and serves until SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from click.testing import CliRunner

from conftest import ENGINE_URLS
from lsr_os.cli import main
from serve_helpers import build_world, free_port, load_static_world, weighted_head

NOWHERE = "http://127.0.0.1:9"  # nothing answers there


def one_line_error(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_a_model_without_a_head_is_refused():
    result = CliRunner().invoke(main, ["serve", "--url", NOWHERE, "--model", "demo:x", "--port", "0"])
    assert result.exit_code == 2 and "--model needs --head" in one_line_error(result)


def test_a_taken_port_fails_before_the_cluster_is_asked():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = CliRunner().invoke(main, ["serve", "--url", NOWHERE, "--port", str(port)])
    assert result.exit_code == 2 and f"cannot listen on 127.0.0.1:{port}" in one_line_error(result)


def test_an_unreachable_cluster_is_exit_3():
    result = CliRunner().invoke(main, ["serve", "--url", NOWHERE, "--timeout", "2", "--port", "0"])
    assert result.exit_code == 3 and NOWHERE in one_line_error(result)


def test_a_demo_folder_without_search_settings_names_the_command_to_run(tmp_path):
    result = CliRunner().invoke(main, ["serve", "--url", NOWHERE, "--demo", str(tmp_path), "--port", "0"])
    assert result.exit_code == 1 and "lsr-os demo --out" in one_line_error(result)


@pytest.fixture(scope="module")
def world(engine, tmp_path_factory):
    prefix = f"test-cli-{uuid.uuid4().hex[:8]}"
    try:
        yield build_world(tmp_path_factory.mktemp("world"), engine, prefix)
    finally:
        engine.delete_indices(f"{prefix}-*", missing_ok=True)


@contextmanager
def serving(engine, *args: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """`lsr-os serve ARGS` in a subprocess until it answers /healthz; SIGTERM at the end, which must
    stop it cleanly. Yields its URL and the process. The node's URL is in the engine's own
    environment variable (OPENSEARCH_URL or ELASTICSEARCH_URL), the other one unset."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in {var for var, _ in ENGINE_URLS.values()}}
    env.update({ENGINE_URLS[engine.name][0]: ",".join(engine.config.urls), "PYTHONPATH": str(Path(__file__).parent.parent)})
    proc = subprocess.Popen([sys.executable, "-m", "lsr_os", "serve", *args, "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                httpx.get(f"{url}/healthz", timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.2)
        yield url, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        _, proc.stderr_text = proc.communicate(timeout=30)
    assert proc.returncode in (0, -signal.SIGTERM), proc.stderr_text  # uvicorn re-raises the signal after shutting down


@pytest.mark.integration
def test_serve_demo_needs_no_other_flag_and_stops_on_sigterm(engine, world, tmp_path):
    demo = tmp_path / "demo-out"
    demo.mkdir()
    (demo / "search.json").write_text(json.dumps({"model": str(world.model), "head": str(world.head),
                                                  "prefix": world.prefix, "images": str(world.image_root)}))
    with serving(engine, "--demo", str(demo), "--device", "cpu") as (url, proc):
        health = httpx.get(f"{url}/healthz", timeout=5)
        assert health.status_code == 200 and health.json()["collections"]["images"]["alias"] == f"{world.prefix}-images"
        assert (health.json()["cluster"]["engine"], health.json()["cluster"]["version"]) == (engine.display_name,
                                                                                          engine.version)
        hit = httpx.post(f"{url}/search", json={"text": world.captions[4][0], "k": 1}, timeout=60).json()["hits"][0]
        assert hit["id"] == "4"
        assert httpx.get(url + hit["image_url"]).content == (world.image_root / world.images[4]).read_bytes()
    assert f"serving {world.prefix}-images and {world.prefix}-captions at {url}/" in proc.stderr_text
    assert f"{engine.display_name} {engine.version}; text queries expanded, own-tokens; model on cpu" in proc.stderr_text


@pytest.mark.integration
def test_serve_with_a_head_alone_answers_text_inference_free_without_torch(engine, world):
    """A CPU-only machine serves text -> image search: no model, and torch is never loaded."""
    head = weighted_head(world)
    prefix = load_static_world(engine, world, head)
    with serving(engine, "--head", str(head), "--prefix", prefix, "--images", str(world.image_root)) as (url, proc):
        body = httpx.post(f"{url}/search", json={"text": world.captions[2][0], "k": 2}, timeout=60).json()
        assert body["mode"] == "inference-free" and body["hits"][0]["id"] == "2"
        loaded = Path(f"/proc/{proc.pid}/maps").read_text()
        assert "libtorch" not in loaded and "/torch/" not in loaded
    assert "text queries inference-free; no model" in proc.stderr_text
