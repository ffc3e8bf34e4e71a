"""The CLI's shell: help, version, logging, one-line errors, connection options."""

import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from lsr_os.cli import main
from lsr_os.config import ClusterConfig, split_urls
from lsr_os.errors import ConfigError


def test_help_lists_every_command_with_a_one_line_help():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    listed = {line.split()[0]: line for line in result.output.split("Commands:")[1].splitlines() if line.strip()}
    assert set(main.commands) == set(listed)
    for name, line in listed.items():
        assert len(line.split()) > 1, f"{name} has no help line"


def test_version_and_python_m_entry_point():
    from lsr_os import __version__

    assert __version__ in CliRunner().invoke(main, ["--version"]).output
    out = subprocess.run([sys.executable, "-m", "lsr_os", "--version"], capture_output=True, text=True, check=True)
    assert __version__ in out.stdout


def test_unreachable_cluster_is_one_line_naming_the_url_and_hint():
    result = CliRunner().invoke(main, ["info", "--url", "http://127.0.0.1:9", "--timeout", "2"])
    assert result.exit_code == 3
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1
    assert "http://127.0.0.1:9" in lines[0] and "lsr-os node start" in lines[0]
    assert "Traceback" not in result.output


def test_debug_flag_shows_the_exception_instead():
    result = CliRunner().invoke(main, ["--debug", "info", "--url", "http://127.0.0.1:9", "--timeout", "2"])
    assert result.exit_code != 0
    assert result.exception is not None and type(result.exception).__name__ == "ClusterUnreachable"


def test_urls_from_env_repeat_and_commas(monkeypatch):
    assert split_urls(None) == ("http://localhost:9200",)
    assert split_urls(["http://a:9200,http://b:9200", "https://c:9200/"]) == (
        "http://a:9200", "http://b:9200", "https://c:9200")
    with pytest.raises(ConfigError, match="needs a scheme"):
        split_urls("a:9200")


def test_password_is_never_in_repr_and_needs_a_user():
    cfg = ClusterConfig(user="admin", password="s3cret-Pass")
    assert "s3cret-Pass" not in repr(cfg)
    with pytest.raises(ConfigError, match="both --user and --password"):
        ClusterConfig(user="admin").client()


@pytest.mark.integration
def test_info_against_the_real_node(os_client, cluster_config):
    result = CliRunner().invoke(main, ["info", "--url", ",".join(cluster_config.urls)])
    assert result.exit_code == 0, result.output
    assert os_client.info()["version"]["number"] in result.output


def _commands(group: click.Group, path: tuple[str, ...] = ()):
    for name, command in group.commands.items():
        yield path + (name,), command
        if isinstance(command, click.Group):
            yield from _commands(command, path + (name,))


def test_every_option_of_every_command_has_help_text():
    missing = [f"lsr-os {' '.join(path)} {'/'.join(p.opts)}" for path, command in _commands(main)
               for p in command.params if isinstance(p, click.Option) and not p.hidden and not p.help]
    assert not missing, "options without help: " + ", ".join(missing)
