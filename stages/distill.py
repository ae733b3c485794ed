"""DVC stages `semantic`, `detail`, `lcm`, `pcm` (dvc.yaml); `dcm STAGE` runs the same (dcm.stages.run_stage).

Usage: python stages/distill.py STAGE
"""

import sys

from dcm.stages import run_stage

if __name__ == "__main__":
    run_stage(sys.argv[1])
