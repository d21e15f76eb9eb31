"""Helpers for the live SLURM tests: is a SLURM here, the site profile, job records from sacct.

The site settings a user changes in profiles/slurm/config.yaml are applied here to the project
copy's profile: the account, and job sizes that fit the node (the partitions `cpu` and `gpu`
exist on the local cluster of tests/cluster/slurm_up.sh, so they stay as they are).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.conftest import Replace, tiny_backbone, tiny_experiment, tiny_params

ACCOUNT = os.environ.get("HDMAP_AD_SLURM_ACCOUNT", "hdmap")
# Rules the tiny DAG sends to SLURM, and the bookkeeping rules that stay on the submit host.
CLUSTER_RULES = {"synthesize", "manifest", "extract_effnet_lite2", "fit", "score", "metrics"}
LOCAL_RULES = {"aggregate", "report", "hypothesis", "sweep"}

# The tiny config of tests/test_pipeline.py, one domain (C), the ungated and gated experiments
# (no hypothesis: its reference re-draws would multiply the fit/score jobs). The backbone key
# matches the profile's `extract_effnet_lite2` entry, so that entry is used.
TINY_C = tiny_params(
    backbones=Replace({"effnet_lite2": tiny_backbone()}),
    experiments=Replace({
        "ungated": tiny_experiment(backbone="effnet_lite2", layers=["blocks.2", "blocks.4"],
                                   gate="mixed"),
        "gated": tiny_experiment(backbone="effnet_lite2"),
    }),
    hypotheses={},
    targets={"experiments": ["ungated", "gated"]},
)


# an idle node, or one busy with other jobs (ours then queue behind them)
USABLE_NODE_STATES = {"idle", "mixed", "allocated", "completing"}


def skip_reason() -> str | None:
    """Why no live SLURM test can run here, or None when a node is idle or merely busy."""
    if shutil.which("sinfo") is None:
        return "no SLURM here: `sinfo` not on PATH (`make slurm-up` starts a local one)"
    try:
        proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True,
                              text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "SLURM does not answer: sinfo timed out after 20 s"
    if proc.returncode != 0:
        return f"SLURM does not answer: sinfo: {proc.stderr.strip()[:200]}"
    states = [line.split()[-1].rstrip("*~#!%$@^-") for line in proc.stdout.splitlines()
              if line.strip()]
    if not any(st in USABLE_NODE_STATES for st in states):
        return f"SLURM has no idle node (sinfo: {proc.stdout.strip()[:200] or 'no nodes'})"
    return None


def node_size() -> tuple[int, int]:
    """CPUs and memory (MB) of the smallest node."""
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%c %m"], capture_output=True, text=True,
                         check=True).stdout
    sizes = [tuple(int(v.rstrip("+")) for v in line.split()) for line in out.splitlines()]
    return min(s[0] for s in sizes), min(s[1] for s in sizes)


def apply_site_settings(project: Path, account: str = ACCOUNT) -> list[str]:
    """Fill in the project copy's profiles/slurm/config.yaml as a user would for this cluster.

    Sets slurm_account, and caps cpus_per_task / mem_mb so that two jobs fit on one node.
    Returns the changes, one line each.
    """
    path = project / "profiles/slurm/config.yaml"
    profile = yaml.safe_load(path.read_text())
    cpus, mem = node_size()
    cpu_cap, mem_cap = max(1, cpus // 2), max(1000, mem // 4)
    changes = []

    def cap(where: str, res: dict, key: str, limit: int) -> None:
        if key in res and res[key] > limit:
            changes.append(f"{where}.{key}: {res[key]} -> {limit}")
            res[key] = limit

    default = profile["default-resources"]
    changes.append(f"default-resources.slurm_account: {default['slurm_account']} -> {account}")
    default["slurm_account"] = account
    cap("default-resources", default, "cpus_per_task", cpu_cap)
    cap("default-resources", default, "mem_mb", mem_cap)
    for rule, res in profile.get("set-resources", {}).items():
        cap(f"set-resources.{rule}", res, "cpus_per_task", cpu_cap)
        cap(f"set-resources.{rule}", res, "mem_mb", mem_cap)
    path.write_text(yaml.safe_dump(profile, sort_keys=False))
    return changes


def run_id(snakemake_output: str) -> str:
    m = re.search(r"SLURM run ID: (\S+)", snakemake_output)
    assert m, "no 'SLURM run ID' in the snakemake output:\n" + snakemake_output[-3000:]
    return m.group(1)


def sacct_jobs(run: str) -> list[dict[str, str]]:
    """The run's SLURM jobs from accounting (job name = the run ID), oldest first."""
    fields = ["JobID", "Comment", "State", "Partition", "Account", "AllocTRES", "Elapsed",
              "ExitCode"]
    out = subprocess.run(
        ["sacct", "-X", "-n", "-P", "--name", run, "-S", "now-1days",
         "-o", ",".join(f"{f}%300" if f in ("Comment", "AllocTRES") else f for f in fields)],
        capture_output=True, text=True, check=True,
    ).stdout
    jobs = [dict(zip(fields, line.split("|"), strict=True))
            for line in out.splitlines() if line.strip()]
    for job in jobs:
        m = re.match(r"rule_(\w+?)(_wildcards_.*)?$", job["Comment"])
        job["rule"] = m.group(1) if m else job["Comment"]
    return jobs


def format_jobs(jobs: list[dict[str, str]]) -> str:
    rows = [f"{'JobID':>6} {'rule':<22} {'State':<14} {'Partition':<9} {'Account':<8} "
            f"{'Elapsed':<8} AllocTRES"]
    rows += [f"{j['JobID']:>6} {j['rule']:<22} {j['State']:<14} {j['Partition']:<9} "
             f"{j['Account']:<8} {j['Elapsed']:<8} {j['AllocTRES']}" for j in jobs]
    return "\n".join(rows)
