"""Loading records at hand into the test node, as the library's callers do."""

from __future__ import annotations

from typing import Iterable

from lsr_os import index as ix
from lsr_os.sparse import RecordStream, SparseRecord


def load(client, records: Iterable[SparseRecord], alias: str, collection: str = "images", source: str = "t",
         **options) -> ix.IngestReport:
    """`ix.ingest` of an iterable of records under resume key `source`, without a progress bar."""
    return ix.ingest(client, RecordStream.of(records, source), alias, collection,
                     ix.IngestOptions(progress=False, **options))
