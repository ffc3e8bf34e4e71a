"""Loading records at hand into a test node, as the library's callers do, and running the CLI
against the node of the engine under test."""

from __future__ import annotations

from typing import Iterable

from click.testing import CliRunner, Result

from lsr_os import index as ix
from lsr_os.engines.base.base import Engine
from lsr_os.sparse import RecordStream, SparseRecord

URL_VARIABLES = ("OPENSEARCH_URL", "ELASTICSEARCH_URL")


def load(engine: Engine, records: Iterable[SparseRecord], alias: str, collection: str = "images",
         source: str = "t", **options) -> ix.IngestReport:
    """`ix.ingest` of an iterable of records under resume key `source`, without a progress bar."""
    return ix.ingest(engine, RecordStream.of(records, source), alias, collection,
                     ix.IngestOptions(progress=False, **options))


def cli_env(engine: Engine) -> dict[str, str | None]:
    """Environment changes under which the CLI connects to `engine`'s node: its URLs in that
    engine's own variable (ELASTICSEARCH_URL for Elasticsearch), the other variable unset (the
    OpenSearch one would win)."""
    own = f"{engine.name.upper()}_URL"
    return {name: ",".join(engine.config.urls) if name == own else None for name in URL_VARIABLES}


def cli(engine: Engine, *args) -> Result:
    """`lsr-os ARGS` in-process, connecting to `engine`'s node."""
    from lsr_os.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], env=cli_env(engine))
