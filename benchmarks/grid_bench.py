"""Wall time of a two-experiment boundary grid on the smoke params, with one job and with two.

    python benchmarks/grid_bench.py

Builds a throw-away git + DVC repository from this checkout with tests/smoke_params.yaml merged
into params.yaml, runs `dvc repro` once (so the queue starts from cached outputs), then times
`dcm grid boundary --values 3,5 --jobs 1` and `dcm grid boundary --values 2,6 --jobs 2` (other
values, so the second grid cannot reuse the first one's run cache).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def merge(into: dict, overrides: dict) -> None:
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = value


def run(cmd: list[str], cwd: Path, env: dict) -> None:
    subprocess.run(cmd, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="dcm-grid-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    try:
        for item in ("dvc.yaml", "stages", "src", ".dvcignore"):
            (shutil.copytree if (ROOT / item).is_dir() else shutil.copy)(ROOT / item, work / item)
        shutil.copytree(ROOT / ".dvc", work / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
        params = yaml.safe_load((ROOT / "params.yaml").read_text())
        merge(params, yaml.safe_load((ROOT / "tests" / "smoke_params.yaml").read_text()))
        (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
        run(["git", "init", "-q"], work, env)
        run([*git, "add", "-A"], work, env)
        run([*git, "commit", "-qm", "smoke"], work, env)
        tick = time.perf_counter()
        run([str(BIN / "dvc"), "repro"], work, env)
        print(f"dvc repro (smoke, all stages)   {time.perf_counter() - tick:6.1f} s")
        run([*git, "add", "-A"], work, env)
        run([*git, "commit", "-qm", "outputs"], work, env)
        for jobs, values in ((1, "3,5"), (2, "2,6")):
            tick = time.perf_counter()
            run([str(BIN / "dcm"), "grid", "boundary", "--values", values, "--jobs", str(jobs),
                 "--prefix", f"j{jobs}"], work, env)
            print(f"dcm grid boundary, 2 experiments, --jobs {jobs}   {time.perf_counter() - tick:6.1f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
