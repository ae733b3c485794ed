"""dcm.estimate: exact parameter counts from meta tensors, and the direction of its memory figures."""

from __future__ import annotations

import pytest

from dcm.config import Params
from dcm.distill.experts import ParameterEfficientExpert, count_parameters
from dcm.estimate import estimate, model_facts
from dcm.models import BackboneError, build_tiny_backbone, load_backbone
from tiny_checkpoints import VIDEO_SHAPES, make_tiny_checkpoint


@pytest.fixture(scope="module")
def facts():
    return model_facts(Params())


def test_counts_match_a_real_tiny_model(facts):
    params = Params()
    real = build_tiny_backbone(params.model.tiny)
    assert facts.teacher == count_parameters(real.transformer.parameters())
    d = params.detail
    pe = ParameterEfficientExpert(real.transformer, real.timestep_layers, d.lora_rank, d.lora_alpha, d.lora_targets)
    assert facts.pe == count_parameters(pe.trainable_parameters())
    assert facts.lora == sum(p.numel() for n, p in real.transformer.named_parameters() if "lora_" in n)


def test_fsdp_shards_what_ddp_replicates(facts):
    params = Params()
    for stage in ("semantic", "detail"):
        fsdp = estimate(params, 8, "fsdp", facts=facts).stage(stage).memory
        ddp = estimate(params, 8, "ddp", facts=facts).stage(stage).memory
        assert sum(fsdp.values()) < sum(ddp.values())
        assert fsdp["AdamW"] == pytest.approx(ddp["AdamW"] / 8)


def test_gradient_checkpointing_lowers_activations(facts):
    plain = estimate(Params(), facts=facts).stage("semantic").memory["activations"]
    params = Params().with_overrides({"distill": {"gradient_checkpointing": True}})
    assert estimate(params, facts=facts).stage("semantic").memory["activations"] < plain


def test_output_states_every_assumption(facts):
    est = estimate(Params(), 8, "fsdp", 400.0, facts=facts)
    text = est.render()
    for assumption in est.assumptions:
        assert assumption in text
    for topic in ("TFLOP/s", "MFU", "2 x parameters x sequence tokens", "backward", "gradient checkpointing",
                  "17 values per video token", "AdamW", "FSDP full shard", "DDP", "fp32", "communication",
                  "teacher is held in fp32"):
        assert topic in text, topic


def test_missing_model_path_is_the_loaders_error(tmp_path):
    params = Params().with_overrides({"model": {"backbone": "wan", "path": str(tmp_path / "nowhere")}})
    with pytest.raises(BackboneError, match="does not exist"):
        model_facts(params)
    (tmp_path / "wan" / "transformer").mkdir(parents=True)
    params = params.with_overrides({"model": {"path": str(tmp_path / "wan")}})
    with pytest.raises(BackboneError, match="missing .*vae"):
        model_facts(params)


@pytest.mark.parametrize("kind", ["wan", "cogvideox", "hunyuanvideo"])
def test_counts_of_a_real_backbone_directory(tmp_path, kind):
    path = make_tiny_checkpoint(kind, tmp_path / kind)
    frames, height, width = VIDEO_SHAPES[kind]
    params = Params().with_overrides({"model": {"backbone": kind, "path": str(path), "frames": frames,
                                                "height": height, "width": width}})
    facts = model_facts(params)
    real = load_backbone(path, kind)
    assert facts.teacher == count_parameters(real.transformer.parameters())
    assert facts.latent == tuple(real.latent_shape(frames, height, width))
    d = params.detail
    pe = ParameterEfficientExpert(real.transformer, real.timestep_layers, d.lora_rank, d.lora_alpha, d.lora_targets)
    assert facts.pe == count_parameters(pe.trainable_parameters())
