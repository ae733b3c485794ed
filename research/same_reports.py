"""Do two revisions compute the same results? For refactors: run every stage after `teacher` at
each revision on that revision's committed teacher, one thread, reduced sizes, and compare the
two `reports/metrics.json` key by key (wall-clock figures are listed apart).

    python research/same_reports.py 06efefd 8771b6b      # about 10 min on 2 cores

Each revision runs in its own folder under --workdir (its own `src/` first on the path, its own
MLflow store); a rerun resumes after the last finished stage.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SIZES = {"trajectories": {"videos": 16}, "semantic": {"steps": 20}, "detail": {"steps": 20}, "lcm": {"steps": 20},
         "pcm": {"steps": 20}, "sample": {"videos": 8}, "teacher_eval": {"videos": 8}}
TIMING = ("latency", "per_step", "speedup", "repeats", "seconds")


def run_revision(rev: str, workdir: Path) -> Path:
    folder = workdir / rev
    if not (folder / "dvc.yaml").exists():
        folder.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=True).stdout
        tarfile.open(fileobj=io.BytesIO(archive)).extractall(folder, filter="data")
        params = yaml.safe_load((folder / "params.yaml").read_text())
        for section, values in SIZES.items():
            params[section].update(values)
        (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(folder / "src"), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}"}
    for stage, spec in yaml.safe_load((folder / "dvc.yaml").read_text())["stages"].items():
        done = folder / f".done_{stage}"
        if stage == "teacher" or done.exists():
            continue
        print(f"{rev}: {stage}", flush=True)
        with open(folder / f"log_{stage}.txt", "w") as log:
            subprocess.run(spec["cmd"].split(), cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
        done.touch()
    return folder / "reports" / "metrics.json"


def flatten(tree, prefix: str = "") -> dict:
    if not isinstance(tree, dict):
        return {prefix.rstrip("/"): tree}
    return {k: v for key, value in tree.items() for k, v in flatten(value, f"{prefix}{key}/").items()}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/dcm-same-reports"))
    parser.add_argument("--rtol", type=float, default=0.0, help="relative difference still counted as the same")
    args = parser.parse_args(argv)
    old, new = (flatten(json.loads(run_revision(rev, args.workdir).read_text())) for rev in (args.old, args.new))
    shared = sorted(set(old) & set(new))
    differ = [k for k in shared if old[k] != new[k] and not (
        isinstance(old[k], float) and isinstance(new[k], float) and abs(old[k] - new[k]) <= args.rtol * abs(old[k]))]
    results = [k for k in differ if not any(t in k for t in TIMING)]
    print(f"{len(shared)} shared metrics; {len(differ) - len(results)} timing figures differ; "
          f"{len(results)} results differ")
    for key in results:
        print(f"  {key}: {old[key]!r} -> {new[key]!r}")
    print(f"only in {args.old}: {len(set(old) - set(new))}; only in {args.new}: {len(set(new) - set(old))}")
    return 1 if results else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
