#!/usr/bin/env python3
"""Set up ``.venv`` in the repository root and run the main job or the tests.

    python3 scripts/bootstrap.py repro   # install, then `dvc repro` on the embedded default
    python3 scripts/bootstrap.py test    # install (and Debian's chromium, for the MLflow UI test), then the tests

Needs nothing but Python 3.10+. Versions come from constraints.txt (the tested set); torch
and torchvision are pinned to releases that import together. ``vbench`` is installed without
its stale pins (numpy<2, transformers==4.33.2); what it imports is in pyproject.toml.
Re-running skips the install when pyproject.toml and constraints.txt are unchanged.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = ROOT / ".bootstrap-stamp"


def run(*cmd: str | Path) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], cwd=ROOT, check=True, env=environment())


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(VENV)
    env.setdefault("DVC_NO_ANALYTICS", "1")
    return env


def install() -> None:
    digest = hashlib.sha256(
        b"".join((ROOT / f).read_bytes() for f in ("pyproject.toml", "constraints.txt"))
    ).hexdigest()
    if STAMP.exists() and STAMP.read_text().strip() == digest and (BIN / "dcm").exists():
        print("bootstrap: .venv is up to date", flush=True)
        return
    if not (BIN / "python").exists():
        print(f"bootstrap: creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    pip = (BIN / "python", "-m", "pip", "install", "--disable-pip-version-check", "-c", "constraints.txt")
    run(*pip, "-e", ".[test]")
    run(*pip, "--no-deps", "vbench")
    STAMP.write_text(digest + "\n")


def install_chromium() -> None:
    """Debian's chromium, for the test that looks at the MLflow UI (skipped, saying so, without it)."""
    if shutil.which("chromium") or shutil.which("chromium-browser"):
        return
    apt = shutil.which("apt-get")
    if apt is None or not hasattr(os, "geteuid") or os.geteuid() != 0:
        print("bootstrap: chromium is not installed and cannot be installed here (needs apt-get as root); "
              "the MLflow UI test will be skipped", flush=True)
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in ([apt, "update", "-qq"], [apt, "install", "-y", "-qq", "chromium"]):
        if subprocess.run(cmd, env=env).returncode != 0:
            print("bootstrap: installing chromium failed; the MLflow UI test will be skipped", flush=True)
            return


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in ("repro", "test"):
        print(__doc__)
        return 2
    install()
    if argv[0] == "repro":
        run(BIN / "dvc", "repro")
    else:
        install_chromium()
        run(BIN / "python", "-m", "pytest", "-q", "tests")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
