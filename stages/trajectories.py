"""DVC stage `trajectories`: teacher ODE trajectories in shards (resumable, data-parallel)."""

import logging

from dcm.config import load_params
from dcm.pipeline import run_trajectories

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_trajectories(load_params("params.yaml"))
