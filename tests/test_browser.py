"""Browser smoke test: the app in a real headless Chromium (Selenium), both pages, screenshots.

Runs on the demo's results when the checkout has them (``make demo`` ran: ``results/`` and
``work/``) or on ``$HDMAP_AD_APP_ROOT``, else on the tiny ``deploy_run``. Screenshots go to
the test's temp folder, or with ``HDMAP_AD_SCREENSHOTS=docs`` (``make test-browser``) on a
demo run to the README's ``docs/app_results.png`` and ``docs/app_map.png``. Skipped, saying
why, where Selenium or Chromium and its driver are not installed: ``make test-browser``
installs them (Debian's ``chromium`` and ``chromium-driver``, the ``selenium`` package) and
runs this test.

The app listens on 127.0.0.1 only; the browser runs with networking extras off.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO

CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                "--disable-dev-shm-usage")
WIDTH = 1500


def _browser() -> tuple[str, str]:
    pytest.importorskip("selenium", reason="selenium is not installed (make test-browser "
                                           "installs it)")
    chrome = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chrome or not driver:
        pytest.skip("no Chromium and chromedriver on PATH (Debian: apt-get install chromium "
                    "chromium-driver; `make test-browser` does it)")
    return chrome, driver


def _demo_root() -> Path | None:
    """The run the screenshots are taken on: $HDMAP_AD_APP_ROOT, else the checkout's own
    demo results; None when neither has a run."""
    env = os.environ.get("HDMAP_AD_APP_ROOT")
    root = Path(env) if env else REPO
    has_run = (root / "results/metrics.json").is_file() and (root / "work/scores").is_dir()
    return root if has_run else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the app exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"the app did not answer at {url} within {timeout:.0f} s")


def _wait_for(driver, texts: list[str], images: int = 0, timeout: float = 120.0) -> str:
    """Wait until the page shows every text, has finished running and shows ``images``
    loaded images; returns the page's text."""
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout
    body = ""
    while time.monotonic() < deadline:
        body = driver.find_element(By.TAG_NAME, "body").text
        running = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stStatusWidget"]')
        loaded = driver.execute_script(
            "return [...document.querySelectorAll('[data-testid=\"stImage\"] img')]"
            ".filter(i => i.complete && i.naturalWidth > 0).length")
        if all(t in body for t in texts) and not running and loaded >= images:
            time.sleep(0.5)  # charts finish drawing
            return body
        time.sleep(0.5)
    raise AssertionError(f"page never showed {texts} (and {images} images); it shows:\n"
                         f"{body[:2000]}")


def _shot(driver, path: Path, height: int) -> None:
    driver.set_window_size(WIDTH, height)
    time.sleep(0.5)  # relayout at the new height
    path.parent.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(path)), path
    assert path.stat().st_size > 20_000, f"{path}: suspiciously small screenshot"


def test_app_in_a_real_browser(request, tmp_path):
    chrome, chromedriver = _browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    from hdmap_ad.app.data import Run
    from hdmap_ad.app.launch import app_command, app_env

    root = _demo_root()
    docs = os.environ.get("HDMAP_AD_SCREENSHOTS") == "docs" and root is not None
    shots = REPO / "docs" if docs else tmp_path
    if root is None:
        root = request.getfixturevalue("deploy_run")
    n_targets = len(Run(root).metrics_table())
    gated = sorted((root / "results").glob("*_gated.json"))
    target = gated[len(gated) // 2].stem if gated else None  # domainC_gated on the demo
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(app_command(port, address="127.0.0.1"),
                            env=app_env(root), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    driver = None
    try:
        _wait_healthy(url, proc)
        opts = webdriver.ChromeOptions()
        opts.binary_location = chrome
        for flag in CHROME_FLAGS:
            opts.add_argument(flag)
        opts.add_argument(f"--window-size={WIDTH},1100")
        driver = webdriver.Chrome(service=Service(chromedriver), options=opts)
        driver.set_page_load_timeout(60)

        driver.get(f"{url}/?page=results")
        body = _wait_for(driver, ["Results", "Hypotheses", "ROC curves", "Side by side",
                                  "verdict changed"])
        assert f"{n_targets} domain x experiment targets" in body  # tables draw on a canvas
        _shot(driver, shots / "app_results.png", 2300)

        assert target is not None
        scores = pd.read_parquet(root / "work/scores" / f"domain_{target[6:].split('_')[0]}"
                                 / f"{target.split('_', 1)[1]}.parquet",
                                 columns=["image_id", "role", "label", "score"])
        fault = scores[(scores.role == "test") & (scores.label != "good")]
        image_id = fault.sort_values("score").image_id.iloc[len(fault) // 2]
        driver.set_window_size(WIDTH, 1100)
        driver.get(f"{url}/?page=map&target={target}&image_id={image_id}")
        body = _wait_for(driver, ["Map", image_id, "deployable threshold",
                                  "Nearest normal reference", "Worst patch"], images=3)
        assert "gate decision" in body
        _shot(driver, shots / "app_map.png", 1500)
    finally:
        if driver is not None:
            driver.quit()
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
