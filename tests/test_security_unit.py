"""Connection security without a server: https, CA verification, basic auth, SigV4, secrets kept out of sight."""

import logging

import pytest
from click.testing import CliRunner

from lsr_os.cli import main
from lsr_os.config import ClusterConfig, connect
from lsr_os.errors import ClusterError, ClusterUnreachable, ConfigError

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


@pytest.fixture
def tls_listener(tmp_path):
    """A bare TLS endpoint on loopback with a self-signed certificate (no HTTP behind it)."""
    import shutil
    import socket
    import ssl
    import subprocess
    import threading

    if not shutil.which("openssl"):
        pytest.skip("openssl is needed to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(10)

    def serve():
        try:
            conn, _ = server.accept()
            with conn:
                try:
                    ctx.wrap_socket(conn, server_side=True).close()
                except (ssl.SSLError, OSError):
                    pass  # the client refused our certificate: what the test expects
        except OSError:
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.getsockname()[1]}"
    server.close()
    thread.join(timeout=5)


def test_an_unverified_certificate_is_one_clear_error_that_suggests_the_ca(tls_listener, caplog):
    caplog.set_level(logging.DEBUG)
    cfg = ClusterConfig(urls=(tls_listener,), user="admin", password=SECRET, timeout=5, max_retries=0)
    with pytest.raises(ClusterError, match=f"TLS handshake with {tls_listener} failed .*--ca-certs") as err:
        connect(cfg)
    assert not isinstance(err.value, ClusterUnreachable)
    assert SECRET not in str(err.value) and SECRET not in caplog.text


def test_secure_compose_takes_the_admin_password_only_from_the_environment():
    from pathlib import Path

    yaml = pytest.importorskip("yaml")
    root = Path(__file__).resolve().parent.parent
    text = (root / "docker-compose.secure.yml").read_text()
    svc = yaml.safe_load(text)["services"]["opensearch"]
    env = svc["environment"]
    assert env["OPENSEARCH_INITIAL_ADMIN_PASSWORD"].startswith("${OPENSEARCH_INITIAL_ADMIN_PASSWORD:?")
    assert "DISABLE_SECURITY_PLUGIN" not in env and "DISABLE_INSTALL_DEMO_CONFIG" not in env
    assert svc["image"].split(":", 1)[1].startswith("${OPENSEARCH_VERSION")
    assert svc["ports"] == ["127.0.0.1:9200:9200"]
    assert "https://localhost:9200" in " ".join(svc["healthcheck"]["test"])
    assert env["path.repo"] == "/usr/share/opensearch/snapshots"
    assert "OPENSEARCH_INITIAL_ADMIN_PASSWORD" not in (root / ".env").read_text()


def test_credentials_in_a_url_are_refused_without_repeating_them():
    from lsr_os.config import split_urls

    with pytest.raises(ConfigError, match=r"https://\*\*\*@db.example:9200 carries credentials") as err:
        split_urls(f"http://a.example:9200,https://admin:{SECRET}@db.example:9200")
    assert SECRET not in str(err.value) and "admin" not in str(err.value)
    assert split_urls("https://db.example:9200/path@x") == ("https://db.example:9200/path@x",)
