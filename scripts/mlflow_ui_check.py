#!/usr/bin/env python3
"""Look at the MLflow UI in a real (headless) browser: the runs page of an experiment shows the
DVC experiments' parent runs by name, and the compare view of those runs lists ``boundary`` and
``dcm_4/total``. Optionally saves a screenshot of the compare view.

    python scripts/mlflow_ui_check.py --store sqlite:///$PWD/mlflow.db --runs exp-a,exp-b \\
        --screenshot reports/mlflow_compare.png

Starts ``mlflow server`` on 127.0.0.1 over the store (or uses ``--url`` of a running one) and
Debian's ``chromium`` (``apt-get install chromium``). The tests call :func:`check_ui`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1600,1000", "--virtual-time-budget=20000"]


class UICheckError(AssertionError):
    """The UI did not show what docs/experiments-and-mlflow.md tells users they will see."""


def chromium() -> str | None:
    return next((path for name in ("chromium", "chromium-browser", "google-chrome")
                 if (path := shutil.which(name))), None)


def _api(url: str, path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(f"{url}/api/2.0/mlflow/{path}", method="POST" if body else "GET",
                                     data=json.dumps(body).encode() if body else None,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def _browse(url: str, *, screenshot: Path | None = None) -> str:
    """The page's rendered text (scripts run), after the browser's virtual time budget."""
    with tempfile.TemporaryDirectory(prefix="dcm-chromium-") as profile:
        flags = [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
        out = subprocess.run([chromium(), *flags, "--dump-dom", url], capture_output=True, text=True, timeout=180)
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([chromium(), *flags, f"--screenshot={screenshot}", url], capture_output=True, timeout=180,
                           check=True)
    text = re.sub(r"<script.*?</script>|<style.*?</style>", " ", out.stdout, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text))


def check_ui(url: str, experiment: str, runs: list[str], screenshot: Path | None = None) -> dict:
    """Check the runs page and the compare view; return the page texts' evidence."""
    info = _api(url, f"experiments/get-by-name?experiment_name={urllib.parse.quote(experiment)}")["experiment"]
    kind = {t["key"]: t["value"] for t in info.get("tags", [])}.get("mlflow.experimentKind")
    if kind != "custom_model_development":
        raise UICheckError(f"experiment {experiment!r} has mlflow.experimentKind = {kind!r}: the UI would open its "
                           "GenAI overview instead of the runs table")
    found = _api(url, "runs/search", {"experiment_ids": [info["experiment_id"]], "max_results": 1000,
                                      "filter": "tags.`dcm.parent` = 'true'"})["runs"]
    ids = {r["info"]["run_name"]: r["info"]["run_id"] for r in found}
    missing = [name for name in runs if name not in ids]
    if missing:
        raise UICheckError(f"no parent runs named {missing} in {experiment!r} (found {sorted(ids)})")
    runs_page = _browse(f"{url}/#/experiments/{info['experiment_id']}/runs")
    hidden = [name for name in runs if name not in runs_page]
    if hidden:
        raise UICheckError(f"the runs page does not show {hidden}: {runs_page[:1500]}")
    query = urllib.parse.urlencode({"runs": json.dumps([ids[n] for n in runs]),
                                    "experiments": json.dumps([info["experiment_id"]])})
    compare = _browse(f"{url}/#/compare-runs?{query}", screenshot=screenshot)
    absent = [text for text in ("boundary", "dcm_4/total", *runs) if text not in compare]
    if absent:
        raise UICheckError(f"the compare view does not list {absent}: {compare[:1500]}")
    return {"runs_page": runs_page, "compare": compare}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(store: str, env: dict | None = None) -> Iterator[str]:
    """``mlflow server`` on a free localhost port over ``store``; yields its URL, stops it (and the job
    workers it starts) afterwards."""
    port = _free_port()
    mlflow = Path(sys.executable).parent / "mlflow"
    server = subprocess.Popen([str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port),
                               "--backend-store-uri", store, "--workers", "1"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        else:
            raise RuntimeError(f"the MLflow server over {store} did not start")
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", help="backend store URI of a server to start (e.g. sqlite:///$PWD/mlflow.db)")
    parser.add_argument("--url", help="a running MLflow server instead")
    parser.add_argument("--experiment", default="dcm")
    parser.add_argument("--runs", required=True, help="comma-separated parent run (DVC experiment) names")
    parser.add_argument("--screenshot", type=Path, help="PNG of the compare view")
    args = parser.parse_args(argv)
    if chromium() is None:
        print("skipped: no chromium on PATH (Debian: apt-get install chromium)")
        return 0
    with contextlib.ExitStack() as stack:
        url = args.url or stack.enter_context(serve(args.store))
        try:
            check_ui(url, args.experiment, args.runs.split(","), args.screenshot)
        except UICheckError as err:
            print(f"UI check failed: {err}", file=sys.stderr)
            return 1
    print(f"the MLflow UI shows {args.runs} and their comparison" +
          (f"; screenshot: {args.screenshot}" if args.screenshot else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
