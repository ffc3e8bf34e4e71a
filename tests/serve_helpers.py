"""Shared by the `lsr-os serve` tests: a server on a free port in a thread, and a tiny demo-like
world on a real node (of either engine) whose right answers are known by construction.

The world: a few scenes of the built-in world (lsr_os.demo.world) with their captions, the demo
encoder with random weights (a tiny BLIP's random features are nearly identical for every input)
and a head (`SparseHead.init_offline`). Random models rank nothing meaningfully, so the
documents are made to agree with them, as a perfectly trained pair would: image i's document is
the (normalised) sparse vector the query model gives for its first caption, and each caption of
image i carries the sparse vector of image i. Typing image i's first caption must then bring
image i first, and uploading image i must bring its captions first (Cauchy-Schwarz: a unit vector
scores highest against itself); the tests check that the whole loop — page or API, batcher,
models, cluster, response — keeps that.
"""

from __future__ import annotations

import math
import random
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from index_helpers import load
from lsr_os.demo import world
from lsr_os.sparse import SparseRecord, prune

N_SCENES = 6
CAPTIONS_PER_IMAGE = 3
DOC_TERMS = 1024  # OpenSearch's default max clause count: its queries keep this many terms too


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """`lsr-os serve`'s app under uvicorn in a background thread, on a free port of 127.0.0.1."""

    def __init__(self, service):
        import uvicorn

        from lsr_os.serve import create_app, listen

        self.service = service
        self.sock = listen("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.app = create_app(service)
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_config=None, access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + 120  # the lifespan loads the models
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.service.close()


def unit(vector: dict[str, float], scale: float = 10.0) -> dict[str, float]:
    """The heaviest DOC_TERMS terms, scaled to norm `scale` (so every document weighs the same)."""
    kept = prune(vector, top_k=DOC_TERMS)
    norm = math.sqrt(sum(w * w for w in kept.values()))
    return {t: scale * w / norm for t, w in kept.items()}


@dataclass
class TinyWorld:
    root: Path
    model: Path
    head: Path
    prefix: str
    images: list[str] = field(default_factory=list)  # paths under root, scene i at index i
    captions: list[list[str]] = field(default_factory=list)

    @property
    def image_root(self) -> Path:
        return self.root / "world"


def make_demo_encoder(folder: Path, seed: int = 0) -> Path:
    """The demo dual encoder (lsr_os.demo.encoder) with random weights, saved as `lsr-os demo` saves it."""
    import torch

    from lsr_os.demo.encoder import DemoConfig, DemoDualEncoder, DemoEncoder

    torch.manual_seed(seed)
    DemoEncoder(DemoDualEncoder(DemoConfig()), torch.device("cpu"), torch.float32, "demo:random").save(folder)
    return folder


@contextmanager
def tiny_world(engine, tmp_path_factory, name: str) -> Iterator[TinyWorld]:
    """`build_world` on `engine` under a fresh `test-<name>-…` prefix; its collections are deleted
    afterwards."""
    prefix = f"test-{name}-{uuid.uuid4().hex[:8]}"
    try:
        yield build_world(tmp_path_factory.mktemp(name), engine, prefix)
    finally:
        engine.delete_indices(f"{prefix}-*", missing_ok=True)


def build_world(root: Path, engine, prefix: str) -> TinyWorld:
    """Render the scenes, build the models, load `<prefix>-images` and `<prefix>-captions`."""
    from lsr_os.data import load_image
    from lsr_os.models.head import SparseHead
    from lsr_os.search import QueryEncoder
    from lsr_os.sparse import dot

    tiny = TinyWorld(root, make_demo_encoder(root / "encoder"), root / "head", prefix)
    SparseHead.init_offline(dense_size=256).save_pretrained(tiny.head)
    rng = random.Random(7)
    (tiny.image_root / "images").mkdir(parents=True)
    seen = set()
    while len(tiny.images) < N_SCENES:
        scene = world.random_scene(rng)
        if (scene.colour, scene.shape) in seen:
            continue
        seen.add((scene.colour, scene.shape))
        path = f"images/scene_{len(tiny.images)}.png"
        world.render(scene, rng, size=96).save(tiny.image_root / path)
        tiny.images.append(path)
        tiny.captions.append(world.captions(scene, rng, CAPTIONS_PER_IMAGE))
    queries = QueryEncoder(str(tiny.model), tiny.head, "cpu")
    text_vectors = [unit(v) for v, _ in queries.encode_texts([caps[0] for caps in tiny.captions], "expanded")]
    image_vectors = [unit(v) for v in queries.images([load_image(tiny.image_root / p) for p in tiny.images])]
    for vectors in (text_vectors, image_vectors):  # the construction needs distinct documents (100 = 10 x 10)
        closest = max(dot(a, b) for i, a in enumerate(vectors) for b in vectors[i + 1:])
        assert closest < 0.97 * 100, f"two scenes' vectors are too alike (cosine {closest / 100:.3f})"
    image_docs = [SparseRecord(str(i), v, {"image": p, "split": "test"})
                  for i, (p, v) in enumerate(zip(tiny.images, text_vectors))]
    caption_docs = [SparseRecord(f"{i}-{j}", image_vectors[i],
                                 {"image": tiny.images[i], "image_id": str(i), "caption": text,
                                  "split": "train" if j == CAPTIONS_PER_IMAGE - 1 else "test"})
                    for i, caps in enumerate(tiny.captions) for j, text in enumerate(caps)]
    load(engine, iter(image_docs), f"{prefix}-images", "images")
    load(engine, iter(caption_docs), f"{prefix}-captions", "captions")
    return tiny


def weighted_head(tiny: TinyWorld) -> Path:
    """The tiny world's head with query weights (1 + id / V on every content term), saved beside it."""
    import torch

    from lsr_os import static_query as sq
    from lsr_os.models.head import load_head

    folder = tiny.root / "head-weighted"
    if not folder.exists():
        head = load_head(tiny.head)
        terms = head.terms
        mask = torch.tensor(sq.content_term_mask(terms, head.tokenizer.all_special_tokens))
        head.query_weights = (1.0 + torch.arange(len(terms)) / len(terms)) * mask
        head.query_weights_info = {"method": "test"}
        head.save_pretrained(folder)
    return folder


def load_static_world(engine, tiny: TinyWorld, head: Path) -> str:
    """`<prefix>-static-images`: scene i's document is the inference-free query of its first caption
    (normalised), so typing that caption without a model must bring scene i first (as in
    `build_world`). Returns the prefix; `tiny_world` deletes it with the rest."""
    from lsr_os.static_query import StaticQueryEncoder

    static = StaticQueryEncoder.from_head(head)
    prefix = f"{tiny.prefix}-static"
    docs = [SparseRecord(str(i), unit(static.encode(caps[0])), {"image": tiny.images[i], "split": "test"})
            for i, caps in enumerate(tiny.captions)]
    load(engine, iter(docs), f"{prefix}-images", "images")
    return prefix


class Forwarder:
    """A TCP forwarder from a free local port to the node: closing it is the cluster going away
    (connections refused, open ones cut), opening it again on the same port brings it back."""

    def __init__(self, target: str):
        from urllib.parse import urlsplit

        parts = urlsplit(target)
        self.target = (parts.hostname, parts.port)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._listener: socket.socket | None = None
        self._open: list[socket.socket] = []

    def start(self) -> "Forwarder":
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", self.port))
        self._listener.listen(64)
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()
        return self

    def stop(self) -> None:
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        except OSError:
            pass
        self._listener.close()
        for s in self._open:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
