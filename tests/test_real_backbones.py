"""The real backbones run the whole pipeline, trajectories to few-step samples, on tiny random
checkpoints saved with ``save_pretrained`` (no real weights needed)."""

import json
import shutil

import pytest

from dcm.config import ParamsError, parse_params
from dcm.io import read_manifest
from dcm.models import BackboneError, load_backbone
from dcm.pipeline import run_distill, run_evaluate, run_sample, run_teacher, run_trajectories
from tiny_checkpoints import VIDEO_SHAPES, make_tiny_checkpoint

from conftest import MICRO_DISTILL

pytestmark = pytest.mark.usefixtures("one_thread")


def _params(kind: str, checkpoint, prompt_file) -> dict:
    frames, height, width = VIDEO_SHAPES[kind]
    return {
        **MICRO_DISTILL,
        "model": {"backbone": kind, "path": str(checkpoint), "frames": frames, "height": height, "width": width},
        "flow": {"steps": 4},
        "semantic": {**MICRO_DISTILL["semantic"], "tc_lag": 1},  # two latent frames
        "boundary": 2,
        "trajectories": {**MICRO_DISTILL["trajectories"], "prompt_file": str(prompt_file), "dtype": "float32"},
        "sample": {"methods": ["teacher", "dcm"], "steps": [2], "videos": 2, "batch_size": 2,
                   "prompt_file": str(prompt_file), "latency_batch": 1, "latency_repeats": 1,
                   "latency_min_seconds": 0},
    }


@pytest.mark.parametrize("kind", ["wan", "cogvideox", "hunyuanvideo"])
def test_a_real_backbone_runs_trajectories_both_experts_sampling_and_evaluation(kind, tmp_path, monkeypatch):
    checkpoint = make_tiny_checkpoint(kind, tmp_path / "checkpoint")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle moving left\na blue square moving up\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = parse_params(_params(kind, checkpoint, prompts))

    teacher_dir = run_teacher(params)  # a link to the checkpoint, nothing trained or copied
    assert json.loads((teacher_dir / "backbone.json").read_text())["path"] == str(checkpoint.resolve())
    assert not (teacher_dir / "transformer").exists()
    backbone = load_backbone(teacher_dir)
    assert backbone.kind == kind

    manifest = json.loads(run_trajectories(params).read_text())
    assert manifest["videos"] == 4
    assert manifest["spec"]["shape"] == list(backbone.latent_shape(*VIDEO_SHAPES[kind]))
    semantic = run_distill(params, "semantic")
    detail = run_distill(params, "detail")
    assert semantic["kind"] == "full" and detail["kind"] == "pe"
    assert 0 < detail["trainable_parameters"] < semantic["trainable_parameters"]

    latency = run_sample(params)
    assert set(latency) == {"teacher@4", "dcm@2"}
    for key in latency:
        records = read_manifest(tmp_path / "artifacts/samples" / key)
        assert [r["prompt"] for r in records] == ["a red circle moving left", "a blue square moving up"]
        assert all((tmp_path / "artifacts/samples" / key / r["file"]).stat().st_size > 0 for r in records)

    metrics = run_evaluate(params)  # teacher fidelity and VBench; the toy evaluator does not apply
    assert "psnr_vs_teacher" in metrics["dcm@2"] and "total" not in metrics["dcm@2"]


def test_a_real_backbone_needs_a_complete_local_directory(tmp_path):
    with pytest.raises(ParamsError, match="model.path"):
        parse_params({"model": {"backbone": "wan"}})
    checkpoint = make_tiny_checkpoint("wan", tmp_path / "wan")
    shutil.rmtree(checkpoint / "vae")
    params = parse_params({"model": {"backbone": "wan", "path": str(checkpoint)}})
    with pytest.raises(BackboneError, match=r"missing .*vae.*expected transformer, vae, text_encoder, tokenizer"):
        run_teacher(params, tmp_path / "teacher")
    assert not (tmp_path / "teacher").exists()
