"""profiles/slurm for real, on a running SLURM (`make test-slurm`; collected only there).

One scenario on the tiny domain-C config (ungated + gated, their summary and report):
1. a local run (`--profile profiles/default`) gives the reference `results/domainC_gated.json`;
2. the same DAG from scratch through `--profile profiles/slurm` (site settings filled in): every
   non-local rule is a SLURM job (checked in `sacct`), all COMPLETED, extraction in the `gpu`
   partition without a GPU request (device: cpu), the bookkeeping rules on the submit host, and
   the result byte-identical to the local one;
3. a second run (`all`, extraction forced): the extraction job's process is killed (the job
   FAILS and the profile's `retries: 1` resubmits it), then a later job is `scancel`led; the run is
   interrupted if it does not end by itself, and the rerun (`rerun-incomplete`) completes with
   the same result.
Prints what it saw and how long each part took.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import yaml

from tests.cluster.slurm import (
    ACCOUNT,
    CLUSTER_RULES,
    LOCAL_RULES,
    TINY_C,
    apply_site_settings,
    format_jobs,
    run_id,
    sacct_jobs,
    skip_reason,
)
from tests.conftest import copy_project, project_env

TARGET = "results/domainC_gated.json"
# Status polls every 5 s at first instead of the plugin's 40 s: a polling knob for a DAG of
# seconds-long jobs, not a site setting (keep the default on a real cluster). --cores 2: the
# extraction threads of the local reference run (README: --cores sets them on a cluster too).
SLURM = ["snakemake", "--profile", "profiles/slurm", "--cores", "2",
         "--slurm-init-seconds-before-status-checks", "5"]


def _run(args: list[str], cwd: Path) -> str:
    proc = subprocess.run(args, cwd=cwd, env=project_env(cwd), capture_output=True, text=True,
                          timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{out[-5000:]}"
    return out


def _squeue(run: str) -> list[tuple[str, str, str]]:
    out = subprocess.run(["squeue", "-h", "--name", run, "-o", "%i|%T|%k"],
                         capture_output=True, text=True).stdout
    return [tuple(line.split("|", 2)) for line in out.splitlines() if line.strip()]


def _wait(what: str, timeout: float, probe, proc: subprocess.Popen | None = None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = probe()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"snakemake ended (rc {proc.returncode}) before {what}")
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _job_pids(jobid: str, needle: str) -> list[int]:
    """PIDs of the job's processes whose command line contains `needle`."""
    out = subprocess.run(["scontrol", "listpids", jobid], capture_output=True,
                         text=True).stdout
    pids = []
    for line in out.splitlines()[1:]:
        pid = line.split()[0]
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if needle in cmd:
            pids.append(int(pid))
    return pids


def _log_run_id(log: Path) -> str | None:
    text = log.read_text() if log.exists() else ""
    return run_id(text) if "SLURM run ID:" in text else None


def test_slurm_profile_end_to_end(tmp_path):
    reason = skip_reason()
    assert reason is None, f"{reason} (run `make slurm-up` first)"
    t_all = time.monotonic()
    project = tmp_path / "project"
    project.mkdir()
    copy_project(project)
    (project / "params.yaml").write_text(yaml.safe_dump(TINY_C, sort_keys=False))
    changes = apply_site_settings(project)
    report = ["site settings applied to profiles/slurm/config.yaml:"]
    report += [f"  {c}" for c in changes]

    # 1. local reference
    t0 = time.monotonic()
    _run(["snakemake", "--cores", "2", "--profile", "profiles/default", "all"], project)
    t_local = time.monotonic() - t0
    reference = (project / TARGET).read_bytes()
    for name in ("work", "results", "data", ".snakemake"):
        shutil.rmtree(project / name, ignore_errors=True)

    # 2. the same DAG through SLURM
    t0 = time.monotonic()
    out = _run([*SLURM, "all"], project)
    t_slurm = time.monotonic() - t0
    run1 = run_id(out)
    jobs = sacct_jobs(run1)
    report += [f"run 1 (all, from scratch): {len(jobs)} SLURM jobs, run ID {run1}",
               format_jobs(jobs)]
    assert jobs, f"sacct shows no job named {run1}"
    assert all(j["State"] == "COMPLETED" for j in jobs), format_jobs(jobs)
    rules = {j["rule"] for j in jobs}
    assert CLUSTER_RULES <= rules, rules
    assert not rules & LOCAL_RULES, rules
    local_ran = sorted(r for r in LOCAL_RULES if f"localrule {r}:" in out)
    assert {"aggregate", "report"} <= set(local_ran), local_ran
    assert all(j["Account"] == ACCOUNT for j in jobs), format_jobs(jobs)
    for j in jobs:
        want = "gpu" if j["rule"].startswith("extract_") else "cpu"
        assert j["Partition"] == want, format_jobs(jobs)
        assert "gpu" not in j["AllocTRES"], format_jobs(jobs)  # device: cpu -> no GPU asked
    assert (project / TARGET).read_bytes() == reference, "SLURM result differs from local"
    report.append(f"local rules on the submit host: {', '.join(local_ran)}")
    report.append(f"{TARGET}: byte-identical to the local run ({len(reference)} bytes)")

    # 3. a failed job, then a cancelled one, in a second run
    log2 = tmp_path / "run2.log"
    t0 = time.monotonic()
    with open(log2, "w") as fh:
        proc = subprocess.Popen([*SLURM, "--forcerun", "extract_effnet_lite2", "all"],
                                cwd=project, env=project_env(project), stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        run2 = _wait("the SLURM run ID", 120, lambda: _log_run_id(log2), proc)
        # 3a. kill the extraction's process inside its running job: the job FAILS
        extract = _wait("a running extraction job", 300, lambda: next(
            (j for j, st, c in _squeue(run2) if st == "RUNNING" and "extract" in c), None), proc)
        pids = _wait("the extraction process", 120,
                     lambda: _job_pids(extract, "hdmap_ad extract"), proc)
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        report.append(f"run 2 ({run2}): killed the extraction process of job {extract} "
                      f"(pids {pids})")
        # 3b. scancel the next job that runs after the resubmitted extraction
        victim = _wait("a running job after the extraction", 300, lambda: next(
            ((j, c) for j, st, c in _squeue(run2)
             if st == "RUNNING" and "extract" not in c), None), proc)
        subprocess.run(["scancel", victim[0]], check=True)
        report.append(f"run 2: scancel {victim[0]} ({victim[1]})")
        _wait("sacct to show the cancel", 60, lambda: any(
            j["JobID"] == victim[0] and j["State"].startswith("CANCELLED")
            for j in sacct_jobs(run2)))
        # does the run notice by itself? (plugin 2.8.0 does not: sacct says
        # "CANCELLED by <uid>", which its failure list does not match)
        try:
            proc.wait(timeout=60)
            ended = f"ended by itself (rc {proc.returncode})"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGINT)  # what a user's Ctrl-C does
            proc.wait(timeout=300)
            ended = (f"still waiting on the cancelled job 60 s after the cancel; interrupted "
                     f"(Ctrl-C), exited rc {proc.returncode}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    t_run2 = time.monotonic() - t0
    jobs2 = sacct_jobs(run2)
    report += [f"run 2: {ended}", format_jobs(jobs2)]
    extract_states = [j["State"] for j in jobs2 if j["rule"].startswith("extract_")]
    assert extract_states[:2] == ["FAILED", "COMPLETED"], format_jobs(jobs2)
    retry = [ln.strip() for ln in log2.read_text().splitlines() if "Trying to restart" in ln]
    assert retry, "no retry of the failed extraction in run 2's log"
    report.append(f"run 2 log: {' | '.join(retry)}")

    # 3c. the rerun completes what is left
    t0 = time.monotonic()
    out3 = _run([*SLURM, "all"], project)
    t_rerun = time.monotonic() - t0
    jobs3 = sacct_jobs(run_id(out3)) if "SLURM run ID:" in out3 else []
    assert all(j["State"] == "COMPLETED" for j in jobs3), format_jobs(jobs3)
    done = "Nothing to be done" in out3 or "steps (100%) done" in out3
    assert done, out3[-3000:]
    report += [f"rerun: {len(jobs3)} SLURM jobs, all COMPLETED", format_jobs(jobs3)]
    assert (project / TARGET).read_bytes() == reference, "result after the rerun differs"
    report.append(f"{TARGET} after the failure, the cancel and the rerun: byte-identical")
    dry = _run([*SLURM, "-n", "all"], project)
    assert "Nothing to be done" in dry, dry[-2000:]

    report.append(
        f"timing: local {t_local:.0f}s, SLURM run 1 {t_slurm:.0f}s, run 2 (fail + cancel) "
        f"{t_run2:.0f}s, rerun {t_rerun:.0f}s; test total {time.monotonic() - t_all:.0f}s")
    print("\n" + "\n".join(report))
