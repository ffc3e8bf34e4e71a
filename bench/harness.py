"""A tiny shared harness for benchmarks: machine facts, timing, JSON + markdown results.

Every benchmark measures its baseline in the same run as the thing it measures, so the ratio
holds on a noisy machine; absolute figures are reported with the machine they came from.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

RESULTS = Path(__file__).parent / "results"


def machine_facts() -> dict[str, Any]:
    """Where a figure came from: CPU, cores, memory, accelerator, library versions."""
    facts: dict[str, Any] = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        import torch

        facts["torch"] = torch.__version__
        facts["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            facts["gpu"] = torch.cuda.get_device_name(0)
            facts["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
            facts["cuda"] = torch.version.cuda
            facts["cudnn"] = torch.backends.cudnn.version()
            facts["gpu_driver"] = gpu_driver()
    except ImportError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, check=False).stdout.strip()
        facts["commit"] = commit or None
    except OSError:
        facts["commit"] = None
    return facts


def nvidia_smi(*args: str) -> list[str] | None:
    """Lines of `nvidia-smi ARGS`, or None where there is no nvidia-smi or it fails."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        done = subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip().splitlines() if done.returncode == 0 else None


def gpu_driver() -> str | None:
    """The NVIDIA driver version (torch does not report it)."""
    lines = nvidia_smi("--query-gpu=driver_version", "--format=csv,noheader")
    return lines[0].strip() if lines else None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def timed(fn: Callable[[], Any], repeat: int = 3, warmup: int = 1) -> dict[str, float]:
    """Run `fn` warmup + repeat times; seconds per run (median, min, max)."""
    for _ in range(warmup):
        fn()
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(runs), "min_s": min(runs), "max_s": max(runs), "runs": repeat}


def percentiles(samples_s: list[float]) -> dict[str, float]:
    """Latency summary in milliseconds."""
    xs = sorted(samples_s)

    def pick(q: float) -> float:
        return 1000 * xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]

    return {"mean_ms": 1000 * statistics.fmean(xs), "p50_ms": pick(0.50), "p90_ms": pick(0.90), "p95_ms": pick(0.95),
            "p99_ms": pick(0.99), "n": len(xs)}


def write_results(name: str, results: dict[str, Any], summary_md: str, out_dir: Path = RESULTS) -> Path:
    """Write `<name>.json` (facts + results) and `<name>.md` (summary + facts); returns the JSON path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    facts = machine_facts()
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "machine": facts, "results": results}, indent=2))
    fact_lines = "\n".join(f"- {k}: {v}" for k, v in facts.items())
    (out_dir / f"{name}.md").write_text(f"# {name}\n\n{summary_md.strip()}\n\n## Machine\n\n{fact_lines}\n")
    return path


def fmt_number(v: Any) -> str:
    """Floats with 4 significant digits below 1,000 and as whole numbers with separators from there
    (0.1234, 12.35, 12,346: never an exponent); anything else as str()."""
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"
    return str(v)


def md_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A markdown table of `rows` (dicts) over `columns`, numbers as `fmt_number` writes them."""
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "\n".join("| " + " | ".join(fmt_number(r.get(c, "")) for c in columns) + " |" for r in rows)
