"""Snapshots of lsr-os indices to a shared-filesystem (`fs`) repository, and restore.

A snapshot is how OpenSearch and Elasticsearch operators back up indices and move them between clusters: the
source cluster writes the index files into a folder that every node can reach (its
location must lie inside the nodes' `path.repo`), and any cluster whose `path.repo` includes
the same folder can register it (read-only) and restore from it. Aliases travel with the
snapshot, so a restored collection is served under its old alias again.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime, timezone
from typing import Iterable

from lsr_os.engines.base.base import Engine
from lsr_os.errors import ClusterError, ConfigError, EngineError, NotFound

log = logging.getLogger(__name__)

DEFAULT_REPOSITORY = "lsr-os"
SNAPSHOT_TIMEOUT_S = 6 * 3600  # a snapshot or restore answers when it is done
# The engines' snapshot names: lowercase, no whitespace, none of \ / * ? " < > | , # and no leading _ or -.
_NAME = re.compile(r"[a-z0-9][a-z0-9._+-]*")


def check_name(name: str, what: str = "snapshot") -> str:
    """Refuse names the engines would refuse, before any request (the error names the rule)."""
    if not _NAME.fullmatch(name or ""):
        raise ConfigError(f"{what} name {name!r} must be lowercase letters, digits, '.', '_', '+' or '-', "
                          f"and start with a letter or digit")
    return name


def default_snapshot_name() -> str:
    """A sortable, unique-enough name: lsr-<UTC time>."""
    return datetime.now(timezone.utc).strftime("lsr-%Y%m%d-%H%M%S")


def register_repository(engine: Engine, name: str, location: str, readonly: bool = False) -> dict:
    """Register (or keep) the `fs` repository `name` at `location`; returns its registration.

    An existing registration with the same location is kept as it is; one with another
    location is an error rather than silently re-pointed (its snapshots would seem to vanish).
    The engine verifies on registration that every node can write (or read) the folder.
    """
    check_name(name, "repository")
    current = engine.repository(name)
    if current is not None:
        where = current.get("settings", {}).get("location")
        if current.get("type") == "fs" and where == location:
            return current
        raise ClusterError(f"repository {name} is already registered at {where!r} ({current.get('type')}), "
                           f"not {location!r}; choose another --repo name")
    body = {"type": "fs", "settings": {"location": location, "compress": True, "readonly": readonly}}
    try:
        engine.create_repository(name, body)
    except EngineError as exc:
        text = str(exc)
        if "path.repo" in text:
            repos = sorted({p for paths in engine.repository_paths().values() for p in paths})
            raise ClusterError(f"repository location {location!r} is not inside the nodes' path.repo "
                               f"({', '.join(repos) or 'not set'}); use a folder under it, or start the nodes "
                               f"with path.repo including it (`lsr-os node start --path-repo DIR`)") from exc
        raise ClusterError(f"cannot register repository {name} at {location!r}: {text}") from exc
    log.info("registered fs repository %s at %s%s", name, location, " (read-only)" if readonly else "")
    return body


def _require_repository(engine: Engine, name: str) -> None:
    if engine.repository(name) is None:
        raise ClusterError(f"no snapshot repository {name} on the cluster; register it with --location DIR")


def resolve_indices(engine: Engine, names: Iterable[str]) -> list[str]:
    """Concrete index names for index names, aliases or wildcards (an unknown name is an error)."""
    out: list[str] = []
    for name in names:
        try:
            found = engine.index(name)
        except NotFound as exc:
            raise ClusterError(f"no index or alias {name} on the cluster") from exc
        if not found:
            raise ClusterError(f"{name} matches no open index")
        out += [i for i in sorted(found) if i not in out]
    return out


def create_snapshot(engine: Engine, repository: str, snapshot: str, indices: Iterable[str] = ()) -> dict:
    """Snapshot the given indices (names, aliases, wildcards) with their aliases; waits until done.

    No indices: every complete lsr-os collection (the served and kept versions, not unfinished loads).

    Returns {"snapshot", "state", "indices", "shards"}; anything but a complete success (every
    shard copied) is an error, since a partial snapshot would restore a partial collection.
    """
    from lsr_os.index import list_collections

    check_name(snapshot)
    _require_repository(engine, repository)
    indices = tuple(indices)
    if not indices:
        indices = tuple(r["index"] for r in list_collections(engine) if r["state"] == "complete")
        if not indices:
            raise ClusterError("no complete lsr-os collection to snapshot; name the indices or aliases")
    concrete = resolve_indices(engine, indices)
    if not concrete:
        raise ConfigError("nothing to snapshot: name at least one index or alias")
    body = {"indices": ",".join(concrete), "include_global_state": False, "partial": False}
    try:
        resp = engine.create_snapshot(repository, snapshot, body, timeout=SNAPSHOT_TIMEOUT_S)
    except EngineError as exc:
        raise ClusterError(f"snapshot {repository}/{snapshot} failed: {exc}") from exc
    info = resp["snapshot"]
    shards = info.get("shards", {})
    if info.get("state") != "SUCCESS" or shards.get("failed", 0):
        reasons = "; ".join(f"{f.get('index')}[{f.get('shard_id')}]: {f.get('reason')}" for f in info.get("failures", []))
        raise ClusterError(f"snapshot {repository}/{snapshot} ended {info.get('state')} with "
                           f"{shards.get('failed', 0)} failed shard(s): {reasons or 'no reason given'}")
    log.info("snapshot %s/%s: %s", repository, snapshot, ", ".join(info["indices"]))
    return {"snapshot": snapshot, "state": info["state"], "indices": sorted(info["indices"]), "shards": shards}


def list_snapshots(engine: Engine, repository: str) -> list[dict]:
    """The repository's snapshots, oldest first: name, state, indices, start time, seconds."""
    _require_repository(engine, repository)
    try:
        found = engine.snapshots(repository)
    except EngineError as exc:
        raise ClusterError(f"cannot list {repository}: {exc}") from exc
    return [{"snapshot": s["snapshot"], "state": s.get("state"), "indices": sorted(s.get("indices", [])),
             "start": s.get("start_time"), "seconds": s.get("duration_in_millis", 0) / 1000}
            for s in found]


def restore_snapshot(engine: Engine, repository: str, snapshot: str, indices: Iterable[str] = (),
                     rename_suffix: str | None = None, include_aliases: bool = True,
                     wait_for: str = "yellow", timeout: float = 120.0) -> dict:
    """Restore a snapshot's indices (all, or those named) and wait until they can serve.

    With `rename_suffix`, each index is restored as <name><suffix> beside the existing one and
    aliases are left out (the served alias keeps pointing where it did). Returns
    {"snapshot", "indices": {restored index: document count}}.
    """
    check_name(snapshot)
    _require_repository(engine, repository)
    names = list(indices)
    body: dict = {"include_global_state": False, "include_aliases": include_aliases and not rename_suffix}
    if names:
        body["indices"] = ",".join(names)
    if rename_suffix:
        body.update(rename_pattern="(.+)", rename_replacement=f"$1{rename_suffix}")
    try:
        resp = engine.restore_snapshot(repository, snapshot, body, timeout=SNAPSHOT_TIMEOUT_S)
    except EngineError as exc:
        text = str(exc)
        if isinstance(exc, NotFound) or "snapshot does not exist" in text:
            raise ClusterError(f"no snapshot {snapshot} in repository {repository} "
                               f"(see `lsr-os snapshot list --repo {repository}`)") from exc
        hint = ("; delete or close that index first, or restore beside it with --rename-suffix"
                if "open index with same name" in text else "")
        raise ClusterError(f"restore of {repository}/{snapshot} failed: {text}{hint}") from exc
    info = resp["snapshot"]
    restored = sorted(info.get("indices", []))
    if info.get("shards", {}).get("failed", 0):
        raise ClusterError(f"restore of {repository}/{snapshot}: {info['shards']['failed']} shard(s) failed")
    if restored:
        health = engine.health(",".join(restored), wait_for_status=wait_for, wait_s=timeout)
        if health.get("timed_out"):
            raise ClusterError(f"restored {', '.join(restored)} but they are {health['status']} after {timeout:.0f}s")
        engine.refresh(",".join(restored))
    counts = {i: engine.count(i) for i in restored}
    log.info("restored %s/%s: %s", repository, snapshot, counts)
    return {"snapshot": snapshot, "indices": counts}


def delete_snapshot(engine: Engine, repository: str, snapshot: str) -> None:
    """Delete one snapshot (files shared with other snapshots stay)."""
    check_name(snapshot)
    _require_repository(engine, repository)
    try:
        engine.delete_snapshot(repository, snapshot)
    except NotFound as exc:
        raise ClusterError(f"no snapshot {snapshot} in repository {repository}") from exc
    except EngineError as exc:
        raise ClusterError(f"cannot delete {repository}/{snapshot}: {exc}") from exc
