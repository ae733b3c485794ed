"""DVC stage `validation` (dvc.yaml); `dcm validation` runs the same (dcm.stages.run_stage)."""

from dcm.stages import run_stage

if __name__ == "__main__":
    run_stage("validation")
