"""Connection security without a server: each engine's client configured for https, CA
verification, basic auth, API keys and SigV4 (each backend's `new_client`), the credentials
checked together, and secrets kept out of sight."""

import base64
import logging
from importlib import import_module

import pytest
from click.testing import CliRunner

from lsr_os.cli import main
from lsr_os.config import ClusterConfig
from lsr_os.engines import ENGINES, connect
from lsr_os.errors import ClusterUnreachable, ConfigError, TLSFailure

SECRET = "s3cr3t-Pa55word!"


def new_client(engine: str, config: ClusterConfig, timeout: float = 5.0):
    """The engine's own client as its backend makes it (no request is sent)."""
    return import_module(f"lsr_os.engines.{engine}.base").new_client(config, timeout)


def nodes(engine: str, config: ClusterConfig) -> list[dict]:
    """What each node connection of an engine's client will do: its URL, the certificate check of
    its urllib3 pool (None for plain http) and CA bundle, and the Authorization header it sends."""
    client = new_client(engine, config)
    if engine == "opensearch":  # opensearch-py: a pool of urllib3 connections, each with its headers
        return [{"url": c.host, "cert_reqs": getattr(c.pool, "cert_reqs", None), "ca_certs": getattr(c.pool, "ca_certs", None),
                 "authorization": c.headers.get("authorization")} for c in client.transport.connection_pool.connections]
    # elasticsearch-py: elastic-transport nodes; the client adds its auth header to every request
    return [{"url": f"{n.scheme}://{n.host}:{n.port}", "cert_reqs": getattr(n.pool, "cert_reqs", None),
             "ca_certs": getattr(n.pool, "ca_certs", None), "authorization": client._headers.get("authorization")}
            for n in client.transport.node_pool.all()]


@pytest.mark.parametrize("engine", ENGINES)
def test_https_with_a_ca_verifies_and_sends_basic_auth(engine, tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not parsed until a request is made")
    found = nodes(engine, ClusterConfig(urls=("https://a.example:9200", "https://b.example:9200"), user="admin",
                                        password=SECRET, ca_certs=str(ca)))
    assert sorted(n["url"] for n in found) == ["https://a.example:9200", "https://b.example:9200"]
    basic = "Basic " + base64.b64encode(f"admin:{SECRET}".encode()).decode()
    for node in found:
        assert (node["cert_reqs"], node["ca_certs"], node["authorization"]) == ("CERT_REQUIRED", str(ca), basic)


@pytest.mark.parametrize("engine", ENGINES)
def test_insecure_turns_verification_off_and_plain_http_has_no_tls(engine):
    (insecure,) = nodes(engine, ClusterConfig(urls=("https://a.example:9200",), insecure=True))
    assert insecure["cert_reqs"] == "CERT_NONE"
    (plain,) = nodes(engine, ClusterConfig(urls=("http://a.example:9200",)))
    assert plain["url"] == "http://a.example:9200" and plain["cert_reqs"] is None and plain["authorization"] is None


def test_an_api_key_is_sent_as_is_to_elasticsearch_and_refused_for_opensearch():
    key = base64.b64encode(b"key-id:" + SECRET.encode()).decode()  # the `encoded` value Elasticsearch returns
    (node,) = nodes("elasticsearch", ClusterConfig(urls=("https://a.example:9200",), api_key=key))
    assert node["authorization"] == f"ApiKey {key}"
    with pytest.raises(ConfigError, match="OpenSearch takes no API key") as err:
        new_client("opensearch", ClusterConfig(urls=("https://a.example:9200",), api_key=key))
    assert key not in str(err.value)


def test_the_password_and_the_api_key_are_never_in_repr_or_str():
    cfg = ClusterConfig(user="admin", password=SECRET)
    assert SECRET not in repr(cfg) and SECRET not in str(cfg)
    assert "admin" in repr(cfg)
    keyed = ClusterConfig(api_key=SECRET)
    assert SECRET not in repr(keyed) and SECRET not in str(keyed)


@pytest.mark.parametrize("given, message", [
    ({"user": "admin"}, "give both --user and --password"),
    ({"password": SECRET}, "give both --user and --password"),
    ({"user": "admin", "password": SECRET, "aws_region": "eu-west-1"}, "not --user and --aws-region"),
    ({"user": "admin", "password": SECRET, "api_key": "a2V5"}, "not --user and --api-key"),
    ({"api_key": "a2V5", "aws_region": "eu-west-1"}, "not --api-key and --aws-region"),
])
def test_credentials_that_cannot_go_together_are_refused_before_any_request(given, message):
    config = ClusterConfig(urls=("http://127.0.0.1:9",), **given)
    with pytest.raises(ConfigError, match=message) as err:
        config.check()
    assert SECRET not in str(err.value)
    with pytest.raises(ConfigError, match=message):  # connect checks before it sends anything
        connect(config)


@pytest.mark.parametrize("given", [{}, {"user": "admin", "password": SECRET}, {"api_key": "a2V5"},
                                   {"aws_region": "eu-west-1"}])
def test_one_way_to_authenticate_or_none_passes_the_check(given):
    ClusterConfig(**given).check()


def test_sigv4_signs_with_the_environment_credentials(monkeypatch):
    pytest.importorskip("boto3")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    url = "https://search-demo.eu-west-1.es.amazonaws.com"
    client = new_client("opensearch", ClusterConfig(urls=(url,), aws_region="eu-west-1", aws_service="aoss"))
    auth = client.transport.connection_pool.connections[0].http_auth
    headers = auth("GET", url + "/_cluster/health", None)
    assert headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert "/eu-west-1/aoss/aws4_request" in headers["Authorization"]
    assert "wJalrXUtnFEMI" not in " ".join(headers.values())


def test_sigv4_is_for_amazon_opensearch_service_only():
    with pytest.raises(ConfigError, match="SigV4 signs requests to Amazon OpenSearch Service, not to Elasticsearch"):
        new_client("elasticsearch", ClusterConfig(urls=("https://x.example",), aws_region="eu-west-1"))


def test_sigv4_without_credentials_is_a_clear_error(monkeypatch, tmp_path):
    pytest.importorskip("boto3")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(ConfigError, match="no AWS credentials found"):
        new_client("opensearch", ClusterConfig(urls=("https://x.example",), aws_region="eu-west-1"))


@pytest.mark.parametrize("auth", [{"user": "admin", "password": SECRET}, {"api_key": SECRET}])
def test_failed_connection_keeps_the_secret_out_of_errors_and_logs(auth, caplog):
    caplog.set_level(logging.DEBUG)
    cfg = ClusterConfig(urls=("https://127.0.0.1:1",), timeout=2, max_retries=0, **auth)
    with pytest.raises(ClusterUnreachable) as err:
        connect(cfg)
    assert SECRET not in str(err.value) and SECRET not in caplog.text


def test_cli_prompts_for_a_missing_password_without_echoing_it(monkeypatch):
    for variable in ("OPENSEARCH_PASSWORD", "ELASTICSEARCH_PASSWORD"):
        monkeypatch.delenv(variable, raising=False)
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
    with pytest.raises(TLSFailure, match=f"TLS handshake with {tls_listener} failed .*--ca-certs") as err:
        connect(cfg)
    assert not isinstance(err.value, ClusterUnreachable)
    assert SECRET not in str(err.value) and SECRET not in caplog.text


def test_plain_http_to_an_https_port_says_to_use_https(tls_listener, caplog):
    caplog.set_level(logging.DEBUG)
    plain = tls_listener.replace("https://", "http://")
    cfg = ClusterConfig(urls=(plain,), user="admin", password=SECRET, timeout=5, max_retries=0)
    with pytest.raises(ClusterUnreachable, match=f"^{plain} closed the connection without an answer: a cluster "
                                                 "that serves HTTPS needs an https:// URL$") as err:
        connect(cfg)
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
