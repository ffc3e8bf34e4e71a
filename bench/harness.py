"""A tiny shared harness for benchmarks: machine facts, timing, JSON + markdown results.

Every benchmark measures its baseline in the same run as the thing it measures, so the ratio
holds on a noisy machine; absolute figures are reported with the machine they came from.
"""

from __future__ import annotations

import json
import os
import platform
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
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }
    try:
        import torch

        facts["torch"] = torch.__version__
        facts["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            facts["gpu"] = torch.cuda.get_device_name(0)
            facts["cuda"] = torch.version.cuda
    except ImportError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, check=False).stdout.strip()
        facts["commit"] = commit or None
    except OSError:
        facts["commit"] = None
    return facts


def _cpu_model() -> str:
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

    return {"mean_ms": 1000 * statistics.fmean(xs), "p50_ms": pick(0.50), "p95_ms": pick(0.95),
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


def md_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A markdown table of `rows` (dicts) over `columns`; floats get 4 significant digits."""

    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "\n".join("| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows)
