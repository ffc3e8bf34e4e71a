"""What an engine can do, as flags callers ask instead of the engine's name.

Class attributes are facts of the engine; the properties ask the connected cluster once (a
cluster may or may not run the lsr-os plugin), as Django's features ask their database.
"""

from __future__ import annotations

import logging
from functools import cached_property
from typing import TYPE_CHECKING, ClassVar

from lsr_os.errors import AccessDenied, EngineError, NoAnswer

if TYPE_CHECKING:
    from lsr_os.engines.base.base import Engine

log = logging.getLogger(__name__)

MAX_CLAUSE_SETTING = "indices.query.bool.max_clause_count"
PLUGIN = "lsr-os"  # the lsr-os plugin's name on every engine


class BaseFeatures:
    # The sparse field's type, checked on every index lsr-os loads or resumes.
    sparse_field_type: ClassVar[str] = ""
    # Whether term names must be escaped to be feature names (OpenSearch's `rank_feature` query
    # splits `field.feature` at the last dot, so a term with a dot would match nothing).
    escapes_feature_names: ClassVar[bool] = False
    # Whether a search must ask for vectors to get them in `_source` (Elasticsearch 9.2 leaves
    # them out of `_source` unless asked).
    vectors_only_on_request: ClassVar[bool] = False
    # Whether the sparse query can prune light, frequent query terms in the engine
    # (Elasticsearch's `pruning_config`); lsr-os's own two-phase search works everywhere.
    has_sparse_pruning: ClassVar[bool] = False
    # Authentication beyond user and password.
    supports_aws_sigv4: ClassVar[bool] = False
    supports_api_keys: ClassVar[bool] = False
    # The engine's default max clause count, used when the cluster's cannot be read.
    default_max_clause_count: ClassVar[int] = 1024

    def __init__(self, engine: "Engine"):
        self.engine = engine

    @cached_property
    def has_lsr_os_plugin(self) -> bool:
        """Whether every node runs the lsr-os plugin (a node without it could not open an index
        that uses it)."""
        plugins = self.engine.node_plugins()
        return bool(plugins) and all(PLUGIN in names for names in plugins.values())

    def max_clause_count(self) -> int:
        """The cluster's max clause count (transient, persistent or default), else the engine's
        default; a query's terms and filters each count as one clause."""
        try:
            value = self.engine.setting(MAX_CLAUSE_SETTING)
        except NoAnswer:
            raise
        except EngineError as exc:
            # A read-only user may not read cluster settings (403): expected, so not a warning.
            log.log(logging.INFO if isinstance(exc, AccessDenied) else logging.WARNING,
                    "cannot read %s (HTTP %s); assuming %d", MAX_CLAUSE_SETTING, exc.status,
                    self.default_max_clause_count)
            return self.default_max_clause_count
        return int(value) if value is not None else self.default_max_clause_count
