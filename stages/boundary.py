"""DVC stage `boundary`: suggest the boundary from the teacher's trajectories (reports/boundary_suggestion.json)."""

import logging

from dcm.config import load_params
from dcm.errors import run_reporting_user_errors
from dcm.pipeline.boundary import run_boundary

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_reporting_user_errors(lambda: run_boundary(load_params("params.yaml")))
