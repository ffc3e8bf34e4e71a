"""Text queries per second and latency through `lsr-os serve`, against the library in process and
the CLI per call, all measured in the same run and interleaved in rounds.

Systems (k = 10 hits with their matched terms, as the web page asks for them):
  serve, batching   `lsr-os serve` in its own process (--max-batch 32 --batch-wait-ms 2), driven by
                    1, 8 and 32 concurrent HTTP clients (asyncio + httpx, in this process)
  serve, no batch   the same with --max-batch 1: one model call per query
  library           in this process: `QueryEncoder.texts` on a batch of 1, 8 or 32 texts, then
                    `Searcher.search` for each, one after the other (what a script would do)
  CLI per call      `lsr-os search TEXT --model --head` as a new process per query (models load each time)

Models: the demo encoder of `lsr-os demo` (its output folder: model, head and the collection to
search), and a BLIP-base-sized model (BlipConfig defaults: ViT-B/16, BERT-base text) with random
weights in front of the demo's head (both 256-d), searching the same collection. Query texts are
the demo world's test captions.

    python bench/serve.py --demo lsr-os-demo                       # CPU: both models, 2 rounds
    python bench/serve.py --demo lsr-os-demo --device cuda --queries 512 --rounds 3

Results: bench/results/serve_<device>.json and .md (machine facts, load average per cell).
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

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import md_table, percentiles, write_results  # noqa: E402

K = 10


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`lsr-os serve` in a subprocess on a free port, until closed."""

    def __init__(self, url: str, model: str, head: str, prefix: str, device: str, max_batch: int, wait_ms: float,
                 threads: int):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lsr_os", "serve", "--url", url, "--model", model, "--head", head, "--prefix",
             prefix, "--port", str(self.port), "--device", device, "--max-batch", str(max_batch),
             "--batch-wait-ms", str(wait_ms), "--max-pending", "1024", "--torch-threads", str(threads)],
            stdout=self.log, stderr=self.log, cwd=Path(__file__).resolve().parent.parent)
        deadline = time.monotonic() + 600
        while True:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"lsr-os serve exited: {self.log.read().decode(errors='replace')[-2000:]}")
            try:
                if httpx.get(f"{self.base}/healthz", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("lsr-os serve did not become healthy in 600 s")
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


async def _drive(base: str, texts: list[str], clients: int) -> tuple[float, list[float]]:
    """Send every text once from `clients` concurrent clients; (wall seconds, latency of each)."""
    latencies: list[float] = []
    queue = iter(texts)
    async with httpx.AsyncClient(base_url=base, timeout=300,
                                 limits=httpx.Limits(max_connections=clients, max_keepalive_connections=clients)) as http:
        async def client() -> None:
            for text in queue:
                t0 = time.perf_counter()
                res = await http.post("/search", json={"text": text, "k": K})
                if res.status_code != 200:
                    raise RuntimeError(f"HTTP {res.status_code}: {res.text[:300]}")
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return time.perf_counter() - t0, latencies


def through_serve(server: Server, texts: list[str], clients: int) -> dict:
    asyncio.run(_drive(server.base, texts[: 2 * clients], clients))  # warm connections and the model
    before, server_cpu, client_cpu = server.stats(), server.cpu_s(), time.process_time()
    wall, latencies = asyncio.run(_drive(server.base, texts, clients))
    client_cpu, server_cpu = time.process_time() - client_cpu, server.cpu_s() - server_cpu
    after = server.stats()
    calls = after["batches"] - before["batches"]
    return {"qps": len(texts) / wall, **percentiles(latencies), "model_calls": calls,
            "mean_batch": (after["queries"] - before["queries"]) / max(calls, 1),
            "cpu_ms_per_query": 1000 * server_cpu / len(texts), "client_cpu_ms_per_query": 1000 * client_cpu / len(texts)}


def in_process(queries, searcher, alias: str, texts: list[str], batch: int) -> dict:
    """Encode `batch` texts in one call, then search each; a query's latency ends with its search."""
    latencies: list[float] = []
    t0, cpu = time.perf_counter(), time.process_time()
    for start in range(0, len(texts), batch):
        b0 = time.perf_counter()
        for vector, _ in queries.encode_texts(texts[start:start + batch], "expanded"):
            searcher.search(alias, vector, K, explain=True)
            latencies.append(time.perf_counter() - b0)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu
    return {"qps": len(texts) / wall, **percentiles(latencies), "cpu_ms_per_query": 1000 * cpu / len(texts)}


def cli_per_call(url: str, model: str, head: str, prefix: str, device: str, texts: list[str]) -> dict:
    latencies = []
    for text in texts:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "lsr_os", "search", text, "--url", url, "--model", model, "--head", head,
                        "--prefix", prefix, "--device", device, "-k", str(K), "--json"], check=True,
                       capture_output=True, cwd=Path(__file__).resolve().parent.parent)
        latencies.append(time.perf_counter() - t0)
    return {"qps": len(texts) / sum(latencies), **percentiles(latencies)}


def load_avg() -> float:
    return round(os.getloadavg()[0], 2)


def bench_model(name: str, model: str, head: str, args, texts: list[str]) -> list[dict]:
    from lsr_os.config import ClusterConfig, connect
    from lsr_os.search import QueryEncoder, Searcher

    settings = json.loads((Path(args.demo) / "search.json").read_text())
    prefix, alias = settings["prefix"], f"{settings['prefix']}-images"
    print(f"[{name}] starting two servers and loading the model in process", flush=True)
    servers = {"serve, batching": Server(args.url, model, head, prefix, args.device, 32, 2.0, args.torch_threads),
               "serve, no batching": Server(args.url, model, head, prefix, args.device, 1, 0.0, args.torch_threads)}
    queries = QueryEncoder(model, head, args.device)
    searcher = Searcher(connect(ClusterConfig(urls=(args.url,))))
    queries.encode_texts(texts[:4], "expanded")  # load and warm
    rows: list[dict] = []
    try:
        for rnd in range(args.rounds):
            for clients in args.clients:
                for system, server in servers.items():
                    row = {"model": name, "system": system, "clients / batch": clients, "round": rnd,
                           "load_before": load_avg(), **through_serve(server, texts, clients)}
                    rows.append({**row, "load_after": load_avg()})
                    print(f"[{name}] round {rnd} {system} x{clients}: {row['qps']:.1f} q/s", flush=True)
                row = {"model": name, "system": "library in process", "clients / batch": clients, "round": rnd,
                       "load_before": load_avg(), **in_process(queries, searcher, alias, texts, clients)}
                rows.append({**row, "load_after": load_avg()})
                print(f"[{name}] round {rnd} library batch {clients}: {row['qps']:.1f} q/s", flush=True)
            row = {"model": name, "system": "CLI per call", "clients / batch": 1, "round": rnd, "load_before": load_avg(),
                   **cli_per_call(args.url, model, head, prefix, args.device, texts[:args.cli_calls])}
            rows.append({**row, "load_after": load_avg()})
            print(f"[{name}] round {rnd} CLI: {row['qps']:.2f} q/s", flush=True)
    finally:
        for server in servers.values():
            server.close()
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Per (model, system, clients): the median over rounds of q/s, p50 and p99, and the load range."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["system"], r["clients / batch"]), []).append(r)
    out = []
    for (model, system, clients), rs in groups.items():
        loads = [x for r in rs for x in (r["load_before"], r["load_after"])]
        out.append({"model": model, "system": system, "clients / batch": clients,
                    "q/s": statistics.median(r["qps"] for r in rs), "p50 ms": statistics.median(r["p50_ms"] for r in rs),
                    "p99 ms": statistics.median(r["p99_ms"] for r in rs),
                    "mean batch": statistics.median(r["mean_batch"] for r in rs) if "mean_batch" in rs[0] else "",
                    "CPU ms/q": statistics.median(r["cpu_ms_per_query"] for r in rs) if "cpu_ms_per_query" in rs[0] else "",
                    "load avg": f"{min(loads):.1f}-{max(loads):.1f}", "rounds": len(rs)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", required=True, type=Path, help="output folder of `lsr-os demo` (model, head, collection)")
    ap.add_argument("--url", default=os.environ.get("OPENSEARCH_URL", "http://localhost:9200"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--queries", type=int, default=128, help="queries per measurement")
    ap.add_argument("--clients", default="1,8,32", help="concurrent clients (and library batch sizes)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--cli-calls", type=int, default=3, help="CLI calls per round (each loads the models)")
    ap.add_argument("--models", default="demo,blip-base-random")
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="torch CPU threads of the servers and of the library here (serve --torch-threads)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.torch_threads)
    args.clients = [int(c) for c in args.clients.split(",")]
    settings = json.loads((args.demo / "search.json").read_text())
    meta = json.loads((Path(settings["images"]) / "dataset_meta.json").read_text())
    texts = [s["raw"] for im in meta["images"] if im["split"] == "test" for s in im["sentences"]][: args.queries]
    rows: list[dict] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            if name == "demo":
                rows += bench_model(name, settings["model"], settings["head"], args, texts)
            else:
                from bench.encode_throughput import build_blip_base

                rows += bench_model(name, str(build_blip_base(Path(tmp) / "blip")), settings["head"], args, texts)
    summary = summarise(rows)
    goals = []
    for model in dict.fromkeys(r["model"] for r in summary):
        pick = {(r["system"], r["clients / batch"]): r["q/s"] for r in summary if r["model"] == model}
        top = max(args.clients)
        ratio = pick[("serve, batching", top)] / pick[("library in process", top)]
        goals.append({"model": model, "clients": top, "serve q/s": pick[("serve, batching", top)],
                      "library q/s": pick[("library in process", top)], "ratio": ratio, "goal": 0.8, "met": ratio >= 0.8})
    columns = ["model", "system", "clients / batch", "q/s", "p50 ms", "p99 ms", "mean batch", "CPU ms/q", "load avg"]
    md = (f"Text queries through `lsr-os serve` (k = {K}, matched terms included) against the library in process and the "
          f"CLI per call, {args.queries} queries per cell ({args.cli_calls} for the CLI), {args.rounds} rounds interleaved, "
          f"medians over rounds; device {args.device}, torch threads {args.torch_threads} (servers and library). The HTTP "
          f"clients, the server, the in-process library and the OpenSearch node share this machine's cores. Query "
          f"texts: the demo world's test captions; collection: {settings['prefix']}-images. \"mean batch\": queries "
          f"per model call inside the server; \"CPU ms/q\": CPU time per query of the server process (serve rows) or "
          f"of the library's process (library rows), the node's not included. Total "
          f"{time.perf_counter() - t0:.0f} s.\n\n" + md_table(summary, columns) + "\n\nGoal: through serve at "
          f"{max(args.clients)} clients >= 0.8x the in-process library at the same batch size.\n\n"
          + md_table(goals, ["model", "clients", "serve q/s", "library q/s", "ratio", "goal", "met"]))
    path = write_results(f"serve_{args.device.split(':')[0]}", {"rows": rows, "summary": summary, "goals": goals,
                                                                  "settings": vars(args) | {"demo": str(args.demo)}}, md)
    print(md)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
