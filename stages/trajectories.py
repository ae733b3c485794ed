"""DVC stage `trajectories`: teacher ODE trajectories in shards (resumable, data-parallel)."""

import logging

from dcm.config import load_params
from dcm.errors import run_reporting_user_errors
from dcm.launch import relaunch
from dcm.pipeline.trajectories import run_trajectories

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def main() -> None:
        params = load_params("params.yaml")
        relaunch(params)  # under `accelerate launch` when launch.* asks for it
        run_trajectories(params)

    run_reporting_user_errors(main)
