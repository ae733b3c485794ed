"""The parameter-efficient detail expert and the GAN discriminator."""

import pytest
import torch

from dcm.distill.discriminator import Discriminator, FeatureTaps, d_hinge, g_hinge
from dcm.experts import ParameterEfficientExpert, count_parameters
from dcm.models.tiny import TinyBackbone, build_tiny_backbone


def _inputs(backbone, frames=8, size=32, batch=2):
    """Raw transformer inputs: as many channels as it takes (the production teacher's coordinate
    channels included)."""
    x = torch.randn(batch, backbone.transformer.config.in_channels, frames, size, size)
    text = torch.randn(batch, backbone.max_length, backbone.transformer.config.text_dim)
    return x, torch.tensor([300.0, 700.0][:batch]), text


def _backbone(micro_params):
    """A micro backbone whose output is not zero (diffusers' default init, not adaLN-Zero), so that an
    expert that computed something else than its base would show."""
    return build_tiny_backbone(micro_params.with_overrides({"model": {"tiny": {"init": "default"}}}).model.tiny)


def _expert(micro_params):
    backbone = _backbone(micro_params)
    d = micro_params.detail
    return backbone, ParameterEfficientExpert(backbone.transformer, TinyBackbone.timestep_layers, 4, 8.0, d.lora_targets)


def test_pe_starts_as_the_semantic_expert_and_switches_in_memory(micro_params):
    backbone = _backbone(micro_params)
    x, t, text = _inputs(backbone)
    before = backbone.transformer(x, t, text, return_dict=False)[0]
    assert before.abs().mean() > 0.01
    expert = ParameterEfficientExpert(backbone.transformer, TinyBackbone.timestep_layers, 4, 8.0,
                                      micro_params.detail.lora_targets)
    torch.testing.assert_close(expert(x, t, text, return_dict=False)[0], before)  # LoRA B = 0, copies equal
    with torch.no_grad():
        for p in expert.trainable_parameters():
            p.add_(0.05)
    detail = expert(x, t, text, return_dict=False)[0]
    semantic = backbone.transformer(x, t, text, return_dict=False)[0]
    assert (detail - before).abs().max() > 1e-3
    torch.testing.assert_close(semantic, before)  # outside the call, the base is the semantic expert again


def test_pe_training_touches_only_lora_and_copies(micro_params):
    backbone, expert = _expert(micro_params)
    frozen = {n: p.detach().clone() for n, p in expert.base_parameters().items()}
    opt = torch.optim.AdamW(expert.trainable_parameters(), lr=1e-2)
    x, t, text = _inputs(backbone)
    for _ in range(3):
        loss = expert(x, t, text, return_dict=False)[0].pow(2).mean()
        loss.backward()
        for n, p in expert.base_parameters().items():
            assert p.grad is None, n
        assert all(p.grad is not None for p in expert.trainable_parameters())
        opt.step()
        opt.zero_grad()
    for n, p in expert.base_parameters().items():
        assert torch.equal(p, frozen[n]), n  # bit-identical
    names = [n for n, p in expert.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n or n.startswith(("copies.", "copy_modules.")) for n in names)
    overhead = count_parameters(expert.trainable_parameters()) / count_parameters(expert.base_parameters().values())
    assert 0 < overhead < 1


def test_pe_save_and_load_reproduce_the_expert(micro_params, tmp_path):
    backbone, expert = _expert(micro_params)
    with torch.no_grad():
        for p in expert.trainable_parameters():
            p.normal_()
    x, t, text = _inputs(backbone)
    out = expert(x, t, text, return_dict=False)[0]
    expert.save(tmp_path)
    fresh = _backbone(micro_params)
    loaded = ParameterEfficientExpert.load(fresh.transformer, tmp_path)
    torch.testing.assert_close(loaded(x, t, text, return_dict=False)[0], out)


def test_discriminator_works_at_any_frame_count_and_resolution(micro_params):
    backbone = build_tiny_backbone(micro_params.model.tiny)
    taps = FeatureTaps(backbone.feature_blocks(), stride=1)
    disc = Discriminator(backbone.feature_dim(), len(taps.indices), width=8)
    for frames, size in ((8, 32), (12, 48)):
        x, t, text = _inputs(backbone, frames, size)
        with taps.capture() as features:
            backbone.transformer(x, t, text, return_dict=False)
        grid = backbone.token_grid(x.shape)
        logits = disc(features, grid)
        assert len(logits) == len(taps.indices)
        assert logits[0].shape == (2 * grid[0], 1, grid[1], grid[2])


def test_heads_that_see_several_frames_judge_motion(micro_params):
    """With head_frames 3 a token's logit depends on the neighbouring frames' tokens; with 1 it does not."""
    torch.manual_seed(0)
    grid, channels = (4, 3, 3), 16
    features = [torch.randn(2, 4 * 3 * 3, channels)]
    moved = [features[0].clone()]
    moved[0].view(2, 4, 3, 3, channels)[:, 2] += 1.0  # change token frame 2 only
    for frames, shape in ((1, (2 * 4, 1, 3, 3)), (3, (2, 1, 4, 3, 3))):
        disc = Discriminator(channels, 1, width=8, frames=frames)
        before, after = disc(features, grid)[0], disc(moved, grid)[0]
        assert before.shape == shape
        frame1 = (before - after).view(2, 4, 3, 3)[:, 1] if frames == 1 else (before - after)[:, 0, 1]
        assert (frame1.abs().max() > 1e-6) == (frames == 3)


@pytest.mark.parametrize("frames", [1, 3])
def test_the_discriminator_learns_to_tell_features_that_differ(frames):
    """A hinge loss stuck at 2 (a head that outputs 0) in training then means the real and fake
    features are alike, not that the heads (at the default width) cannot learn."""
    from dcm.config import DetailParams

    torch.manual_seed(0)
    grid, channels = (4, 3, 3), 16
    disc = Discriminator(channels, 1, width=DetailParams().head_width, frames=frames)
    optimizer = torch.optim.AdamW(disc.parameters(), lr=1e-3, betas=(0.0, 0.999))
    losses = []
    for _ in range(60):
        real = [torch.randn(4, 4 * 3 * 3, channels) + 0.5]
        fake = [torch.randn(4, 4 * 3 * 3, channels) - 0.5]
        loss = d_hinge(disc(real, grid), disc(fake, grid))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 1.5 and sum(losses[-10:]) / 10 < 0.5


def test_hinge_losses():
    real, fake = [torch.full((4,), 2.0)], [torch.full((4,), -2.0)]
    assert d_hinge(real, fake).item() == 0.0  # confident and right
    assert d_hinge(fake, real).item() == 6.0  # confident and wrong: (1+2) + (1+2)
    assert g_hinge([torch.full((4,), 2.0)]).item() == 0.0
    assert g_hinge([torch.full((4,), -1.0)]).item() == 2.0
