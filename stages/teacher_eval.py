"""DVC stage `teacher_eval`: read params.yaml, call the library, write this stage's outputs."""

import logging

from dcm.config import load_params
from dcm.errors import run_reporting_user_errors
from dcm.pipeline.teacher_eval import run_teacher_eval

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_reporting_user_errors(lambda: run_teacher_eval(load_params("params.yaml")))
