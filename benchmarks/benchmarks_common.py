"""Shared helpers of the benchmark scripts (machine description, child-process measurement)."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path


def machine() -> dict:
    """CPU model, cores, memory and Python of this machine."""
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.processor())
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem_kb / 2**20, 1),
            "python": platform.python_version()}


def machine_line() -> str:
    m = machine()
    return f"{m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, CPU only"


def run_measured(argv: list[str], env: dict[str, str] | None = None,
                 cwd: str | Path | None = None) -> dict[str, float]:
    """Run a command; its wall seconds and its own peak RSS in MB (``wait4``)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(argv[:4])} ... failed:\n{err[-3000:]}")
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024.0}


def write_outputs(out_dir: str | Path, name: str, result: dict, markdown: str) -> None:
    """``<out_dir>/<name>.json`` and ``.md``, each written atomically; the table is printed."""
    import sys

    repo = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(repo / "src"))
    from hdmap_ad.io import atomic_path, write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{name}.json", result)
    with atomic_path(out / f"{name}.md") as tmp:
        tmp.write_text(markdown)
    print(markdown)
