"""Connection security without a server, for both engines' clients: https, CA verification, basic
auth, Elasticsearch API keys, SigV4 (OpenSearch only), secrets kept out of sight, and the one-line
messages a refusal becomes. tests/test_security_integration.py does the same against a secured node."""

import logging

import pytest
from click.testing import CliRunner

from lsr_os.cli import main
from lsr_os.config import ClusterConfig
from lsr_os.engines import connect
from lsr_os.engines.base.base import Call, credentials, not_accepted
from lsr_os.engines.elasticsearch.base import new_client as es_client
from lsr_os.engines.opensearch.base import new_client as os_client
from lsr_os.errors import ClusterError, ClusterUnreachable, ConfigError

SECRET = "s3cr3t-Pa55word!"
API_KEY = "bHNyLW9zLXRlc3QtaWQ6bm90LWEtcmVhbC1rZXk="  # base64 of "lsr-os-test-id:not-a-real-key"


def connection(client):
    """The first urllib3 connection of an opensearch-py client's pool (where TLS and auth land)."""
    return client.transport.connection_pool.connections[0]


def es_nodes(client):
    """The Elasticsearch client's nodes, in URL order (their NodeConfig holds the TLS settings)."""
    return sorted(client.transport.node_pool.all(), key=lambda n: n.base_url)


def test_opensearch_https_with_a_ca_verifies_and_sends_basic_auth(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not parsed until a request is made")
    client = os_client(ClusterConfig(urls=("https://a.example:9200", "https://b.example:9200"), user="admin",
                                     password=SECRET, ca_certs=str(ca)), 5)
    conns = client.transport.connection_pool.connections
    assert sorted(c.host for c in conns) == ["https://a.example:9200", "https://b.example:9200"]
    pool = conns[0].pool
    assert pool.cert_reqs == "CERT_REQUIRED" and pool.ca_certs == str(ca)
    assert conns[0].headers["authorization"].startswith("Basic ")


def test_opensearch_insecure_turns_verification_off_and_plain_http_has_no_tls():
    insecure = connection(os_client(ClusterConfig(urls=("https://a.example:9200",), insecure=True), 5))
    assert insecure.pool.cert_reqs == "CERT_NONE"
    plain = connection(os_client(ClusterConfig(urls=("http://a.example:9200",)), 5))
    assert plain.host.startswith("http://") and "authorization" not in plain.headers


def test_elasticsearch_https_with_a_ca_verifies_every_node_and_sends_basic_auth(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not parsed until a request is made")
    client = es_client(ClusterConfig(urls=("https://a.example:9200", "https://b.example:9200"), user="admin",
                                     password=SECRET, ca_certs=str(ca)), 5)
    nodes = es_nodes(client)
    assert [n.base_url for n in nodes] == ["https://a.example:9200", "https://b.example:9200"]
    assert all(n.config.verify_certs and n.config.ca_certs == str(ca) for n in nodes)
    assert nodes[0].pool.cert_reqs == "CERT_REQUIRED"
    assert client._headers["authorization"].startswith("Basic ")


def test_elasticsearch_sends_an_api_key_as_elastic_documents_it():
    client = es_client(ClusterConfig(urls=("https://a.example:9200",), api_key=API_KEY), 5)
    assert client._headers["authorization"] == f"ApiKey {API_KEY}"
    assert API_KEY not in repr(client._headers)


def test_elasticsearch_insecure_turns_verification_off_and_plain_http_has_no_tls():
    (insecure,) = es_nodes(es_client(ClusterConfig(urls=("https://a.example:9200",), insecure=True), 5))
    assert insecure.config.verify_certs is False and insecure.pool.cert_reqs == "CERT_NONE"
    plain = es_client(ClusterConfig(urls=("http://a.example:9200",)), 5)
    assert es_nodes(plain)[0].config.scheme == "http" and "authorization" not in plain._headers


def test_each_engine_refuses_the_other_engine_s_authentication():
    with pytest.raises(ConfigError, match="OpenSearch takes no API key"):
        os_client(ClusterConfig(urls=("https://a.example:9200",), api_key=API_KEY), 5)
    with pytest.raises(ConfigError, match="AWS SigV4 signs requests to Amazon OpenSearch Service, not to Elasticsearch"):
        es_client(ClusterConfig(urls=("https://a.example:9200",), aws_region="eu-west-1"), 5)


def test_the_password_and_the_api_key_are_never_in_repr_or_str():
    for cfg in (ClusterConfig(user="admin", password=SECRET), ClusterConfig(api_key=SECRET)):
        assert SECRET not in repr(cfg) and SECRET not in str(cfg)
    assert "admin" in repr(ClusterConfig(user="admin", password=SECRET))


def test_user_without_password_and_auth_mixes_are_refused():
    with pytest.raises(ConfigError, match="give both --user and --password"):
        ClusterConfig(user="admin").check()
    with pytest.raises(ConfigError, match="give one way to authenticate, not --user and --aws-region"):
        ClusterConfig(user="admin", password=SECRET, aws_region="eu-west-1").check()
    with pytest.raises(ConfigError, match="not --user and --api-key"):
        ClusterConfig(user="admin", password=SECRET, api_key=API_KEY).check()


def test_a_refusal_names_the_credentials_and_what_was_refused_never_the_secret():
    assert credentials(ClusterConfig(user="viewer", password=SECRET)) == "user 'viewer'"
    assert credentials(ClusterConfig(api_key=SECRET)) == "the API key"
    assert credentials(ClusterConfig(aws_region="eu-west-1")) == "the AWS credentials"
    assert Call("indices.create", "lsr-images-v1").action == "write to lsr-images-v1"
    assert Call("bulk").action == "write (bulk)"
    assert Call("search", "lsr-images").action == "read lsr-images"
    assert Call("nodes.info").action == "read the cluster (nodes.info)"
    where = "Elasticsearch at https://db.example:9200"
    for cfg, hint in ((ClusterConfig(user="admin", password=SECRET), "check the user and password"),
                      (ClusterConfig(api_key=SECRET), "check the API key"),
                      (ClusterConfig(), "give --user and --password, or --api-key")):
        line = not_accepted(where, cfg, 401, "security_exception: unable to authenticate", api_keys=True)
        assert line.startswith(where) and hint in line and "HTTP 401" in line and SECRET not in line
    assert not_accepted(where, ClusterConfig(), 401, "x", api_keys=False).endswith("give --user and --password")


def test_sigv4_signs_with_the_environment_credentials(monkeypatch):
    pytest.importorskip("boto3")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    url = "https://search-demo.eu-west-1.es.amazonaws.com"
    client = os_client(ClusterConfig(urls=(url,), aws_region="eu-west-1", aws_service="aoss"), 5)
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
        os_client(ClusterConfig(urls=("https://x.example",), aws_region="eu-west-1"), 5)


def test_failed_connection_keeps_the_password_out_of_errors_and_logs(caplog):
    caplog.set_level(logging.DEBUG)
    cfg = ClusterConfig(urls=("https://127.0.0.1:1",), user="admin", password=SECRET, timeout=2, max_retries=0)
    with pytest.raises(ClusterUnreachable) as err:
        connect(cfg)
    assert SECRET not in str(err.value) and SECRET not in caplog.text


def test_cli_prompts_for_a_missing_password_without_echoing_it(monkeypatch):
    for var in ("OPENSEARCH_PASSWORD", "ELASTICSEARCH_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
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
