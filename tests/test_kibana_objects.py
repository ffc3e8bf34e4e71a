"""mappings/kibana.ndjson and `lsr-os dashboards --for kibana`: saved objects in the format Kibana
9.x's saved objects API imports (checked against Kibana's sources, no Kibana runs here): a data
view (`index-pattern`, its last migration 8.0.0) and a Discover search (`search`, model version 5,
"10.5.0") per collection, with core's migration version 8.8.0, references by name, and the ids,
titles and references of another prefix renamed."""

from __future__ import annotations

import json
from importlib import resources

import pytest
from click.testing import CliRunner

from lsr_os import index as ix
from lsr_os import plugin
from lsr_os.cli import main
from lsr_os.errors import ConfigError

INDEX_REF = "kibanaSavedObjectMeta.searchSourceJSON.index"
# The attributes a `search` of model version 5 may carry (Kibana's schema_legacy.ts: the 8.8.0
# schema plus model versions 1-5); Kibana validates created objects against it, unknowns refused.
SEARCH_V5_ATTRIBUTES = {
    "title", "description", "columns", "sort", "grid", "rowHeight", "rowsPerPage", "hideChart", "breakdownField",
    "kibanaSavedObjectMeta", "isTextBasedQuery", "usesAdHocDataView", "timeRestore", "timeRange", "refreshInterval",
    "viewMode", "hideAggregatedPreview", "hits", "version", "sampleSize", "headerRowHeight", "visContext", "density"}
# A data view's stored attributes (data_views/common/types.ts DataViewAttributes).
DATA_VIEW_ATTRIBUTES = {"title", "name", "type", "typeMeta", "timeFieldName", "sourceFilters", "fields",
                        "fieldFormatMap", "fieldAttrs", "runtimeFieldMap", "allowNoIndex", "allowHidden"}


def _objects(prefix: str = "lsr") -> list[dict]:
    return [json.loads(line) for line in ix.dashboards_objects(prefix, "kibana").splitlines()]


def test_the_packaged_file_is_the_objects_of_the_prefix_lsr():
    text = resources.files("lsr_os.mappings").joinpath("kibana.ndjson").read_text(encoding="utf-8")
    assert [json.loads(line) for line in text.splitlines() if line.strip()] == _objects("lsr")


def test_every_object_carries_kibana_9_s_export_fields():
    objects = _objects()
    assert len({o["id"] for o in objects}) == len(objects) == 4
    for obj in objects:
        assert set(obj) == {"id", "type", "attributes", "references", "coreMigrationVersion", "typeMigrationVersion",
                            "managed"}, obj["id"]
        assert obj["coreMigrationVersion"] == "8.8.0" and obj["managed"] is False
        assert obj["typeMigrationVersion"] == {"index-pattern": "8.0.0", "search": "10.5.0"}[obj["type"]]


def test_data_views_hold_their_settings_as_json_strings_and_hide_the_vectors():
    views = [o for o in _objects() if o["type"] == "index-pattern"]
    assert {v["attributes"]["title"] for v in views} == {"lsr-images", "lsr-captions"}
    for view in views:
        attrs = view["attributes"]
        assert set(attrs) <= DATA_VIEW_ATTRIBUTES and "timeFieldName" not in attrs and view["references"] == []
        assert json.loads(attrs["fields"]) == [] and json.loads(attrs["runtimeFieldMap"]) == {}
        collection = attrs["title"].split("-", 1)[1]
        mapped = set(ix.load_mapping(collection)["mappings"]["properties"]) | {plugin.FIELD}
        hidden = [f["value"] for f in json.loads(attrs["sourceFilters"])]
        assert set(hidden) == {"sparse", plugin.FIELD} and set(hidden) <= mapped
        formats = json.loads(attrs["fieldFormatMap"])
        assert set(formats) == {"image"} <= mapped
        assert formats["image"]["id"] == "url" and formats["image"]["params"]["type"] == "img"
        assert formats["image"]["params"]["urlTemplate"].endswith("/media/{{value}}")


def test_searches_reference_their_data_view_by_name_and_fit_model_version_5():
    objects = _objects()
    views = {o["id"]: o for o in objects if o["type"] == "index-pattern"}
    searches = {o["id"]: o for o in objects if o["type"] == "search"}
    assert set(searches) == {"lsr-images-top-terms", "lsr-captions-top-terms"}
    for search in searches.values():
        attrs = search["attributes"]
        assert set(attrs) <= SEARCH_V5_ATTRIBUTES and attrs["title"] and not attrs["isTextBasedQuery"]
        source = json.loads(attrs["kibanaSavedObjectMeta"]["searchSourceJSON"])
        assert "index" not in source and source["indexRefName"] == INDEX_REF and source["filter"] == []
        (ref,) = search["references"]
        assert ref == {"id": ref["id"], "name": INDEX_REF, "type": "index-pattern"} and ref["id"] in views
        collection = views[ref["id"]]["attributes"]["title"].split("-", 1)[1]
        assert "image" in attrs["columns"]
        assert set(attrs["columns"]) <= set(ix.load_mapping(collection)["mappings"]["properties"])
        assert attrs["rowHeight"] == -1  # Discover's "auto fit": a row as tall as its thumbnail
    images = searches["lsr-images-top-terms"]["attributes"]
    assert images["sort"] == [["_score", "desc"]]
    assert json.loads(images["kibanaSavedObjectMeta"]["searchSourceJSON"])["query"] == {"query": "", "language": "lucene"}


def test_another_prefix_renames_ids_references_titles_and_data_view_titles():
    objects = _objects("demo")
    ids = {o["id"] for o in objects}
    assert all(i.startswith("demo-") for i in ids)
    assert all(ref["id"] in ids for o in objects for ref in o["references"])
    assert {o["attributes"]["title"] for o in objects if o["type"] == "index-pattern"} == {"demo-images",
                                                                                            "demo-captions"}
    assert {o["attributes"]["title"] for o in objects if o["type"] == "search"} == {
        "lsr-os demo images: type words to rank them", "lsr-os demo captions: documents and their top terms"}


def test_the_cli_writes_them_for_kibana_and_keeps_dashboards_the_default(tmp_path):
    runner = CliRunner()
    assert runner.invoke(main, ["dashboards", "--prefix", "demo"]).output == ix.dashboards_objects("demo")
    result = runner.invoke(main, ["dashboards", "--for", "kibana", "--prefix", "demo"])
    assert result.exit_code == 0 and result.output == ix.dashboards_objects("demo", "kibana")
    out = tmp_path / "kibana.ndjson"
    result = runner.invoke(main, ["dashboards", "--for", "kibana", "--prefix", "demo", "--out", str(out)])
    assert result.exit_code == 0 and "import it in Kibana" in result.output
    assert out.read_text(encoding="utf-8") == ix.dashboards_objects("demo", "kibana")
    choices = next(p for p in main.commands["dashboards"].params if p.name == "app").type.choices
    assert list(choices) == list(ix.DASHBOARD_APPS)


def test_an_unknown_app_is_one_error_naming_the_choices():
    with pytest.raises(ConfigError, match="'grafana'.*opensearch-dashboards, kibana"):
        ix.dashboards_objects("lsr", "grafana")
