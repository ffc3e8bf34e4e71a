"""`lsr-os node start/status/stop` for real: a second node on its own port, started and stopped."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from lsr_os.cli import main
from lsr_os import node

pytestmark = pytest.mark.integration
PORT = 9520


def test_start_is_idempotent_and_stop_leaves_no_process(tmp_path):
    runner = CliRunner()
    try:
        first = runner.invoke(main, ["node", "start", "--port", str(PORT), "--heap", "512m", "--data", str(tmp_path / "data")])
        assert first.exit_code == 0, first.output
        assert "started at http://127.0.0.1:9520" in first.output
        pid = node.status(PORT)["nodes"][0]["pid"]
        assert (tmp_path / "data" / "nodes").is_dir()  # the node really writes where --data says

        second = runner.invoke(main, ["node", "start", "--port", str(PORT)])
        assert second.exit_code == 0 and "already running" in second.output and str(pid) in second.output

        status = runner.invoke(main, ["node", "status", "--port", str(PORT), "--json"])
        facts = json.loads(status.output)
        assert facts["running"] and facts["version"] == node.DEFAULT_VERSION and facts["health"] in ("green", "yellow")
    finally:
        stopped = runner.invoke(main, ["node", "stop", "--port", str(PORT)])
    assert stopped.exit_code == 0 and str(pid) in stopped.output
    assert not Path(f"/proc/{pid}").exists() or not node._alive(pid)
    after = runner.invoke(main, ["node", "status", "--port", str(PORT)])
    assert after.exit_code == 1 and "no node running" in after.output
    assert "no node was running" in runner.invoke(main, ["node", "stop", "--port", str(PORT)]).output
