"""Elasticsearch: `sparse_vector` fields and queries, the official `elasticsearch` client."""
