"""Few-step sampling: schedules, expert switching, bad input before compute."""

import pytest
import torch

from dcm import flow
from dcm.experts import ParameterEfficientExpert
from dcm.models.tiny import TinyBackbone, build_tiny_backbone
from dcm.layout import Layout
from dcm.sampling import Sampler, SamplingError, sample, schedule
from dcm.students import load_sampler


def test_dcm_splits_steps_evenly_between_the_experts():
    assert schedule("dcm", 4, 50, 35) == [50, 42, 35, 18, 0]
    assert schedule("dcm", 8, 50, 35) == [50, 46, 42, 39, 35, 26, 18, 9, 0]
    assert schedule("dcm", 2, 50, 35) == [50, 35, 0]


def test_baselines_spread_steps_over_the_grid_and_pcm_lands_on_its_phase_edges():
    from dcm.distill.phases import even_phases

    assert schedule("lcm", 4, 50, 35) == [50, 38, 25, 12, 0]
    edges = [p.start for p in even_phases(50, 4)] + [0]
    assert schedule("pcm", 4, 50, 35) == edges
    assert set(edges) <= set(schedule("pcm", 8, 50, 35))
    assert schedule("teacher", 50, 50, 35) == list(range(50, -1, -1))


def test_the_undistilled_control_is_the_teacher_with_its_cfg_on_lcms_schedule(tmp_path, micro_params):
    from dcm.sampling import method_sigmas

    params = micro_params.with_overrides({"trajectories": {"guidance_scale": 3.0}})  # a CFG teacher
    backbone = build_tiny_backbone(params.model.tiny)
    control = load_sampler("undistilled", 2, backbone, params, Layout(tmp_path))  # needs no student
    assert control.semantic is backbone.transformer and control.detail is None
    assert control.guidance_scale == 3.0
    assert control.sigmas == method_sigmas("lcm", 2, backbone, params)
    assert schedule("undistilled", 4, 50, 35) == schedule("lcm", 4, 50, 35)


def test_cfg_doubles_the_transformer_calls_and_embedded_guidance_does_not(micro_params):
    from dcm.models.hunyuan import HunyuanVideoBackbone

    tiny = build_tiny_backbone(micro_params.model.tiny)
    assert tiny.forward_passes(50, 2.0) == 100 and tiny.forward_passes(4, 1.0) == 4
    embedded = object.__new__(HunyuanVideoBackbone)  # the guidance kind is a class attribute: no weights needed
    assert embedded.forward_passes(50, 6.0) == 50


@pytest.mark.parametrize("method, steps, message", [
    ("dcm", 3, "odd"),
    ("sde", 4, "unknown method"),
    ("teacher", 4, "full 50-step grid"),
    ("lcm", 60, "cannot take 60 steps"),
])
def test_unservable_requests_are_clear_errors(method, steps, message):
    with pytest.raises(SamplingError, match=message):
        schedule(method, steps, 50, 35)


def test_missing_students_are_named_before_any_compute(tmp_path, micro_params):
    backbone = build_tiny_backbone(micro_params.model.tiny)
    with pytest.raises(SamplingError, match=r"pcm student is missing: expected .*artifacts/pcm/expert\.json"):
        load_sampler("pcm", 4, backbone, micro_params, Layout(tmp_path))
    with pytest.raises(SamplingError, match=r"semantic student is missing.*dvc repro semantic"):
        load_sampler("dcm", 4, backbone, micro_params, Layout(tmp_path))


def test_odd_steps_with_dcm_fail_in_params():
    from dcm.config import ParamsError, parse_params

    with pytest.raises(ParamsError, match="sample.steps"):
        parse_params({"sample": {"steps": [3, 4]}})


def _dcm(micro_params, pe_noise=0.02):
    backbone = build_tiny_backbone(micro_params.model.tiny)
    semantic = backbone.transformer
    detail = ParameterEfficientExpert(semantic, TinyBackbone.timestep_layers, 2, 4.0, micro_params.detail.lora_targets)
    with torch.no_grad():
        for p in detail.trainable_parameters():
            p.add_(pe_noise * torch.randn_like(p))
    n, k = micro_params.flow.steps, micro_params.boundary
    sigmas = flow.sigma_grid(n, micro_params.flow.shift)
    visited = [float(sigmas[i]) for i in schedule("dcm", 4, n, k)]
    gen = Sampler("dcm", 4, visited, 1.0, semantic, detail, float(sigmas[k]))
    return backbone, gen, sigmas


def test_expert_is_picked_by_timestep_and_pe_is_fused_exactly(micro_params):
    backbone, gen, sigmas = _dcm(micro_params)
    prompts, seeds = ["a red circle moving left on a stripes background"] * 2, [1, 2]
    before = {n: p.detach().clone() for n, p in gen.detail.base_parameters().items()}
    fast = sample(gen, backbone, prompts, seeds, (3, 8, 32, 32))
    from dcm.guidance import initial_noise

    x = initial_noise(seeds, (3, 8, 32, 32))
    text = backbone.encode_prompts(prompts)
    used = []
    for a, b in zip(gen.sigmas[:-1], gen.sigmas[1:]):
        detail = a <= gen.boundary_sigma
        used.append("detail" if detail else "semantic")
        x = flow.euler_step(x, backbone.velocity(gen.detail if detail else gen.semantic, x, torch.tensor(a), text),
                            a, b)
    assert used == ["semantic", "semantic", "detail", "detail"]
    torch.testing.assert_close(fast, x, atol=1e-5, rtol=1e-5)
    for _ in range(3):  # switching back and forth leaves the base exactly as it was
        sample(gen, backbone, prompts, seeds, (3, 8, 32, 32))
    for n, p in gen.detail.base_parameters().items():
        assert torch.equal(p, before[n]), n
