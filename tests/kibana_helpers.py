"""The request Kibana's Discover sends for a saved search, rebuilt from Kibana's sources (no Kibana
runs here), so that a test can replay it on a real Elasticsearch node.

Modelled: a data view without a time field, Kibana's default advanced settings, words typed into
the search bar, no filter pill. Each part and the source it follows (Kibana 9.x, elastic/kibana):

- Discover's fetch (discover/.../data_fetching/update_search_source.ts, fetch_documents.ts):
  sort from the saved search (`getSortForSearchSource`: `_score` desc when it has none and the data
  view no time field; no `_doc` tie breaker without a time field), `fields: [{field: "*",
  include_unmapped: true}]`, size = discover:sampleSize (500), `version: true`, `highlightAll`,
  `trackTotalHits: false` (set last, so it wins over update_search_source's `true`).
- SearchSource.flatten (data/common/search/search_source/search_source.ts): `_source: false` (a
  field list is asked for), `stored_fields: ["*"]`, empty `runtime_mappings` and `script_fields`;
  with source filters on the data view, the `*` field list becomes the data view's own fields
  (field caps' non-metadata fields, sorted by name) minus the filtered ones; the highlight request
  of field_formats' getHighlightRequest; sort normalised by normalize_sort_request.ts (`{"_score":
  {"order": "desc"}}`, no unmapped_type for `_score`).
- The query (kbn-es-query build_es_query.ts): Lucene text becomes `query_string` with
  query:queryString:options (`analyze_wildcard: true`) and dateFormat:tz's zone, in `must`
  (from_lucene.ts, decorate_query.ts); KQL free text is one `is` node with no field, a
  `multi_match` of type best_fields, lenient (kuery/functions/is.ts), put in `must` when the sort
  has `_score` and in `filter` otherwise (`filtersInMustClause`, search_source.ts; kuery and.ts).
- Sent (get_search_params.ts): `track_total_hits` and `preference` (courier:setRequestPreference
  "sessionId") as parameters, the data view's title as the index. Kibana's server sends it as an
  async search; the test node (Elasticsearch's integration-test distribution) has no async
  search, so it is replayed on `_search`, which runs the same query.
"""

from __future__ import annotations

import fnmatch
import json
import re

HIGHLIGHT = {"pre_tags": ["@kibana-highlighted-field@"], "post_tags": ["@/kibana-highlighted-field@"],
             "fields": {"*": {}}, "fragment_size": 2**31 - 1}
SAMPLE_SIZE = 500
# KQL's special characters and keywords: typed text with none of them is a single free-text value.
KQL_SYNTAX = re.compile(r'[\\():<>"*{}]|(^|\s)(or|and)\s|^not\s', re.IGNORECASE)


def search_language(search: dict) -> str:
    return json.loads(search["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"])["query"]["language"]


def discover_request(search: dict, data_view: dict, typed: str, field_caps: dict,
                     language: str | None = None) -> tuple[str, dict, dict]:
    """(index, URL parameters, body) of the request Discover sends when `typed` is entered over
    the saved `search` on `data_view` (both as `lsr-os dashboards --for kibana` writes them), in
    the search's language unless `language` ("lucene" or "kuery") says the user switched it.
    `field_caps` is Elasticsearch's `_field_caps?fields=*` answer for the data view's index."""
    language = language or search_language(search)
    saved_sort = search["attributes"]["sort"] or [["_score", "desc"]]
    sort = [{field: {"order": order}} for field, order in saved_sort]
    scored = any("_score" in s for s in sort)
    assert typed.strip(), "no words: Discover would send match_all (dropped), not a text query"
    if language == "lucene":
        clauses = [{"query_string": {"query": typed, "analyze_wildcard": True, "time_zone": "UTC"}}]
    else:
        assert not KQL_SYNTAX.search(typed), f"{typed!r} is KQL syntax, not one free-text value"
        clauses = [{"multi_match": {"type": "best_fields", "query": typed.strip(), "lenient": True}}]
    query = {"bool": {"must": clauses if language == "lucene" or scored else [],
                      "filter": [] if language == "lucene" or scored else clauses, "should": [], "must_not": []}}
    # Discover asks for [{"field": "*", "include_unmapped": true}]; the data view's source filters
    # (lsr-os's always have some) turn that into its own fields less the filtered ones.
    excluded = [f["value"] for f in json.loads(data_view["attributes"]["sourceFilters"])]
    assert excluded, "a data view without source filters: Discover would send the `*` field list"
    names = sorted(name for name, types in field_caps["fields"].items()
                   if not any(t.get("metadata_field") for t in types.values()))
    fields = [{"field": n} for n in names if not any(fnmatch.fnmatchcase(n, glob) for glob in excluded)]
    body = {"sort": sort, "fields": fields, "size": SAMPLE_SIZE, "version": True, "_source": False,
            "stored_fields": ["*"], "runtime_mappings": {}, "script_fields": {}, "query": query,
            "highlight": HIGHLIGHT}
    params = {"ignore_unavailable": "true", "track_total_hits": "false", "preference": "1764650000000"}
    return data_view["attributes"]["title"], params, body


def discover(client, index: str, params: dict, body: dict) -> list[dict]:
    """The hits of the replayed request (Elasticsearch's own client, the body sent as it is)."""
    answer = client.perform_request("POST", f"/{index}/_search", params=params, body=body,
                                    headers={"accept": "application/json", "content-type": "application/json"})
    return answer.body["hits"]["hits"]
