"""dcm.estimate: exact parameter counts from meta tensors, and the direction of its memory figures."""

from __future__ import annotations

import inspect
import json

import pytest

from dcm import flow
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


#: the Wan2.2 and image-to-video layouts (issue 23): the size its authors publish, the transformers it holds, the
#: exact count of each (what diffusers' WanTransformer3DModel builds from the released config, = the released
#: weights; Wan2.1-I2V's files also hold 40 unused ``norm_added_q`` tensors, 204,800 values, that the class ignores)
#: and the latent of one video at the model's default size. Sources: src/dcm/model_configs/README.md.
WAN_LAYOUTS = {
    "wan2.2-t2v-a14b": ("A14B", ("transformer", "transformer_2"), 14_288_491_584, (16, 21, 90, 160)),
    "wan2.2-i2v-a14b": ("A14B", ("transformer", "transformer_2"), 14_288_901_184, (16, 21, 90, 160)),
    "wan2.2-ti2v-5b": ("5B", ("transformer",), 4_999_787_712, (48, 31, 44, 80)),
    "wan2.1-i2v-14b-480p": ("14B", ("transformer",), 16_394_878_784, (16, 21, 60, 104)),
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
    assert set(shipped_models()) == set(PUBLISHED) | set(WAN_LAYOUTS)
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


# ---- Wan2.2 two-expert, TI2V-5B and image-to-video architectures; LoRA-only experts (issue 23) ------------------

@pytest.mark.parametrize("name", sorted(WAN_LAYOUTS))
def test_wan_layouts_hold_structure_only(name):
    """model.json plus one config.json per part, each with keys its class accepts: nothing to download."""
    import diffusers
    import transformers

    directory = shipped_models()[name]
    parts = set(WAN_LAYOUTS[name][1]) | {"vae"} | ({"image_encoder"} if name.startswith("wan2.1-i2v") else set())
    assert sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()) == sorted(
        ["model.json", *(f"{part}/config.json" for part in parts)])
    for part in parts:
        config = json.loads((directory / part / "config.json").read_text())
        if part == "image_encoder":
            vision = getattr(transformers, config["architectures"][0]).config_class
            assert set(config) - {"architectures", "model_type"} <= set(vision().to_dict()), part
        else:
            accepted = set(inspect.signature(getattr(diffusers, config["_class_name"]).__init__).parameters)
            assert set(config) - {"_class_name"} <= accepted, part


@pytest.mark.parametrize("name", sorted(WAN_LAYOUTS))
def test_wan_layout_counts_are_exact_and_near_the_published_size(shipped, name):
    from accelerate import init_empty_weights
    from diffusers import WanTransformer3DModel

    size, parts, released, latent = WAN_LAYOUTS[name]
    directory = shipped_models()[name]
    counts = []
    for part in parts:  # built here straight from the shipped config, as the released weights load
        with init_empty_weights():
            model = WanTransformer3DModel.from_config(json.loads((directory / part / "config.json").read_text()))
        counts.append(count_parameters(model.parameters()))
    f = shipped(name).facts
    assert [f.teacher, *([f.teacher_2] if f.two_experts else [])] == counts == [released] * len(parts)
    assert abs(f.teacher / (float(size.lstrip("A").rstrip("B")) * 1e9) - 1) <= 0.2, f"{name}: {f.teacher:,}"
    assert f.latent == latent
    assert shipped_model(name).published_size == size


def test_wan22_vae_sets_the_tokens_of_ti2v_5b(shipped):
    """48 latent channels at 16x spatial / 4x temporal compression: 121 x 704 x 1280 -> 31 x 22 x 40 tokens."""
    f = shipped("wan2.2-ti2v-5b").facts
    assert f.latent == (48, 31, 704 // 16, 1280 // 16) and f.video_tokens == 31 * 22 * 40
    assert f.expand_timesteps and not f.two_experts and f.condition_channels == 0
    assert "a timestep per token" in shipped("wan2.2-ti2v-5b").render()


def test_two_expert_teacher_stages_hold_their_own_transformer(shipped):
    """Semantic expert from ``transformer`` against ``transformer``; detail expert from ``transformer_2`` against
    ``transformer_2``; trajectories and teacher sampling hold both."""
    est = shipped("wan2.2-t2v-a14b")
    f = est.facts
    assert f.two_experts and f.boundary_ratio == 0.875
    assert "starts from transformer and holds it as its teacher" in est.stage("semantic").what
    assert "starts from transformer_2 and holds it as its teacher" in est.stage("detail").what
    assert "on the frozen transformer_2" in est.stage("detail").what
    assert "frozen transformer," in est.stage("semantic (LoRA-only)").what
    assert "frozen transformer_2," in est.stage("detail (LoRA-only)").what
    for stage in ("semantic", "detail", "semantic (LoRA-only)", "detail (LoRA-only)"):
        assert est.stage(stage).memory["teacher"] == 4.0 * f.teacher  # one transformer, not both
    for stage in ("trajectories", "sample teacher"):
        assert est.stage(stage).memory["teacher"] == 4.0 * (f.teacher + f.teacher_2)
    text = est.render()
    assert "teacher transformer_2" in text and "t >= 875" in text
    assert "the semantic stage starts from transformer and holds it alone" in text
    one = shipped("wan2.1-14b")
    assert not one.facts.two_experts and "transformer_2" not in one.render()
    assert shipped("wan2.2-i2v-a14b").facts.boundary_ratio == 0.9


def test_a_checkpoint_with_transformer_2_is_a_two_expert_teacher(tmp_path):
    """A downloaded Wan2.2 directory: transformer_2 and the boundary_ratio of its model_index.json."""
    import shutil

    path = make_tiny_checkpoint("wan", tmp_path / "wan")
    frames, height, width = VIDEO_SHAPES["wan"]
    params = Params().with_overrides({"model": {"backbone": "wan", "path": str(path), "frames": frames,
                                                "height": height, "width": width}})
    one = model_facts(params)
    shutil.copytree(path / "transformer", path / "transformer_2")
    index = json.loads((path / "model_index.json").read_text())
    (path / "model_index.json").write_text(json.dumps({**index, "transformer_2": index["transformer"],
                                                       "boundary_ratio": 0.875}))
    two = model_facts(params)
    assert (one.teacher_2, one.boundary_ratio) == (0, None)
    assert (two.teacher_2, two.boundary_ratio, two.teacher) == (one.teacher, 0.875, one.teacher)
    assert two.pe == one.pe  # the detail expert on transformer_2, a copy of transformer


def test_wan21_i2v_attends_the_clip_image_tokens(shipped):
    """257 CLIP ViT-H/14 tokens (16 x 16 patches + the class token) join every block's cross-attention; 20
    condition channels (mask 4 + image latent 16) enter beside the 16 latent channels."""
    from dataclasses import replace

    est = shipped("wan2.1-i2v-14b-480p")
    f = est.facts
    assert (f.image_tokens, f.condition_channels) == (257, 20)
    assert f.image_encoder == 632_076_800  # CLIPVisionModelWithProjection, as the conversion saves it
    assert f.forward_flops() > replace(f, image_tokens=0).forward_flops()
    text = est.render()
    assert "257 tokens of the CLIP image encoder" in text and "20 condition channels" in text
    assert any(key.startswith("image conditions (20 channels)") for key in est.host)
    i2v_a14b = shipped("wan2.2-i2v-a14b").facts
    assert (i2v_a14b.image_tokens, i2v_a14b.condition_channels) == (0, 20)  # Wan2.2 I2V: no CLIP branch


@pytest.mark.parametrize("sharding", ["fsdp", "ddp"])
@pytest.mark.parametrize("name", sorted(set(PUBLISHED) | set(WAN_LAYOUTS)))
def test_lora_only_experts_train_less_and_hold_less(shipped, name, sharding):
    """Every model prices both experts as LoRA adapters too: far fewer trainable parameters and less memory per
    GPU than the full experts (semantic: full fine-tune; detail: PE) under the same sharding."""
    est = estimate(params_for_model(name), 8, sharding, facts=shipped(name).facts)
    for full, lora in (("semantic", "semantic (LoRA-only)"), ("detail", "detail (LoRA-only)")):
        full_row, lora_row = est.stage(full), est.stage(lora)
        assert 0 < lora_row.trainable < full_row.trainable
        assert sum(lora_row.memory.values()) < sum(full_row.memory.values()), (full, lora)
        assert lora_row.total_seconds > 0
    assert est.stage("semantic (LoRA-only)").trainable < est.stage("semantic").trainable / 20
    assert "LoRA-only rows" in est.render()


def test_cli_prices_wan22_t2v_a14b_on_8_gpus_with_fsdp(monkeypatch):
    from pathlib import Path

    from typer.testing import CliRunner

    from dcm.cli import app

    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # the repository's params.yaml
    result = CliRunner().invoke(app, ["estimate", "--model", "wan2.2-t2v-a14b", "--processes", "8",
                                      "--sharding", "fsdp"])
    assert result.exit_code == 0, result.output
    for line in ("teacher transformer_2", "semantic (LoRA-only)", "detail (LoRA-only)", "total/GPU", "FSDP"):
        assert line in result.output


@pytest.mark.parametrize("name", sorted(WAN_LAYOUTS))
def test_example_params_file_matches_the_shipped_model(name):
    """configs/<name>.yaml is a valid params file for the model's default video, says what runs so far (the
    estimate; for Wan2.2-T2V-A14B distillation too), and a two-expert model's boundary is its switch on the grid."""
    from pathlib import Path

    from dcm.config import load_params

    path = Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml"
    params = load_params(path)
    info = shipped_model(name)
    m = params.model
    assert (m.backbone, m.frames, m.height, m.width, m.max_sequence_length) == (
        info.backbone, info.frames, info.height, info.width, info.text_tokens)
    so_far = {"wan2.2-t2v-a14b": "Every stage runs this two-expert layout",
              "wan2.2-ti2v-5b": "TEXT-TO-VIDEO AS CONFIGURED"}.get(name, "IMAGE TO VIDEO: every stage runs this layout")
    assert so_far in path.read_text() and info.checkpoint.split("/")[1] in m.path
    if info.boundary_ratio is not None:
        grid = flow.sigma_grid(params.flow.steps, params.flow.shift)
        assert params.boundary == flow.last_index_below(grid, info.boundary_ratio * 1000)
        switch = info.boundary_ratio * 1000  # no grid point within rounding of it
        assert flow.timestep(grid[params.boundary]) < switch - 1 and flow.timestep(grid[params.boundary + 1]) > switch + 1
