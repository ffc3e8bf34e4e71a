"""Which engine answers at a URL, read from its answer.

Every Elasticsearch answer (an error too) carries the header `X-Elastic-Product: Elasticsearch`;
OpenSearch's never does. `GET /` cannot tell them apart for us, since Elasticsearch's
integration-test distribution refuses it (405), so one `GET /_nodes/_local` asks for the node's
version instead. It goes through urllib3, the HTTP library under both engines' clients, because
neither client shows an answer's headers before it has decided the engine for itself.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging

import urllib3

from lsr_os.config import START_HINT, ClusterConfig
from lsr_os.engines.base.base import credentials, error_text, not_accepted
from lsr_os.errors import AccessDenied, ClusterError, ClusterUnreachable, TLSFailure

log = logging.getLogger(__name__)

PRODUCT_HEADER = "X-Elastic-Product"
_PROBE = "/_nodes/_local?filter_path=nodes.*.version"
UNKNOWN_VERSION = "(version unknown)"  # for a user who may not read the nodes


def detect(config: ClusterConfig) -> tuple[str, str]:
    """(engine name, version) of the cluster: the first configured URL that answers decides."""
    config.check()
    if config.aws_region:  # SigV4 signs for Amazon OpenSearch Service, whose engine is OpenSearch
        return "opensearch", _signed_version(config)
    failure: ClusterError | None = None
    for url in config.urls:
        try:
            return _probe(config, url)
        except ClusterUnreachable as exc:  # another node of the cluster may answer
            failure = failure or exc
    assert failure is not None
    raise failure


def _probe(config: ClusterConfig, url: str) -> tuple[str, str]:
    headers = {"Accept": "application/json"}
    if config.user is not None:
        token = base64.b64encode(f"{config.user}:{config.password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    elif config.api_key:
        headers["Authorization"] = f"ApiKey {config.api_key}"
    tls = {}
    if url.startswith("https://"):
        tls = {"cert_reqs": "CERT_NONE"} if config.insecure else {"cert_reqs": "CERT_REQUIRED"}
        if config.ca_certs and not config.insecure:
            tls["ca_certs"] = config.ca_certs
    if config.insecure:
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    pool = urllib3.PoolManager(timeout=urllib3.Timeout(connect=min(config.timeout, 10.0), read=config.timeout),
                               retries=False, **tls)
    try:
        resp = pool.request("GET", url + _PROBE, headers=headers)
        if resp.status == 403 and _elasticsearch_knows_user(pool, url, headers):
            # Authenticated, but without the `monitor` privilege that reading a node's version
            # needs (Elasticsearch's built-in `viewer` role has none): searching still works.
            log.info("%s: %s may not read the nodes, so the version stays unknown", url, credentials(config))
            return "elasticsearch", UNKNOWN_VERSION
    except urllib3.exceptions.SSLError as exc:
        if "WRONG_VERSION_NUMBER" in _reason(exc):
            raise TLSFailure(f"{url} speaks plain HTTP, not TLS: use an http:// URL") from None
        raise TLSFailure(f"TLS handshake with {url} failed ({_reason(exc)}); give the cluster's CA with "
                         f"--ca-certs (or --insecure for a throwaway test cluster)") from None
    except urllib3.exceptions.ProtocolError as exc:
        if url.startswith("http://") and isinstance(_root(exc), (http.client.RemoteDisconnected, ConnectionResetError)):
            raise ClusterUnreachable(f"{url} closed the connection without an answer: a cluster that serves "
                                     f"HTTPS needs an https:// URL") from None
        raise ClusterUnreachable(f"no cluster answered at {url} ({_reason(exc)}); {START_HINT}") from None
    except urllib3.exceptions.HTTPError:
        raise ClusterUnreachable(f"no cluster answered at {url}; {START_HINT}") from None
    finally:
        pool.clear()
    engine = "elasticsearch" if _says_elasticsearch(resp) else "opensearch"
    if resp.status in (401, 403):
        info = _json(resp.data)
        detail = error_text(info) if isinstance(info, dict) else f"{resp.data[:200].decode(errors='replace')}"
        if resp.status == 401:
            where = f"{'Elasticsearch' if engine == 'elasticsearch' else 'the cluster'} at {url}"
            raise AccessDenied(not_accepted(where, config, 401, detail, engine == "elasticsearch"), 401, info)
        raise AccessDenied(f"{credentials(config)} may not read the nodes of the cluster at {url} "
                           f"(HTTP 403 {detail})", 403, info)
    shown = "Elasticsearch" if engine == "elasticsearch" else "OpenSearch"
    try:
        body = json.loads(resp.data)
    except ValueError:
        body = None
    if resp.status == 200:
        try:
            return engine, next(iter(body["nodes"].values()))["version"]
        except (KeyError, StopIteration, TypeError, AttributeError):
            pass
    elif isinstance(body, dict) and isinstance(body.get("error"), (dict, str)):  # the engine's own error
        raise ClusterError(f"{shown} at {url} answered HTTP {resp.status}: {error_text(body)}")
    raise ClusterError(f"{url} is neither OpenSearch nor Elasticsearch: GET {_PROBE} answered HTTP {resp.status}"
                       f"{_server(resp)}, {_excerpt(resp.data)}")


def _server(resp) -> str:
    """` from <Server header>`, naming what answered, when it says."""
    server = resp.headers.get("Server")
    return f" from {server}" if server else ""


def _excerpt(data: bytes) -> str:
    """The start of an answer's body on one line."""
    text = " ".join(data[:120].decode(errors="replace").split())
    return f"starting {text!r}" if text else "with an empty body"


def _says_elasticsearch(resp: urllib3.BaseHTTPResponse) -> bool:
    """Whether an answer is Elasticsearch's: every answer to an authenticated request carries its
    product header; a refusal of credentials (401) does not, but offers API-key authentication,
    which OpenSearch has none of."""
    return (resp.headers.get(PRODUCT_HEADER) == "Elasticsearch"
            or any(v.startswith("ApiKey") for v in resp.headers.getlist("WWW-Authenticate")))


def _elasticsearch_knows_user(pool: urllib3.PoolManager, url: str, headers: dict[str, str]) -> bool:
    """Whether Elasticsearch authenticates these credentials: any authenticated user may ask
    `_security/_authenticate` about itself, whatever its privileges (OpenSearch has no such path)."""
    resp = pool.request("GET", url + "/_security/_authenticate", headers=headers)
    return resp.status == 200 and resp.headers.get(PRODUCT_HEADER) == "Elasticsearch"


def _json(data: bytes):
    try:
        return json.loads(data)
    except ValueError:
        return None


def _signed_version(config: ClusterConfig) -> str:
    from lsr_os.engines.base.base import Call
    from lsr_os.engines.opensearch.base import Engine

    probe = Engine(config, "?")
    with probe.errors(Call("info")):
        return probe.client.info()["version"]["number"]


def _root(exc: BaseException) -> BaseException:
    while exc.args and isinstance(exc.args[-1], BaseException):
        exc = exc.args[-1]
    return exc


def _reason(exc: BaseException) -> str:
    return str(_root(exc)) or type(_root(exc)).__name__

