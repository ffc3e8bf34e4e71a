"""The OpenSearch engine: opensearch-py's client, with basic auth or AWS SigV4."""

from __future__ import annotations

from typing import Any

from opensearchpy import OpenSearch, helpers
from opensearchpy import exceptions as ex

from lsr_os.config import POOL_MAXSIZE, ClusterConfig
from lsr_os.engines.base.base import Call, Engine as BaseEngine
from lsr_os.engines.opensearch.features import Features
from lsr_os.engines.opensearch.operations import Operations
from lsr_os.errors import ConfigError, EngineError, NoAnswer, TLSFailure


class Engine(BaseEngine):
    name = "opensearch"
    display_name = "OpenSearch"
    features_class = Features
    operations_class = Operations
    scan = staticmethod(helpers.scan)
    repository_argument = "repository"  # opensearch-py's name for it (the official client's is `name`)

    def _new_client(self, timeout: float) -> OpenSearch:
        return new_client(self.config, timeout)

    def _call(self, method: str, client_timeout: float | None = None, **kwargs) -> Any:
        # opensearch-py takes a call's `timeout` as its own wait unless `request_timeout` is given;
        # given, `timeout` goes to the cluster as the API means it (health's wait, a force-merge's)
        if "timeout" in kwargs:
            kwargs["request_timeout"] = max(client_timeout or 0, self.config.timeout)
        return super()._call(method, client_timeout, **kwargs)

    def _translate(self, exc: Exception, call: Call | None = None) -> EngineError | None:
        if isinstance(exc, ex.SSLError):
            return TLSFailure(f"TLS with {self.where} failed: {exc.info or exc.error}")
        if isinstance(exc, ex.ConnectionError):  # refused, reset, timed out: no HTTP answer at all
            return NoAnswer(f"no answer from {self.where} ({type(exc.info).__name__ if exc.info else exc.error})")
        if not isinstance(exc, ex.TransportError):
            return None
        status = exc.status_code if isinstance(exc.status_code, int) else None
        return self._answer_error(status, exc.info if isinstance(exc.info, dict) else None, str(exc.error), call)


def new_client(config: ClusterConfig, timeout: float) -> OpenSearch:
    """opensearch-py's client over all configured nodes; it does not contact the cluster yet."""
    if config.api_key:
        raise ConfigError("OpenSearch takes no API key: give --user and --password (or --aws-region)")
    kwargs: dict[str, Any] = {
        "hosts": list(config.urls),
        "timeout": timeout,
        "max_retries": config.max_retries,
        "retry_on_timeout": True,
        "http_compress": False,
        # urllib3 keeps 1 connection per host unless told: concurrent bulk requests would each
        # open (and then drop) a connection. Idle slots cost nothing.
        "pool_maxsize": POOL_MAXSIZE,
    }
    if config.user is not None:
        kwargs["http_auth"] = (config.user, config.password)
    if config.aws_region:
        kwargs["http_auth"] = _sigv4(config)
    if any(u.startswith("https://") for u in config.urls):
        kwargs.update(use_ssl=True, verify_certs=not config.insecure, ssl_show_warn=not config.insecure)
        if config.ca_certs:
            kwargs["ca_certs"] = config.ca_certs
    return OpenSearch(**kwargs)


def _sigv4(config: ClusterConfig):
    """opensearch-py's SigV4 signer over boto3's credential chain (boto3 is an optional extra)."""
    try:
        import boto3
    except ImportError as exc:
        raise ConfigError("AWS SigV4 needs boto3: pip install 'lsr-os[aws]'") from exc
    from opensearchpy import Urllib3AWSV4SignerAuth

    credentials = boto3.Session().get_credentials()
    if credentials is None:
        raise ConfigError("no AWS credentials found (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                          "AWS_PROFILE or an instance role)")
    return Urllib3AWSV4SignerAuth(credentials, config.aws_region, config.aws_service)
