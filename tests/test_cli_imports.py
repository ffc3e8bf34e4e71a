"""Commands that need no model must not import the model stack (torch, transformers): a search with
a raw vector, collections, info, node and snapshot start in a fraction of a second."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNREACHABLE = ["--url", "http://127.0.0.1:9", "--timeout", "1"]  # discard port: nothing answers

# Runs one command in a fresh interpreter and prints the heavy modules it imported.
PROBE = """
import sys
exec(sys.argv.pop(1))
from lsr_os.cli import main
try:
    main.main(args=sys.argv[1:], prog_name="lsr-os", standalone_mode=False)
except BaseException as exc:
    print("ENDED " + type(exc).__name__)
print("IMPORTED " + ",".join(m for m in ("torch", "transformers", "numpy") if m in sys.modules))
"""


def run_probe(*args: str, before: str = "") -> tuple[set[str], str]:
    """The heavy modules a command imported, and what it printed (stdout and stderr)."""
    out = subprocess.run([sys.executable, "-c", PROBE, before, *args], capture_output=True, text=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120, check=True)
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("IMPORTED"))
    return set(filter(None, line.split(" ", 1)[1].split(","))), out.stdout + out.stderr


def imported(*args: str, before: str = "") -> set[str]:
    return run_probe(*args, before=before)[0]


@pytest.fixture(scope="module")
def weighted_head(tmp_path_factory):
    """A head folder with query weights (made here, where torch may load)."""
    import torch

    from lsr_os.models.head import SparseHead

    head = SparseHead(dense_size=8, hidden_size=16)
    head.query_weights = torch.rand(head.vocab_size)
    folder = tmp_path_factory.mktemp("head") / "head"
    head.save_pretrained(folder)
    return folder


def test_an_inference_free_text_search_imports_neither_torch_nor_transformers(weighted_head):
    """The process goes as far as the search request (here: a cluster that does not answer)."""
    heavy, output = run_probe("search", "two green stars", "--head", str(weighted_head), *UNREACHABLE)
    assert not heavy & {"torch", "transformers"} and "no cluster answered" in output, output


def test_a_text_without_content_is_refused_before_the_cluster_and_before_torch(weighted_head):
    heavy, output = run_probe("search", "the a of .", "--model", "demo:nowhere", "--head", str(weighted_head),
                              *UNREACHABLE)
    assert "no content word to search for" in output and "no cluster answered" not in output, output
    assert not heavy & {"torch", "transformers"}


@pytest.mark.parametrize("args", [
    ["search", "--vector-json", '{"dog": 1.0}', *UNREACHABLE],
    ["collections", "list", *UNREACHABLE],
    ["info", *UNREACHABLE],
    ["node", "status", "--port", "9"],
    ["snapshot", "list", *UNREACHABLE],
])
def test_commands_without_a_model_do_not_import_torch_or_transformers(args):
    assert not imported(*args) & {"torch", "transformers"}


def test_a_vector_search_does_not_import_numpy_either():
    """numpy alone costs more than a third of a bare opensearch-py process's start here."""
    assert "numpy" not in imported("search", "--vector-json", '{"dog": 1.0}', *UNREACHABLE)


def test_the_probe_sees_what_the_process_imported():
    assert imported("info", *UNREACHABLE, before="import torch") >= {"torch", "numpy"}


def test_the_install_puts_no_top_level_cli_module(tmp_path):
    """The app lives in lsr_os.cli; a bare `cli` in site-packages would collide with any other
    distribution's. Looked up from outside the source tree, where only the install is visible."""
    probe = "import importlib.util; print(importlib.util.find_spec('cli') is None, importlib.util.find_spec('lsr_os.cli') is not None)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, check=True,
                         env={"PATH": "/usr/bin:/bin"}, timeout=60)
    assert out.stdout.split() == ["True", "True"]


def test_the_root_cli_py_runs_the_same_app():
    out = subprocess.run([sys.executable, "cli.py", "--version"], capture_output=True, text=True, cwd=ROOT, check=True,
                         timeout=60)
    assert out.stdout.startswith("lsr-os, version ")
