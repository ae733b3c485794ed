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
    pins = ROOT / ".bootstrap-constraints.txt"
    pins.write_text(tested_pins_compatible_with_machine())
    pip = (BIN / "python", "-m", "pip", "install", "--disable-pip-version-check", "-c", pins.name)
    try:
        run(*pip, "-e", ".[test]")
    except subprocess.CalledProcessError:
        print("bootstrap: the tested versions (constraints.txt) cannot be installed together with this "
              "machine's pip constraints; installing from pyproject.toml's version ranges instead", flush=True)
        pip = pip[:-2]
        run(*pip, "-e", ".[test]")
    run(*pip, "--no-deps", "vbench")
    STAMP.write_text(digest + "\n")


def machine_constraint_files() -> list[Path]:
    """Constraint files pip applies on this machine (its config files and PIP_CONSTRAINT)."""
    files = os.environ.get("PIP_CONSTRAINT", "").split()
    listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
    for line in listing.stdout.splitlines():
        key, _, value = line.partition("=")
        if key.split(".")[-1] == "constraint":
            files += value.strip().strip("'\"").split()
    return [Path(f) for f in dict.fromkeys(files) if Path(f).is_file()]


def parse_requirement(line: str):
    """The requirement on one line of a constraints file, or None for blanks and comments."""
    try:
        from packaging.requirements import InvalidRequirement, Requirement
    except ImportError:  # pip vendors packaging
        from pip._vendor.packaging.requirements import InvalidRequirement, Requirement
    text = line.split("#")[0].strip()
    if not text or text.startswith("-"):
        return None
    try:
        return Requirement(text)
    except InvalidRequirement:
        return None


def canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def tested_pins_compatible_with_machine() -> str:
    """constraints.txt without the pins that the machine's own pip constraints exclude.

    Two constraints on one package that disagree make pip refuse to install anything; there the
    machine's pin wins and ours is dropped, saying so.
    """
    machine = [r for f in machine_constraint_files() for line in f.read_text().splitlines()
               if (r := parse_requirement(line)) is not None]
    kept = []
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        ours = parse_requirement(line)
        pinned = ours and next(iter(ours.specifier), None)
        clash = ours is not None and pinned is not None and any(
            canonical(m.name) == canonical(ours.name) and not m.specifier.contains(pinned.version, prereleases=True)
            for m in machine)
        if clash:
            print(f"bootstrap: {line.strip()} dropped: this machine's pip constraints exclude it", flush=True)
        else:
            kept.append(line)
    return "\n".join(kept) + "\n"


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
