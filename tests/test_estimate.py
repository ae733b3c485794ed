"""dcm.estimate: exact parameter counts from meta tensors, and the direction of its memory figures."""

from __future__ import annotations

import inspect
import json

import pytest

from dcm.config import Params, ParamsError
from dcm.experts import ParameterEfficientExpert, count_parameters
from dcm.estimate import estimate, model_facts, params_for_model, shipped_model, shipped_models
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


# ---- shipped architecture configs (src/dcm/model_configs): estimates before any download ----------------------

#: per shipped model: the size its authors publish, the relative tolerance that name's rounding allows (the
#: published names round loosely: Wan's "1.3B" transformer has 1.42B parameters, CogVideoX's "5B" 5.57B), the
#: exact count of the released transformer weights, and the latent of one video at the model's default size.
#: Sources: src/dcm/model_configs/README.md.
PUBLISHED = {
    "wan2.1-1.3b": ("1.3B", 0.10, 1_418_996_800, (16, 21, 60, 104)),
    "wan2.1-14b": ("14B", 0.05, 14_288_491_584, (16, 21, 60, 104)),
    "cogvideox-2b": ("2B", 0.20, 1_693_783_872, (16, 13, 60, 90)),
    "cogvideox-5b": ("5B", 0.15, 5_570_283_072, (16, 13, 60, 90)),
    "hunyuanvideo": ("13B", 0.05, 12_821_012_544, (16, 33, 90, 160)),
}


@pytest.fixture(scope="module")
def shipped():
    """name -> the estimate of the shipped model on 8 GPUs with FSDP, computed once per module."""
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            cache[name] = estimate(params_for_model(name), 8, "fsdp")
        return cache[name]
    return get


def test_the_named_checkpoints_are_shipped():
    assert set(shipped_models()) == set(PUBLISHED)
    for name, (size, *_) in PUBLISHED.items():
        info = shipped_model(name)
        assert info.published_size == size
        assert info.backbone in ("wan", "cogvideox", "hunyuanvideo")


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_shipped_configs_hold_structure_only(name):
    """Only keys the diffusers class accepts, and no weights: nothing to download."""
    import diffusers

    directory = shipped_models()[name]
    assert sorted(p.name for p in directory.rglob("*") if p.is_file()) == ["config.json", "config.json", "model.json"]
    for part in ("transformer", "vae"):
        config = json.loads((directory / part / "config.json").read_text())
        accepted = set(inspect.signature(getattr(diffusers, config["_class_name"]).__init__).parameters)
        assert set(config) - {"_class_name"} <= accepted, part


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_transformer_size_matches_the_published_size(shipped, name):
    size, tolerance, released, _ = PUBLISHED[name]
    teacher = shipped(name).facts.teacher
    published = float(size.rstrip("B")) * 1e9
    assert abs(teacher / published - 1) <= tolerance, f"{name}: {teacher:,} vs published {size}"
    assert teacher == released, f"{name}: {teacher:,} parameters, the released weights have {released:,}"


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_estimate_renders_without_weights(shipped, name):
    est = shipped(name)
    info = shipped_model(name)
    f = est.facts
    assert f.backbone == info.backbone and f.text_tokens == info.text_tokens
    assert f.latent == PUBLISHED[name][3]  # the VAE config at the default video size
    text = est.render()
    assert f"src/dcm/model_configs/{name}, no weights read" in text
    assert f"{f.teacher:>15,}" in text and f"{f.video_tokens:,} video tokens" in text
    for stage in ("trajectories", "semantic", "detail", "sample teacher"):
        assert sum(est.stage(stage).memory.values()) > 0 and est.stage(stage).total_seconds > 0


def test_model_name_argument(shipped):
    """``model_name`` on estimate and model_facts is params_for_model on the caller's params."""
    params = Params().with_overrides({"distill": {"batch_size": 2}})
    est = estimate(params, 8, "fsdp", model_name="wan2.1-1.3b")
    assert est.facts == shipped("wan2.1-1.3b").facts
    same = estimate(params_for_model("wan2.1-1.3b", params), 8, "fsdp", facts=est.facts)
    assert est.stage("semantic").memory == same.stage("semantic").memory  # the caller's batch size is kept
    assert est.stage("semantic").memory != shipped("wan2.1-1.3b").stage("semantic").memory
    assert model_facts(params, model_name="wan2.1-1.3b") == est.facts
    short = params_for_model("wan2.1-1.3b", frames=33)
    assert short.model.frames == 33 and short.model.backbone == "wan"


def test_unknown_model_name_lists_the_known_names():
    for call in (lambda: params_for_model("wan9-1t"), lambda: estimate(Params(), model_name="wan9-1t"),
                 lambda: model_facts(Params(), model_name="wan9-1t")):
        with pytest.raises(ValueError, match="unknown model 'wan9-1t'.*cogvideox-2b.*wan2.1-14b"):
            call()


def test_config_directory_of_another_backbone_is_refused():
    params = params_for_model("wan2.1-1.3b").with_overrides({"model": {"backbone": "cogvideox"}})
    with pytest.raises(ParamsError, match="'wan' model, but model.backbone = 'cogvideox'"):
        model_facts(params)


def test_both_training_sources_are_priced_in_teacher_calls():
    """Trajectories: flow.steps guided solves per video up front; data: one guided step per sample of every
    semantic and detail step, online. The named source drops or keeps the trajectories stage."""
    params = Params().with_overrides({"trajectories": {"guidance_scale": 3.0}})
    facts = model_facts(params)
    assert facts.guidance_branches == 2
    est = estimate(params, 8, "fsdp", facts=facts)
    by_name = {c.name: c for c in est.sources}
    samples = (params.semantic.steps + params.detail.steps) * params.distill.batch_size * 8
    assert by_name["trajectories"].upfront_calls == params.trajectories.videos * params.flow.steps * 2
    assert by_name["trajectories"].online_calls == 0
    assert (by_name["data"].upfront_calls, by_name["data"].online_calls) == (0, samples * 2)
    assert by_name["data"].seconds / by_name["trajectories"].seconds == pytest.approx(
        samples / (params.trajectories.videos * params.flow.steps))
    assert "training points (distill.source = trajectories" in est.render()

    from_data = estimate(params.with_overrides({"distill": {"source": "data"}}), 8, "fsdp", facts=facts)
    assert [c.calls for c in from_data.sources] == [c.calls for c in est.sources]
    assert "trajectories" not in [s.name for s in from_data.stages]
    assert from_data.stage("semantic").seconds > est.stage("semantic").seconds  # its online teacher steps
