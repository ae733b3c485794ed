"""MLflow bookkeeping that several processes share."""

import subprocess
import sys

import mlflow

PROCESSES = 4
OPEN_STORE = """
import sys, time
from pathlib import Path
from dcm.tracking import ensure_experiment
root, me, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
(root / f"ready-{me}").touch()
while len(list(root.glob("ready-*"))) < count:  # start together, once every process has imported mlflow
    time.sleep(0.001)
print(ensure_experiment("dcm", root))
"""


def test_processes_opening_a_fresh_store_at_once_all_get_the_same_experiment(tmp_path, monkeypatch):
    """`dcm grid --jobs 2` on a fresh clone: every job creates the SQLite store's tables on first
    use; without the lock beside the store one of them dies with "duplicate column name"."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_STORE, str(tmp_path), str(i), str(PROCESSES)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(PROCESSES)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * PROCESSES, [err[-2000:] for _, err in results]
    ids = {out.strip().splitlines()[-1] for out, _ in results}
    assert len(ids) == 1
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert mlflow.get_experiment_by_name("dcm").experiment_id in ids
