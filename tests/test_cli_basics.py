"""The CLI's shell: help, version, logging, one-line errors, connection options."""

import json
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from lsr_os.cli import main
from lsr_os.config import ClusterConfig, split_urls
from lsr_os.engines import connect
from lsr_os.errors import ConfigError, TLSFailure


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
        ClusterConfig(user="admin").check()


CONNECTION_VARIABLES = [f"{engine}_{name}" for engine in ("OPENSEARCH", "ELASTICSEARCH")
                        for name in ("URL", "USER", "PASSWORD", "CA_CERTS", "API_KEY", "AWS_REGION")]


class Stop(Exception):
    """Raised where the command would connect: the configuration it built is recorded."""


def configured(monkeypatch, *args, **env) -> ClusterConfig:
    """The ClusterConfig `lsr-os info ARGS` connects with, under exactly the connection variables `env`."""
    seen = []

    def record(config):
        seen.append(config)
        raise Stop

    monkeypatch.setattr("lsr_os.engines.connect", record)
    result = CliRunner().invoke(main, ["info", *args], env={**dict.fromkeys(CONNECTION_VARIABLES), **env})
    assert isinstance(result.exception, Stop), result.output
    return seen[0]


def test_connection_options_read_the_opensearch_variables_then_the_elasticsearch_ones(monkeypatch, tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    assert configured(monkeypatch).urls == ("http://localhost:9200",)
    es = configured(monkeypatch, ELASTICSEARCH_URL="http://es:9400,http://es2:9400", ELASTICSEARCH_USER="elastic",
                    ELASTICSEARCH_PASSWORD="pw", ELASTICSEARCH_CA_CERTS=str(ca))
    assert (es.urls, es.user, es.password, es.ca_certs) == (("http://es:9400", "http://es2:9400"), "elastic", "pw", str(ca))
    both = configured(monkeypatch, OPENSEARCH_URL="http://os:9200", ELASTICSEARCH_URL="http://es:9400",
                      OPENSEARCH_USER="admin", OPENSEARCH_PASSWORD="a", ELASTICSEARCH_USER="elastic",
                      ELASTICSEARCH_PASSWORD="e")
    assert (both.urls, both.user, both.password) == (("http://os:9200",), "admin", "a")  # the OpenSearch names first
    given = configured(monkeypatch, "--url", "http://given:9200", ELASTICSEARCH_URL="http://es:9400")
    assert given.urls == ("http://given:9200",)  # an option beats every variable
    keyed = configured(monkeypatch, ELASTICSEARCH_API_KEY="a2V5")
    assert keyed.api_key == "a2V5" and keyed.user is None
    assert configured(monkeypatch, "--api-key", "b3RoZXI=", ELASTICSEARCH_API_KEY="a2V5").api_key == "b3RoZXI="
    assert configured(monkeypatch, OPENSEARCH_AWS_REGION="eu-west-1").aws_region == "eu-west-1"


def test_the_help_names_both_engines_variables():
    text = CliRunner().invoke(main, ["info", "--help"], terminal_width=200).output
    for variable in ("OPENSEARCH_URL", "ELASTICSEARCH_URL", "OPENSEARCH_USER", "ELASTICSEARCH_USER",
                     "ELASTICSEARCH_PASSWORD", "ELASTICSEARCH_API_KEY", "ELASTICSEARCH_CA_CERTS"):
        assert variable in text, variable
    assert "--api-key" in text


def test_two_ways_to_authenticate_fail_in_one_line_before_connecting(monkeypatch):
    monkeypatch.setattr("lsr_os.engines.connect", lambda config: pytest.fail("connected"))
    result = CliRunner().invoke(main, ["info", "--user", "elastic", "--password", "pw", "--api-key", "a2V5"],
                                env=dict.fromkeys(CONNECTION_VARIABLES))
    assert result.exit_code == 2
    assert result.output.strip() == "Error: give one way to authenticate, not --user and --api-key"


@pytest.mark.integration
def test_info_says_the_engine_and_its_version(engine, cluster_config):
    url = ",".join(cluster_config.urls)
    result = CliRunner().invoke(main, ["info", "--url", url])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"{engine.display_name} {engine.version} at {url}: cluster ")
    facts = json.loads(CliRunner().invoke(main, ["info", "--url", url, "--json"]).output)
    assert (facts["engine"], facts["version"]) == (engine.display_name, engine.version)
    assert facts["status"] in ("green", "yellow") and facts["number_of_nodes"] >= 1


@pytest.mark.integration
def test_connect_tells_the_engine_and_its_version_from_the_cluster(engine, cluster_config):
    """The engine and version come from the cluster's answer: checked here against what each
    engine's own client reads from the node."""
    found = connect(ClusterConfig(urls=cluster_config.urls, timeout=10))
    assert (found.name, found.version, type(found)) == (engine.name, engine.version, type(engine))
    versions = {n["version"] for n in found.client.nodes.info(filter_path="nodes.*.version")["nodes"].values()}
    assert versions == {found.version}
    # a node that does not answer first in the list does not stop the others from being asked
    first_dead = connect(ClusterConfig(urls=("http://127.0.0.1:9", *cluster_config.urls), timeout=10))
    assert (first_dead.name, first_dead.version) == (engine.name, engine.version)


@pytest.mark.integration
def test_the_cli_finds_either_engine_from_its_own_url_variable(engine, cluster_config):
    own = f"{engine.name.upper()}_URL"  # ELASTICSEARCH_URL for Elasticsearch
    result = CliRunner().invoke(main, ["info"], env={**dict.fromkeys(CONNECTION_VARIABLES),
                                                     own: ",".join(cluster_config.urls)})
    assert result.exit_code == 0 and result.output.startswith(f"{engine.display_name} {engine.version} "), result.output


@pytest.mark.integration
def test_https_to_a_plain_http_node_is_one_line_that_says_so(engine, cluster_config):
    url = cluster_config.urls[0].replace("http://", "https://")
    if url == cluster_config.urls[0]:
        pytest.skip("the test node serves https already")
    with pytest.raises(TLSFailure, match=f"^{url} speaks plain HTTP, not TLS: use an http:// URL$"):
        connect(ClusterConfig(urls=(url,), timeout=10))
    result = CliRunner().invoke(main, ["info", "--url", url])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and lines == [f"Error: {url} speaks plain HTTP, not TLS: use an http:// URL"]


def test_a_closed_port_is_exit_3_in_one_line_for_every_command_that_connects():
    for command in (["info"], ["collections", "list"], ["search", "--vector-json", '{"dog": 1}'],
                    ["snapshot", "list", "--repo", "r"]):
        result = CliRunner().invoke(main, [*command, "--url", "http://127.0.0.1:9", "--timeout", "2"],
                                    env=dict.fromkeys(CONNECTION_VARIABLES))
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 3 and len(lines) == 1, (command, result.output)
        assert lines[0].startswith("Error: no cluster answered at http://127.0.0.1:9") and "lsr-os node start" in lines[0]


@pytest.fixture
def answering(request):
    """A local HTTP server (not a search engine) giving every GET the (status, headers, body) the
    test parametrises it with; yields its URL."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    status, headers, body = request.param

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            self.send_response(status)
            for name, value in {"Content-Length": str(len(body)), **headers}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join(timeout=5)


def _one_line_error(url: str) -> str:
    result = CliRunner().invoke(main, ["info", "--url", url, "--timeout", "5"], env=dict.fromkeys(CONNECTION_VARIABLES))
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    return lines[0]


@pytest.mark.parametrize("answering", [(404, {"Content-Type": "text/html"},
                                        b"<html>\n<body>\n<h1>Not Found</h1>\n</body>\n</html>\n")], indirect=True)
def test_a_web_server_that_is_neither_engine_is_one_line_naming_what_answered(answering):
    line = _one_line_error(answering)
    assert line.startswith(f"Error: {answering} is neither OpenSearch nor Elasticsearch: GET /_nodes/_local")
    assert "answered HTTP 404 from BaseHTTP/" in line and "<h1>Not Found</h1>" in line


@pytest.mark.parametrize("answering", [(200, {"Content-Type": "application/json"}, b'{"hello": "world"}')],
                         indirect=True)
def test_a_json_answer_that_is_no_node_list_is_neither_engine(answering):
    line = _one_line_error(answering)
    assert "is neither OpenSearch nor Elasticsearch" in line and "answered HTTP 200" in line and "hello" in line


@pytest.mark.parametrize("answering", [(503, {"X-Elastic-Product": "Elasticsearch", "Content-Type": "application/json"},
                                        b'{"error": {"type": "master_not_discovered_exception", "reason": "no master"}, '
                                        b'"status": 503}')], indirect=True)
def test_an_engine_s_own_error_while_connecting_names_the_engine_and_the_error(answering):
    line = _one_line_error(answering)
    assert line == f"Error: Elasticsearch at {answering} answered HTTP 503: master_not_discovered_exception: no master"


def _commands(group: click.Group, path: tuple[str, ...] = ()):
    for name, command in group.commands.items():
        yield path + (name,), command
        if isinstance(command, click.Group):
            yield from _commands(command, path + (name,))


def test_every_option_of_every_command_has_help_text():
    missing = [f"lsr-os {' '.join(path)} {'/'.join(p.opts)}" for path, command in _commands(main)
               for p in command.params if isinstance(p, click.Option) and not p.hidden and not p.help]
    assert not missing, "options without help: " + ", ".join(missing)
