"""lsr_os.records: every source gives records in one schema, one split rule, resumable; readers of
user files turn undecodable bytes into a listed bad line, never a traceback."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import lsr_os.cli as cli
from encode_helpers import make_tiny_blip, rgb
from lsr_os.data import load_dataset
from lsr_os.dense_files import DatasetMeta
from lsr_os.encode import EncodeOptions, encode_dataset
from lsr_os.errors import EXIT_FAILURES, ConfigError, DataError
from lsr_os.models import load_encoder
from lsr_os.models.head import SparseHead
from lsr_os.records import SourceOptions, open_source, read_split
from lsr_os.search import parse_vector_json
from lsr_os.sparse import read_jsonl

BAD_UTF8 = b'{"id": "bad", "vector": {"d\xff\xfeg": 1.0}}\n'


def collect(stream, done=frozenset()):
    failures = []
    records = list(stream.records(frozenset(done), failures.append))
    return records, failures


# --------------------------------------------------------------------------- readers of user files


def test_sparse_jsonl_lists_bad_lines_with_line_column_and_id_and_reads_the_rest(tmp_path):
    path = tmp_path / "images.jsonl"
    path.write_bytes(b'{"id": "a", "vector": {"dog": 1.0}}\n' + BAD_UTF8
                     + b'{"id": "b", "vector": {"cat": 1.0,}}\n'
                     + b'{"id": "c", "vector": {"cat": "heavy"}}\n'
                     + b'{"id": "d", "vector": {"cat": 2.0}, "split": "test"}\n')
    records, failures = collect(open_source(SourceOptions(sparse=path)).stream("images"))
    assert [r.id for r in records] == ["a", "d"] and records[1].meta == {"split": "test"}
    by_line = {f.where.rsplit(":", 1)[1]: f for f in failures}
    assert set(by_line) == {"2", "3", "4"} and all(f.what == "record" for f in failures)
    assert "not UTF-8 text (byte 0xff at column 28)" in by_line["2"].reason and by_line["2"].id is None
    assert "at column 35" in by_line["3"].reason  # where the JSON breaks, not column 1
    assert by_line["4"].id == "c" and "not a number" in by_line["4"].reason
    with pytest.raises(DataError, match=rf"{path}:2: not UTF-8"):  # without a handler: one clear error
        list(read_jsonl(path))


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_captions_file_with_an_undecodable_line_keeps_the_other_rows(tmp_path, suffix):
    for i in range(3):
        rgb(i).save(tmp_path / f"{i}.png")
    if suffix == ".csv":
        lines = [b"image,caption,split", b"0.png,a dog,test", b"1.png,a c\xe9t,test", b"2.png,a bird,test"]
    else:
        lines = [json.dumps({"image": f"{i}.png", "caption": c, "split": "test"}).encode()
                 for i, c in ((0, "a dog"), (1, "a cat"), (2, "a bird"))]
        lines[1] = lines[1].replace(b"cat", b"c\xe9t")
    path = tmp_path / f"captions{suffix}"
    path.write_bytes(b"\n".join(lines) + b"\n")
    dataset = load_dataset(captions=path)
    assert [c.text for c in dataset.captions] == ["a dog", "a bird"]
    (failure,) = dataset.failures
    line = 3 if suffix == ".csv" else 2
    assert failure.what == "row" and failure.where == f"{path}:{line}" and "not UTF-8" in failure.reason


def test_karpathy_json_and_vector_json_that_are_not_utf8_name_the_file(tmp_path):
    bad = tmp_path / "dataset_coco.json"
    bad.write_bytes(b'{"images": [{"imgid": 1, "split": "test", "filename": "\xff.jpg", "sentences": []}]}')
    with pytest.raises(DataError, match=rf"{bad} is not UTF-8 text \(byte 0xff at offset 55\)"):
        DatasetMeta.load(bad)
    query = tmp_path / "q.json"
    query.write_bytes(b'{"d\xffg": 1.0}')
    with pytest.raises(DataError, match=rf"--vector-json {query}: not UTF-8"):
        parse_vector_json(str(query))
    with pytest.raises(DataError, match="must be an object of term: weight .* not list"):
        parse_vector_json("[1, 2]")
    assert parse_vector_json('{"vector": 1.5, "dog": 2}') == {"vector": 1.5, "dog": 2.0}  # a term, not a wrapper
    assert parse_vector_json('{"id": "7", "vector": {"dog": 2}}') == {"dog": 2.0}  # a sparse record
    with pytest.raises(DataError, match="not valid JSON: .* column 9"):
        parse_vector_json('{"dog": }')


# --------------------------------------------------------------------------- sources


def test_source_options_are_checked_before_anything_loads(tmp_path):
    (tmp_path / "x.jsonl").write_text("")
    cases = [(SourceOptions(), "give one source"),
             (SourceOptions(sparse=tmp_path / "x.jsonl", dense=tmp_path), "got --sparse and --dense"),
             (SourceOptions(dense=tmp_path), "--dense needs --head"),
             (SourceOptions(captions=tmp_path / "x.jsonl", head=tmp_path), "needs --model .* and --head"),
             (SourceOptions(data=tmp_path / "x.jsonl", model="m", head=tmp_path), "needs its image root"),
             (SourceOptions(sparse=tmp_path / "x.jsonl", images=tmp_path), "--images is the image root"),
             (SourceOptions(sparse=tmp_path / "x.jsonl", head=tmp_path), "already sparse")]
    for opts, message in cases:
        with pytest.raises(ConfigError, match=message):
            open_source(opts)
    with pytest.raises(ConfigError, match="one collection: add --collection"):
        open_source(SourceOptions(sparse=tmp_path / "x.jsonl")).collections()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny Karpathy dataset with train, restval and test images, its dense files and a head."""
    root = tmp_path_factory.mktemp("world")
    (root / "img").mkdir()
    images = []
    for i, split in enumerate(["train", "train", "restval", "restval", "test", "val"]):
        rgb(10 + i).save(root / "img" / f"{i}.png")
        images.append({"imgid": i, "split": split, "filepath": "img", "filename": f"{i}.png",
                       "sentences": [{"sentid": 10 * i + j, "raw": f"picture {i} number {j}"} for j in range(2)]})
    (root / "karpathy.json").write_text(json.dumps({"dataset": "tiny", "images": images}))
    blip = make_tiny_blip(root / "blip")
    encoder = load_encoder(blip, device="cpu")
    encode_dataset(encoder, load_dataset(data=root / "karpathy.json", images=root), root / "dense",
                   EncodeOptions(progress=False))
    SparseHead(dense_size=256, hidden_size=16).save_pretrained(root / "head")
    return root


def test_dense_and_dataset_sources_give_the_same_records_in_one_schema(world):
    dense = open_source(SourceOptions(dense=world / "dense", head=world / "head", split="train", device="cpu"))
    dataset = open_source(SourceOptions(data=world / "karpathy.json", images=world, model=str(world / "blip"),
                                        head=world / "head", split="train", workers=0, device="cpu"))
    for collection in ("images", "captions"):
        a, fa = collect(dense.stream(collection))
        b, fb = collect(dataset.stream(collection))
        assert not fa and not fb
        # "train" means train + restval in both
        assert [r.id for r in a] == [r.id for r in b] == (["0", "1", "2", "3"] if collection == "images" else
                                                          ["0", "1", "10", "11", "20", "21", "30", "31"])
        assert [r.meta for r in a] == [r.meta for r in b]
    assert b[0].meta == {"dataset": "tiny", "split": "train", "image": "img/0.png", "image_id": "0",
                         "caption": "picture 0 number 0"}
    assert a[0].vector.keys() == b[0].vector.keys()  # the same dense vector through the same head


def test_a_source_skips_done_ids_before_encoding_and_keys_differ_by_split_and_expansion(world):
    opts = SourceOptions(dense=world / "dense", head=world / "head", device="cpu")
    source = open_source(opts)
    every, _ = collect(source.stream("captions"))
    rest, _ = collect(source.stream("captions"), done={r.id for r in every[:5]})
    assert [r.id for r in rest] == [r.id for r in every[5:]]
    keys = {open_source(o).stream("captions").source for o in
            (opts, SourceOptions(dense=world / "dense", head=world / "head", split="test"),
             SourceOptions(dense=world / "dense", head=world / "head", expand=False))}
    assert len(keys) == 3


def test_sparsify_writes_the_schema_resumes_after_a_torn_line_and_reads_back_as_a_split(world, tmp_path):
    out = tmp_path / "sparse"
    args = ["sparsify", "--data", str(world / "karpathy.json"), "--images", str(world), "--model", str(world / "blip"),
            "--head", str(world / "head"), "--device", "cpu", "--workers", "0", "--top-k", "20", "--out", str(out)]
    res = CliRunner().invoke(cli.main, args)
    assert res.exit_code == 0, res.output
    lines = (out / "captions.jsonl").read_text().splitlines()
    (out / "captions.jsonl").write_text("\n".join(lines[:5]) + '\n{"id": "torn')  # an interrupted append
    res = CliRunner().invoke(cli.main, args)
    assert res.exit_code == 0 and "captions: wrote 7" in res.output and "5 already there" in res.output
    for name, n in (("images.jsonl", 6), ("captions.jsonl", 12)):
        records = [json.loads(line) for line in (out / name).read_text().splitlines()]
        assert len(records) == n and len({r["id"] for r in records}) == n
        assert all(0 < len(r["vector"]) <= 20 and r["split"] and r["image"] for r in records)
    split = read_split(open_source(SourceOptions(sparse=out, split="test")))
    assert list(split.images) == ["4"] and split.caption_image == {"40": "4", "41": "4"}


def test_sparsify_lists_bad_images_and_exits_4(world, tmp_path):
    data = json.loads((world / "karpathy.json").read_text())
    data["images"][1]["filename"] = "missing.png"
    (tmp_path / "k.json").write_text(json.dumps(data))
    res = CliRunner().invoke(cli.main, ["sparsify", "--data", str(tmp_path / "k.json"), "--images", str(world),
                                        "--model", str(world / "blip"), "--head", str(world / "head"), "--device",
                                        "cpu", "--workers", "0", "--collection", "images", "--out", str(tmp_path / "o")])
    assert res.exit_code == EXIT_FAILURES, res.output
    (failure,) = [json.loads(x) for x in (tmp_path / "o" / "failures-images.jsonl").read_text().splitlines()]
    # the full path tried, so a wrong image root shows in the failure itself
    assert failure == {"id": "1", "what": "image", "where": str(world / "img" / "missing.png"),
                       "reason": "file not found"}
    assert len((tmp_path / "o" / "images.jsonl").read_text().splitlines()) == 5



def test_evaluating_records_without_a_split_key_names_split_all(tmp_path):
    for name in ("images", "captions"):
        (tmp_path / f"{name}.jsonl").write_text(json.dumps({"id": "1", "vector": {"dog": 1.0}, "image_id": "1"}) + "\n")
    with pytest.raises(DataError, match=r"0 images and 0 captions in split test.*--split all"):
        read_split(open_source(SourceOptions(sparse=tmp_path, split="test")))
    split = read_split(open_source(SourceOptions(sparse=tmp_path, split="all")))
    assert list(split.images) == ["1"] and split.caption_image == {"1": "1"}
