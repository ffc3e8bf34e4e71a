"""One line of invalid UTF-8 never crashes a reader: it is listed with its line and the rest goes on."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from lsr_os.cli import main
from encode_helpers import make_tiny_blip, rgb
from index_helpers import cli
from lsr_os.errors import EXIT_FAILURES
from lsr_os.models.head import SparseHead

pytestmark = pytest.mark.integration

GOOD = [json.dumps({"id": f"g{i}", "vector": {"dog": 1.0 + i, "cat": 0.5}, "split": "test"}).encode() for i in range(6)]
BAD = b'{"id": "bad", "vector": {"d\xff\xfeg": 1.0}}'


def test_ingest_lists_the_undecodable_line_and_indexes_every_good_one(engine, index_name, tmp_path):
    path = tmp_path / "images.jsonl"
    path.write_bytes(b"\n".join(GOOD[:3] + [BAD] + GOOD[3:]) + b"\n")
    failures = tmp_path / "failures.jsonl"
    res = cli(engine, "ingest", "--sparse", path, "--index", index_name, "--failures", failures)
    assert res.exit_code == EXIT_FAILURES, res.output
    assert "Traceback" not in res.output
    (listed,) = [json.loads(line) for line in failures.read_text().splitlines()]
    assert listed["where"] == f"{path}:4" and listed["what"] == "record" and "not UTF-8" in listed["reason"]
    engine.refresh(index_name)
    assert engine.count(index_name) == 6


def test_encode_and_sparsify_list_an_undecodable_captions_row_and_search_names_a_bad_vector_file(tmp_path):
    """Needs no node: the search fails on its query file before it connects."""
    for i in range(3):
        rgb(i).save(tmp_path / f"{i}.png")
    rows = [json.dumps({"image": f"{i}.png", "caption": f"photo {i}", "split": "test"}).encode() for i in range(3)]
    captions = tmp_path / "captions.jsonl"
    captions.write_bytes(b"\n".join([rows[0], b'{"image": "1.png", "caption": "caf\xe9"}', rows[1], rows[2]]) + b"\n")
    blip = make_tiny_blip(tmp_path / "blip")
    SparseHead.init_offline(dense_size=256).save_pretrained(tmp_path / "head")
    common = ["--captions", str(captions), "--model", str(blip), "--device", "cpu", "--workers", "0"]
    res = CliRunner().invoke(main, ["encode", *common, "--out", str(tmp_path / "dense")])
    assert res.exit_code == EXIT_FAILURES and "3 encoded" in res.output, res.output
    res = CliRunner().invoke(main, ["sparsify", *common, "--head", str(tmp_path / "head"), "--out",
                                    str(tmp_path / "sparse")])
    assert res.exit_code == EXIT_FAILURES, res.output
    for folder, name in (("dense", "failures.jsonl"), ("sparse", "failures-captions.jsonl")):
        rows_listed = [json.loads(x) for x in (tmp_path / folder / name).read_text().splitlines()]
        assert [(f["what"], f["where"]) for f in rows_listed] == [("row", f"{captions}:2")], rows_listed
        assert "not UTF-8" in rows_listed[0]["reason"]
    assert len((tmp_path / "sparse" / "captions.jsonl").read_text().splitlines()) == 3
    query = tmp_path / "q.json"
    query.write_bytes(b'{"d\xffg": 1.0}')
    res = CliRunner().invoke(main, ["search", "--vector-json", str(query), "--index", "absent",
                                    "--url", "http://127.0.0.1:9"])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 1 and len(lines) == 1 and f"--vector-json {query}: not UTF-8" in lines[0]
