"""Wan2.2-A14B's two-expert teacher: a diffusers directory whose ``model_index.json`` names a
``transformer_2`` and a ``boundary_ratio`` runs ``transformer`` at ``t >= boundary_ratio * 1000`` and
``transformer_2`` below, with ``guidance_scale`` above the switch and ``guidance_scale_2`` below, as
``WanPipeline`` does; built here as a tiny random checkpoint with diffusers' own classes."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from conftest import MICRO_DISTILL
from dcm.config import ParamsError, parse_params
from dcm.io import read_manifest
from dcm.layout import Layout
from dcm.students import load_sampler, load_student
from dcm.models import BackboneError, TeacherMismatchError, TwoExpertTransformer, load_backbone
from dcm import flow
from dcm.export import COPIED_FILE, export_detail_lora, export_wan_pipeline
from dcm.guidance import initial_noise
from dcm.sampling import sample
from dcm.stages.boundary import run_boundary
from dcm.stages.evaluate import run_evaluate
from dcm.stages.distill import run_distill
from dcm.stages.sample import run_sample
from dcm.stages.teacher import run_teacher
from dcm.stages.teacher_eval import run_teacher_eval
from dcm.stages.trajectories import run_trajectories
from dcm.stages.validation import run_validation
from tiny_checkpoints import VIDEO_SHAPES, WAN22_BOUNDARY_RATIO, make_tiny_checkpoint, run_stock_wan_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")

BOUNDARY_T = WAN22_BOUNDARY_RATIO * 1000  # 875: the scheduler's num_train_timesteps is 1000


@pytest.fixture(scope="module")
def wan22(tmp_path_factory):
    return make_tiny_checkpoint("wan2.2", tmp_path_factory.mktemp("wan22") / "checkpoint")


@pytest.fixture(scope="module")
def teacher(wan22):
    return load_backbone(wan22, "wan")


def _inputs(teacher, sigmas: list[float]):
    x = torch.randn(len(sigmas), *teacher.latent_shape(*VIDEO_SHAPES["wan2.2"]),
                    generator=torch.Generator().manual_seed(0))
    return x, torch.tensor(sigmas), teacher.encode_prompts(["a red circle moving left"] * len(sigmas))


def test_a_checkpoint_with_transformer_2_and_boundary_ratio_loads_as_a_two_expert_teacher(teacher):
    assert isinstance(teacher.transformer, TwoExpertTransformer)
    assert teacher.transformer.boundary_timestep == BOUNDARY_T
    assert teacher.patch_size() == (1, 2, 2)


@torch.no_grad()
def test_each_sample_gets_transformer_at_or_above_the_boundary_and_transformer_2_below(teacher):
    # a mixed batch around t = 875 (sigma 0.875), the two sides interleaved: just below it, far above, far
    # below, at it
    x, sigma, text = _inputs(teacher, [0.8749, 1.0, 0.3, 0.875])
    two = teacher.transformer
    v = teacher.velocity(two, x, sigma, text)
    high = teacher.velocity(two.transformer, x, sigma, text)
    low = teacher.velocity(two.transformer_2, x, sigma, text)
    assert (high - low).flatten(1).abs().amax(1).min() > 0.1  # the experts differ on every sample
    torch.testing.assert_close(v[1::2], high[1::2], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(v[::2], low[::2], rtol=1e-6, atol=1e-6)
    # a whole batch on one side runs that expert alone, one sigma for all as the samplers call it
    torch.testing.assert_close(teacher.velocity(two, x, torch.tensor(0.875), text),
                               teacher.velocity(two.transformer, x, torch.tensor(0.875), text), rtol=0, atol=0)
    torch.testing.assert_close(teacher.velocity(two, x, torch.tensor(0.8749), text),
                               teacher.velocity(two.transformer_2, x, torch.tensor(0.8749), text), rtol=0, atol=0)


def test_the_switch_is_the_one_wan_pipeline_makes_at_every_step(wan22, teacher):
    """Stock WanPipeline on the same directory: the expert it calls at each scheduler timestep is the
    one the teacher picks for that timestep."""
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(wan22)
    calls = []
    for name in ("transformer", "transformer_2"):
        getattr(pipe, name).register_forward_pre_hook(
            lambda m, a, kw, name=name: calls.append((name, float(kw["timestep"][0]))), with_kwargs=True)
    frames, height, width = VIDEO_SHAPES["wan2.2"]
    embeds = teacher.encode_prompts(["a red circle moving left"])
    pipe(prompt_embeds=embeds, negative_prompt_embeds=teacher.encode_prompts([""]), height=height, width=width,
         num_frames=frames, num_inference_steps=8, guidance_scale=1.0, output_type="latent")
    assert {name for name, _ in calls} == {"transformer", "transformer_2"}
    picks = teacher.transformer.high_noise(torch.tensor([t for _, t in calls]))
    assert picks.tolist() == [name == "transformer" for name, _ in calls]


@torch.no_grad()
def test_guidance_uses_guidance_scale_above_the_switch_and_guidance_scale_2_below(teacher):
    x, sigma, text = _inputs(teacher, [0.95, 0.5])
    empty = teacher.encode_prompts([""]).expand(2, -1, -1)
    two = teacher.transformer
    guided = teacher.guided_velocity(two, text, empty, 4.0, 2.0)(x, sigma)
    for row, expert, scale in ((0, two.transformer, 4.0), (1, two.transformer_2, 2.0)):
        cond = teacher.velocity(expert, x[row:row + 1], sigma[row:row + 1], text[row:row + 1])
        uncond = teacher.velocity(expert, x[row:row + 1], sigma[row:row + 1], empty[row:row + 1])
        torch.testing.assert_close(guided[row:row + 1], uncond + scale * (cond - uncond), rtol=1e-5, atol=1e-5)
    # one sigma for the batch (the samplers' case): the scale of its side; no guidance_scale_2: guidance_scale
    for s, scale in ((0.95, 4.0), (0.5, 2.0)):
        expected = teacher.guided_velocity(two, text, empty, scale)(x, torch.tensor(s))
        torch.testing.assert_close(teacher.guided_velocity(two, text, empty, 4.0, 2.0)(x, torch.tensor(s)), expected,
                                   rtol=0, atol=0)


def _params(checkpoint, prompts, **trajectories):
    frames, height, width = VIDEO_SHAPES["wan2.2"]
    return parse_params({
        **MICRO_DISTILL,
        "model": {"backbone": "wan", "path": str(checkpoint), "frames": frames, "height": height, "width": width},
        "flow": {"steps": 4},  # shift 17: sigmas 1, 0.98, 0.94 above the switch (t 875), 0.85 below
        "boundary": 2,
        "trajectories": {**MICRO_DISTILL["trajectories"], "prompt_file": str(prompts), "dtype": "float32",
                         "guidance_scale": 3.0, **trajectories},
        "sample": {"methods": ["teacher", "undistilled"], "steps": [2], "videos": 2, "videos_per_prompt": 1,
                   "batch_size": 2, "prompt_file": str(prompts), "latency_batch": 1, "latency_repeats": 1},
        "teacher_eval": {"videos": 2, "batch_size": 2, "guidance_scale": 3.0,
                         "guidance_scale_2": trajectories.get("guidance_scale_2")},
    })


def test_the_teacher_stages_trajectories_validation_boundary_and_sample_run_on_a_two_expert_teacher(
        wan22, tmp_path, monkeypatch):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle moving left\na blue square moving up\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = _params(wan22, prompts, guidance_scale_2=1.5)

    run_teacher(params)
    assert run_teacher_eval(params)["videos"] == 2
    assert {r["guidance_scale_2"] for r in read_manifest(Layout().teacher_report_dir / "samples")} == {1.5}
    run_trajectories(params)
    manifest = json.loads((Layout().trajectories / "manifest.json").read_text())
    assert manifest["videos"] == 4
    assert manifest["spec"]["guidance_scale"] == 3.0 and manifest["spec"]["guidance_scale_2"] == 1.5
    run_validation(params)
    suggestion = run_boundary(params)
    assert 1 <= suggestion.boundary <= params.flow.steps - 1
    latency = run_sample(params)
    assert set(latency) == {"teacher@4", "undistilled@2"}
    records = read_manifest(tmp_path / "artifacts/samples/teacher@4")
    assert {(r["guidance_scale"], r["guidance_scale_2"]) for r in records} == {(3.0, 1.5)}


def _state(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _distance(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_each_expert_is_distilled_from_its_own_teacher_transformer_and_exports_as_a_stock_wan_pipeline(
        wan22, teacher, tmp_path, monkeypatch):
    """Semantic from ``transformer``, the PE detail expert on ``transformer_2``; the default boundary is the
    teacher's switch on the grid; sampling, teacher fidelity and the export (run by stock diffusers in a
    fresh process, equal to dcm's sampler on the stock schedule) all run."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle moving left\na blue square moving up\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    # shift 17 on 8 steps: grid index 2 is t = 850, index 3 is t = 911: the teacher switches between them
    params = _params(wan22, prompts, guidance_scale_2=1.5).with_overrides({
        "flow": {"steps": 8}, "boundary": 2, "semantic": {"steps": 2, "lr": 1e-3, "tc_lag": 1}, "detail": {"steps": 2, "lr": 1e-3},
        "sample": {"methods": ["teacher", "dcm"], "steps": [4]}})
    assert flow.last_index_below(flow.sigma_grid(8, params.flow.shift), BOUNDARY_T) == params.boundary
    high, low = _state(teacher.transformer.transformer), _state(teacher.transformer.transformer_2)
    run_teacher(params)
    run_trajectories(params)
    run_validation(params)
    run_distill(params, "semantic")
    run_distill(params, "detail")

    backbone = load_backbone(Layout().teacher_model)
    _, semantic = load_student("semantic", backbone, params)
    trained = _state(semantic)
    assert 0 < _distance(trained, high) < _distance(trained, low) / 10  # moved a little, from transformer
    _, detail = load_student("detail", backbone, params)
    assert detail.base_name == "transformer_2"
    base = {k.replace(".base_layer", ""): v for k, v in detail.base_parameters().items()}
    assert _distance(base, low) == 0  # frozen: the LoRA and the copied layers are what trained
    assert any(p.abs().max() > 0 for n, p in detail.base.named_parameters() if "lora_B" in n)

    assert set(run_sample(params)) == {"teacher@8", "dcm@4"}
    assert "psnr_vs_teacher" in run_evaluate(params)["dcm@4"]

    out = export_wan_pipeline(params, steps=4)
    shape = backbone.latent_shape(*VIDEO_SHAPES["wan2.2"])
    noise = initial_noise([3], shape)
    stock = run_stock_wan_pipeline(out, noise, params.model, "a red circle moving left", 4, tmp_path)
    sampler = load_sampler("dcm", 4, backbone, params.with_overrides({"sample": {"schedule": "stock"}}))
    ours = sample(sampler, backbone, ["a red circle moving left"], [3], shape)
    assert (stock["latents"] - ours).abs().max().item() <= 1e-4
    assert stock["ran"][0] == "transformer" and stock["ran"][-1] == "transformer_2"

    # the detail expert as a LoRA + copied layers, loaded into the stock pipeline's transformer_2
    from diffusers import WanPipeline

    lora = export_detail_lora(params)
    assert "load_into_transformer_2=True" in (lora / "README.md").read_text()
    pipe = WanPipeline.from_pretrained(wan22, transformer=semantic)
    pipe.load_lora_weights(lora, adapter_name="detail", load_into_transformer_2=True)
    assert not pipe.transformer_2.load_state_dict(load_file(str(lora / COPIED_FILE)), strict=False).unexpected_keys
    x, sigma, text = _inputs(teacher, [0.5, 0.5])
    with torch.no_grad(), detail.active() as model:
        want = teacher.velocity(model, x, sigma, text)
        torch.testing.assert_close(teacher.velocity(pipe.transformer_2, x, sigma, text), want, rtol=1e-5, atol=1e-5)
        assert (want - teacher.velocity(teacher.transformer.transformer_2, x, sigma, text)).abs().max() > 1e-4


def test_a_boundary_off_the_teachers_switch_is_allowed_and_says_what_it_means(wan22, tmp_path, monkeypatch, caplog):
    from dcm.distill.trainer import warn_off_teacher_switch

    params = _params(wan22, tmp_path / "prompts.txt").with_overrides({"flow": {"steps": 8}, "boundary": 4})
    with caplog.at_level("WARNING"):
        warn_off_teacher_switch(params, BOUNDARY_T)
    assert "grid index 2" in caplog.text and "detail expert (from transformer_2) also learns" in caplog.text
    caplog.clear()
    warn_off_teacher_switch(params.with_overrides({"boundary": 2}), BOUNDARY_T)
    assert not caplog.text


def test_a_second_guidance_scale_changes_the_trajectories_below_the_switch_only(wan22, teacher):
    from dcm.data.trajectories import teacher_trajectory

    shape = teacher.latent_shape(*VIDEO_SHAPES["wan2.2"])
    noise = torch.randn(1, *shape, generator=torch.Generator().manual_seed(1))
    text, empty = teacher.encode_prompts(["a blue square moving up"]), teacher.encode_prompts([""])
    sigmas = teacher.sigma_grid(4, 17.0)  # the last step (0.85 -> 0) is the only one below t = 875
    same = teacher_trajectory(teacher, text, empty, noise, sigmas, 3.0)
    other = teacher_trajectory(teacher, text, empty, noise, sigmas, 3.0, 1.5)
    torch.testing.assert_close(other[:, 1:], same[:, 1:], rtol=0, atol=0)
    assert (other[:, 0] - same[:, 0]).abs().max() > 1e-3


def test_a_model_index_naming_a_missing_transformer_2_is_one_line_before_loading(wan22, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(wan22, broken)
    shutil.rmtree(broken / "transformer_2")
    params = parse_params({"model": {"backbone": "wan", "path": str(broken)}})
    with pytest.raises(BackboneError, match=r"two-expert Wan2\.2 .*missing .*transformer_2") as err:
        run_teacher(params, Layout(tmp_path))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "artifacts").exists()


def test_guidance_scale_2_on_a_one_transformer_teacher_is_one_line_before_loading(tmp_path, monkeypatch):
    with pytest.raises(ParamsError, match=r"trajectories.guidance_scale_2 = 2.0 .*model.backbone = 'tiny'"):
        parse_params({"trajectories": {"guidance_scale_2": 2.0}})
    with pytest.raises(ParamsError, match=r"teacher_eval.guidance_scale_2 = 2.0 .*'cogvideox'"):
        parse_params({"model": {"backbone": "cogvideox", "path": "x"}, "teacher_eval": {"guidance_scale_2": 2.0}})
    wan21 = make_tiny_checkpoint("wan", tmp_path / "wan21")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle moving left\n")
    monkeypatch.chdir(tmp_path)
    run_teacher(_params(wan21, prompts))
    params = _params(wan21, prompts, guidance_scale_2=2.0)
    loaded = []
    monkeypatch.setattr("dcm.models.WanBackbone.from_pretrained", lambda *a, **k: loaded.append(a))
    for stage in (run_trajectories, run_validation, run_sample):
        with pytest.raises(TeacherMismatchError, match=r"trajectories.guidance_scale_2 = 2.0 .*one transformer"):
            stage(params)
    assert not loaded and not (tmp_path / "artifacts/trajectories").exists()
