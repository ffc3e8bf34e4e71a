"""The whole job, offline, on the built-in world: what `lsr-os demo` runs.

world -> dense dual encoder (trained here) -> dense files -> sparse head (the paper's
schedule) -> two OpenSearch indices -> example searches with contact sheets -> evaluation of
dense vs sparse in both directions. Every step writes into one folder and is reused when a
re-run finds it finished, so a second run goes straight to the searches.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from lsr_os.engines.base.base import Engine

from lsr_os.search import DEMO_SEARCH_FILE
from lsr_os.sparse import heaviest_first

log = logging.getLogger(__name__)

DEFAULT_QUERIES = (
    "a red ball on the grass",
    "three small blue stars at night",
    "a big striped square on the beach",
    "purple triangles at the top",
    "a tiny dotted yellow diamond in the snow",
)


@dataclass
class DemoConfig:
    """Sizes of the demo; the defaults finish in a few minutes on 2 CPU cores."""

    out: Path = Path("lsr-os-demo")
    n_images: int = 2000
    # 40 epochs of batch 64 = 1,000 steps: what the CNN needs to learn shapes (probe >= 0.85).
    encoder_epochs: int = 40
    # 4 epochs (252 steps) reach sparse R@1 within a few points of the dense teacher; each epoch
    # costs ~35 s on 2 cores (the 30,522-term projection dominates).
    head_epochs: int = 4
    head_batch_size: int = 128
    # A few hundred steps instead of the paper's 200 epochs of MSCOCO: learning rates and
    # regularisers scaled up as in the synthetic-world training test (lsr_os.train tests).
    head_lr: float = 2e-3
    proj_lr: float = 1e-2
    # 1e-2 keeps ~23 terms an image; 3e-3 (~37 terms) gave the same R@1 and no better colour
    # words among the top 16 over both measured world sizes (+3.5 points at 2000, -10 at 800).
    reg: float = 1e-2
    seed: int = 0
    prefix: str = "demo"
    k: int = 5
    queries: tuple[str, ...] = DEFAULT_QUERIES
    progress: bool = True


@dataclass
class Example:
    """One example search: the query's heaviest terms and its top hits, and the same text searched
    without a model (inference-free): its terms and its top hits' ids."""

    query: str
    query_terms: list[tuple[str, float]]
    hits: list[dict]
    sheet: Path
    inference_free_terms: list[tuple[str, float]] = field(default_factory=list)
    inference_free_hits: list[str] = field(default_factory=list)

    @property
    def shared_hits(self) -> int:
        """How many of the inference-free top hits the model's top hits hold too."""
        return len(set(self.inference_free_hits) & {h["id"] for h in self.hits})


@dataclass
class DemoResult:
    examples: list[Example]
    report: dict  # lsr_os.evaluate.evaluate's report, with the dense teacher's figures
    train_report: dict  # the head trainer's test report (exact, in memory)
    seconds: dict[str, float] = field(default_factory=dict)
    out: Path = Path()
    words: dict = field(default_factory=dict)  # lsr_os.demo.words.word_precision of the served images

    @property
    def values_without_words(self) -> list[str]:
        """The attribute values ("blue (colour)") no image holds a caption word for."""
        return [f"{value} ({family})" for family, v in self.words.items()
                for value, row in v["values"].items() if row["r_precision"] == 0]


STEPS = ("world", "dense encoder", "encode", "sparse head", "ingest", "examples", "evaluate")


class _Steps:
    """Times each step and announces it (`step`, a line such as "[4/7] sparse head: training it (4
    epochs)") before it runs, so the progress bars that follow say which step they belong to."""

    def __init__(self, step: Callable[[str], None] | None = None) -> None:
        self.seconds: dict[str, float] = {}
        self.step = step

    def run(self, name: str, done: bool, fn, what: str = ""):
        heading = f"[{STEPS.index(name) + 1}/{len(STEPS)}] {name}: {'reusing the earlier output' if done else what}"
        log.info("step %s", heading)
        if self.step is not None:
            self.step(heading)
        t0 = time.perf_counter()
        result = None if done else fn()
        self.seconds[name] = round(time.perf_counter() - t0, 2)
        return result


def run_demo(engine: Engine, cfg: DemoConfig, step: Callable[[str], None] | None = None) -> DemoResult:
    """Run (or resume) every step of the demo into `cfg.out` against the cluster of `engine`;
    `step` is told each step's heading before the step runs."""
    from lsr_os.data import load_karpathy
    from lsr_os.demo import world
    from lsr_os.demo.encoder import train_demo_encoder
    from lsr_os.encode import EncodeOptions, encode_dataset
    from lsr_os.index import dashboards_objects
    from lsr_os.models import load_encoder
    from lsr_os.models.dense import MARKER_FILE
    from lsr_os.models.head import load_head
    from lsr_os.train import BEST_DIR, REPORT_FILE, TrainConfig, train

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    _check_settings(out, cfg)
    steps = _Steps(step)
    world_dir, enc_dir, dense_dir, head_dir = out / "world", out / "encoder", out / "dense", out / "head"

    meta_path = steps.run("world", False, lambda: world.build(world_dir, n_images=cfg.n_images, seed=cfg.seed),
                          f"{cfg.n_images} images with their captions in {world_dir} (kept when already there)")
    steps.run("dense encoder", (enc_dir / MARKER_FILE).exists(),
              lambda: train_demo_encoder(meta_path, world_dir, enc_dir, epochs=cfg.encoder_epochs, seed=cfg.seed,
                                         progress=cfg.progress),
              f"training the image and text encoder that stands in for BLIP ({cfg.encoder_epochs} epochs)")
    encoder = load_encoder(enc_dir, device="cpu")
    # encode_dataset resumes by id, so a finished folder costs one scan.
    steps.run("encode", False, lambda: encode_dataset(
        encoder, load_karpathy(meta_path, world_dir), dense_dir, EncodeOptions(progress=cfg.progress)),
        f"the images and captions to dense vectors in {dense_dir} (resumed by id)")
    head_cfg = TrainConfig(epochs=cfg.head_epochs, batch_size=cfg.head_batch_size, seed=cfg.seed, device="cpu",
                           lr_head=cfg.head_lr, lr_proj=cfg.proj_lr, q_reg=cfg.reg, d_reg=cfg.reg)
    steps.run("sparse head", (head_dir / REPORT_FILE).exists(),
              lambda: train(dense_dir, head_dir, head_cfg, progress=cfg.progress),
              f"training it on the dense vectors with the paper's schedule ({cfg.head_epochs} epochs), and with it "
              f"the query weights of text queries without a model")
    head = load_head(head_dir / BEST_DIR)
    train_report = json.loads((head_dir / REPORT_FILE).read_text())

    aliases = {c: f"{cfg.prefix}-{c}" for c in ("images", "captions")}
    steps.run("ingest", False, lambda: _ingest(engine, dense_dir, head_dir / BEST_DIR, aliases, cfg.progress),
              f"loading {' and '.join(aliases.values())} into {engine.display_name} (kept when they serve this head)")
    # What `lsr-os search --demo OUT` (and `serve --demo OUT`) needs: no other flag.
    (out / DEMO_SEARCH_FILE).write_text(json.dumps({
        "model": str(enc_dir.resolve()), "head": str((head_dir / BEST_DIR).resolve()), "prefix": cfg.prefix,
        "images": str(world_dir.resolve())}, indent=2))
    (out / "dashboards.ndjson").write_text(dashboards_objects(cfg.prefix), encoding="utf-8")
    (out / "kibana.ndjson").write_text(dashboards_objects(cfg.prefix, "kibana"), encoding="utf-8")
    examples = steps.run("examples", False, lambda: _examples(engine, encoder, head, head_dir / BEST_DIR,
                                                              aliases["images"], world_dir, cfg, out / "sheets"),
                         f"{len(cfg.queries)} text searches, a contact sheet each in {out / 'sheets'}")
    report = steps.run("evaluate", False, lambda: _evaluate(engine, dense_dir, head_dir / BEST_DIR, aliases,
                                                            out / "eval", cfg.progress),
                       "dense vs sparse recall on the test split, both directions and every text query mode, "
                       "with exact scoring beside; which words the terms speak")
    words = _words(head_dir / BEST_DIR, dense_dir, world_dir, out / "eval")
    return DemoResult(examples, report, train_report, steps.seconds, out, words)


def _check_settings(out: Path, cfg: DemoConfig) -> None:
    """Finished steps are reused only for the settings that produced them: refuse a mix."""
    from lsr_os.errors import ConfigError
    from lsr_os.train import TrainConfig

    defaults = TrainConfig()  # the head's query weights train with it: a head made without them is not reused
    settings = {"n_images": cfg.n_images, "seed": cfg.seed, "encoder_epochs": cfg.encoder_epochs,
                "head_epochs": cfg.head_epochs, "head_batch_size": cfg.head_batch_size, "head_lr": cfg.head_lr,
                "proj_lr": cfg.proj_lr, "reg": cfg.reg, "query_weights": defaults.query_weights,
                "query_reg": defaults.query_reg, "query_leak": defaults.query_leak}
    path = out / "demo-settings.json"
    if path.exists():
        before = json.loads(path.read_text())
        changed = sorted(k for k in settings if before.get(k) != settings[k])
        if changed:
            raise ConfigError(f"{out} holds a demo built with other settings ({', '.join(changed)} differ); "
                              "give another --out or delete that folder")
    else:
        path.write_text(json.dumps(settings, indent=2))


def _fingerprint(path: Path) -> str:
    """Which head produced an index: a hash of its weights file."""
    digest = hashlib.sha256()
    for f in sorted(path.glob("*.safetensors")):
        digest.update(f.read_bytes())
    return digest.hexdigest()[:16]


def _ingest(engine: Engine, dense_dir: Path, head_path: Path, aliases: dict[str, str], progress: bool) -> dict:
    """Load both collections; skipped when the aliases already serve this head's complete output."""
    from lsr_os.index import IngestOptions, ingest, serving_source
    from lsr_os.records import SourceOptions, open_source
    from lsr_os.sparse import RecordStream

    from lsr_os.static_query import has_query_weights

    source = open_source(SourceOptions(dense=dense_dir, head=head_path, device="cpu"))
    # The images get the plugin's text field when the head has query weights and the cluster runs the
    # plugin: a demo first loaded without the plugin loads its images again once the plugin is there.
    typed = has_query_weights(head_path) and engine.features.has_lsr_os_plugin
    reports = {}
    for collection, alias in aliases.items():
        key = f"demo:{collection}:{_fingerprint(head_path)}" + (":text" if typed and collection == "images" else "")
        if serving_source(engine, alias) == key:
            log.info("%s already serves %s", alias, key)
            continue
        stream = source.stream(collection)
        report = ingest(engine, RecordStream(stream.records, key, stream.total), alias, collection,
                        IngestOptions(progress=progress),
                        failures_path=dense_dir.parent / f"ingest-failures-{collection}.jsonl", head=head_path)
        reports[collection] = report.to_dict()
    return reports


def _examples(engine: Engine, encoder, head, head_path: Path, images_alias: str, world_dir: Path,
              cfg: DemoConfig, sheet_dir: Path) -> list[Example]:
    """Search the images with each example query and draw its contact sheet."""
    from lsr_os.search import Searcher
    from lsr_os.sheet import SheetHit, contact_sheet

    from lsr_os.static_query import StaticQueryEncoder

    searcher = Searcher(engine)
    vectors = head.encode_captions(encoder.encode_texts(list(cfg.queries)), list(cfg.queries))
    typed = StaticQueryEncoder.from_head(head_path).encode_each(list(cfg.queries))
    examples = []
    for n, (query, vector, free) in enumerate(zip(cfg.queries, vectors, typed), 1):
        # a query none of whose words has a weight has nothing to show without a model
        free_hits = [h["id"] for h in searcher.search(images_alias, free, cfg.k).hits] if free else []
        result = searcher.search(images_alias, vector, cfg.k, explain=True)
        prepared = result.query
        rows = [{"rank": h["rank"], "id": h["id"], "score": h["score"], "image": h.get("image"),
                 "matched_terms": [m["term"] for m in h["matches"]][:6]} for h in result.hits]
        sheet = contact_sheet(
            f"text -> image: \"{query}\"", [SheetHit(world_dir / r["image"], r["rank"], r["score"], r["matched_terms"])
                                            for r in rows if r["image"]],
            sheet_dir / f"query-{n}.png", columns=cfg.k)
        top_terms = heaviest_first(prepared.items())[:8]
        examples.append(Example(query, top_terms, rows, sheet, heaviest_first(free.items()), free_hits))
    return examples


def _words(head_path: Path, dense_dir: Path, world_dir: Path, out_dir: Path) -> dict:
    """Which words the served images hold (lsr_os.demo.words), over every image of the world;
    written to `out_dir/words.json`."""
    from lsr_os.demo.words import served_word_precision

    words = served_word_precision(head_path, dense_dir, world_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "words.json").write_text(json.dumps(words, indent=2), encoding="utf-8")
    return words


def _evaluate(engine: Engine, dense_dir: Path, head_path: Path, aliases: dict[str, str], out_dir: Path,
              progress: bool) -> dict:
    from lsr_os.evaluate import evaluate_source
    from lsr_os.records import SourceOptions, open_source

    source = open_source(SourceOptions(dense=dense_dir, head=head_path, split="test", device="cpu"))
    return evaluate_source(engine, source, "test", aliases["images"], aliases["captions"], out_dir=out_dir,
                           progress=progress)
