"""The public API (`lsr_os.<Name>`): every name resolves to its home, `import lsr_os` stays cheap,
and the documented paths (docs/api.md) run: models on tiny random weights, ingest and search on the
node."""

import math
import subprocess
import sys
from pathlib import Path

import pytest

import lsr_os

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "numpy")
# What an application that sends vector or inference-free queries, or loads records, touches.
MODEL_FREE = ["ClusterConfig", "connect", "Engine", "Searcher", "SearchResult", "run_search", "StaticQueryEncoder",
              "SparseRecord", "RecordStream", "read_jsonl", "write_jsonl", "IngestOptions", "IngestReport",
              "ingest", "ingest_collections", "LsrOsError", "ConfigError", "DataError", "ModelError",
              "ClusterError", "ClusterUnreachable", "CollectionMissing"]


def heavy_modules_after(code: str) -> set[str]:
    """The heavy modules a fresh interpreter has imported after running `code`."""
    probe = f"import sys\n{code}\nprint(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120)
    return set(filter(None, out.stdout.strip().split(",")))


def test_import_lsr_os_imports_neither_torch_transformers_nor_numpy():
    assert heavy_modules_after("import lsr_os") == set()


def test_the_model_free_names_resolve_without_the_model_stack():
    names = ", ".join(MODEL_FREE)
    assert heavy_modules_after(f"import lsr_os\nfrom lsr_os import {names}") == set()


def test_the_probe_sees_a_heavy_import():
    assert "torch" in heavy_modules_after("import lsr_os\nlsr_os.SparseHead")


@pytest.mark.parametrize("name", [n for n in lsr_os.__all__ if n != "__version__"])
def test_every_public_name_is_the_object_of_its_home_module(name):
    import importlib

    home = importlib.import_module(lsr_os._EXPORTS[name])
    assert getattr(lsr_os, name) is getattr(home, name)
    assert name in dir(lsr_os)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        lsr_os.NoSuchThing  # noqa: B018


def test_submodules_still_import_beside_the_lazy_names():
    from lsr_os import index, search

    assert index.ingest is lsr_os.ingest and search.Searcher is lsr_os.Searcher


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """A saved demo encoder and a head, both with random weights (as `lsr-os demo` saves them)."""
    from serve_helpers import make_demo_encoder

    root = tmp_path_factory.mktemp("models")
    lsr_os.SparseHead.init_offline(dense_size=256).save_pretrained(root / "head")
    return make_demo_encoder(root / "encoder"), root / "head"


def test_the_documented_encode_path_gives_sparse_vectors_of_vocabulary_terms(tiny_models):
    from PIL import Image

    model, head_dir = tiny_models
    encoder, head = lsr_os.load_encoder(model, device="cpu"), lsr_os.load_head(head_dir)
    images = [Image.new("RGB", (64, 64), colour) for colour in ((200, 30, 30), (30, 30, 200))]
    texts = ["a red ball on the grass", "two blue stars at night"]
    vocabulary = set(head.terms)
    image_vectors = head.encode_images(encoder.encode_images(images))
    caption_vectors = head.encode_captions(encoder.encode_texts(texts), texts)
    own_vectors = head.encode_captions(encoder.encode_texts(texts), texts, expand=False)
    assert len(image_vectors) == len(caption_vectors) == len(own_vectors) == 2
    for vector in image_vectors + caption_vectors:
        assert vector and set(vector) <= vocabulary
        assert all(math.isfinite(w) and w > 0 for w in vector.values())
    special = set(head.tokenizer.all_special_tokens)  # in every own-token mask; this head blocks none
    for text, vector in zip(texts, own_vectors):  # no expansion: only the text's own word pieces
        assert vector and set(vector) <= set(head.tokenizer.tokenize(text)) | special


@pytest.mark.integration
def test_the_documented_ingest_and_search_path_runs_on_the_node(engine, index_name):
    """As docs/api.md does it: connect to a URL (the engine is told from the cluster), ingest, search."""
    connected = lsr_os.connect(lsr_os.ClusterConfig(urls=engine.config.urls))
    assert isinstance(connected, lsr_os.Engine) and connected.name == engine.name
    records = [lsr_os.SparseRecord("a", {"dog": 2.0, "beach": 1.0}, {"image": "a.jpg"}),
               lsr_os.SparseRecord("b", {"cat": 2.0, "beach": 0.25}, {"image": "b.jpg"})]
    stream = lsr_os.RecordStream.of(records, source="public-api-test", total=len(records))
    report = lsr_os.ingest(connected, stream, alias=index_name, collection="images",
                           options=lsr_os.IngestOptions(progress=False))
    assert (report.count, report.failed, report.not_swapped) == (2, 0, None)
    result = lsr_os.Searcher.of(connected).search(index_name, {"dog": 1.0, "beach": 2.0}, k=5)
    assert [(h["id"], h["image"]) for h in result.hits] == [("a", "a.jpg"), ("b", "b.jpg")]
    assert [h["score"] for h in result.hits] == pytest.approx([4.0, 0.5], rel=1e-3)
    again = lsr_os.run_search(connected, vector_json='{"dog": 1.0, "beach": 2.0}', index=index_name, k=5)
    assert [h["id"] for h in again.hits] == ["a", "b"]
    by_config = lsr_os.run_search(lsr_os.ClusterConfig(urls=engine.config.urls), vector_json='{"dog": 1.0}',
                                  index=index_name, k=5)
    assert [h["id"] for h in by_config.hits] == ["a"]
