"""mappings/dashboards.ndjson: saved objects Dashboards can import, whose `image` fields are shown
as thumbnails through `lsr-os serve` (field format "Url", type image). The template's URL, in these
and in Kibana's (mappings/kibana.ndjson), is checked against the real route: the address `lsr-os
serve` listens on by default, and a path that the app answers with the image file."""

from __future__ import annotations

import json
from importlib import resources
from urllib.parse import quote, urlsplit

import pytest
from fastapi.testclient import TestClient

from lsr_os.cli import main
from encode_helpers import rgb
from lsr_os import index as ix
from lsr_os.config import ClusterConfig
from lsr_os.engines import engine_class
from lsr_os.serve import SearchService, ServeConfig, create_app


@pytest.fixture(scope="module")
def objects() -> list[dict]:
    text = resources.files("lsr_os.mappings").joinpath("dashboards.ndjson").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.strip()]
    return [json.loads(line) for line in lines]


def test_every_saved_object_has_the_import_structure(objects):
    assert len({o["id"] for o in objects}) == len(objects)
    for obj in objects:
        assert set(obj) >= {"id", "type", "attributes", "references", "migrationVersion"}, obj["id"]
        assert obj["type"] in ("index-pattern", "search") and obj["attributes"]["title"]
        assert isinstance(obj["references"], list) and obj["type"] in obj["migrationVersion"]
        if obj["type"] == "index-pattern":  # JSON inside strings, as the saved-objects API stores them
            assert isinstance(json.loads(obj["attributes"]["fields"]), list)
            assert isinstance(json.loads(obj["attributes"]["fieldFormatMap"]), dict)
        else:
            source = json.loads(obj["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"])
            refs = {r["name"]: r for r in obj["references"]}
            assert refs[source["indexRefName"]]["type"] == "index-pattern"
            assert refs[source["indexRefName"]]["id"] in {o["id"] for o in objects}


def test_both_collections_show_their_image_field_as_an_image_url(objects):
    patterns = [o for o in objects if o["type"] == "index-pattern"]
    assert {p["attributes"]["title"] for p in patterns} == {"lsr-images", "lsr-captions"}
    for pattern in patterns:
        formats = json.loads(pattern["attributes"]["fieldFormatMap"])
        collection = pattern["attributes"]["title"].split("-", 1)[1]
        assert set(formats) <= set(ix.load_mapping(collection)["mappings"]["properties"])
        assert formats["image"]["id"] == "url" and formats["image"]["params"]["type"] == "img"
        assert "{{value}}" in formats["image"]["params"]["urlTemplate"]
    searches = {o["id"]: o["attributes"]["columns"] for o in objects if o["type"] == "search"}
    assert all("image" in columns for columns in searches.values())


@pytest.mark.parametrize("app", ix.DASHBOARD_APPS)
def test_the_url_template_reaches_serve_s_image_route(app, tmp_path):
    """Both apps' data views (OpenSearch Dashboards' and Kibana's fill {{value}} the same way)."""
    objects = [json.loads(line) for line in ix.dashboards_objects("lsr", app).splitlines()]
    (tmp_path / "images").mkdir()
    rgb(3).save(tmp_path / "images" / "a b.png")
    # the route asks the cluster nothing, so none need answer (port 9)
    dead = engine_class("opensearch")(ClusterConfig(urls=("http://127.0.0.1:9",)), "0")
    service = SearchService(dead, ServeConfig(images=tmp_path))
    api = TestClient(create_app(service))
    serve_port = next(p for p in main.commands["serve"].params if p.name == "port").default
    for pattern in (o for o in objects if o["type"] == "index-pattern"):
        template = json.loads(pattern["attributes"]["fieldFormatMap"])["image"]["params"]["urlTemplate"]
        # {{value}} is filled URL-encoded (encodeURIComponent): the `image` path with its slash escaped
        url = urlsplit(template.replace("{{value}}", quote("images/a b.png", safe="")))
        assert url.hostname in ("localhost", "127.0.0.1") and url.port == serve_port
        res = api.get(url.path)
        assert res.status_code == 200 and res.content == (tmp_path / "images" / "a b.png").read_bytes()
    service.close()
