import os
import shutil
from pathlib import Path

import pytest

from dcm.config import Params, load_params

os.environ.setdefault("DVC_NO_ANALYTICS", "1")

#: what users run: every test configuration is this, scaled down
PRODUCTION = load_params(Path(__file__).resolve().parents[1] / "params.yaml")


@pytest.fixture(scope="module")
def one_thread():
    """Toy-sized ops gain nothing from intra-op threads, which only spin against other work on the
    machine; modules of tiny models use this with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def world():
    return PRODUCTION.world.to_config()


#: params.yaml scaled down: a smaller transformer, fewer steps, videos and grid points; every other
#: setting (shift, recipe, targets, guidance, heads) is the production one
MICRO = {
    # patch (2, 4, 4): tokens of two frames, half the default's, which keeps the suite within CI's time
    # (the committed teacher's per-frame tokens: tests/test_teacher.py)
    "model": {"tiny": {"patch_size": [2, 4, 4], "num_layers": 1, "num_attention_heads": 2, "attention_head_dim": 16, "ffn_dim": 32,
                       "freq_dim": 16, "text_dim": 16, "text_layers": 1, "text_heads": 1}},
    "teacher": {"steps": 6, "restarts": [], "batch_size": 2, "warmup_steps": 2, "checkpoint_every": 3,
                "eval_every": 6, "eval_prompts": 2, "eval_sample_steps": 2},
    "teacher_eval": {"videos": 3, "batch_size": 2},
    "flow": {"steps": 4},
    "boundary": 2,
    "sample": {"steps": [2, 4], "videos": 2, "batch_size": 2, "latency_batch": 1, "latency_repeats": 1},
}


@pytest.fixture
def micro_params() -> Params:
    """The production params with a model and schedule small enough to train a few steps in seconds."""
    return PRODUCTION.with_overrides(MICRO)


MICRO_DISTILL = {
    "trajectories": {"videos": 4, "batch_size": 2, "shard_size": 2},
    "distill": {"batch_size": 2, "checkpoint_every": 2, "bucket_every": 2, "buckets": 4, "log_every": 1,
                "validate_videos": 4},
    "semantic": {"steps": 3},
    "detail": {"steps": 3, "lora_rank": 2, "lora_alpha": 4.0, "head_width": 8, "feature_stride": 1},
    "lcm": {"steps": 2},
    "pcm": {"steps": 2, "phases": 2},
}


def with_overrides(params: Params, overrides: dict) -> Params:
    return params.with_overrides(overrides)


@pytest.fixture
def micro_distill(micro_params) -> Params:
    return with_overrides(micro_params, MICRO_DISTILL)


@pytest.fixture(scope="session")
def micro_teacher(tmp_path_factory) -> Path:
    """A micro teacher trained for 30 steps: its velocity is far from zero (adaLN-Zero starts at
    exactly zero, which would make every trajectory constant and every distillation loss zero), so
    what is built on it can fail."""
    import torch

    from dcm.teacher.training import train_teacher

    params = PRODUCTION.with_overrides({**MICRO, "teacher": {**MICRO["teacher"], "steps": 30, "batch_size": 4,
                                                             "eval_every": 1000}})
    out = tmp_path_factory.mktemp("micro_teacher")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_teacher(params, out)
    finally:
        torch.set_num_threads(threads)
    return out / "model"


@pytest.fixture
def workspace(tmp_path, monkeypatch, micro_teacher):
    """A working directory holding the trained micro teacher, as the stages expect it."""
    import mlflow

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)  # an earlier test's stage run set this process's URI to its own store
    shutil.copytree(micro_teacher, tmp_path / "artifacts/teacher/model")
    return tmp_path


def poison_loss_at(monkeypatch, call: int):
    """Make the ``call``-th consistency loss of the next distillation NaN (the stage then stops after its
    last checkpoint); returns the function that puts the real loss back."""
    from dcm.distill import objective

    real, calls = objective.pseudo_huber, {"n": 0}

    def poisoned(pred, target, c):
        calls["n"] += 1
        return real(pred, target, c) * (float("nan") if calls["n"] == call else 1.0)

    monkeypatch.setattr(objective, "pseudo_huber", poisoned)
    return lambda: monkeypatch.setattr(objective, "pseudo_huber", real)


def tiny_wan_params(checkpoint, kind: str, prompt_file, overrides: dict):
    """Stage params for a tiny random Wan-family ``checkpoint`` (``kind``: its entry in ``VIDEO_SHAPES``) on
    MICRO_DISTILL's budgets, ``prompt_file`` for trajectories and sampling, then ``overrides``."""
    from tiny_checkpoints import VIDEO_SHAPES

    from dcm.config import parse_params

    frames, height, width = VIDEO_SHAPES[kind]
    base = parse_params({
        **MICRO_DISTILL,
        "model": {"backbone": "wan", "path": str(checkpoint), "frames": frames, "height": height, "width": width},
        "semantic": {**MICRO_DISTILL["semantic"], "tc_lag": 1},  # two latent frames
        "trajectories": {**MICRO_DISTILL["trajectories"], "prompt_file": str(prompt_file), "dtype": "float32"},
        "sample": {"videos": 2, "videos_per_prompt": 1, "batch_size": 2, "prompt_file": str(prompt_file),
                   "latency_batch": 1, "latency_repeats": 1},
    })
    return base.with_overrides(overrides)


@pytest.fixture
def prompts_workspace(tmp_path, monkeypatch) -> Path:
    """A working directory with its own MLflow store and a two-prompt file (returned), for stages on a
    tiny random real-backbone checkpoint."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle moving left\na blue square moving up\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return prompts


def run_dcm_stages(params) -> tuple[dict, dict]:
    """What ``dvc repro`` runs for DCM on a real backbone: teacher (a link), trajectories, validation set,
    both experts, sampling and evaluation; returns the sample stage's latency and the metrics."""
    from dcm.stages.distill import run_distill
    from dcm.stages.evaluate import run_evaluate
    from dcm.stages.sample import run_sample
    from dcm.stages.teacher import run_teacher
    from dcm.stages.trajectories import run_trajectories
    from dcm.stages.validation import run_validation

    run_teacher(params)
    run_trajectories(params)
    run_validation(params)
    run_distill(params, "semantic")
    run_distill(params, "detail")
    return run_sample(params), run_evaluate(params)


def random_image(height: int, width: int, seed: int = 0):
    """A uint8 ``(H, W, 3)`` image of random pixels."""
    import numpy as np

    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def image_prompt_table(folder: Path, size: tuple[int, int],
                       rows=(("a red circle moving left", "red.png", 0), ("a blue square moving up", "blue.png", 1))):
    """An image-to-video prompt set: ``prompts.csv`` pairing each prompt with an image file of ``size``
    (width, height) beside it."""
    from PIL import Image

    lines = ["text,image"]
    for text, name, seed in rows:
        Image.fromarray(random_image(size[1], size[0], seed)).save(folder / name)
        lines.append(f"{text},{name}")
    (folder / "prompts.csv").write_text("\n".join(lines) + "\n")
    return folder / "prompts.csv"
