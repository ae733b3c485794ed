"""DVC stages `semantic`, `detail`, `lcm`, `pcm`: train one consistency student (resumable).

Usage: python stages/distill.py STAGE
"""

import logging
import sys

from dcm.config import load_params
from dcm.errors import run_reporting_user_errors
from dcm.launch import relaunch
from dcm.pipeline.distill import run_distill

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def main() -> None:
        params = load_params("params.yaml")
        relaunch(params)  # under `accelerate launch` when launch.* asks for it
        run_distill(params, sys.argv[1])

    run_reporting_user_errors(main)
