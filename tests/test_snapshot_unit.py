"""Snapshot names and commands, without a server."""

import pytest
from click.testing import CliRunner

from lsr_os.cli import main
from lsr_os import snapshot
from lsr_os.errors import ConfigError


@pytest.mark.parametrize("name", ["nightly-1", "lsr-20260101-120000", "a.b+c_d"])
def test_snapshot_names_opensearch_accepts(name):
    assert snapshot.check_name(name) == name


@pytest.mark.parametrize("name", ["", "Upper", "-lead", "_lead", "has space", "a/b", "a,b", "a*"])
def test_snapshot_names_opensearch_refuses_fail_before_any_request(name):
    with pytest.raises(ConfigError, match="must be lowercase"):
        snapshot.check_name(name)


def test_default_snapshot_names_are_valid_and_sortable():
    name = snapshot.default_snapshot_name()
    assert snapshot.check_name(name) and name.startswith("lsr-2")


def test_an_invalid_snapshot_name_fails_before_connecting():
    result = CliRunner().invoke(main, ["snapshot", "create", "x", "--name", "Bad Name", "--url", "http://127.0.0.1:1"])
    assert result.exit_code == 2 and "snapshot name 'Bad Name' must be lowercase" in result.output
