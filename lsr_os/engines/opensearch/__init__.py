"""OpenSearch: `rank_features` fields, `rank_feature` queries, opensearch-py."""
