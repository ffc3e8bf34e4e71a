"""Shared fixtures.

Integration tests (marker `integration`) talk to a real OpenSearch node at OPENSEARCH_URL
(default http://localhost:9200). Without one they are skipped locally with a reason; under
CI=true a missing node is a failure, so CI can never pass without having run them.
"""

from __future__ import annotations

import os
import uuid

import pytest

from lsr_os.config import ClusterConfig, split_urls
from lsr_os.errors import ClusterUnreachable


def pytest_report_header(config) -> str:
    """Say up front which node the integration tier will talk to (version from GET /)."""
    cfg = ClusterConfig(urls=split_urls(os.environ.get("OPENSEARCH_URL")), timeout=5.0, max_retries=0)
    try:
        info = cfg.client().info()
    except Exception as exc:  # any failure here only means "no node": the fixture decides what that implies
        return f"OpenSearch: none at {', '.join(cfg.urls)} ({type(exc).__name__})"
    return f"OpenSearch: {info['version']['number']} ({info['version'].get('build_type', '?')}) at {', '.join(cfg.urls)}"


@pytest.fixture(scope="session")
def cluster_config() -> ClusterConfig:
    return ClusterConfig(urls=split_urls(os.environ.get("OPENSEARCH_URL")), timeout=60.0)


@pytest.fixture(scope="session")
def os_client(cluster_config):
    """A client to the real node; reports the node's version once per session."""
    from lsr_os.config import connect

    try:
        client = connect(cluster_config)
    except ClusterUnreachable as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI needs a running OpenSearch node: {exc}")
        pytest.skip(f"no OpenSearch node: {exc}")
    client.cluster.health(wait_for_status="yellow")
    return client


@pytest.fixture
def index_name(os_client, request):
    """A unique index (and alias) name for one test, deleted afterwards with all its versions."""
    name = f"test-{request.node.name.lower()[:40].strip('_-[]')}-{uuid.uuid4().hex[:8]}"
    name = "".join(c if c.isalnum() or c in "-_" else "-" for c in name)
    yield name
    os_client.indices.delete(index=f"{name}*", ignore_unavailable=True, expand_wildcards="all")
