"""Snapshots of lsr-os indices to a shared-filesystem (`fs`) repository, and restore.

A snapshot is how OpenSearch operators back up indices and move them between clusters: the
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

from opensearchpy import OpenSearch
from opensearchpy.exceptions import NotFoundError, TransportError

from lsr_os.errors import ClusterError, ConfigError

log = logging.getLogger(__name__)

DEFAULT_REPOSITORY = "lsr-os"
# OpenSearch's snapshot names: lowercase, no whitespace, none of \ / * ? " < > | , # and no leading _ or -.
_NAME = re.compile(r"[a-z0-9][a-z0-9._+-]*")


def check_name(name: str, what: str = "snapshot") -> str:
    """Refuse names OpenSearch would refuse, before any request (the error names the rule)."""
    if not _NAME.fullmatch(name or ""):
        raise ConfigError(f"{what} name {name!r} must be lowercase letters, digits, '.', '_', '+' or '-', "
                          f"and start with a letter or digit")
    return name


def default_snapshot_name() -> str:
    """A sortable, unique-enough name: lsr-<UTC time>."""
    return datetime.now(timezone.utc).strftime("lsr-%Y%m%d-%H%M%S")


def _error_text(exc: TransportError) -> str:
    info = exc.info if isinstance(exc.info, dict) else {}
    err = info.get("error")
    if isinstance(err, dict):
        root = (err.get("root_cause") or [err])[0]
        return f"{root.get('type')}: {root.get('reason')}"
    return str(exc.error)


def path_repo(client: OpenSearch) -> dict[str, list[str]]:
    """Each node's `path.repo` (node name -> folders); empty lists where it is not set."""
    nodes = client.nodes.info(metric="settings", filter_path="nodes.*.name,nodes.*.settings.path.repo")
    out = {}
    for info in nodes.get("nodes", {}).values():
        repo = info.get("settings", {}).get("path", {}).get("repo", [])
        out[info["name"]] = [repo] if isinstance(repo, str) else list(repo)
    return out


def get_repository(client: OpenSearch, name: str) -> dict | None:
    """The repository's registration ({"type", "settings"}), or None when it is not registered."""
    try:
        return client.snapshot.get_repository(repository=name)[name]
    except NotFoundError:
        return None


def register_repository(client: OpenSearch, name: str, location: str, readonly: bool = False) -> dict:
    """Register (or keep) the `fs` repository `name` at `location`; returns its registration.

    An existing registration with the same location is kept as it is; one with another
    location is an error rather than silently re-pointed (its snapshots would seem to vanish).
    OpenSearch verifies on registration that every node can write (or read) the folder.
    """
    check_name(name, "repository")
    current = get_repository(client, name)
    if current is not None:
        where = current.get("settings", {}).get("location")
        if current.get("type") == "fs" and where == location:
            return current
        raise ClusterError(f"repository {name} is already registered at {where!r} ({current.get('type')}), "
                           f"not {location!r}; choose another --repo name")
    body = {"type": "fs", "settings": {"location": location, "compress": True, "readonly": readonly}}
    try:
        client.snapshot.create_repository(repository=name, body=body)
    except TransportError as exc:
        text = _error_text(exc)
        if "path.repo" in text:
            repos = sorted({p for paths in path_repo(client).values() for p in paths})
            raise ClusterError(f"repository location {location!r} is not inside the nodes' path.repo "
                               f"({', '.join(repos) or 'not set'}); use a folder under it, or start the nodes "
                               f"with path.repo including it (`lsr-os node start --path-repo DIR`)") from exc
        raise ClusterError(f"cannot register repository {name} at {location!r}: HTTP {exc.status_code} {text}") from exc
    log.info("registered fs repository %s at %s%s", name, location, " (read-only)" if readonly else "")
    return body


def _require_repository(client: OpenSearch, name: str) -> None:
    if get_repository(client, name) is None:
        raise ClusterError(f"no snapshot repository {name} on the cluster; register it with --location DIR")


def resolve_indices(client: OpenSearch, names: Iterable[str]) -> list[str]:
    """Concrete index names for index names, aliases or wildcards (an unknown name is an error)."""
    out: list[str] = []
    for name in names:
        try:
            found = client.indices.get(index=name, expand_wildcards="open")
        except NotFoundError as exc:
            raise ClusterError(f"no index or alias {name} on the cluster") from exc
        if not found:
            raise ClusterError(f"{name} matches no open index")
        out += [i for i in sorted(found) if i not in out]
    return out


def create_snapshot(client: OpenSearch, repository: str, snapshot: str, indices: Iterable[str] = ()) -> dict:
    """Snapshot the given indices (names, aliases, wildcards) with their aliases; waits until done.

    No indices: every complete lsr-os collection (the served and kept versions, not unfinished loads).

    Returns {"snapshot", "state", "indices", "shards"}; anything but a complete success (every
    shard copied) is an error, since a partial snapshot would restore a partial collection.
    """
    from lsr_os.index import list_collections

    check_name(snapshot)
    _require_repository(client, repository)
    indices = tuple(indices)
    if not indices:
        indices = tuple(r["index"] for r in list_collections(client) if r["state"] == "complete")
        if not indices:
            raise ClusterError("no complete lsr-os collection to snapshot; name the indices or aliases")
    concrete = resolve_indices(client, indices)
    if not concrete:
        raise ConfigError("nothing to snapshot: name at least one index or alias")
    body = {"indices": ",".join(concrete), "include_global_state": False, "partial": False}
    try:
        resp = client.snapshot.create(repository=repository, snapshot=snapshot, body=body,
                                      params={"wait_for_completion": "true"})
    except TransportError as exc:
        raise ClusterError(f"snapshot {repository}/{snapshot} failed: HTTP {exc.status_code} {_error_text(exc)}") from exc
    info = resp["snapshot"]
    shards = info.get("shards", {})
    if info.get("state") != "SUCCESS" or shards.get("failed", 0):
        reasons = "; ".join(f"{f.get('index')}[{f.get('shard_id')}]: {f.get('reason')}" for f in info.get("failures", []))
        raise ClusterError(f"snapshot {repository}/{snapshot} ended {info.get('state')} with "
                           f"{shards.get('failed', 0)} failed shard(s): {reasons or 'no reason given'}")
    log.info("snapshot %s/%s: %s", repository, snapshot, ", ".join(info["indices"]))
    return {"snapshot": snapshot, "state": info["state"], "indices": sorted(info["indices"]), "shards": shards}


def list_snapshots(client: OpenSearch, repository: str) -> list[dict]:
    """The repository's snapshots, oldest first: name, state, indices, start time, seconds."""
    _require_repository(client, repository)
    try:
        resp = client.snapshot.get(repository=repository, snapshot="_all")
    except TransportError as exc:
        raise ClusterError(f"cannot list {repository}: HTTP {exc.status_code} {_error_text(exc)}") from exc
    return [{"snapshot": s["snapshot"], "state": s.get("state"), "indices": sorted(s.get("indices", [])),
             "start": s.get("start_time"), "seconds": s.get("duration_in_millis", 0) / 1000}
            for s in resp.get("snapshots", [])]


def restore_snapshot(client: OpenSearch, repository: str, snapshot: str, indices: Iterable[str] = (),
                     rename_suffix: str | None = None, include_aliases: bool = True,
                     wait_for: str = "yellow", timeout: float = 120.0) -> dict:
    """Restore a snapshot's indices (all, or those named) and wait until they can serve.

    With `rename_suffix`, each index is restored as <name><suffix> beside the existing one and
    aliases are left out (the served alias keeps pointing where it did). Returns
    {"snapshot", "indices": {restored index: document count}}.
    """
    check_name(snapshot)
    _require_repository(client, repository)
    names = list(indices)
    body: dict = {"include_global_state": False, "include_aliases": include_aliases and not rename_suffix}
    if names:
        body["indices"] = ",".join(names)
    if rename_suffix:
        body.update(rename_pattern="(.+)", rename_replacement=f"$1{rename_suffix}")
    try:
        resp = client.snapshot.restore(repository=repository, snapshot=snapshot, body=body,
                                       params={"wait_for_completion": "true"})
    except TransportError as exc:
        text = _error_text(exc)
        if isinstance(exc, NotFoundError) or "snapshot does not exist" in text:
            raise ClusterError(f"no snapshot {snapshot} in repository {repository} "
                               f"(see `lsr-os snapshot list --repo {repository}`)") from exc
        hint = ("; delete or close that index first, or restore beside it with --rename-suffix"
                if "open index with same name" in text else "")
        raise ClusterError(f"restore of {repository}/{snapshot} failed: HTTP {exc.status_code} {text}{hint}") from exc
    info = resp["snapshot"]
    restored = sorted(info.get("indices", []))
    if info.get("shards", {}).get("failed", 0):
        raise ClusterError(f"restore of {repository}/{snapshot}: {info['shards']['failed']} shard(s) failed")
    if restored:
        health = client.cluster.health(index=",".join(restored), wait_for_status=wait_for,
                                       params={"timeout": f"{timeout:.0f}s"}, request_timeout=timeout + 10)
        if health.get("timed_out"):
            raise ClusterError(f"restored {', '.join(restored)} but they are {health['status']} after {timeout:.0f}s")
        client.indices.refresh(index=",".join(restored))
    counts = {i: int(client.count(index=i)["count"]) for i in restored}
    log.info("restored %s/%s: %s", repository, snapshot, counts)
    return {"snapshot": snapshot, "indices": counts}


def delete_snapshot(client: OpenSearch, repository: str, snapshot: str) -> None:
    """Delete one snapshot (files shared with other snapshots stay)."""
    check_name(snapshot)
    _require_repository(client, repository)
    try:
        client.snapshot.delete(repository=repository, snapshot=snapshot)
    except NotFoundError as exc:
        raise ClusterError(f"no snapshot {snapshot} in repository {repository}") from exc
    except TransportError as exc:
        raise ClusterError(f"cannot delete {repository}/{snapshot}: HTTP {exc.status_code} {_error_text(exc)}") from exc
