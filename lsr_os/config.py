"""Cluster connection settings, from CLI flags or the environment; lsr_os.engines connects."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from lsr_os.errors import ConfigError

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
                                  f"the password in OPENSEARCH_PASSWORD or ELASTICSEARCH_PASSWORD (or at the "
                                  f"prompt), or an Elasticsearch API key in ELASTICSEARCH_API_KEY, instead")
            urls.append(part.rstrip("/"))
    return tuple(urls) or (DEFAULT_URL,)


@dataclass(frozen=True)
class ClusterConfig:
    """How to reach a cluster of either engine. Secrets never appear in repr or logs.

    Authentication: basic auth (`user`, `password`); an Elasticsearch API key (`api_key`, the
    base64 `id:key` that Elasticsearch returns as `encoded`); or AWS SigV4 for Amazon OpenSearch
    Service (`aws_region`; `aws_service` "es" for managed domains, "aoss" for Serverless) with
    credentials from boto3's usual chain (environment, profile, instance role).
    """

    urls: tuple[str, ...] = (DEFAULT_URL,)
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    api_key: str | None = field(default=None, repr=False)
    ca_certs: str | None = None
    insecure: bool = False
    timeout: float = 30.0
    max_retries: int = 3
    aws_region: str | None = None
    aws_service: str = "es"

    def check(self) -> None:
        """One clear error for credentials that cannot go together."""
        if (self.user is None) != (self.password is None):
            raise ConfigError("give both --user and --password (or their environment variables)")
        given = [what for what, on in (("--user", self.user is not None), ("--api-key", bool(self.api_key)),
                                       ("--aws-region", bool(self.aws_region))) if on]
        if len(given) > 1:
            raise ConfigError(f"give one way to authenticate, not {' and '.join(given)}")
