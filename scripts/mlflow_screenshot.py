"""Screenshot the MLflow UI's runs of an experiment, with the trial runs expanded under their search run.

    python scripts/mlflow_screenshot.py --experiment quickstart --out mlflow_runs.png

Starts ``mlflow ui`` on 127.0.0.1 over the store, drives headless Chromium through chromedriver's
WebDriver HTTP API (no browser package needed), expands every search run, checks that its trial runs show,
and saves a PNG. Exits 0 with a "skip" line where Chromium or chromedriver is not installed (Debian:
``apt-get install chromium chromium-driver``).
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

CHROME_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--window-size=1600,1000"]
EXPAND = 'document.querySelectorAll("[role=gridcell][col-id*=\\"Run Name\\"] button").forEach(b => b.click())'
CLOSE_PANELS = 'document.querySelectorAll("button[aria-label=Close]").forEach(b => b.click())'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], url: str, timeout: float = 90) -> subprocess.Popen:
    """Start a server in its own session and wait until ``url`` answers."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=2).status_code < 500:
                return proc
        except requests.RequestException:
            time.sleep(0.5)
    stop(proc)
    raise TimeoutError(f"{cmd[0]} did not answer at {url}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


class Browser:
    """The few WebDriver calls this needs: open a page, run a script, take a screenshot."""

    def __init__(self, driver_url: str):
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": shutil.which("chromium") or shutil.which("chromium-browser"), "args": CHROME_ARGS}}}}
        reply = requests.post(f"{driver_url}/session", json=caps, timeout=60).json()["value"]
        self.url = f"{driver_url}/session/{reply['sessionId']}"

    def open(self, url: str) -> None:
        requests.post(f"{self.url}/url", json={"url": url}, timeout=60)

    def js(self, script: str):
        return requests.post(f"{self.url}/execute/sync", json={"script": script, "args": []}, timeout=60).json()["value"]

    def wait_for(self, script: str, timeout: float = 30) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.js(script):
                return True
            time.sleep(0.5)
        return False

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(requests.get(f"{self.url}/screenshot", timeout=60).json()["value"]))

    def close(self) -> None:
        requests.delete(self.url, timeout=30)


def experiment_id(store: str, name: str) -> str:
    from mlflow.tracking import MlflowClient

    exp = MlflowClient(store).get_experiment_by_name(name)
    if exp is None:
        raise SystemExit(f"error: no experiment {name!r} in {store}")
    return exp.experiment_id


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--store", default="sqlite:///mlflow/mlflow.db", help="MLflow backend store URI")
    p.add_argument("--experiment", default="quickstart", help="experiment to show")
    p.add_argument("--out", default="mlflow_runs.png", help="PNG to write")
    args = p.parse_args(argv)
    if not (shutil.which("chromium") or shutil.which("chromium-browser")) or not shutil.which("chromedriver"):
        print("skip: chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
        return 0
    exp = experiment_id(args.store, args.experiment)
    ui_port, driver_port = free_port(), free_port()
    ui = start([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", args.store, "--host", "127.0.0.1",
                "--port", str(ui_port), "--workers", "1"], f"http://127.0.0.1:{ui_port}/health")
    driver = start(["chromedriver", f"--port={driver_port}"], f"http://127.0.0.1:{driver_port}/status")
    try:
        browser = Browser(f"http://127.0.0.1:{driver_port}")
        browser.open(f"http://127.0.0.1:{ui_port}/#/experiments/{exp}/runs")
        if not browser.wait_for('return document.body.innerText.includes("matching runs")'):
            raise SystemExit("error: the runs table did not load")
        time.sleep(2)                  # the table renders its rows after the count shows
        browser.js(CLOSE_PANELS)
        nested = False
        for _ in range(5):             # a click during a re-render is lost: try again
            browser.js(EXPAND)
            nested = browser.wait_for('return document.body.innerText.includes("trial_")', timeout=5)
            if nested:
                break
        time.sleep(1)
        browser.screenshot(Path(args.out))
        browser.close()
    finally:
        stop(driver)
        stop(ui)
    print(f"wrote {args.out}: experiment {args.experiment}, trial runs " + ("shown nested" if nested else "NOT shown"))
    return 0 if nested else 1


if __name__ == "__main__":
    sys.exit(main())
