"""Shared helpers of the benchmark scripts (machine description, child-process measurement)."""

from __future__ import annotations

import os
import platform
import subprocess
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


# Runs the command as its own child and writes its wall time and wait4 peak RSS to a file.
# A launcher is needed because ru_maxrss survives execve: a child forked straight from a big
# benchmark process would report the parent's RSS at fork time as its own peak.
_LAUNCHER = """
import json, os, subprocess, sys, time
t0 = time.perf_counter()
proc = subprocess.Popen(sys.argv[2:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(proc.pid, 0)
with open(sys.argv[1], "w") as f:
    json.dump({"wall_s": time.perf_counter() - t0, "peak_rss_mb": usage.ru_maxrss / 1024.0,
               "returncode": os.waitstatus_to_exitcode(status)}, f)
"""


def run_measured(argv: list[str], env: dict[str, str] | None = None,
                 cwd: str | Path | None = None) -> dict[str, float]:
    """Run a command; its wall seconds and its own peak RSS in MB (``wait4`` via a launcher)."""
    import json
    import sys
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        proc = subprocess.run([sys.executable, "-c", _LAUNCHER, out.name, *argv], env=env,
                              cwd=cwd, stderr=subprocess.PIPE, text=True)
        result = json.loads(Path(out.name).read_text() or "{}")
    if proc.returncode != 0 or result.get("returncode") != 0:
        raise SystemExit(f"{' '.join(argv[:4])} ... failed:\n{proc.stderr[-3000:]}")
    return {"wall_s": result["wall_s"], "peak_rss_mb": result["peak_rss_mb"]}


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
