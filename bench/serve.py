"""Text queries by query mode, through `lsr-os serve` and in process: inference-free (the head's
query weights, no model) against the demo encoder and a BLIP-base-sized model (mode expanded),
with the same queries sent as raw vectors for the baseline; and `lsr-os search TEXT`
(inference-free) as a process against `lsr-os search --vector-json` (the same query's vector).
Every system is measured in the same run, interleaved in rounds (the systems' order rotating).

Systems (k = 10 hits with their matched terms, as the web page asks for them):
  serve        `lsr-os serve` in its own process (--max-batch 32 --batch-wait-ms 2), driven by 1, 8
               and 32 concurrent HTTP clients (plain asyncio keep-alive connections, `Connection`,
               in this process): one server per model, and one with the head alone (no model:
               inference-free), which also answers
               the vector baseline (each text's inference-free vector as a vector query)
  in process   `QueryEncoder.encode_texts` on a batch of 1, 8 or 32 texts, then `Searcher.search`
               for each, one after the other (what a script would do); a query's latency runs from
               its batch's start to its search's end; the vector baseline searches the vectors
  process      `lsr-os search TEXT --head H` and `lsr-os search --vector-json V --index I`, a new
               process per query, alternating

Models: the demo encoder of `lsr-os demo` (its output folder: model, head and the collection to
search) and a BLIP-base-sized model (BlipConfig defaults: ViT-B/16, BERT-base text) with random
weights in front of the demo's head (both 256-d). Inference-free needs a head with query weights:
`--head` [default: the demo's]; `lsr-os add-query-weights` gives an existing head them. Query
texts: the demo world's test captions.

    python bench/serve.py --demo lsr-os-demo --head head-with-query-weights/
    python bench/serve.py --demo lsr-os-demo --device cuda --queries 512 --rounds 3

The engine (OpenSearch or Elasticsearch) is told from the cluster at --url.

Results: bench/results/<--name>.json and .md (machine facts, load average per cell).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import RESULTS, md_table, percentiles, write_results  # noqa: E402

K = 10
INFERENCE_FREE, VECTOR = "inference-free", "vector (baseline)"
DEMO, BLIP = "demo encoder", "BLIP-base size (random)"
MODELS = {"demo": DEMO, "blip": BLIP}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`lsr-os serve ARGS` in a subprocess on a free port, until closed."""

    def __init__(self, url: str, args: list[str]):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lsr_os", "serve", "--url", url, "--port", str(self.port), "--max-batch", "32",
             "--batch-wait-ms", "2", "--max-pending", "1024", *args], stdout=self.log, stderr=self.log, cwd=ROOT)
        deadline = time.monotonic() + 600
        while True:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"lsr-os serve exited: {self.log.read().decode(errors='replace')[-2000:]}")
            try:
                if (httpx.get(f"{self.base}/healthz", timeout=5).json().get("models") or {}).get("loaded"):
                    return
            except (httpx.TransportError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("lsr-os serve did not load its models in 600 s")
            time.sleep(0.5)

    def stats(self) -> dict:
        return httpx.get(f"{self.base}/healthz", timeout=30).json()["batching"]

    def cpu_s(self) -> float:
        """CPU seconds the server process has used (user + system)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


class Connection:
    """One keep-alive HTTP/1.1 connection of the load generator, as plain asyncio streams. httpx took
    2-5 ms of CPU a request here at 32 connections, more than the server it measures, on the same
    two cores; this costs a small fraction of that, so the cores go to the server and the node."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str):
        self.reader, self.writer, self.host = reader, writer, host

    @classmethod
    async def open(cls, base: str) -> "Connection":
        host, port = base.removeprefix("http://").split(":")
        return cls(*await asyncio.open_connection(host, int(port)), host)

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        status = int((await self.reader.readline()).split()[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


async def _drive(base: str, bodies: list[dict], clients: int, mode: str | None) -> tuple[float, list[float]]:
    """Send every body once from `clients` concurrent connections; (wall seconds, latency of each).
    Each answer must be a 200 in `mode` (so a server never answers another mode than the one measured)."""
    import orjson

    latencies: list[float] = []
    queue = iter([orjson.dumps(body) for body in bodies])
    connections = [await Connection.open(base) for _ in range(clients)]

    async def client(conn: Connection) -> None:
        for body in queue:
            t0 = time.perf_counter()
            status, answer = await conn.post("/search", body)
            latencies.append(time.perf_counter() - t0)
            if status != 200 or (mode and orjson.loads(answer)["mode"] != mode):
                raise RuntimeError(f"HTTP {status}: {answer[:300]!r}")

    try:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(conn) for conn in connections))
        return time.perf_counter() - t0, latencies
    finally:
        for conn in connections:
            conn.close()


def through_serve(server: Server, bodies: list[dict], clients: int, mode: str) -> dict:
    asyncio.run(_drive(server.base, bodies[: 2 * clients], clients, mode))  # warm the server's side
    before, server_cpu, client_cpu = server.stats(), server.cpu_s(), time.process_time()
    wall, latencies = asyncio.run(_drive(server.base, bodies, clients, mode))
    server_cpu, client_cpu = server.cpu_s() - server_cpu, time.process_time() - client_cpu
    after = server.stats()
    calls = after["batches"] - before["batches"]
    return {"qps": len(bodies) / wall, **percentiles(latencies), "model_calls": calls,
            "mean_batch": (after["queries"] - before["queries"]) / calls if calls else 0.0,
            "cpu_ms_per_query": 1000 * server_cpu / len(bodies), "client_cpu_ms_per_query": 1000 * client_cpu / len(bodies)}


def in_process(encode: Callable[[list], list], searcher, alias: str, queries: list, batch: int) -> dict:
    """Encode `batch` queries in one call, then search each; a query's latency ends with its search."""
    latencies: list[float] = []
    t0, cpu = time.perf_counter(), time.process_time()
    for start in range(0, len(queries), batch):
        b0 = time.perf_counter()
        for vector in encode(queries[start:start + batch]):
            searcher.search(alias, vector, K, explain=True)
            latencies.append(time.perf_counter() - b0)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu
    return {"qps": len(queries) / wall, **percentiles(latencies), "cpu_ms_per_query": 1000 * cpu / len(queries)}


def vectors_of(encoded: list) -> list[dict]:
    """The vectors of `QueryEncoder.encode_texts`' results (every text of the bench is searchable)."""
    bad = [r for r in encoded if isinstance(r, Exception)]
    if bad:
        raise RuntimeError(f"a query text cannot be searched: {bad[0]}")
    return [vector for vector, _ in encoded]


def processes(url: str, head: str, prefix: str, texts: list[str], vectors: list[dict], n: int) -> dict:
    """`lsr-os search TEXT --head H` vs `lsr-os search --vector-json V` of the same query, a process
    each, alternating (which goes first alternates too)."""
    cli = [sys.executable, str(ROOT / "cli.py"), "search", "--url", url, "-k", str(K), "--json"]
    runs = {"lsr-os search TEXT (inference-free)": lambda i: cli + [texts[i], "--head", head, "--prefix", prefix],
            "lsr-os search --vector-json": lambda i: cli + ["--vector-json", json.dumps(vectors[i]), "--prefix", prefix]}
    walls: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(n):
        for name in (list(runs) if i % 2 == 0 else list(runs)[::-1]):
            t0 = time.perf_counter()
            done = subprocess.run(runs[name](i), capture_output=True, text=True, cwd=ROOT,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)})
            walls[name].append(time.perf_counter() - t0)
            if done.returncode != 0:
                raise RuntimeError(f"{name} failed: {done.stderr[-500:]}")
    return {name: {"qps": len(w) / sum(w), **percentiles(w)} for name, w in walls.items()}


def load_avg() -> float:
    return round(os.getloadavg()[0], 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", required=True, type=Path, help="output folder of `lsr-os demo` (model, head, collection)")
    ap.add_argument("--head", type=Path, default=None,
                    help="head with query weights for inference-free [default: the demo's]")
    ap.add_argument("--url", default=os.environ.get("OPENSEARCH_URL") or os.environ.get("ELASTICSEARCH_URL")
                    or "http://localhost:9200", help="the cluster, OpenSearch or Elasticsearch (told from its answer)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--queries", type=int, default=128, help="queries per measurement")
    ap.add_argument("--clients", default="1,8,32", help="concurrent clients (and in-process batch sizes)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--processes", type=int, default=20, help="process pairs per round (text and vector-json)")
    ap.add_argument("--models", default="demo,blip", help="models to compare with inference-free: demo, blip (or none)")
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="torch CPU threads of the servers and of the library here (serve --torch-threads)")
    ap.add_argument("--name", default=None, help="results name [default: serve_modes_<device>]")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = ap.parse_args()
    import torch

    from lsr_os.config import ClusterConfig
    from lsr_os.engines import connect
    from lsr_os.search import QueryEncoder, Searcher, load_demo_settings

    torch.set_num_threads(args.torch_threads)
    clients = [int(c) for c in args.clients.split(",")]
    settings = load_demo_settings(args.demo)
    head = str(args.head or settings["head"])
    prefix, alias = settings["prefix"], f"{settings['prefix']}-images"
    meta = json.loads((Path(settings["images"]) / "dataset_meta.json").read_text())
    texts = [s["raw"] for im in meta["images"] if im["split"] == "test" for s in im["sentences"]][: args.queries]
    static = QueryEncoder(None, head)
    vectors = vectors_of(static.encode_texts(texts, INFERENCE_FREE))
    engine = connect(ClusterConfig(urls=(args.url,)))
    searcher = Searcher(engine)
    t0 = time.perf_counter()
    # each system: (serve server, bodies, mode the answers must be in; in-process encode of a batch)
    systems: dict[str, tuple] = {}
    servers: list[Server] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            print("starting the servers and loading the models in process", flush=True)
            headonly = Server(args.url, ["--head", head, "--prefix", prefix])
            servers.append(headonly)
            systems[INFERENCE_FREE] = (headonly, [{"text": t, "k": K} for t in texts], INFERENCE_FREE,
                                       lambda batch: vectors_of(static.encode_texts(batch, INFERENCE_FREE)))
            systems[VECTOR] = (headonly, [{"vector": v, "k": K} for v in vectors], "vector", lambda batch: batch)
            for short in filter(None, args.models.split(",")):
                name = MODELS.get(short)
                if name == DEMO:
                    model = settings["model"]
                elif name == BLIP:
                    from bench.encode_throughput import build_blip_base

                    model = str(build_blip_base(Path(tmp) / "blip"))
                else:
                    raise SystemExit(f"--models: {short!r} is neither {' nor '.join(MODELS)}")
                server = Server(args.url, ["--model", model, "--head", settings["head"], "--prefix", prefix,
                                           "--device", args.device, "--torch-threads", str(args.torch_threads)])
                servers.append(server)
                queries = QueryEncoder(model, settings["head"], args.device)
                queries.encode_texts(texts[:4], "expanded")  # load and warm
                systems[name] = (server, [{"text": t, "k": K} for t in texts], "expanded",
                                 lambda batch, q=queries: vectors_of(q.encode_texts(batch, "expanded")))
            rows = measure(systems, searcher, alias, texts, vectors, clients, args.rounds)
            proc_rows = []
            for rnd in range(args.rounds):
                before = load_avg()
                for name, m in processes(args.url, head, prefix, texts, vectors, args.processes).items():
                    proc_rows.append({"system": name, "round": rnd, "load_before": before, "load_after": load_avg(), **m})
                print(f"round {rnd}: processes done", flush=True)
        finally:
            for server in servers:
                server.close()
    report(rows, proc_rows, args, clients, time.perf_counter() - t0, alias, f"{engine.display_name} {engine.version}")


def measure(systems: dict, searcher, alias: str, texts: list[str], vectors: list[dict], clients: list[int],
            rounds: int) -> list[dict]:
    """Every (system, where, clients) cell once per round, the systems' order rotating each round."""
    rows: list[dict] = []
    names = list(systems)
    for rnd in range(rounds):
        for n in clients:
            order = names[rnd % len(names):] + names[:rnd % len(names)]
            for name in order:
                server, bodies, mode, encode = systems[name]
                queries = vectors if name == VECTOR else texts
                for where, run in (("serve", lambda: through_serve(server, bodies, n, mode)),
                                   ("in process", lambda: in_process(encode, searcher, alias, queries, n))):
                    before = load_avg()
                    row = {"query": name, "where": where, "clients / batch": n, "round": rnd, "load_before": before,
                           **run()}
                    rows.append({**row, "load_after": load_avg()})
                    print(f"round {rnd} {name} {where} x{n}: {row['qps']:.1f} q/s, p50 {row['p50_ms']:.1f} ms",
                          flush=True)
    return rows


def summarise(rows: list[dict], keys: tuple[str, ...]) -> list[dict]:
    """Per group of `keys`: the median over rounds of q/s, p50, p99 (and batch, CPU), and the load range."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    out = []
    for key, rs in groups.items():
        loads = [x for r in rs for x in (r["load_before"], r["load_after"])]
        row = dict(zip(keys, key))
        row.update({"q/s": statistics.median(r["qps"] for r in rs), "p50 ms": statistics.median(r["p50_ms"] for r in rs),
                    "p99 ms": statistics.median(r["p99_ms"] for r in rs), "load avg": f"{min(loads):.1f}-{max(loads):.1f}",
                    "rounds": len(rs)})
        for col, field in (("mean batch", "mean_batch"), ("CPU ms/q", "cpu_ms_per_query"),
                           ("client CPU ms/q", "client_cpu_ms_per_query")):
            row[col] = statistics.median(r[field] for r in rs) if field in rs[0] else ""
        out.append(row)
    return out


def report(rows: list[dict], proc_rows: list[dict], args, clients: list[int], seconds: float, alias: str,
           engine: str) -> None:
    summary = summarise(rows, ("query", "where", "clients / batch"))
    procs = summarise(proc_rows, ("system",))
    cell = {(r["query"], r["where"], r["clients / batch"]): r for r in summary}
    top = max(clients)
    goals = []
    if (BLIP, "serve", top) in cell:
        ratio = cell[(INFERENCE_FREE, "serve", top)]["q/s"] / cell[(BLIP, "serve", top)]["q/s"]
        goals.append({"goal": f"serve without a model >= 10x the BLIP-base-sized model's q/s at {top} clients",
                      "measured": f"{ratio:.1f}x", "met": ratio >= 10})
    for n in clients:
        ratio = cell[(INFERENCE_FREE, "serve", n)]["p50 ms"] / cell[(VECTOR, "serve", n)]["p50 ms"]
        goals.append({"goal": f"serve inference-free p50 <= 1.2x a vector query's, {n} clients",
                      "measured": f"{ratio:.2f}x", "met": ratio <= 1.2})
    by_name = {r["system"]: r for r in procs}
    ratio = by_name["lsr-os search TEXT (inference-free)"]["p50 ms"] / by_name["lsr-os search --vector-json"]["p50 ms"]
    goals.append({"goal": "`lsr-os search TEXT` (inference-free) process p50 <= 1.5x `--vector-json`'s",
                  "measured": f"{ratio:.2f}x", "met": ratio <= 1.5})
    columns = ["query", "where", "clients / batch", "q/s", "p50 ms", "p99 ms", "mean batch", "CPU ms/q",
               "client CPU ms/q", "load avg"]
    md = (f"Text queries by query mode (k = {K}, matched terms included), through `lsr-os serve` and in process, "
          f"{args.queries} queries per cell, {args.rounds} rounds interleaved (the systems' order rotating), medians "
          f"over rounds; device {args.device}, torch threads {args.torch_threads} (model servers and library). "
          f"inference-free: the head's query weights, no model (the server has the head alone); vector (baseline): "
          f"each text's inference-free vector sent as a vector query (same server); the models: mode expanded. "
          f"The HTTP clients, the servers, the in-process library and the {engine} node share this machine's "
          f"cores. Query texts: the demo world's test captions; collection: {alias}. \"mean batch\": queries per "
          f"model call inside the server; \"CPU ms/q\": CPU time per query of the server process (serve) or of this "
          f"process (in process), the node's not included; \"client CPU ms/q\": the load generator's (plain asyncio "
          f"keep-alive connections, in this process). Total {seconds:.0f} s.\n\n"
          + md_table(summary, columns)
          + f"\n\nProcesses, {args.processes} pairs per round, alternating:\n\n"
          + md_table(procs, ["system", "q/s", "p50 ms", "p99 ms", "load avg", "rounds"])
          + "\n\nGoals:\n\n" + md_table(goals, ["goal", "measured", "met"]))
    name = args.name or f"serve_modes_{args.device.split(':')[0]}"
    path = write_results(name, {"rows": rows, "process_rows": proc_rows, "summary": summary, "processes": procs,
                                "goals": goals, "engine": engine, "settings": {**vars(args), "demo": str(args.demo),
                                                             "head": str(args.head), "out": str(args.out)}},
                         md, args.out)
    print(md)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
