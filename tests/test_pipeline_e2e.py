"""End to end: `dvc repro` with smoke params in a fresh git repository, outputs and MLflow."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from dcm.io import read_manifest, read_mp4

ROOT = Path(__file__).resolve().parent.parent
SMOKE = {
    "model": {"tiny": {"num_layers": 1, "num_attention_heads": 2, "attention_head_dim": 16, "ffn_dim": 32,
                       "freq_dim": 16, "text_dim": 16, "text_layers": 1, "text_heads": 1}},
    "teacher": {"steps": 4, "batch_size": 2, "warmup_steps": 1, "checkpoint_every": 2, "eval_every": 4,
                "eval_prompts": 2, "eval_sample_steps": 2},
    "teacher_eval": {"videos": 3, "batch_size": 2},
    "flow": {"steps": 8},
    "boundary": 4,
    "trajectories": {"videos": 4, "batch_size": 2, "shard_size": 2},
    "distill": {"batch_size": 2, "checkpoint_every": 2, "bucket_every": 2, "buckets": 4},
    "semantic": {"steps": 2},
    "detail": {"steps": 2, "lora_rank": 2, "lora_alpha": 4.0, "head_width": 8},
    "lcm": {"steps": 2},
    "pcm": {"steps": 2, "phases": 2},
}
STAGES = ["detail", "lcm", "pcm", "semantic", "teacher", "teacher_eval", "trajectories"]


def _run(cmd, cwd, env):
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    for item in ("dvc.yaml", "stages", "src", ".dvcignore"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, repo / item)
    shutil.copytree(ROOT / ".dvc", repo / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in SMOKE.items():
        if isinstance(values, dict):
            for key, value in values.items():
                if isinstance(value, dict):
                    params[section][key].update(value)
                else:
                    params[section][key] = value
        else:
            params[section] = values
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["DVC_NO_ANALYTICS"] = "1"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    _run(["git", "init", "-q"], repo, env)
    _run([*git, "add", "-A"], repo, env)
    _run([*git, "commit", "-qm", "smoke"], repo, env)
    first = _run(["dvc", "repro"], repo, env)
    return repo, env, first


def test_repro_writes_the_teacher_and_its_report(repo):
    repo, _, _ = repo
    assert (repo / "artifacts/teacher/model/transformer/config.json").exists()
    assert (repo / "artifacts/teacher/checkpoint.pt").exists()
    records = read_manifest(repo / "reports/teacher/samples")
    assert len(records) == 3
    assert {r["method"] for r in records} == {"teacher"} and {r["steps"] for r in records} == {8}
    video = read_mp4(repo / "reports/teacher/samples" / records[0]["file"])
    assert video.shape == (8, 32, 32, 3)
    metrics = json.loads((repo / "reports/teacher/metrics.json").read_text())
    assert {"total", "quality", "semantic", "color", "motion_direction", "batch_seconds"} <= metrics.keys()
    assert (repo / "reports/teacher/grid.png").stat().st_size > 1000
    assert "accuracy" in (repo / "reports/teacher.md").read_text()
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert sorted(lock["stages"]) == STAGES
    for stage in ("semantic", "lcm", "pcm"):
        assert (repo / "artifacts" / stage / "model" / "config.json").exists()
    assert (repo / "artifacts/detail/detail.safetensors").exists()


def test_second_repro_reuses_everything(repo):
    repo, env, _ = repo
    out = _run(["dvc", "repro"], repo, env)
    assert "didn't change, skipping" in out
    assert "Running stage" not in out


def test_each_stage_logged_one_tagged_mlflow_run_at_the_repo_root(repo):
    repo, _, _ = repo
    assert (repo / "mlflow.db").exists()
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["dcm"], output_format="pandas")
    assert sorted(runs["tags.dcm.stage"]) == STAGES
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    assert set(runs["tags.git.revision"]) == {head}
    assert set(runs["tags.dvc.exp_name"]) == {"workspace"}
    assert set(runs["params.teacher.lr"]) == {str(0.001)}
    teacher_eval = runs[runs["tags.dcm.stage"] == "teacher_eval"].iloc[0]
    assert 0.0 <= teacher_eval["metrics.total"] <= 1.0
    assert teacher_eval["artifact_uri"].startswith((repo / "mlartifacts").as_uri())
    assert (repo / "mlartifacts").is_dir()
