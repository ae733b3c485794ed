"""DVC stages `semantic`, `detail`, `lcm`, `pcm`: train one consistency student (resumable).

Usage: python stages/distill.py STAGE
"""

import logging
import sys

from dcm.config import load_params
from dcm.pipeline import run_distill

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_distill(load_params("params.yaml"), sys.argv[1])
