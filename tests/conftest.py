"""Shared fixtures.

Integration tests (marker `integration`) talk to real nodes: OpenSearch at OPENSEARCH_URL
(default http://localhost:9200) and Elasticsearch at ELASTICSEARCH_URL (default
http://localhost:9400). The `engine` fixture runs a test once per engine, as Django's backends
run one test body against every database; a test that needs one engine only takes `opensearch`
or `elasticsearch`, and a test that needs a capability asks `engine.features` and skips. Without
a node a test is skipped locally with a reason; under CI=true a missing node is a failure, so CI
can never pass without having run them.
"""

from __future__ import annotations

import os
import uuid

import pytest

from lsr_os.config import ClusterConfig, split_urls
from lsr_os.errors import ClusterUnreachable

ENGINE_URLS = {"opensearch": ("OPENSEARCH_URL", "http://localhost:9200"),
               "elasticsearch": ("ELASTICSEARCH_URL", "http://localhost:9400")}


def engine_config(name: str, timeout: float = 60.0) -> ClusterConfig:
    """The test node of engine `name`, from its environment variable."""
    variable, default = ENGINE_URLS[name]
    return ClusterConfig(urls=split_urls(os.environ.get(variable) or default), timeout=timeout)


def pytest_report_header(config) -> list[str]:
    """Say up front which nodes the integration tier will talk to."""
    from lsr_os.engines import connect

    lines = []
    for name in ENGINE_URLS:
        cfg = engine_config(name, timeout=5.0)
        try:
            engine = connect(cfg)
        except Exception as exc:  # any failure here only means "no node": the fixture decides what that implies
            lines.append(f"{name}: none at {', '.join(cfg.urls)} ({type(exc).__name__})")
        else:
            lines.append(f"{name}: {engine.display_name} {engine.version} at {', '.join(cfg.urls)}")
    return lines


_ENGINES: dict[str, object] = {}


def connected(name: str):
    """The engine of the test node `name`, connected once per session; skipped (failed under CI)
    when no node answers."""
    from lsr_os.engines import connect

    if name not in _ENGINES:
        try:
            engine = connect(engine_config(name))
        except ClusterUnreachable as exc:
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(f"CI needs a running {name} node: {exc}")
            pytest.skip(f"no {name} node: {exc}")
        if engine.name != name:
            pytest.fail(f"{ENGINE_URLS[name][0]} reaches {engine.display_name}, not {name}")
        engine.health(wait_for_status="yellow", wait_s=60)
        _ENGINES[name] = engine
    return _ENGINES[name]


@pytest.fixture(scope="session", params=list(ENGINE_URLS))
def engine(request):
    """Each engine's test node in turn: a test that takes it runs once per engine."""
    return connected(request.param)


@pytest.fixture(scope="session")
def opensearch():
    """The OpenSearch test node, for what only OpenSearch has (the lsr-os plugin, Dashboards)."""
    return connected("opensearch")


@pytest.fixture(scope="session")
def elasticsearch():
    """The Elasticsearch test node."""
    return connected("elasticsearch")


@pytest.fixture(scope="session")
def cluster_config(engine):
    """The configuration of the engine's test node (for what connects by itself: the CLI, serve)."""
    return engine.config


def unique_name(request) -> str:
    name = f"test-{request.node.name.lower()[:40].strip('_-[]')}-{uuid.uuid4().hex[:8]}"
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name)


@pytest.fixture
def index_name(request):
    """A unique index (and alias) name for one test, deleted afterwards with all its versions on
    every engine the session has connected to (it does not choose the engine itself)."""
    name = unique_name(request)
    yield name
    for connected_engine in _ENGINES.values():
        connected_engine.delete_indices(f"{name}*", missing_ok=True)
