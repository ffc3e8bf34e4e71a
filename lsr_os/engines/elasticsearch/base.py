"""The Elasticsearch engine: the official `elasticsearch` client, with basic auth or an API key."""

from __future__ import annotations

import logging
from typing import Any

import elastic_transport
from elasticsearch import ApiError, Elasticsearch, UnsupportedProductError, helpers

from lsr_os.config import POOL_MAXSIZE, ClusterConfig
from lsr_os.engines.base.base import Call, Engine as BaseEngine, credentials
from lsr_os.engines.elasticsearch.features import Features
from lsr_os.engines.elasticsearch.operations import Operations
from lsr_os.errors import AccessDenied, ConfigError, EngineError, NoAnswer, TLSFailure

log = logging.getLogger(__name__)


class Engine(BaseEngine):
    name = "elasticsearch"
    display_name = "Elasticsearch"
    features_class = Features
    operations_class = Operations
    scan = staticmethod(helpers.scan)

    def _new_client(self, timeout: float) -> Elasticsearch:
        return new_client(self.config, timeout)

    def _translate(self, exc: Exception, call: Call | None = None) -> EngineError | None:
        if isinstance(exc, elastic_transport.TlsError):
            return TLSFailure(f"TLS with {self.where} failed: {exc.message}")
        if isinstance(exc, (elastic_transport.ConnectionError, elastic_transport.ConnectionTimeout)):
            return NoAnswer(f"no answer from {self.where} ({exc.message})")
        if isinstance(exc, UnsupportedProductError):
            return EngineError(f"{self.where} is not Elasticsearch ({exc.message})")
        if not isinstance(exc, ApiError):
            return None
        return self._answer_error(exc.meta.status, exc.body if isinstance(exc.body, dict) else None, exc.message, call)


    def check_may_write(self, alias: str) -> None:
        """Elasticsearch tells any authenticated user which privileges it holds (`_has_privileges`):
        a load reads the nodes (cluster `monitor`), creates, configures and aliases its index
        (`manage`), writes documents (`write`) and counts and scans them (`read`)."""
        wanted = {"cluster": ["monitor"], "index": [{"names": [f"{alias}*"], "privileges": ["manage", "write", "read"]}]}
        try:
            held = self._call("security.has_privileges", body=wanted)
        except NoAnswer:
            raise
        except EngineError as exc:  # security off (no such path), or an older cluster: the writes will tell
            log.debug("cannot ask for the user's privileges (%s); the cluster will refuse what it refuses", exc)
            return
        if held.get("has_all_requested", True):
            return
        lacking = [f"the cluster privilege {name}" for name, ok in held.get("cluster", {}).items() if not ok]
        for pattern, privileges in held.get("index", {}).items():
            names = [name for name, ok in privileges.items() if not ok]
            if names:
                lacking.append(f"the index privilege{'s' if len(names) > 1 else ''} {', '.join(names)} on {pattern}")
        raise AccessDenied(f"{credentials(self.config)} may not write to {alias}: Elasticsearch says it lacks "
                           f"{' and '.join(lacking)}", 403, held)


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
