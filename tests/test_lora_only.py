"""LoRA-only experts (``distill.lora_only``): each DCM expert is a LoRA alone on the frozen teacher
transformer of its phase, which stays the teacher, so a 14B model is held once; the LoRAs export as
diffusers LoRA files that load into a stock ``WanPipeline``'s ``transformer`` and ``transformer_2``."""

import json

import pytest
import torch
from accelerate import Accelerator
from tiny_checkpoints import VIDEO_SHAPES, make_tiny_checkpoint, run_stock_wan_pipeline

from conftest import poison_loss_at, tiny_wan_params
from dcm.config import ParamsError, parse_params
from dcm.distill.methods import StudentPlan
from dcm.distill.student import Student, build_student
from dcm.experts import ParameterEfficientExpert, count_parameters
from dcm.export import LORA_FILE, SEMANTIC_LORA_FILE, export_detail_lora, export_wan_pipeline
from dcm.guidance import initial_noise
from dcm.layout import Layout
from dcm.models import build_tiny_backbone, load_backbone
from dcm.sampling import sample
from dcm.stages.distill import run_distill
from dcm.stages.sample import run_sample
from dcm.stages.teacher import run_teacher
from dcm.stages.trajectories import run_trajectories
from dcm.stages.validation import run_validation
from dcm.students import load_sampler, load_student

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = "a red circle moving left"


def _inputs(backbone, batch=2):
    cfg = backbone.transformer.config
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cfg.in_channels, 8, 32, 32, generator=g)
    return x, torch.tensor([300.0, 700.0][:batch]), torch.randn(batch, backbone.max_length, cfg.text_dim, generator=g)


def test_a_lora_only_expert_trains_a_lora_on_the_teachers_own_module_and_leaves_the_teacher_as_it_was(micro_params):
    params = micro_params.with_overrides({"model": {"tiny": {"init": "default"}}, "distill": {"lora_only": True}})
    teacher = build_tiny_backbone(params.model.tiny)
    teacher.transformer.requires_grad_(False)
    x, t, text = _inputs(teacher)
    before = teacher.transformer(x, t, text, return_dict=False)[0]
    plan = StudentPlan.for_stage("semantic", params)
    assert plan.kind == "lora"
    module, trainable = build_student(plan, params, teacher, Layout())
    assert module.base is teacher.transformer  # held once: no copy of the teacher
    assert count_parameters(trainable) == count_parameters(module.lora_parameters()) > 0
    student = Student(module, trainable, params, lr=1e-2)  # the EMA target: a second adapter on the same module
    student.prepare(Accelerator(cpu=True), sharded=False)
    assert student.ema.base is teacher.transformer and student.ema.adapter == "semantic_ema"
    for _ in range(2):
        loss = module(x, t, text, return_dict=False)[0].pow(2).mean()
        loss.backward()
        student.optimizer.step()
        student.optimizer.zero_grad()
        student.update_target()
    after = module(x, t, text, return_dict=False)[0]
    target = student.ema(x, t, text, return_dict=False)[0]
    assert (after - before).abs().max() > 1e-3 and (target - before).abs().max() > 1e-5
    assert (target - after).abs().max() > 1e-6  # the EMA lags behind the student
    torch.testing.assert_close(teacher.transformer(x, t, text, return_dict=False)[0], before, rtol=0, atol=0)


def test_lora_only_with_the_adaptive_gan_weight_is_refused_in_one_line():
    with pytest.raises(ParamsError, match=r"g_weighting = 'adaptive'.*LoRA-only.*'fixed'"):
        parse_params({"distill": {"lora_only": True}, "detail": {"g_weighting": "adaptive"}})
    with pytest.raises(ParamsError, match=r"semantic.lora_rank"):
        parse_params({"semantic": {"lora_rank": 0}})


@pytest.fixture(scope="module")
def wan22(tmp_path_factory):
    return make_tiny_checkpoint("wan2.2", tmp_path_factory.mktemp("wan22-lora") / "checkpoint")


def test_both_experts_as_loras_on_wan22_sample_and_export_to_a_stock_pipeline(wan22, tmp_path, prompts_workspace):
    from diffusers import WanPipeline

    prompts = prompts_workspace
    frames, height, width = VIDEO_SHAPES["wan2.2"]
    params = tiny_wan_params(wan22, "wan2.2", prompts, {
        "flow": {"steps": 8}, "boundary": 2,  # shift 17: the teacher's switch (t 875) between grid points 2 and 3
        "distill": {"lora_only": True}, "semantic": {"steps": 2, "lr": 1e-2, "lora_rank": 4, "lora_alpha": 4.0},
        "detail": {"steps": 2, "lr": 1e-2}, "sample": {"methods": ["dcm"], "steps": [4]}})
    run_teacher(params)
    run_trajectories(params)
    run_validation(params)
    run_distill(params, "semantic")
    run_distill(params, "detail")
    for stage, base, rank in (("semantic", "transformer", 4), ("detail", "transformer_2", 2)):
        assert json.loads((Layout().student(stage) / "expert.json").read_text())["kind"] == "lora"
        config = json.loads((Layout().student(stage) / f"{stage}.json").read_text())
        assert (config["base"], config["r"], config["timestep_layers"]) == (base, rank, [])
    assert set(run_sample(params)) == {"dcm@4"}

    # the merged pipeline, run by stock diffusers alone, is dcm's sampler on the stock schedule
    backbone = load_backbone(Layout().teacher_model)
    shape = backbone.latent_shape(frames, height, width)
    stock = run_stock_wan_pipeline(export_wan_pipeline(params, steps=4), initial_noise([3], shape), params.model, PROMPT,
                                   4, tmp_path)
    sampler = load_sampler("dcm", 4, backbone, params.with_overrides({"sample": {"schedule": "stock"}}))
    ours = sample(sampler, backbone, [PROMPT], [3], shape)
    assert (stock["latents"] - ours).abs().max().item() <= 1e-4
    assert stock["ran"][0] == "transformer" and stock["ran"][-1] == "transformer_2"

    # the two LoRA files load into the teacher's own transformer and transformer_2
    out = export_detail_lora(params)
    assert {LORA_FILE, SEMANTIC_LORA_FILE} <= {p.name for p in out.iterdir()}
    assert "load_into_transformer_2=True" in (out / "README.md").read_text()
    pipe = WanPipeline.from_pretrained(wan22)
    pipe.load_lora_weights(out, weight_name=SEMANTIC_LORA_FILE, adapter_name="semantic")
    pipe.load_lora_weights(out, weight_name=LORA_FILE, adapter_name="detail", load_into_transformer_2=True)
    teacher = load_backbone(Layout().teacher_model)
    _, semantic = load_student("semantic", teacher, params)
    _, detail = load_student("detail", teacher, params)
    assert isinstance(semantic, ParameterEfficientExpert) and detail.base is teacher.transformer.transformer_2
    g = torch.Generator().manual_seed(1)
    x, text = torch.randn(2, *shape, generator=g), teacher.encode_prompts([PROMPT] * 2)
    for expert, stock_module, sigma in ((semantic, pipe.transformer, 0.95), (detail, pipe.transformer_2, 0.5)):
        s = torch.tensor([sigma, sigma])
        with torch.no_grad():
            want = teacher.velocity(expert, x, s, text)
            got = teacher.velocity(stock_module, x, s, text)
            plain = teacher.velocity(expert.base, x, s, text)  # the teacher: LoRA off outside the expert's calls
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        assert (want - plain).abs().max() > 1e-4


def test_on_the_toy_world_lora_only_experts_train_and_a_stopped_stage_resumes_to_the_same_loras(
        workspace, micro_distill, monkeypatch):
    """The embedded default with ``distill.lora_only``: both experts are LoRAs on the teacher's one
    transformer; a detail stage stopped after its step-2 checkpoint resumes (LoRA, EMA adapter,
    discriminator) to the weights of an uninterrupted run."""
    from safetensors.torch import load_file

    from dcm.distill.probes import CollapseError

    params = micro_distill.with_overrides({"distill": {"lora_only": True}, "detail": {"steps": 4}})
    run_trajectories(params)
    run_validation(params)
    run_distill(params, "semantic")
    run_distill(params, "detail")
    art = Layout().artifacts
    semantic = load_file(str(art / "semantic" / "semantic.safetensors"))
    assert any(v.abs().max() > 0 for k, v in semantic.items() if "lora_B" in k) and not (art / "semantic/model").exists()
    (art / "detail").rename(art / "straight")
    restore = poison_loss_at(monkeypatch, 3)
    with pytest.raises(CollapseError, match="step 2: non-finite loss"):
        run_distill(params, "detail")
    restore()
    run_distill(params, "detail")
    straight, resumed = (load_file(str(art / run / "detail.safetensors")) for run in ("straight", "detail"))
    assert straight.keys() == resumed.keys() and all("lora_" in k for k in straight)
    for name, value in straight.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=0, msg=name)
    assert set(run_sample(params.with_overrides({"sample": {"methods": ["dcm"], "steps": [2]}}))) == {"dcm@2"}
