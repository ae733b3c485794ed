"""DVC stages `semantic`, `detail`, `lcm`, `pcm`: train one consistency student (resumable).

Usage: python stages/distill.py STAGE
"""

import logging
import sys

from dcm.config import load_params
from dcm.launch import relaunch
from dcm.pipeline import run_distill

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    params = load_params("params.yaml")
    relaunch(params)  # under `accelerate launch` when launch.* asks for it
    run_distill(params, sys.argv[1])
