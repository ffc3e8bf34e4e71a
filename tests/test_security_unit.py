"""Connection security without a server: https, CA verification, basic auth, SigV4, secrets kept out of sight."""

import logging

import pytest
from click.testing import CliRunner

from cli import main
from lsr_os.config import ClusterConfig, connect
from lsr_os.errors import ClusterUnreachable, ConfigError

SECRET = "s3cr3t-Pa55word!"


def connection(client):
    """The first urllib3 connection of a client's pool (where the TLS and auth settings land)."""
    return client.transport.connection_pool.connections[0]


def test_https_with_a_ca_verifies_and_sends_basic_auth(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not parsed until a request is made")
    client = ClusterConfig(urls=("https://a.example:9200", "https://b.example:9200"), user="admin",
                           password=SECRET, ca_certs=str(ca)).client()
    conns = client.transport.connection_pool.connections
    assert sorted(c.host for c in conns) == ["https://a.example:9200", "https://b.example:9200"]
    pool = conns[0].pool
    assert pool.cert_reqs == "CERT_REQUIRED" and pool.ca_certs == str(ca)
    assert conns[0].headers["authorization"].startswith("Basic ")


def test_insecure_turns_verification_off_and_plain_http_has_no_tls():
    insecure = connection(ClusterConfig(urls=("https://a.example:9200",), insecure=True).client())
    assert insecure.pool.cert_reqs == "CERT_NONE"
    plain = connection(ClusterConfig(urls=("http://a.example:9200",)).client())
    assert plain.host.startswith("http://") and "authorization" not in plain.headers


def test_the_password_is_never_in_repr_or_str():
    cfg = ClusterConfig(user="admin", password=SECRET)
    assert SECRET not in repr(cfg) and SECRET not in str(cfg)
    assert "admin" in repr(cfg)


def test_user_without_password_and_auth_mixes_are_refused():
    with pytest.raises(ConfigError, match="give both --user and --password"):
        ClusterConfig(user="admin").client()
    with pytest.raises(ConfigError, match="not both"):
        ClusterConfig(user="admin", password=SECRET, aws_region="eu-west-1").client()


def test_sigv4_signs_with_the_environment_credentials(monkeypatch):
    pytest.importorskip("boto3")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    url = "https://search-demo.eu-west-1.es.amazonaws.com"
    client = ClusterConfig(urls=(url,), aws_region="eu-west-1", aws_service="aoss").client()
    auth = connection(client).http_auth
    headers = auth("GET", url + "/_cluster/health", None)
    assert headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert "/eu-west-1/aoss/aws4_request" in headers["Authorization"]
    assert "wJalrXUtnFEMI" not in " ".join(headers.values())


def test_sigv4_without_credentials_is_a_clear_error(monkeypatch, tmp_path):
    pytest.importorskip("boto3")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(ConfigError, match="no AWS credentials found"):
        ClusterConfig(urls=("https://x.example",), aws_region="eu-west-1").client()


def test_failed_connection_keeps_the_password_out_of_errors_and_logs(caplog):
    caplog.set_level(logging.DEBUG)
    cfg = ClusterConfig(urls=("https://127.0.0.1:1",), user="admin", password=SECRET, timeout=2, max_retries=0)
    with pytest.raises(ClusterUnreachable) as err:
        connect(cfg)
    assert SECRET not in str(err.value) and SECRET not in caplog.text


def test_cli_prompts_for_a_missing_password_without_echoing_it(monkeypatch):
    monkeypatch.delenv("OPENSEARCH_PASSWORD", raising=False)
    result = CliRunner().invoke(main, ["info", "--url", "http://127.0.0.1:1", "--user", "admin", "--timeout", "1"],
                                input=SECRET + "\n")
    assert "Password for admin" in result.output
    assert SECRET not in result.output
    assert result.exit_code == 3  # it went on to connect (nothing listens on port 1)
