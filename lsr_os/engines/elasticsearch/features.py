"""What Elasticsearch 9 can do (its integration-test distribution included: /work/shared/ES-FACTS.md
lists what that lacks, none of which lsr-os needs)."""

from __future__ import annotations

from lsr_os.engines.base.features import BaseFeatures


class Features(BaseFeatures):
    sparse_field_type = "sparse_vector"
    # 9.2 keeps vectors out of `_source` (index.mapping.exclude_source_vectors) and rebuilds them
    # from the field only for a search that asks.
    vectors_only_on_request = True
    has_sparse_pruning = True  # `prune` and `pruning_config` on the sparse_vector query
    supports_api_keys = True
    # What indices.query.bool.max_clause_count reads on a 1 GB node; the effective limit, derived
    # from the heap and the search threads, was higher (16,384) where it was measured.
    default_max_clause_count = 4096
