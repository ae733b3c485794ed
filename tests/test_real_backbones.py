"""The real backbones run the whole pipeline, trajectories to few-step samples, on tiny random
checkpoints saved with ``save_pretrained`` (no real weights needed)."""

import json
import shutil

import pytest

from dcm.config import ParamsError, parse_params
from dcm.io import read_manifest
from dcm.models import BackboneError, load_backbone
from dcm.evaluation.vbench_suite import suite_prompts
from dcm.layout import Layout
from dcm.stages.boundary import run_boundary
from dcm.stages.distill import run_distill
from dcm.stages.validation import run_validation
from dcm.stages.trajectories import run_trajectories
from dcm.stages.evaluate import run_evaluate
from dcm.stages.sample import run_sample
from dcm.stages.teacher import run_teacher
from tiny_checkpoints import VIDEO_SHAPES, make_tiny_checkpoint

from conftest import MICRO_DISTILL

pytestmark = pytest.mark.usefixtures("one_thread")


def _params(kind: str, checkpoint, prompt_file, sample_prompts: str | None = None) -> dict:
    frames, height, width = VIDEO_SHAPES[kind]
    return {
        **MICRO_DISTILL,
        "model": {"backbone": kind, "path": str(checkpoint), "frames": frames, "height": height, "width": width},
        "flow": {"steps": 4},
        "semantic": {**MICRO_DISTILL["semantic"], "tc_lag": 1},  # two latent frames
        "boundary": 2,
        "trajectories": {**MICRO_DISTILL["trajectories"], "prompt_file": str(prompt_file), "dtype": "float32"},
        "sample": {"methods": ["teacher", "dcm"], "steps": [2], "videos": 2, "videos_per_prompt": 2, "batch_size": 2,
                   "prompt_file": sample_prompts or str(prompt_file), "latency_batch": 1, "latency_repeats": 1},
    }


@pytest.mark.parametrize("kind", ["wan", "cogvideox", "hunyuanvideo"])
def test_a_real_backbone_runs_trajectories_both_experts_sampling_and_evaluation(kind, tmp_path, monkeypatch):
    checkpoint = make_tiny_checkpoint(kind, tmp_path / "checkpoint")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle moving left\na blue square moving up\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    # Wan samples VBench's own suite (two temporal_flickering prompts, two videos each, named as VBench's
    # standard mode expects); the others a text file of prompts
    suite = "vbench:temporal_flickering" if kind == "wan" else None
    params = parse_params(_params(kind, checkpoint, prompts, suite))

    run_teacher(params)  # a link to the checkpoint, nothing trained or copied
    teacher_dir = Layout().teacher_model
    assert json.loads((teacher_dir / "backbone.json").read_text())["path"] == str(checkpoint.resolve())
    assert not (teacher_dir / "transformer").exists()
    backbone = load_backbone(teacher_dir)
    assert backbone.kind == kind

    run_trajectories(params)
    run_validation(params)
    manifest = json.loads((Layout().trajectories / "manifest.json").read_text())
    suggestion = run_boundary(params)  # no evaluator for a real backbone: the knee of the normalised change
    assert suggestion.method == "knee" and 1 <= suggestion.boundary <= params.flow.steps - 1
    assert json.loads(Layout().boundary_suggestion.read_text())["boundary"] == suggestion.boundary
    assert manifest["videos"] == 4
    assert manifest["spec"]["shape"] == list(backbone.latent_shape(*VIDEO_SHAPES[kind]))
    semantic = run_distill(params, "semantic")
    detail = run_distill(params, "detail")
    kinds = [json.loads((Layout().student(s) / "expert.json").read_text())["kind"] for s in ("semantic", "detail")]
    assert kinds == ["full", "pe"]
    assert 0 < detail["trainable_parameters"] < semantic["trainable_parameters"]

    latency = run_sample(params)
    assert set(latency) == {"teacher@4", "dcm@2"}
    for key in latency:
        records = read_manifest(tmp_path / "artifacts/samples" / key)
        if suite:
            first, second = suite_prompts(["temporal_flickering"])[:2]
            assert [r["file"] for r in records] == [f"{first}-0.mp4", f"{first}-1.mp4", f"{second}-0.mp4",
                                                    f"{second}-1.mp4"]
        else:
            assert [r["prompt"] for r in records] == ["a red circle moving left", "a blue square moving up"]
        assert all((tmp_path / "artifacts/samples" / key / r["file"]).stat().st_size > 0 for r in records)

    metrics = run_evaluate(params)  # teacher fidelity and VBench; the toy evaluator does not apply
    assert "psnr_vs_teacher" in metrics["dcm@2"] and "total" not in metrics["dcm@2"]
    if suite:  # VBench's standard mode ran the one dimension that needs no weights, and says what is missing
        entry = metrics["dcm@2"]
        assert 0 < entry["vbench_temporal_flickering"] <= 1 and entry["vbench_dimensions"] == "temporal_flickering"
        assert entry["vbench_partial"] and entry["vbench_total"] is None and "scene" in entry["vbench_missing"]


def test_a_real_backbone_needs_a_complete_local_directory(tmp_path):
    with pytest.raises(ParamsError, match="model.path"):
        parse_params({"model": {"backbone": "wan"}})
    checkpoint = make_tiny_checkpoint("wan", tmp_path / "wan")
    shutil.rmtree(checkpoint / "vae")
    params = parse_params({"model": {"backbone": "wan", "path": str(checkpoint)}})
    with pytest.raises(BackboneError, match=r"missing .*vae.*expected transformer, vae, text_encoder, tokenizer"):
        run_teacher(params, Layout(tmp_path))
    assert not (tmp_path / "artifacts").exists()
