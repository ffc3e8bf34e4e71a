"""Contact sheets: one PNG with the query and a tile per hit."""

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
