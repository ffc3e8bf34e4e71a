"""The `Engine` a caller holds: an engine's own client, its features and operations, and every
cluster call lsr-os makes, each raising lsr-os's own errors (lsr_os.errors.EngineError and kin).

Both engines' Python clients grew from one ancestor and still take the same arguments for the
calls lsr-os makes, so this base class makes them once; a backend supplies its client, its error
translation and only the calls that differ. Responses come back as plain dicts and lists.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar, Iterator, Sequence

from lsr_os.config import ClusterConfig
from lsr_os.engines.base.features import BaseFeatures
from lsr_os.engines.base.operations import BaseOperations
from lsr_os.errors import AccessDenied, BadRequest, EngineError, NotFound

log = logging.getLogger(__name__)


# Client methods that change the cluster: a refusal of one says the user "may not write".
WRITE_CALLS = frozenset({
    "bulk", "indices.create", "indices.delete", "indices.put_settings", "indices.put_mapping",
    "indices.update_aliases", "indices.refresh", "indices.flush", "indices.forcemerge",
    "snapshot.create_repository", "snapshot.delete_repository", "snapshot.create", "snapshot.restore",
    "snapshot.delete",
})


@dataclass(frozen=True)
class Call:
    """One client call, as far as a message about its refusal needs it."""

    method: str  # "indices.create"
    index: str | None = None  # the index (or pattern, alias) it names, if any

    @property
    def action(self) -> str:
        """What a refused user may not do: "write to test-v1", "read test", "read the cluster (nodes.info)"."""
        if self.method in WRITE_CALLS:
            return f"write to {self.index}" if self.index else f"write ({self.method})"
        if self.index:
            return f"read {self.index}"
        return f"read the cluster ({self.method})"


class Engine:
    """A connection to one cluster of one engine. Create it with `lsr_os.engines.connect`."""

    name: ClassVar[str]  # "opensearch", "elasticsearch": for messages, state files and test ids only
    display_name: ClassVar[str]  # "OpenSearch"
    features_class: ClassVar[type[BaseFeatures]] = BaseFeatures
    operations_class: ClassVar[type[BaseOperations]] = BaseOperations
    scan: Any  # the client's scroll helper: scan(client, index=, query=, size=) -> hits
    repository_argument: ClassVar[str] = "name"  # what the client's snapshot-repository calls name the repository

    def __init__(self, config: ClusterConfig, version: str):
        self.config, self.version = config, version
        self.where = ", ".join(config.urls)
        self.client = self._new_client(config.timeout)
        self.features = self.features_class(self)
        self.ops = self.operations_class(self.features)
        self._long_clients: dict[float, Any] = {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.display_name} {self.version} at {self.where}>"

    # ------------------------------------------------------------------ what a backend supplies

    def _new_client(self, timeout: float) -> Any:
        """The engine's own client over the configured nodes, with `timeout` seconds a request."""
        raise NotImplementedError

    def _translate(self, exc: Exception, call: Call | None = None) -> EngineError | None:
        """lsr-os's error for an exception of the engine's client (raised by `call`, when known);
        None for any other exception. An HTTP error answer goes through `_answer_error`."""
        raise NotImplementedError

    # ------------------------------------------------------------------ plumbing

    @contextlib.contextmanager
    def errors(self, call: Call | None = None) -> Iterator[None]:
        """Raise the client's exceptions inside as lsr-os's `EngineError`s; `call` (the client
        method and its arguments) lets a refusal say what was refused."""
        try:
            yield
        except Exception as exc:
            translated = self._translate(exc, call)
            if translated is None:
                raise
            raise translated from exc

    def _call(self, method: str, client_timeout: float | None = None, **kwargs) -> Any:
        """Call the client's `method` ("indices.create") and return its answer as plain data;
        `client_timeout`: how long the client waits for it (`timeout` in kwargs goes to the cluster)."""
        target = self._client_for(client_timeout)
        for part in method.split("."):
            target = getattr(target, part)
        with self.errors(Call(method, kwargs.get("index"))):
            return self._plain(target(**kwargs))

    def _answer_error(self, status: int | None, info: dict | None, text: str, call: Call | None) -> EngineError:
        """lsr-os's error for an HTTP error answer (`info`: its JSON body, else `text`). A refusal
        (401, 403) says whose credentials and what was refused, since that is what the user fixes."""
        detail = error_text(info) if info else text
        if status == 401:
            return AccessDenied(not_accepted(f"{self.display_name} at {self.where}", self.config, 401, detail,
                                             self.features.supports_api_keys), status, info)
        if status == 403:
            what = call.action if call else "make this request"
            return AccessDenied(f"{credentials(self.config)} may not {what} (HTTP 403 {detail})", status, info)
        kind = {400: BadRequest, 404: NotFound}.get(status, EngineError)
        return kind(f"HTTP {status} {detail}", status, info)

    def _client_for(self, timeout: float | None) -> Any:
        """The client for one call: a second one kept for calls that answer only when done
        (a force-merge, a snapshot), so the usual timeout stays short for everything else."""
        if timeout is None or timeout <= self.config.timeout:
            return self.client
        if timeout not in self._long_clients:
            self._long_clients[timeout] = self._new_client(timeout)
        return self._long_clients[timeout]

    @staticmethod
    def _plain(answer: Any) -> Any:
        """The answer as plain data (the Elasticsearch client wraps it in a response object)."""
        return getattr(answer, "body", answer)

    def error_text(self, exc: EngineError) -> str:
        """`type: reason` of an engine error, from its root cause when there is one."""
        return error_text(exc.info) if exc.info is not None else str(exc)

    # ------------------------------------------------------------------ the cluster

    def describe(self) -> dict:
        """Engine, version and health of the cluster, for `lsr-os info` and the served page."""
        health = self.health()
        return {"engine": self.display_name, "version": self.version, "cluster_name": health["cluster_name"],
                "status": health["status"], "number_of_nodes": health["number_of_nodes"]}

    def health(self, indices: str | None = None, wait_for_status: str | None = None,
               wait_s: float | None = None) -> dict:
        """Cluster health (of `indices`); with `wait_for_status`, the answer comes when the status
        is reached or `wait_s` seconds have passed (then `timed_out` is true)."""
        kwargs = {k: v for k, v in (("index", indices), ("wait_for_status", wait_for_status)) if v is not None}
        if wait_s is not None:
            kwargs["timeout"] = f"{wait_s:.0f}s"
        return self._call("cluster.health", client_timeout=None if wait_s is None else wait_s + 10, **kwargs)

    def data_nodes(self) -> int:
        """How many data nodes the cluster has (replicas need a second one)."""
        return len(self._call("nodes.info", node_id="data:true", metric="_none").get("nodes", {}))

    def node_plugins(self) -> dict[str, set[str]]:
        """{node name: names of the plugins it runs}."""
        nodes = self._call("nodes.info", metric="plugins")["nodes"]
        return {n.get("name", key): {p["name"] for p in n.get("plugins", [])} for key, n in nodes.items()}

    def repository_paths(self) -> dict[str, list[str]]:
        """{node name: its `path.repo` folders}: where an `fs` snapshot repository may lie."""
        nodes = self._call("nodes.info", metric="settings",
                           filter_path="nodes.*.name,nodes.*.settings.path.repo").get("nodes", {})
        out = {}
        for key, node in nodes.items():
            repo = node.get("settings", {}).get("path", {}).get("repo", [])
            out[node.get("name", key)] = [repo] if isinstance(repo, str) else list(repo)
        return out

    def setting(self, name: str) -> Any:
        """A cluster setting's value (transient, then persistent, then default); None if unset."""
        body = self._call("cluster.get_settings", include_defaults=True, filter_path=f"*.{name}")
        for level in ("transient", "persistent", "defaults"):
            value = body.get(level, {})
            for key in name.split("."):
                value = value.get(key, {}) if isinstance(value, dict) else {}
            if value not in ({}, None):
                return value
        return None

    def check_may_write(self, alias: str) -> None:
        """Raise `AccessDenied` when the cluster can tell, before anything is written, that the
        connected user may not load collections under `alias`. Here it cannot: the cluster's own
        refusal (a 403 on the first write, the index's creation) says it instead."""

    # ------------------------------------------------------------------ indices and aliases

    def exists(self, name: str) -> bool:
        """Whether an index or alias of this name exists."""
        return bool(self._call("indices.exists", index=name))

    def is_alias(self, name: str) -> bool:
        return bool(self._call("indices.exists_alias", name=name))

    def mappings(self, pattern: str) -> dict[str, dict]:
        """{index: its mappings} of the open indices matching `pattern`; {} when none does."""
        try:
            found = self._call("indices.get_mapping", index=pattern, expand_wildcards="open")
        except NotFound:
            return {}
        return {name: body.get("mappings", {}) for name, body in found.items()}

    def alias_targets(self, alias: str) -> list[str]:
        """The indices `alias` points to; [] when there is no such alias."""
        try:
            return sorted(self._call("indices.get_alias", name=alias))
        except NotFound:
            return []

    def index(self, name: str) -> dict:
        """{index: its settings, mappings and aliases} of the indices `name` resolves to."""
        return self._call("indices.get", index=name, expand_wildcards="open")

    def create_index(self, name: str, body: dict, wait_for_active_shards: int | str | None = None) -> dict:
        kwargs = {"wait_for_active_shards": str(wait_for_active_shards)} if wait_for_active_shards else {}
        return self._call("indices.create", index=name, body=body, **kwargs)

    def delete_indices(self, names: str | Sequence[str], missing_ok: bool = False) -> None:
        """Delete indices by name; a wildcard pattern is resolved to names first, since
        Elasticsearch refuses wildcard deletes by default (`action.destructive_requires_name`)."""
        wanted = [names] if isinstance(names, str) else list(names)
        exact = [n for n in wanted if "*" not in n]
        for pattern in (n for n in wanted if "*" in n):
            exact.extend(self._call("indices.get", index=pattern, expand_wildcards="all", filter_path="*.settings.index.uuid"))
        if exact:
            kwargs = {"ignore_unavailable": True} if missing_ok else {}
            self._call("indices.delete", index=",".join(sorted(set(exact))), **kwargs)

    def index_setting(self, index: str, name: str) -> Any:
        """One setting of one index (e.g. `index.number_of_shards`), as stored (a string)."""
        body = self._call("indices.get_settings", index=index, name=name, flat_settings=True)
        return body[index]["settings"].get(name)

    def put_index_settings(self, index: str, settings: dict) -> None:
        self._call("indices.put_settings", index=index, body=settings)

    def put_meta(self, index: str, meta: dict) -> None:
        """Replace the index's mapping `_meta` (lsr-os records what a load was there)."""
        self._call("indices.put_mapping", index=index, body={"_meta": meta})

    def update_aliases(self, actions: list[dict]) -> None:
        """Apply alias actions atomically (an alias swap is one add and one remove)."""
        self._call("indices.update_aliases", body={"actions": actions})

    def refresh(self, index: str) -> None:
        self._call("indices.refresh", index=index)

    def flush(self, index: str) -> None:
        self._call("indices.flush", index=index)

    def force_merge(self, index: str, max_segments: int = 1, timeout: float | None = None) -> None:
        self._call("indices.forcemerge", client_timeout=timeout, index=index, max_num_segments=max_segments)

    def count(self, index: str, query: dict | None = None) -> int:
        kwargs = {"body": {"query": query}} if query is not None else {}
        return int(self._call("count", index=index, **kwargs)["count"])

    def stats(self, index: str, metric: str | None = None, level: str | None = None,
              filter_path: str | None = None) -> dict:
        kwargs = {k: v for k, v in (("metric", metric), ("level", level), ("filter_path", filter_path)) if v}
        return self._call("indices.stats", index=index, **kwargs)

    def cat_indices(self, index: str) -> list[dict]:
        """`_cat/indices` rows (health, docs.count, store.size in bytes...) of the given indices."""
        return self._call("cat.indices", index=index, format="json", bytes="b")

    # ------------------------------------------------------------------ documents and search

    def bulk(self, payload: bytes, filter_path: str | None = None) -> dict:
        """Send one bulk request of ready NDJSON lines (serialised once by the caller)."""
        kwargs = {"filter_path": filter_path} if filter_path else {}
        return self._call("bulk", body=payload, **kwargs)

    def search(self, index: str, body: dict, preference: str | None = None) -> dict:
        kwargs = {"preference": preference} if preference else {}
        return self._call("search", index=index, body=body, **kwargs)

    def msearch(self, index: str, bodies: Sequence[dict], preference: str | None = None) -> list[dict]:
        """One answer per body, in order; an answer may be an error object (`{"error": ...}`)."""
        header: dict = {"index": index, **({"preference": preference} if preference else {})}
        lines = [line for body in bodies for line in (header, body)]
        return self._call("msearch", body=lines)["responses"]

    def ids(self, index: str) -> Iterator[str]:
        """Every document id of `index`: one scroll (the client's own helper) over ids, no sources."""
        with self.errors(Call("scan", index)):
            yield from (hit["_id"] for hit in self.scan(self.client, index=index, query={"_source": False},
                                                        size=5000))

    def analyze(self, index: str, body: dict) -> dict:
        return self._call("indices.analyze", index=index, body=body)

    def get_document(self, index: str, doc_id: str) -> dict | None:
        """The stored document (`_source` and all), or None when there is none with this id."""
        try:
            return self._call("get", index=index, id=doc_id)
        except NotFound:
            return None

    # ------------------------------------------------------------------ snapshots

    def repository(self, name: str) -> dict | None:
        """A snapshot repository's definition, or None when the cluster has none of this name."""
        try:
            return self._call("snapshot.get_repository", **{self.repository_argument: name})[name]
        except NotFound:
            return None

    def create_repository(self, name: str, body: dict) -> None:
        self._call("snapshot.create_repository", body=body, **{self.repository_argument: name})

    def delete_repository(self, name: str) -> None:
        self._call("snapshot.delete_repository", **{self.repository_argument: name})

    def create_snapshot(self, repository: str, snapshot: str, body: dict, timeout: float | None = None) -> dict:
        return self._call("snapshot.create", client_timeout=timeout, repository=repository, snapshot=snapshot,
                          body=body, wait_for_completion=True)

    def snapshots(self, repository: str) -> list[dict]:
        return self._call("snapshot.get", repository=repository, snapshot="_all").get("snapshots", [])

    def restore_snapshot(self, repository: str, snapshot: str, body: dict, timeout: float | None = None) -> dict:
        return self._call("snapshot.restore", client_timeout=timeout, repository=repository, snapshot=snapshot,
                          body=body, wait_for_completion=True)

    def delete_snapshot(self, repository: str, snapshot: str) -> None:
        self._call("snapshot.delete", repository=repository, snapshot=snapshot)

    @cached_property
    def max_clause_count(self) -> int:
        """The most clauses one query may have here (read once per connection)."""
        return self.features.max_clause_count()

    def close(self) -> None:
        for client in (self.client, *self._long_clients.values()):
            with contextlib.suppress(Exception):
                client.close()


def credentials(config: ClusterConfig) -> str:
    """The credentials requests carry, as a message names them (never the secret itself)."""
    if config.user is not None:
        return f"user {config.user!r}"
    if config.api_key:
        return "the API key"
    if config.aws_region:
        return "the AWS credentials"
    return "a request without credentials"


def not_accepted(who: str, config: ClusterConfig, status: int, detail: str, api_keys: bool) -> str:
    """The one line for credentials a cluster did not accept (HTTP 401), with what to check."""
    if config.user is not None:
        hint = "check the user and password"
    elif config.api_key:
        hint = "check the API key (the `encoded` value Elasticsearch gave when it made the key)"
    elif config.aws_region:
        hint = "check the AWS credentials, region and service"
    else:
        return (f"{who} needs credentials (HTTP {status} {detail}); give --user and --password"
                + (", or --api-key" if api_keys else ""))
    return f"{who} did not accept {credentials(config)} (HTTP {status} {detail}); {hint}"


def error_text(info: Any) -> str:
    """`type: reason` of an engine's error body (the error's type, its first root cause's reason),
    or the body as text."""
    err = info.get("error", info) if isinstance(info, dict) else info
    if isinstance(err, dict):
        root = (err.get("root_cause") or [{}])[0]
        text = f"{err.get('type')}: {root.get('reason') or err.get('reason')}"
        # Elasticsearch says here why credentials it was given failed (an API key's id, its format)
        extra = root.get("additional_unsuccessful_credentials") or err.get("additional_unsuccessful_credentials")
        return f"{text} ({extra})" if extra else text
    return str(err)
