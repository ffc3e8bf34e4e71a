"""Cluster connection settings, from CLI flags or the environment."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterable

from opensearchpy import OpenSearch
from opensearchpy.exceptions import (
    AuthenticationException,
    AuthorizationException,
    ConnectionError as OSConnectionError,
    ConnectionTimeout,
    SSLError,
    TransportError,
)

from lsr_os.errors import ClusterError, ClusterUnreachable, ConfigError

log = logging.getLogger(__name__)

DEFAULT_URL = "http://localhost:9200"
# Bulk load defaults: 1000 documents a request, 4 in flight loaded fastest (bench/results/serving_*).
CHUNK_DOCS = 1000
CONCURRENCY = 4
POOL_MAXSIZE = 64  # connections kept per node: the most bulk requests `ingest --concurrency` sends at once
START_HINT = "start one with `lsr-os node start` or `docker compose up -d`"


def split_urls(values: Iterable[str] | str | None) -> tuple[str, ...]:
    """Flatten repeated and comma- or space-separated URL values; default to localhost."""
    if values is None:
        values = ()
    elif isinstance(values, str):
        values = (values,)
    urls: list[str] = []
    for value in values:
        for part in value.replace(",", " ").split():
            if "://" not in part:
                raise ConfigError(f"cluster URL {part!r} needs a scheme, e.g. http://{part}")
            scheme, rest = part.split("://", 1)
            if "@" in rest.split("/", 1)[0]:  # credentials in a URL end up in logs and error messages
                host = rest.split("/", 1)[0].rsplit("@", 1)[1]
                raise ConfigError(f"cluster URL {scheme}://***@{host} carries credentials: give --user and "
                                  f"OPENSEARCH_PASSWORD (or the prompt) instead")
            urls.append(part.rstrip("/"))
    return tuple(urls) or (DEFAULT_URL,)


@dataclass(frozen=True)
class ClusterConfig:
    """How to reach an OpenSearch cluster. The password never appears in repr or logs.

    Authentication: basic auth (`user`, `password`), or AWS SigV4 for Amazon OpenSearch
    Service (`aws_region`; `aws_service` "es" for managed domains, "aoss" for Serverless)
    with credentials from boto3's usual chain (environment, profile, instance role).
    """

    urls: tuple[str, ...] = (DEFAULT_URL,)
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_certs: str | None = None
    insecure: bool = False
    timeout: float = 30.0
    max_retries: int = 3
    aws_region: str | None = None
    aws_service: str = "es"

    def client(self) -> OpenSearch:
        """A client over all configured nodes; it does not contact the cluster yet."""
        if (self.user is None) != (self.password is None):
            raise ConfigError("give both --user and --password (or OPENSEARCH_USER and OPENSEARCH_PASSWORD)")
        kwargs: dict = {
            "hosts": list(self.urls),
            "timeout": self.timeout,
            "max_retries": self.max_retries,
            "retry_on_timeout": True,
            "http_compress": False,
            # urllib3 keeps 1 connection per host unless told: concurrent bulk requests would each
            # open (and then drop) a connection. Idle slots cost nothing.
            "pool_maxsize": POOL_MAXSIZE,
        }
        if self.user is not None:
            kwargs["http_auth"] = (self.user, self.password)
        if self.aws_region:
            if self.user is not None:
                raise ConfigError("give either basic auth (--user) or AWS SigV4 (--aws-region), not both")
            kwargs["http_auth"] = self._sigv4()
        if any(u.startswith("https://") for u in self.urls):
            kwargs["use_ssl"] = True
            kwargs["verify_certs"] = not self.insecure
            kwargs["ssl_show_warn"] = not self.insecure
            if self.ca_certs:
                kwargs["ca_certs"] = self.ca_certs
        return OpenSearch(**kwargs)

    def _sigv4(self):
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
        return Urllib3AWSV4SignerAuth(credentials, self.aws_region, self.aws_service)


def connect(config: ClusterConfig) -> OpenSearch:
    """Return a client after checking that the cluster answers, with one clear error if not."""
    client = config.client()
    where = ", ".join(config.urls)
    try:
        info = client.info()
    except TransportError as exc:
        raise (connection_error(config, exc) or ClusterError(
            f"OpenSearch at {where} answered HTTP {exc.status_code}: {exc.error}")) from exc
    log.info("connected to %s %s at %s", info["version"].get("distribution", "opensearch"),
             info["version"]["number"], where)
    return client


def connection_error(config: ClusterConfig, exc: Exception) -> ClusterError | None:
    """The user's error when a request failed for reasons of the connection itself (TLS,
    nothing answering, credentials refused); None for any other failure."""
    where = ", ".join(config.urls)
    if isinstance(exc, SSLError):
        return ClusterError(f"TLS handshake with {where} failed ({exc.info}); give the cluster's CA with "
                            f"--ca-certs (or --insecure for a throwaway test cluster)")
    if isinstance(exc, (OSConnectionError, ConnectionTimeout)):
        return ClusterUnreachable(f"no OpenSearch answered at {where}; {START_HINT}")
    if isinstance(exc, (AuthenticationException, AuthorizationException)):
        who = f"user {config.user!r}" if config.user else "no credentials"
        return ClusterError(f"OpenSearch at {where} refused {who} (HTTP {exc.status_code})")
    return None


def cluster_info(config: ClusterConfig) -> dict:
    """Version and health of the cluster, for a quick connection check."""
    client = connect(config)
    version = client.info()["version"]["number"]
    health = client.cluster.health()
    return {"version": version, "cluster_name": health["cluster_name"], "status": health["status"],
            "number_of_nodes": health["number_of_nodes"]}
