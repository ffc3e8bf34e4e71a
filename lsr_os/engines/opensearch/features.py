"""What OpenSearch can do."""

from __future__ import annotations

from lsr_os.engines.base.features import BaseFeatures


class Features(BaseFeatures):
    sparse_field_type = "rank_features"
    escapes_feature_names = True  # `rank_feature` names `sparse.<feature>` and splits at the last dot
    supports_aws_sigv4 = True  # Amazon OpenSearch Service and Serverless
    default_max_clause_count = 1024  # OpenSearch 3.x's indices.query.bool.max_clause_count
