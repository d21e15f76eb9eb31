"""Start the Streamlit app (:mod:`hdmap_ad.app.main`) on a run folder."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from hdmap_ad.app.data import ALLOW_STALE_ENV
from hdmap_ad.errors import InputError
from hdmap_ad.layout import RunLayout

SCRIPT = Path(__file__).with_name("main.py")


def app_command(port: int = 8501, address: str | None = "localhost") -> list[str]:
    """The ``streamlit run`` command line of the app: headless (it prints its address and
    opens no browser, asks nothing), no usage statistics sent."""
    cmd = [sys.executable, "-m", "streamlit", "run", str(SCRIPT), "--server.port", str(port),
           "--server.headless", "true", "--browser.gatherUsageStats", "false",
           "--client.toolbarMode", "viewer"]
    if address:
        cmd += ["--server.address", address]
    return cmd


def app_env(root: str | Path, allow_stale: bool = False) -> dict[str, str]:
    """The environment the app reads its run folder from (``HDMAP_AD_ROOT``), and whether it
    may use stale exported models (``HDMAP_AD_ALLOW_STALE``, :mod:`hdmap_ad.app.data`)."""
    root = Path(root)
    if not Path(RunLayout(str(root)).results_dir).is_dir():
        raise InputError(f"{root}: no results/ folder; run `make demo` (or snakemake) first, "
                         "or pass --root <project folder>")
    env = {**os.environ, "HDMAP_AD_ROOT": str(root.resolve())}
    env.pop(ALLOW_STALE_ENV, None)
    return {**env, ALLOW_STALE_ENV: "1"} if allow_stale else env


def run_app(root: str | Path = ".", port: int = 8501, address: str | None = "localhost",
            allow_stale: bool = False) -> int:
    """Run the app in the foreground until Ctrl-C; returns Streamlit's exit status."""
    if not 1 <= port <= 65535:
        raise InputError(f"--port: {port} is not a TCP port (1-65535)")
    if importlib.util.find_spec("streamlit") is None:
        raise InputError("the app needs Streamlit: pip install -e '.[app]'")
    env = app_env(root, allow_stale)
    print(f"hdmap_ad app: {env['HDMAP_AD_ROOT']} at http://{address or 'localhost'}:{port} "
          "(Ctrl-C stops it)", file=sys.stderr, flush=True)
    try:
        return subprocess.call(app_command(port, address), env=env)
    except KeyboardInterrupt:
        return 0
