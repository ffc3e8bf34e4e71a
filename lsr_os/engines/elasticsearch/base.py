"""The Elasticsearch engine: the official `elasticsearch` client, with basic auth or an API key."""

from __future__ import annotations

from typing import Any

import elastic_transport
from elasticsearch import ApiError, Elasticsearch, UnsupportedProductError, helpers

from lsr_os.config import POOL_MAXSIZE, ClusterConfig
from lsr_os.engines.base.base import Engine as BaseEngine, error_text
from lsr_os.engines.elasticsearch.features import Features
from lsr_os.engines.elasticsearch.operations import Operations
from lsr_os.errors import (AccessDenied, BadRequest, ConfigError, EngineError, NoAnswer, NotFound,
                           TLSFailure)


class Engine(BaseEngine):
    name = "elasticsearch"
    display_name = "Elasticsearch"
    features_class = Features
    operations_class = Operations
    scan = staticmethod(helpers.scan)

    def _new_client(self, timeout: float) -> Elasticsearch:
        return new_client(self.config, timeout)

    def _translate(self, exc: Exception) -> EngineError | None:
        if isinstance(exc, elastic_transport.TlsError):
            return TLSFailure(f"TLS with {self.where} failed: {exc.message}")
        if isinstance(exc, (elastic_transport.ConnectionError, elastic_transport.ConnectionTimeout)):
            return NoAnswer(f"no answer from {self.where} ({exc.message})")
        if isinstance(exc, UnsupportedProductError):
            return EngineError(f"{self.where} is not Elasticsearch ({exc.message})")
        if not isinstance(exc, ApiError):
            return None
        status = exc.meta.status
        info = exc.body if isinstance(exc.body, dict) else None
        kind = {400: BadRequest, 401: AccessDenied, 403: AccessDenied, 404: NotFound}.get(status, EngineError)
        return kind(f"HTTP {status} {error_text(info) if info else exc.message}", status, info)


def new_client(config: ClusterConfig, timeout: float) -> Elasticsearch:
    """The official client over all configured nodes; it does not contact the cluster yet."""
    if config.aws_region:
        raise ConfigError("AWS SigV4 signs requests to Amazon OpenSearch Service, not to Elasticsearch; "
                          "give --user and --password or --api-key")
    kwargs: dict[str, Any] = {
        "hosts": list(config.urls),
        "request_timeout": timeout,
        "max_retries": config.max_retries,
        "retry_on_timeout": True,
        "http_compress": False,
        "connections_per_node": POOL_MAXSIZE,  # concurrent bulk requests each keep their connection
    }
    if config.user is not None:
        kwargs["basic_auth"] = (config.user, config.password)
    if config.api_key:
        kwargs["api_key"] = config.api_key
    if any(u.startswith("https://") for u in config.urls):
        kwargs.update(verify_certs=not config.insecure, ssl_show_warn=not config.insecure)
        if config.ca_certs:
            kwargs["ca_certs"] = config.ca_certs
    return Elasticsearch(**kwargs)
