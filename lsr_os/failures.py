"""Skipped items and the failures file that lists them: one format for every command.

A long job never stops for one bad item: the item is skipped and listed, one JSON object a line,

    {"id": "123", "what": "image", "where": "/data/photos/a.jpg", "reason": "truncated or corrupt image: ..."}

`id` is the item's id when it could be read (null for a line whose id is unreadable); `what` is
`row` (a row of a dataset file), `image`, `caption`, `record` (a sparse record that cannot be
served) or `document` (refused by the cluster); `where` is the file and line, the full path an
image was looked for at (`data.image_file`), the caption's text or the index. The command's exit
status is then 4 (`errors.EXIT_FAILURES`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, IO

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Failure:
    """One skipped item and why."""

    what: str
    id: str | None
    where: str
    reason: str

    def to_json(self) -> str:
        return json.dumps({"id": self.id, "what": self.what, "where": self.where, "reason": self.reason},
                          ensure_ascii=False)

    @classmethod
    def from_json(cls, line: str) -> "Failure":
        obj = json.loads(line)
        return cls(obj["what"], obj.get("id"), obj.get("where", ""), obj.get("reason", ""))


OnFailure = Callable[[Failure], None]


class FailureLog:
    """A run's failures file, written as failures happen (a crash loses none) and counted.

    The file belongs to one run: an old one is replaced when the first failure of this run is
    written, or removed at `close` when this run had none, so it always lists what still fails.
    Without a path, failures are only counted and logged.
    """

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path is not None else None
        self.count = 0
        self.by_what: dict[str, int] = {}
        self._handle: IO[str] | None = None

    def add(self, failure: Failure) -> None:
        self.count += 1
        self.by_what[failure.what] = self.by_what.get(failure.what, 0) + 1
        log.debug("skipped %s %s (%s): %s", failure.what, failure.id, failure.where, failure.reason)
        if self.path is None:
            return
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self.path.open("w", encoding="utf-8")
        self._handle.write(failure.to_json() + "\n")
        self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        elif self.path is not None and self.count == 0 and self.path.exists():
            self.path.unlink()

    def __enter__(self) -> "FailureLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_failures(path: str | Path) -> list[Failure]:
    """The failures listed in a file (empty when there is none)."""
    path = Path(path)
    if not path.exists():
        return []
    return [Failure.from_json(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
