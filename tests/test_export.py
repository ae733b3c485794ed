"""Export to stock diffusers: the DCM student as a WanPipeline, and the PE detail expert as a LoRA.

Everything runs on a tiny random Wan checkpoint with a perturbed semantic expert and a perturbed
PE detail expert, so every check compares non-trivial weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from tiny_checkpoints import VIDEO_SHAPES, make_tiny_checkpoint, run_stock_wan_pipeline
from typer.testing import CliRunner

from dcm import flow
from dcm.cli import app
from dcm.config import parse_params
from dcm.experts import ParameterEfficientExpert
from dcm.export import (BOUNDARY_EPSILON, COPIED_FILE, LORA_FILE, ExportError, export_detail_lora,
                        export_wan_pipeline)
from dcm.guidance import initial_noise
from dcm.layout import Layout
from dcm.models import load_backbone, write_backbone_link
from dcm.models.wan import wan_velocity
from dcm.sampling import sample, stock_sigmas
from dcm.students import StudentRecord, learned_values, load_full_model, load_sampler

PROMPT, SEED, STEPS = "a red circle moving left on a stripes background", 3, 4
#: latents of the stock pipeline vs dcm's sampler on the same schedule (the PE detail expert is merged
#: into the weights in both, by different code, so they agree to float32 rounding)
PIPELINE_ATOL = 1e-4
#: one transformer call of the merged / LoRA-loaded detail expert vs ParameterEfficientExpert.active()
EXPERT_ATOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")


def _perturb(parameters, seed: int, scale: float) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in parameters:
            p.add_(scale * torch.randn(p.shape, generator=g))


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """A tiny Wan teacher link, a semantic expert and a PE detail expert laid out like the stages write them."""
    root = tmp_path_factory.mktemp("export")
    tiny = make_tiny_checkpoint("wan", root / "tiny")
    layout = Layout(root)
    write_backbone_link(layout.teacher_model, "wan", tiny)
    frames, height, width = VIDEO_SHAPES["wan"]
    params = parse_params({"model": {"backbone": "wan", "path": str(tiny), "frames": frames, "height": height,
                                     "width": width},
                           "flow": {"steps": 8, "shift": 3.0}, "boundary": 4,
                           "detail": {"lora_rank": 2, "lora_alpha": 6.0}})
    backbone = load_backbone(layout.teacher_model)
    semantic = backbone.transformer
    _perturb(semantic.parameters(), 0, 0.05)
    semantic.save_pretrained(layout.student("semantic") / "model")
    record(params, layout, "semantic", "full")
    d = params.detail
    expert = ParameterEfficientExpert(semantic, backbone.timestep_layers, d.lora_rank, d.lora_alpha, d.lora_targets)
    _perturb(expert.trainable_parameters(), 1, 0.1)
    expert.save(layout.student("detail"))
    record(params, layout, "detail", "pe")
    return SimpleNamespace(root=root, tiny=tiny, layout=layout, params=params,
                           shape=backbone.latent_shape(frames, height, width))


def record(params, layout: Layout, stage: str, kind: str) -> None:
    """The record a student stage writes, for students made here by hand."""
    layout.student(stage).mkdir(parents=True, exist_ok=True)
    StudentRecord(stage, stage, kind, [], params.boundary, learned_values(params, stage)).write(layout.student(stage))


@pytest.fixture(scope="module")
def pipeline_dir(student) -> Path:
    return export_wan_pipeline(student.params, student.layout, student.root / "export" / "wan", steps=STEPS)


def _pe_expert(student) -> ParameterEfficientExpert:
    backbone = load_backbone(student.layout.teacher_model)
    return ParameterEfficientExpert.load(load_full_model(student.layout.student("semantic"), backbone, "semantic"),
                                         student.layout.student("detail"))


def _inputs(student) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, *student.shape, generator=g)
    text = torch.randn(2, 6, 16, generator=g)
    return x, text




def test_the_exported_pipeline_runs_in_stock_diffusers_exactly_like_dcm_on_the_stock_schedule(student, pipeline_dir):
    stock = run_stock_wan_pipeline(pipeline_dir, initial_noise([SEED], student.shape), student.params.model, PROMPT,
                                   STEPS, student.root)

    shift = student.params.flow.shift
    backbone = load_backbone(student.layout.teacher_model)
    stock_params = student.params.with_overrides({"sample": {"schedule": "stock"}})
    sampler = load_sampler("dcm", STEPS, backbone, stock_params, student.layout)
    semantic_table, ran = sampler.semantic.scale_shift_table, []
    sampler.semantic.register_forward_pre_hook(
        lambda m, _: ran.append("transformer" if m.scale_shift_table is semantic_table else "transformer_2"))
    ours = sample(sampler, backbone, [PROMPT], [SEED], student.shape)

    assert stock["sigmas"] == stock_sigmas(STEPS, shift)
    assert stock["latents"].shape == ours.shape == (1, *student.shape)
    diff = (stock["latents"] - ours).abs().max().item()
    print(f"pipeline vs dcm sampler on stock sigmas: max |diff| = {diff:.3g} (atol {PIPELINE_ATOL})")
    assert diff <= PIPELINE_ATOL
    assert stock["ran"] == ran == ["transformer", "transformer", "transformer_2", "transformer_2"]


def test_the_export_documents_both_schedules_and_replaces_its_folder_atomically(student, pipeline_dir):
    info = json.loads((pipeline_dir / "dcm_export.json").read_text())
    boundary_sigma = float(flow.sigma_grid(8, 3.0)[4])
    assert info["stock_sigmas"] == stock_sigmas(STEPS, 3.0) and info["boundary_sigma"] == boundary_sigma
    assert info["dcm_sigmas"] == [float(s) for s in flow.sigma_grid(8, 3.0)[[8, 6, 4, 2, 0]]]
    assert info["dcm_experts"] == ["semantic", "semantic", "detail", "detail"]
    index = json.loads((pipeline_dir / "model_index.json").read_text())
    assert index["_class_name"] == "WanPipeline" and index["boundary_ratio"] == boundary_sigma + BOUNDARY_EPSILON
    assert index["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    readme = (pipeline_dir / "README.md").read_text()
    assert "WanPipeline.from_pretrained" in readme and f"num_inference_steps={STEPS}, guidance_scale=1.0" in readme
    assert "| dcm (`dcm sample`) |" in readme and "| stock (this pipeline) |" in readme
    assert sorted(p.name for p in pipeline_dir.parent.iterdir()) == ["wan"]  # no temporary folder left behind


@pytest.mark.parametrize("steps", [8, 50, 1000])
@pytest.mark.parametrize("shift", [1.0, 3.0, 50.0])
def test_boundary_ratio_sends_a_step_from_exactly_the_boundary_and_nothing_above_it_to_transformer_2(steps, shift):
    grid = flow.sigma_grid(steps, shift)
    for b in range(1, steps):
        threshold = (float(grid[b]) + BOUNDARY_EPSILON) * 1000  # WanPipeline: transformer_2 iff t < threshold
        assert bool(grid[b] * 1000 < threshold) and not bool(grid[b + 1] * 1000 < threshold)


def test_the_merged_transformer_2_is_the_pe_detail_expert(student, pipeline_dir):
    from diffusers import WanTransformer3DModel

    merged = WanTransformer3DModel.from_pretrained(pipeline_dir / "transformer_2")
    semantic = WanTransformer3DModel.from_pretrained(pipeline_dir / "transformer")
    expert = _pe_expert(student)
    x, text = _inputs(student)
    worst = 0.0
    with torch.no_grad():
        for sigma in (0.9, 0.5, 0.05):
            with expert.active() as model:
                want = wan_velocity(model, x, torch.tensor(sigma), text)
            got = wan_velocity(merged, x, torch.tensor(sigma), text)
            worst = max(worst, (got - want).abs().max().item())
            assert not torch.allclose(wan_velocity(semantic, x, torch.tensor(sigma), text), want,
                                      atol=1e-3)  # the experts really differ
    print(f"merged transformer_2 vs PE expert: max |diff| = {worst:.3g} (atol {EXPERT_ATOL})")
    assert worst <= EXPERT_ATOL


def test_the_lora_export_loads_into_a_stock_pipeline_and_reproduces_the_pe_expert(student):
    from diffusers import WanPipeline, WanTransformer3DModel

    out = export_detail_lora(student.params, student.layout, student.root / "export" / "lora")
    assert {p.name for p in out.iterdir()} == {LORA_FILE, COPIED_FILE, "README.md", "dcm_export.json"}
    with safe_open(str(out / LORA_FILE), "pt") as f:
        assert all(k.startswith("transformer.") and ".lora_" in k for k in f.keys())

    pipe = WanPipeline.from_pretrained(student.tiny, transformer=WanTransformer3DModel.from_pretrained(
        student.layout.student("semantic") / "model"))
    pipe.load_lora_weights(out, adapter_name="detail")
    loaded = pipe.transformer.load_state_dict(load_file(str(out / COPIED_FILE)), strict=False)
    assert not loaded.unexpected_keys

    expert = _pe_expert(student)
    x, text = _inputs(student)
    worst = 0.0
    with torch.no_grad(), expert.active() as model:
        for sigma in (0.9, 0.5, 0.05):
            want = wan_velocity(model, x, torch.tensor(sigma), text)
            got = wan_velocity(pipe.transformer, x, torch.tensor(sigma), text)
            worst = max(worst, (got - want).abs().max().item())
    print(f"LoRA-loaded stock transformer vs PE expert: max |diff| = {worst:.3g} (atol {EXPERT_ATOL})")
    assert worst <= EXPERT_ATOL


def test_without_optimization_decoupling_the_pipeline_holds_one_transformer_and_no_boundary(student, tmp_path):
    from diffusers import WanPipeline

    layout = Layout(tmp_path)
    layout.artifacts.mkdir()
    for shared in ("teacher", "semantic"):
        (layout.artifacts / shared).symlink_to(student.layout.artifacts / shared)
    single = student.params.with_overrides({"ablation": {"od": False}})
    record(single, layout, "detail", "none")
    (layout.artifacts / "semantic").unlink()
    shutil.copytree(student.layout.student("semantic"), layout.student("semantic"))
    record(single, layout, "semantic", "full")
    out = export_wan_pipeline(single, layout, tmp_path / "wan", steps=2)
    pipe = WanPipeline.from_pretrained(out)
    assert pipe.transformer_2 is None and pipe.config.boundary_ratio is None
    assert json.loads((out / "dcm_export.json").read_text())["stock_experts"] == ["vanilla", "vanilla"]


def _layout(root: Path, student, semantic: bool, detail: str | None, files: tuple[str, ...] = (),
            params=None) -> Layout:
    """Stage folders holding only placeholders: validation must fail before anything is loaded."""
    layout = Layout(root)
    layout.artifacts.mkdir(parents=True)
    (layout.artifacts / "teacher").symlink_to(student.layout.artifacts / "teacher")
    params = params or student.params
    if semantic:
        (layout.student("semantic") / "model").mkdir(parents=True)
        (layout.student("semantic") / "model" / "config.json").write_text("{}")
        record(params, layout, "semantic", "full")
    if detail is not None:
        record(params, layout, "detail", detail)
        for name in files:
            (layout.student("detail") / name).write_text("")
    return layout


def test_bad_input_fails_before_any_loading_with_an_error_naming_what_is_missing(student, tmp_path):
    params, out = student.params, tmp_path / "out"
    with pytest.raises(ExportError, match="tiny.*no stock diffusers pipeline.*real backbone .*wan"):
        export_wan_pipeline(parse_params({}), student.layout, out)
    cog = params.with_overrides({"model": {"backbone": "cogvideox"}})
    with pytest.raises(ExportError, match="CogVideoXPipeline holds one.*--format lora"):
        export_wan_pipeline(cog, student.layout, out)
    with pytest.raises(ExportError, match=r"semantic student is missing: expected .*semantic/expert\.json"):
        export_wan_pipeline(params, _layout(tmp_path / "a", student, False, None), out)
    with pytest.raises(ExportError, match=r"detail student is missing: expected .*detail/expert\.json"):
        export_wan_pipeline(params, _layout(tmp_path / "b", student, True, None), out)
    with pytest.raises(ExportError, match=r"detail\.safetensors"):
        export_wan_pipeline(params, _layout(tmp_path / "c", student, True, "pe", ("detail.json",)), out)
    other = params.with_overrides({"boundary": 5, "sample": {"steps": [2, 4]}})
    with pytest.raises(ExportError, match=r"semantic was trained with other params: boundary = 5 there, 4 in "
                                          r"params.yaml.*dvc repro semantic"):
        export_wan_pipeline(params, _layout(tmp_path / "d", student, True, "pe", params=other), out)
    with pytest.raises(ExportError, match="backbone.json"):
        empty = Layout(tmp_path / "no-teacher")
        export_wan_pipeline(params, empty, out)
    single = params.with_overrides({"ablation": {"od": False}})
    with pytest.raises(ExportError, match="'none', not an adapter.*no LoRA"):
        export_detail_lora(single, _layout(tmp_path / "e", student, True, "none", params=single), out)
    assert not out.exists()


def test_the_cli_reports_bad_input_on_stderr_with_exit_code_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("boundary: 35\n")
    runner = CliRunner()
    result = runner.invoke(app, ["export", "--format", "onnx"])
    assert result.exit_code == 2 and "unknown --format 'onnx'; known: pipeline, lora" in result.stderr
    result = runner.invoke(app, ["export", "-p", "params.yaml"])
    assert result.exit_code == 2 and "model.backbone = 'tiny' cannot be exported" in result.stderr
    assert "--format" in runner.invoke(app, ["export", "--help"]).output
