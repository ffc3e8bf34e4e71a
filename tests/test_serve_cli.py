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
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from lsr_os.cli import main
from serve_helpers import build_world, free_port

NOWHERE = "http://127.0.0.1:9"  # nothing answers there


def one_line_error(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_a_model_without_a_head_is_refused():
    result = CliRunner().invoke(main, ["serve", "--url", NOWHERE, "--model", "demo:x", "--port", "0"])
    assert result.exit_code == 2 and "give both --model and --head" in one_line_error(result)


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


@pytest.mark.integration
def test_serve_demo_needs_no_other_flag_and_stops_on_sigterm(os_client, cluster_config, tmp_path):
    prefix = f"test-cli-{uuid.uuid4().hex[:8]}"
    try:
        tiny = build_world(tmp_path, os_client, prefix)
        demo = tmp_path / "demo-out"
        demo.mkdir()
        (demo / "search.json").write_text(json.dumps({"model": str(tiny.model), "head": str(tiny.head),
                                                      "prefix": prefix, "images": str(tiny.image_root)}))
        port = free_port()
        env = {**os.environ, "OPENSEARCH_URL": ",".join(cluster_config.urls),
               "PYTHONPATH": str(Path(__file__).parent.parent)}
        proc = subprocess.Popen([sys.executable, "-m", "lsr_os", "serve", "--demo", str(demo), "--port", str(port),
                                 "--device", "cpu"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            while True:
                assert proc.poll() is None, proc.communicate()[1]
                try:
                    health = httpx.get(f"{url}/healthz", timeout=5)
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "the server did not come up"
                    time.sleep(0.2)
            assert health.status_code == 200 and health.json()["collections"]["images"]["alias"] == f"{prefix}-images"
            hit = httpx.post(f"{url}/search", json={"text": tiny.captions[4][0], "k": 1}, timeout=60).json()["hits"][0]
            assert hit["id"] == "4"
            assert httpx.get(url + hit["image_url"]).content == (tiny.image_root / tiny.images[4]).read_bytes()
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
        assert proc.returncode in (0, -signal.SIGTERM), err  # uvicorn re-raises the signal after shutting down
        assert f"serving {prefix}-images and {prefix}-captions at http://127.0.0.1:{port}/" in err
    finally:
        os_client.indices.delete(index=f"{prefix}-*", ignore_unavailable=True, expand_wildcards="all")
