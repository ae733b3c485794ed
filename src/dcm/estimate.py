"""What a run will cost before renting GPUs: parameters, memory per GPU and time of each heavy stage.

Parameter counts are exact: the transformer (and the PE detail expert on it) is built on the meta
device from the params (tiny) or from ``model.path/transformer/config.json`` (real backbones), so
no weights are read. The architecture configs of the named checkpoints ship in ``src/dcm/model_configs/<name>/``
(:func:`shipped_models`), so a real backbone can be estimated before it is downloaded:
``estimate(params_for_model("wan2.1-14b"), 8, "fsdp")``. Memory and time are estimates from stated
assumptions, printed with the table (:attr:`Estimate.assumptions`); they follow what the trainer does
today (e.g. the frozen teacher stays in fp32 on every GPU).

A directory with a ``transformer_2`` is a two-expert teacher (Wan2.2 A14B): DCM's semantic expert
starts from ``transformer`` and its detail expert from ``transformer_2``, each distilled against its own
transformer. Besides the experts the paper trains (Sec. 4.2: a full semantic expert, a LoRA + copied
timestep layers detail expert), every estimate prices experts that are LoRA adapters only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from dcm.config import Params, ParamsError
from dcm.distill.batches import teacher_calls

Sharding = Literal["fsdp", "ddp"]
ACT_VALUES = 17  # stored activation values per token per width per block (Korthikanti et al. 2022: 34 bytes at 16 bit)
H100_PEAK = 989.0  # dense bf16 TFLOP/s of an H100 SXM
GiB = 2**30
#: shipped architecture configs (``<name>/transformer/config.json``, ``vae/config.json``, ``model.json``)
MODELS_DIR = Path(__file__).resolve().parent / "model_configs"  # shipped with the package
MODEL_INFO = "model.json"  # marks a structure-only directory: configs, no weights
PIPELINE_INFO = "model_index.json"  # a diffusers checkpoint's pipeline config (boundary_ratio, expand_timesteps)


@dataclass(frozen=True)
class ModelFacts:
    """Exact counts and shapes of the configured backbone."""

    backbone: str
    joint_attention: bool  # text tokens join the self-attention sequence (Backbone.joint_attention)
    teacher: int  # transformer parameters
    lora: int  # detail expert LoRA parameters
    copies: int  # detail expert copied timestep layers
    discriminator: int
    width: int
    layers: int  # transformer blocks
    latent: tuple[int, ...]  # (C, T, H, W) of one video
    patch: tuple[int, int, int]
    video_tokens: int
    text_tokens: int
    guidance_branches: int  # transformer calls per guided teacher step (2 with CFG)
    source: str = ""  # set when the structure came from an architecture config directory, not a checkpoint
    semantic_lora: int = 0  # a LoRA-only semantic expert's parameters: the LoRA on ``transformer``
    teacher_2: int = 0  # ``transformer_2`` parameters of a two-expert teacher (Wan2.2 A14B); 0: one transformer
    boundary_ratio: float | None = None  # where a two-expert teacher switches: transformer at t >= 1000 x this
    expand_timesteps: bool = False  # a timestep per token (Wan2.2 TI2V-5B)
    condition_channels: int = 0  # image-to-video input channels beside the latent (mask + image latent)
    image_tokens: int = 0  # image-encoder tokens every block cross-attends besides the text (Wan2.1 I2V CLIP)
    image_encoder: int = 0  # that image encoder's parameters

    @property
    def pe(self) -> int:
        return self.lora + self.copies

    @property
    def two_experts(self) -> bool:
        return self.teacher_2 > 0

    @property
    def detail_base(self) -> int:
        """The transformer the detail expert starts from: ``transformer_2`` of a two-expert teacher."""
        return self.teacher_2 or self.teacher

    @property
    def teachers(self) -> int:
        """Every teacher transformer: what trajectories and teacher sampling hold."""
        return self.teacher + self.teacher_2

    def forward_flops(self) -> float:
        """One forward of one sample: 2 x params x tokens, plus attention scores and values."""
        joint = self.joint_attention
        seq = self.video_tokens + (self.text_tokens if joint else 0)
        # self-attention, + cross-attention to the text (and to the image tokens of Wan2.1 I2V)
        attended = seq + (0 if joint else self.text_tokens + self.image_tokens)
        return 2.0 * self.teacher * seq + 4.0 * self.layers * seq * attended * self.width


def shipped_models() -> dict[str, Path]:
    """The shipped architecture configs: name (e.g. ``wan2.1-14b``) -> its directory in ``src/dcm/model_configs``."""
    if not MODELS_DIR.is_dir():
        return {}
    return {d.name: d for d in sorted(MODELS_DIR.iterdir()) if (d / MODEL_INFO).is_file()}


@dataclass(frozen=True)
class ShippedModel:
    """``src/dcm/model_configs/<name>/model.json``: what the structure configs alone do not say."""

    name: str
    path: Path
    backbone: str  # the adapter kind: wan, cogvideox or hunyuanvideo
    frames: int  # default video size the checkpoint is used at
    height: int
    width: int
    text_tokens: int  # the pipeline's max_sequence_length
    published_size: str  # e.g. "14B", as the model's authors name it
    checkpoint: str  # the full diffusers checkpoint to download for a real run
    boundary_ratio: float | None = None  # two-expert teachers: their model_index.json's boundary_ratio
    expand_timesteps: bool = False  # their model_index.json's expand_timesteps (Wan2.2 TI2V-5B)


def shipped_model(name: str) -> ShippedModel:
    """The shipped model ``name``; a ValueError (:class:`ParamsError`) lists the known names."""
    models = shipped_models()
    if name not in models:
        raise ParamsError(f"unknown model {name!r}; shipped architecture configs: "
                          f"{', '.join(models) or f'none (no {MODELS_DIR})'}")
    info = json.loads((models[name] / MODEL_INFO).read_text())
    fields = ("backbone", "frames", "height", "width", "text_tokens", "published_size", "checkpoint")
    optional = {k: info[k] for k in ("boundary_ratio", "expand_timesteps") if k in info}
    return ShippedModel(name, models[name], **{k: info[k] for k in fields}, **optional)


def params_for_model(name: str, params: Params | None = None, **model: object) -> Params:
    """``params`` (default: :class:`Params` defaults) set up for the shipped model ``name``: its backbone,
    video size and text length, and ``model.path`` at its config directory, which holds the architecture
    only (no weights: good for :func:`estimate`, not for training). ``model`` overrides keys of the
    ``model`` section, e.g. ``frames=49``."""
    info = shipped_model(name)
    section = {"backbone": info.backbone, "path": str(info.path), "frames": info.frames, "height": info.height,
               "width": info.width, "max_sequence_length": info.text_tokens, **model}
    return (params or Params()).with_overrides({"model": section})


def _structure_dir(path: str | None, backbone: str) -> Path | None:
    """``path`` when it is a structure-only directory (a shipped config: ``model.json`` and the transformer
    and VAE ``config.json``), else None (a checkpoint, checked by the adapter)."""
    from dcm.models.base import BackboneError

    if not path or not (Path(path) / MODEL_INFO).is_file():
        return None
    path = Path(path)
    kind = json.loads((path / MODEL_INFO).read_text()).get("backbone")
    if kind != backbone:
        raise ParamsError(f"model.path {path} holds the architecture of a {kind!r} model, but model.backbone = "
                          f"{backbone!r}")
    missing = [str(path / f / "config.json") for f in ("transformer", "vae")
               if not (path / f / "config.json").is_file()]
    if missing:
        raise BackboneError(f"architecture config directory {path} is missing {', '.join(missing)}")
    return path


def model_facts(params: Params, model_name: str | None = None) -> ModelFacts:
    """Count parameters exactly on meta tensors: teacher, PE detail expert, discriminator. With ``model_name``
    (a :func:`shipped_models` name) the structure comes from its shipped config (:func:`params_for_model`)."""
    from accelerate import init_empty_weights

    from dcm.distill.discriminator import Discriminator, FeatureTaps
    from dcm.experts import ParameterEfficientExpert, count_parameters

    from dcm.models import backbone_class

    if model_name is not None:
        params = params_for_model(model_name, params)
    m = params.model
    adapter = backbone_class(m.backbone)
    structure = _structure_dir(m.path, m.backbone)
    backbone = adapter.skeleton(m, structure)
    transformer = backbone.transformer
    teacher = count_parameters(transformer.parameters())
    blocks = backbone.feature_blocks()
    latent = tuple(backbone.latent_shape(*params.model.video_shape(params.world)))
    patch = tuple(backbone.patch_size())
    d = params.detail
    with init_empty_weights():
        disc = Discriminator(backbone.feature_dim(), len(FeatureTaps(blocks, d.feature_stride).indices), d.head_width,
                             d.head_frames)

    def pe_counts(base, section=d, adapter: str = "detail") -> tuple[int, int]:
        """(LoRA, copied timestep layers) parameters of a PE expert on ``base`` with ``section``'s LoRA."""
        with init_empty_weights():
            expert = ParameterEfficientExpert(base, backbone.timestep_layers, section.lora_rank, section.lora_alpha,
                                              section.lora_targets, adapter=adapter)
        lora = count_parameters(expert.lora_parameters())
        return lora, count_parameters(expert.trainable_parameters()) - lora

    lora, copies = pe_counts(transformer)
    semantic_lora, _ = pe_counts(transformer, params.semantic, "semantic")
    directory = structure or (Path(m.path) if m.path else None)
    layout = _pipeline_layout(directory) if directory else {}
    second = _transformer_2(directory) if directory else None
    teacher_2 = count_parameters(second.parameters()) if second is not None else 0
    if second is not None:  # the detail expert is built on transformer_2, the low-noise expert
        lora, copies = pe_counts(second)
    config = transformer.config
    image_tokens, image_encoder = (_image_encoder(directory) if directory and getattr(config, "image_dim", None)
                                   else (0, 0))
    condition = getattr(config, "in_channels", latent[0]) - getattr(config, "out_channels", latent[0])
    tokens = 1
    for size, step in zip(latent[1:], patch, strict=True):
        tokens *= size // step
    guided = backbone.guidance == "cfg" and params.trajectories.guidance_scale != 1.0
    return ModelFacts(m.backbone, adapter.joint_attention, teacher, lora, copies, count_parameters(disc.parameters()),
                      backbone.feature_dim(), len(blocks), latent, patch, tokens, adapter.text_tokens(m),
                      2 if guided else 1, _shown(structure) if structure else "", semantic_lora, teacher_2,
                      layout.get("boundary_ratio"), bool(layout.get("expand_timesteps")), max(condition, 0),
                      image_tokens, image_encoder)


def _pipeline_layout(directory: Path) -> dict:
    """``boundary_ratio`` and ``expand_timesteps`` of the pipeline in ``directory``: a shipped ``model.json``
    or a checkpoint's ``model_index.json`` (none: a one-transformer pipeline)."""
    for name in (MODEL_INFO, PIPELINE_INFO):
        if (directory / name).is_file():
            return json.loads((directory / name).read_text())
    return {}


def _transformer_2(directory: Path):
    """The low-noise ``transformer_2`` of a two-expert teacher on the meta device, or None (one transformer)."""
    import diffusers
    from accelerate import init_empty_weights

    path = directory / "transformer_2" / "config.json"
    if not path.is_file():
        return None
    config = json.loads(path.read_text())
    with init_empty_weights():
        return getattr(diffusers, config["_class_name"]).from_config(config)


def _image_encoder(directory: Path) -> tuple[int, int]:
    """(tokens per image, parameters) of the image encoder whose tokens the transformer cross-attends
    (Wan2.1 I2V: CLIP ViT-H/14 at 224 px, (224 / 14)^2 patches + the class token = 257)."""
    import transformers
    from accelerate import init_empty_weights

    from dcm.models.base import BackboneError

    path = directory / "image_encoder" / "config.json"
    if not path.is_file():
        raise BackboneError(f"{directory}: the transformer takes image embeddings (image_dim) but {path} is missing")
    config = json.loads(path.read_text())
    model_class = getattr(transformers, config["architectures"][0])
    vision = model_class.config_class.from_dict(config)
    with init_empty_weights():
        encoder = model_class(vision)
    return (vision.image_size // vision.patch_size) ** 2 + 1, sum(p.numel() for p in encoder.parameters())


def _shown(structure: Path) -> str:
    where = f"src/dcm/model_configs/{structure.name}" if structure.parent == MODELS_DIR else str(structure)
    return f"architecture from {where}, no weights read"


@dataclass
class StageCost:
    name: str
    what: str
    trainable: int
    memory: dict[str, float]  # bytes per GPU by component
    seconds: float  # per unit (step, video)
    unit: str
    total_seconds: float


@dataclass
class SourceCost:
    """What one training source (``distill.source``) costs in teacher calls for a set of student steps."""

    name: str
    upfront_calls: int  # teacher transformer calls before distillation (the trajectories stage)
    online_calls: int  # teacher calls inside the distillation steps, over all processes
    seconds: float  # GPU seconds of all those calls together

    @property
    def calls(self) -> int:
        return self.upfront_calls + self.online_calls


@dataclass
class Estimate:
    facts: ModelFacts
    processes: int
    sharding: Sharding
    tflops: float
    stages: list[StageCost] = field(default_factory=list)
    host: dict[str, float] = field(default_factory=dict)  # host RAM per process, bytes
    sources: list[SourceCost] = field(default_factory=list)  # both training sources, priced for these params
    source: str = "trajectories"  # the one params.yaml names
    assumptions: list[str] = field(default_factory=list)

    def stage(self, name: str) -> StageCost:
        return next(s for s in self.stages if s.name == name)

    def render(self) -> str:
        f = self.facts
        lines = [
            f"dcm estimate: backbone {f.backbone}{f' ({f.source})' if f.source else ''}, latent {f.latent}, "
            f"patch {f.patch} -> {f.video_tokens:,} video tokens + {f.text_tokens} text tokens, {f.layers} blocks "
            f"of width {f.width}",
            f"hardware: {self.processes} process(es), {self.sharding.upper()}, {self.tflops:g} TFLOP/s sustained "
            f"per GPU; one forward of one sample = {f.forward_flops() / 1e12:.4g} TFLOP",
            "",
            "parameters",
        ]
        if f.two_experts:
            t = f"t >= {1000 * f.boundary_ratio:g}" if f.boundary_ratio is not None else "boundary_ratio not given"
            lines += [f"  teacher transformer            {f.teacher:>15,}  (high-noise expert, {t}: the semantic "
                      "expert's start and teacher)",
                      f"  teacher transformer_2          {f.teacher_2:>15,}  (low-noise expert, below: the detail "
                      "expert's start and teacher)"]
        else:
            lines.append(f"  teacher transformer            {f.teacher:>15,}")
        lines += [
            f"  detail expert PE (trainable)   {f.pe:>15,}  (LoRA {f.lora:,} + copied timestep layers "
            f"{f.copies:,}{' on transformer_2' if f.two_experts else ''}; {100 * f.pe / f.detail_base:.1f}% of the "
            "teacher)",
            f"  detail expert OD (trainable)   {f.detail_base:>15,}  "
            f"({'transformer_2 fine-tuned' if f.two_experts else 'a second full transformer'})",
            f"  semantic LoRA-only (trainable) {f.semantic_lora:>15,}  (the LoRA alone on the frozen transformer)",
            f"  detail LoRA-only (trainable)   {f.lora:>15,}  (the LoRA alone on the frozen "
            f"{'transformer_2' if f.two_experts else 'transformer'}, no copied layers)",
            f"  discriminator (trainable)      {f.discriminator:>15,}",
        ]
        if f.image_encoder:
            lines.append(f"  image encoder (frozen)         {f.image_encoder:>15,}  ({f.image_tokens} image tokens "
                         "per video that every block cross-attends; not in the memory columns)")
        lines.append("")
        keys = list(dict.fromkeys(k for s in self.stages for k in s.memory))
        header = ["stage", "trainable", *keys, "total/GPU", "time", "stage total"]
        rows = [[s.name, f"{s.trainable:,}", *(_size(s.memory.get(k, 0.0)) for k in keys),
                 _size(sum(s.memory.values())), f"{_time(s.seconds)}/{s.unit}", _time(s.total_seconds)]
                for s in self.stages]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines += ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
                  for r in [header, *rows]]
        lines += [""] + [f"  {s.name}: {s.what}" for s in self.stages]
        lines += ["", f"training points (distill.source = {self.source}; both priced for these student steps)"]
        lines += [f"  {c.name:<13}{c.upfront_calls:>14,} teacher calls up front + {c.online_calls:>12,} online "
                  f"= {c.calls:>14,} calls, {c.seconds / 3600:.1f} GPU h" for c in self.sources]
        lines += ["", "host RAM per process: " + ", ".join(f"{k} {_size(v)}" for k, v in self.host.items()), "",
                  "assumptions"]
        lines += [f"  {i}. {a}" for i, a in enumerate(self.assumptions, 1)]
        return "\n".join(lines)


def _size(n: float) -> str:
    if not n:
        return "-"
    for unit, scale in (("GiB", GiB), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def _time(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    return f"{s / 60:.1f} min" if s >= 120 else f"{s:.3g} s"


def estimate(params: Params, processes: int | None = None, sharding: Sharding | None = None,
             tflops: float = 400.0, facts: ModelFacts | None = None, model_name: str | None = None) -> Estimate:
    """Memory per GPU and time of trajectories, semantic, detail and sample for ``params``; with ``model_name``
    for the shipped model of that name (:func:`params_for_model`), no weights on disk needed."""
    if model_name is not None:
        params = params_for_model(model_name, params)
    f = facts or model_facts(params)
    n = processes or params.launch.num_processes
    sharding = sharding or _config_sharding(params.launch.config_file)
    shard = n if sharding == "fsdp" else 1
    d = params.distill
    half = d.mixed_precision != "fp32"
    act_bytes = 2 if half else 4
    flops = f.forward_flops()
    per_sec = tflops * 1e12
    latent = 1
    for size in f.latent:
        latent *= size
    g = f.guidance_branches
    store = params.trajectories.store_every
    from_data = d.source == "data"
    # share of previous points that need an online guided teacher step: all of them from a dataset
    online = 1.0 if from_data else (store - 1) / store
    est = Estimate(f, n, sharding, tflops, source=d.source)

    def activations(batch: int, checkpointed: bool) -> float:
        per_block = f.video_tokens * f.width * act_bytes * batch
        return per_block * (f.layers + ACT_VALUES if checkpointed else ACT_VALUES * f.layers)

    def inference_activations(batch: int) -> float:
        return f.video_tokens * f.width * 4.0 * ACT_VALUES * batch

    def training(name: str, what: str, trainable: int, frozen: int, teacher: int, units: float, steps: int,
                 gf: bool, on_teacher: bool = False) -> StageCost:
        """``trainable`` (+ a ``frozen`` base) trained against the held ``teacher`` transformer; ``on_teacher``:
        the base is the teacher's own module (an adapter expert on it, held once) except under FSDP, which
        shards a copy."""
        b = d.batch_size
        shared = on_teacher and sharding != "fsdp"
        if shared:
            frozen = 0
        mem = {"teacher": 4.0 * teacher, "weights": 4.0 * (trainable + frozen) / shard,
               "grads": 4.0 * trainable / shard, "AdamW": 8.0 * trainable / shard}
        if half:  # bf16 copies: autocast's weight cache (DDP) or two all-gathered blocks (FSDP)
            mem["bf16 copies"] = 2.0 * trainable if sharding == "ddp" else 2 * 2.0 * (trainable + frozen) / f.layers
        if d.target == "ema":  # a shared base's EMA target is a second adapter on it
            mem["EMA"] = 4.0 * (trainable + frozen)
        mem["activations"] = activations(b, d.gradient_checkpointing)
        if gf:  # the teacher forward the GAN/FM losses backpropagate through is never checkpointed
            mem["activations"] += activations(b, False)
            mem["discriminator"] = 16.0 * f.discriminator
        units += (1 if d.gradient_checkpointing else 0) + 1 + online * g + (3 if gf else 0)
        seconds = units * b * flops / per_sec
        return StageCost(name, what, trainable, mem, seconds, "step", seconds * steps)

    t = params.trajectories
    traj_seconds = params.flow.steps * g * flops / per_sec
    two = f.two_experts
    both = " (both transformers held, each call runs the one its timestep selects)" if two else ""
    if not from_data:
        est.stages.append(StageCost(
            "trajectories", f"{t.videos} videos x {params.flow.steps} steps x {g} transformer calls (CFG), no grad, "
            f"videos split over {n} process(es){both}", 0,
            {"teacher": 4.0 * f.teachers, "activations": inference_activations(t.batch_size * g),
             "trajectory buffer": 4.0 * t.batch_size * (params.flow.steps + 1) * latent},
            traj_seconds, "video", traj_seconds * -(-t.videos // n)))
    a = params.ablation
    for name, (upfront, calls) in teacher_calls(params, g, n).items():
        est.sources.append(SourceCost(name, upfront, calls, (upfront + calls) * flops / per_sec))
    semantic_holds = ", starts from transformer and holds it as its teacher" if two else ""
    detail_holds = ", starts from transformer_2 and holds it as its teacher" if two else ""
    est.stages.append(training(
        "semantic", f"full fine-tune ({'semantic expert' if a.od else 'vanilla model'}), {params.semantic.steps} "
        f"steps of {d.batch_size}/process: forward + 2x backward + target forward{semantic_holds}", f.teacher, 0,
        f.teacher, 3.0, params.semantic.steps, False))
    if a.od:
        pe = a.pe
        est.stages.append(training(
            "detail", (f"PE: LoRA + copies on the frozen {'transformer_2' if two else 'semantic expert'}, forward + "
                       "1x backward (input grads)" if pe else "OD: full fine-tune, forward + 2x backward")
            + (" + GAN/FM: 3 teacher passes" if a.gf else "") + f", {params.detail.steps} steps{detail_holds}",
            f.pe if pe else f.detail_base, f.detail_base if pe else 0, f.detail_base, 2.0 if pe else 3.0,
            params.detail.steps, a.gf, on_teacher=pe and two))

    def lora(section) -> str:
        return (f"LoRA only (rank {section.lora_rank}, alpha {section.lora_alpha:g}, "
                f"{'/'.join(section.lora_targets)}, no copied layers)")

    est.stages.append(training(
        "semantic (LoRA-only)", f"{lora(params.semantic)} on the frozen {'transformer' if two else 'teacher'}, also "
        f"its teacher; forward + 1x backward (input grads) + target forward, {params.semantic.steps} steps",
        f.semantic_lora, f.teacher, f.teacher, 2.0, params.semantic.steps, False, on_teacher=True))
    if a.od:
        est.stages.append(training(
            "detail (LoRA-only)", f"{lora(params.detail)} on the frozen {'transformer_2' if two else 'teacher'}, also "
            "its teacher; forward + 1x backward (input grads)" + (" + GAN/FM: 3 teacher passes" if a.gf else "")
            + f", {params.detail.steps} steps", f.lora, f.detail_base, f.detail_base, 2.0, params.detail.steps, a.gf,
            on_teacher=True))
    for k in params.sample.steps if "dcm" in params.sample.methods else ():
        # the semantic expert + the detail expert: PE extras on it, or on transformer_2 of a two-expert teacher
        resident = 4.0 * (f.teacher + (f.pe + f.teacher_2 if a.pe else f.detail_base))
        seconds = k * flops / per_sec
        est.stages.append(StageCost(f"sample dcm@{k}", f"{k} steps, guidance 1, batch 1, "
                                    f"{'PE fused' if a.pe else 'OD'}", 0,
                                    {"weights": resident, "activations": inference_activations(1)}, seconds, "video",
                                    seconds * params.sample.videos))
    seconds = params.flow.steps * g * flops / per_sec
    est.stages.append(StageCost("sample teacher", f"{params.flow.steps} steps, {g} calls per step (CFG){both}", 0,
                                {"teacher": 4.0 * f.teachers, "activations": inference_activations(g)}, seconds,
                                "video", seconds * params.sample.videos))
    stored = len(set(range(0, params.flow.steps + 1, store)) | {params.flow.steps})
    est.host = ({"dataset latents per 1,000 videos, held by each distillation process":
                 1000 * latent * {"float32": 4}.get(params.dataset.dtype, 2)} if from_data else
                {"trajectories held by each distillation process":
                 t.videos * stored * latent * {"float32": 4}.get(t.dtype, 2)})
    if f.condition_channels:  # one image condition per video, in the latent's resolution
        videos = 1000 if from_data else t.videos
        est.host[f"image conditions ({f.condition_channels} channels) of {videos:,} videos"] = (
            videos * f.condition_channels * latent // f.latent[0] * {"float32": 4}.get(t.dtype, 2))
    est.assumptions = [
        f"compute: {tflops:g} TFLOP/s sustained per GPU (--tflops); 400 is ~{100 * 400 / H100_PEAK:.0f}% MFU of an "
        f"H100 SXM's {H100_PEAK:g} dense bf16 TFLOP/s; fp32 runs are far slower than this",
        "FLOPs of one forward per sample: 2 x parameters x sequence tokens + 4 x blocks x tokens x attended tokens x "
        "width (attention scores and values; cross-attention to the text for Wan, joint text+video sequence for "
        "CogVideoX/HunyuanVideo); a full training step adds 2 forwards for the backward, a PE step 1 "
        "(input gradients through the frozen base; the LoRA weight gradients are negligible)",
        "per training step (read from distill/trainer.py): student forward + backward (+1 forward with "
        "gradient checkpointing), 1 target forward (no grad), an online guided teacher step for the share "
        f"({online:.2f}) of previous points not stored (trajectories.store_every = {store}), and with GAN/FM 3 teacher "
        "passes (fake forward, its backward to the student, real forward); discriminator FLOPs and the noise-bucket "
        "probe are ignored",
        "data parallel: each process runs distill.batch_size samples per step, so the time per step does not depend "
        "on the process count; communication (all-reduce, FSDP all-gathers) is assumed overlapped and not counted",
        f"memory: fp32 master weights (4 B/param), fp32 gradients (4 B) and AdamW m and v (8 B) of the student; "
        f"under FSDP full shard these are divided by the {n} processes, under DDP every GPU holds them all; "
        "DDP gradient buckets and allocator fragmentation are not counted",
        "bf16 compute copies (distill.mixed_precision bf16/fp16): the autocast weight cache under DDP (2 B per "
        "trainable parameter), two all-gathered bf16 blocks under FSDP",
        "the frozen teacher is held in fp32 and replicated on every GPU (the trainer loads it so and never "
        "shards it), in every stage",
        f"activations: {ACT_VALUES} values per video token per width per block (Korthikanti et al. 2022, flash "
        "attention so no tokens^2 term), 2 B under bf16/fp16 and 4 B under distill.mixed_precision = 'fp32'; with "
        "gradient checkpointing only each block's input (1 value) is kept plus one block recomputed at a time",
        "trajectories and sampling run without grad: one block's activations live at a time, in fp32",
        "sample rows: weights resident for one DCM generator (semantic expert + PE extras, or + a second "
        "transformer for OD) in fp32; note that the sample stage loads every (method, steps) generator at once",
        "host RAM: the distillation stages load every stored trajectory into each process's memory",
        "not counted: text encoder and VAE (prompt encoding, latent decoding), data loading, checkpoint writes",
        "training points: trajectories cost trajectories.videos x flow.steps guided teacher solves up front (and an "
        "online step for points store_every skipped); data costs one VAE encode per video (not counted) and one "
        "online guided teacher step per sample of every semantic and detail step (the release's recipe); "
        "both are priced for the semantic and detail steps of these params, one call per sample",
        "LoRA-only rows (distill.lora_only: both experts as LoRA adapters, for limited memory): trainable = the LoRA "
        "of semantic.lora_* / detail.lora_* on the frozen teacher transformer, no copied timestep layers; the base is "
        "the teacher's own module (its adapters off for the teacher's calls) and the EMA target a second adapter, "
        "so no extra weights, except under FSDP, which shards a copy of the base (weights column); a step costs a "
        "PE step's FLOPs (forward + input-gradient backward)",
    ]
    if f.two_experts:
        where = (f"at t >= {1000 * f.boundary_ratio:g} (sigma >= {f.boundary_ratio:g}, boundary_ratio of its "
                 "model_index.json)" if f.boundary_ratio is not None else "above its boundary_ratio (not given)")
        est.assumptions.append(
            f"two-expert teacher: transformer runs {where}, transformer_2 below; the semantic stage starts from "
            "transformer and holds it alone as its teacher, the detail stage starts from (PE, LoRA-only: is built "
            "on) transformer_2 and holds it alone as its teacher (the PE expert's base is transformer_2 itself, held "
            "once, a sharded copy under FSDP); trajectories and teacher sampling hold both; DCM's boundary is "
            "assumed at the teacher's, so each expert only meets its own transformer's timesteps")
    if f.condition_channels:
        est.assumptions.append(
            f"image-to-video: the transformer takes {f.condition_channels} condition channels (the first-frame mask "
            "and the image latent) beside the noisy latent, counted in its patch embedding's parameters; the "
            "condition costs no tokens")
    if f.image_tokens:
        est.assumptions.append(
            f"image tokens: every block also cross-attends the {f.image_tokens} tokens of the CLIP image encoder "
            f"(in the attended tokens of the FLOPs); the image encoder itself ({f.image_encoder:,} parameters) runs "
            "once per image and, like the text encoder, is not in the memory columns")
    if f.expand_timesteps:
        est.assumptions.append(
            f"a timestep per token (expand_timesteps): the latent {f.latent} comes from the Wan2.2 VAE's compression; "
            "image-to-video writes the image's latent into latent frame 0 (timestep 0 there), so it costs what "
            "text-to-video costs; the per-token modulation (6 x width per token, once per step) is not counted")
    return est


def _config_sharding(config_file: str | None) -> Sharding:
    """FSDP when the launch config says so, else replicated weights (DDP or one process)."""
    if not config_file:
        return "ddp"
    import yaml

    if not Path(config_file).is_file():
        raise ParamsError(f"launch.config_file = {config_file!r}: no such file; see configs/README.md")
    with open(config_file) as fh:
        return "fsdp" if (yaml.safe_load(fh) or {}).get("distributed_type") == "FSDP" else "ddp"
