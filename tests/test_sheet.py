"""Contact sheets: one PNG with the query and a tile per hit; a hit's image is looked for where its
collection's images were ingested from, and one that cannot be found is a tile that says so."""

from pathlib import Path

import pytest
from PIL import Image

from lsr_os.sheet import TILE, SheetHit, contact_sheet


def test_contact_sheet_draws_every_hit(tmp_path):
    paths = []
    for n, colour in enumerate(["red", "blue", "green"]):
        paths.append(tmp_path / f"{n}.png")
        Image.new("RGB", (64, 64), colour).save(paths[-1])
    hits = [SheetHit(p, n + 1, 10.0 - n, ["red", "ball"], relevant=n == 0) for n, p in enumerate(paths)]
    out = contact_sheet('text -> image: "a red ball"', hits, tmp_path / "sheets" / "q.png",
                        query_image=paths[0], columns=4)
    with Image.open(out) as sheet:
        assert sheet.width >= 4 * TILE and sheet.height > TILE
        # the second tile (first hit, red) is upscaled from the red source image
        assert sheet.getpixel((8 + (TILE + 8) + TILE // 2, sheet.height // 2)) == (255, 0, 0)


def _result(hits: list[dict], index: str = "mine-images"):
    from lsr_os.search import SearchResult

    return SearchResult(index, 1, {"red": 1.0, "ring": 0.5}, hits, {}, False, "a red ring", frozenset({"red", "ring"}))


def test_an_image_the_sheet_cannot_find_is_a_tile_that_says_so(tmp_path):
    from lsr_os.sheet import search_sheet

    (tmp_path / "images").mkdir()
    Image.new("RGB", (64, 64), "red").save(tmp_path / "images" / "there.png")
    hits = [{"rank": 1, "score": 2.0, "image": "images/there.png"}, {"rank": 2, "score": 1.0, "image": "images/gone.png"},
            {"rank": 3, "score": 0.5, "image": "../outside.png"}]
    report = search_sheet(_result(hits), tmp_path / "sheet.png", images=tmp_path)
    assert report.missing == ["images/gone.png", "../outside.png"]
    with Image.open(report.path) as sheet:
        y = sheet.height // 2
        assert sheet.getpixel((8 + TILE // 2, y)) == (255, 0, 0)  # the image found
        for n in (1, 2):  # the others: a pale tile with a line of text, not the image
            tile = sheet.crop((8 + n * (TILE + 8), y - TILE // 4, 8 + n * (TILE + 8) + TILE, y + TILE // 4))
            colours = {c for _, c in tile.getcolors(TILE * TILE)}
            assert len(colours) > 1 and (255, 0, 0) not in colours


def test_the_sheet_s_image_root_is_the_option_or_the_demo_s_for_its_own_collections(tmp_path):
    from lsr_os.errors import ConfigError
    from lsr_os.search import DEMO_SEARCH_FILE, images_root
    from lsr_os.sheet import search_sheet

    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / DEMO_SEARCH_FILE).write_text('{"model": "m", "head": "h", "prefix": "demo", "images": "/demo/world"}')
    assert images_root("mine-images", Path("/data/mine"), images=tmp_path) == tmp_path
    assert images_root("mine-images", Path("/data/mine"), demo=demo) == Path("/data/mine")
    assert images_root("demo-captions", None, demo=demo) == Path("/demo/world")
    assert images_root("mine-images", None, demo=demo) is None  # the demo's world is not mine's
    with pytest.raises(ConfigError, match="mine-images records no image root .*give --images ROOT"):
        search_sheet(_result([{"rank": 1, "score": 1.0, "image": "a.png"}]), tmp_path / "s.png", demo=demo)
