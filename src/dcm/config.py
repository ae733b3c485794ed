"""Typed, validated parameters: one pydantic model per ``params.yaml`` section.

``load_params`` is the only way stages and the CLI read parameters, so a bad value fails
before any compute with a message naming the key, the value and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from dcm.errors import DcmError
from dcm.world.render import WorldConfig


class ParamsError(DcmError, ValueError):
    """A parameter that is missing, mistyped or out of range."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WorldParams(_Section):
    """The toy world (``dcm.world``): video shape and motion."""

    frames: int = Field(8, ge=4, le=64, description="frames per video")
    size: int = Field(32, ge=16, le=256, description="frame height and width in pixels")
    object_radius: float = Field(6.0, gt=1.0, description="object radius (px) for a circle; others equal-area")
    speed_min: float = Field(1.0, gt=0.0, description="slowest speed, px per frame")
    speed_max: float = Field(1.6, gt=0.0, description="fastest speed, px per frame")
    texture_period: int = Field(4, ge=2, le=16, description="period of stripes and checker, px")
    textures: Literal["periodic", "random"] = Field(
        "random", description="periodic: the seed picks one of texture_period^2 phases (the first world); random: "
        "the seed draws every band or cell, so fine detail is decided only at low noise (dcm.world.render)")
    texture_cell: int = Field(2, ge=1, le=8, description="random textures: width of a band or cell, px")
    edge_start: float | None = Field(None, ge=0.0, description="null: an object starts anywhere its whole path "
                                     "fits; a number: within this many px of the edge it moves away from")

    @model_validator(mode="after")
    def _consistent(self) -> WorldParams:
        if self.speed_max < self.speed_min:
            raise ValueError(f"speed_max ({self.speed_max}) must be >= speed_min ({self.speed_min})")
        if self.texture_period % 2:
            raise ValueError(f"texture_period ({self.texture_period}) must be even")
        self.to_config().check()
        return self

    def to_config(self) -> WorldConfig:
        return WorldConfig(**self.model_dump())


class FlowParams(_Section):
    """The flow-matching grid shared by the teacher and every student (``dcm.flow``)."""

    shift: float = Field(17.0, ge=1.0, le=50.0, description="sigma shift s(u) = shift*u/(1+(shift-1)*u)")
    steps: int = Field(50, ge=2, le=1000, description="teacher Euler steps N; grid indices 0 (clean) .. N (noise)")


class TinyModelParams(_Section):
    """The tiny teacher: a diffusers WanTransformer3DModel and a small frozen UMT5 encoder."""

    patch_size: tuple[int, int, int] = (1, 4, 4)
    num_layers: int = Field(4, ge=1, le=48)
    num_attention_heads: int = Field(4, ge=1)
    attention_head_dim: int = Field(32, ge=8)
    ffn_dim: int = Field(512, ge=8)
    freq_dim: int = Field(64, ge=8)
    text_dim: int = Field(64, ge=8, description="width of the text encoder")
    text_layers: int = Field(2, ge=1)
    text_heads: int = Field(2, ge=1)
    text_max_length: int = Field(16, ge=10, description="tokens per prompt (toy prompts have 9 words)")
    text_seed: int = Field(0, description="seed of the frozen random text encoder")
    init: Literal["adaln_zero", "default"] = Field("adaln_zero", description="DiT's adaLN-Zero, or diffusers' default")
    coordinate_channels: bool = Field(True, description="concatenate (t, y, x) coordinates to the input as "
                                      "extra channels (in_channels > out_channels, as Wan's image-to-video model)")
    prediction: Literal["velocity", "sample"] = Field(
        "sample", description="what the transformer outputs: the flow velocity, or the clean sample "
        "(converted to a velocity, so every stage still sees a velocity model)")


class ModelParams(_Section):
    """Which backbone: the embedded tiny teacher, or a real checkpoint in a local diffusers directory."""

    backbone: str = Field("tiny", description="tiny (trained by the teacher stage) or a real model loaded from "
                          "model.path: a name in dcm.models.BACKBONES")
    tiny: TinyModelParams = TinyModelParams()
    path: str | None = Field(None, description="local diffusers directory of a real backbone (never downloaded)")
    frames: int = Field(81, ge=1, description="real backbones: video frames (the tiny world uses world.frames)")
    height: int = Field(480, ge=8, description="real backbones: video height in pixels")
    width: int = Field(832, ge=8, description="real backbones: video width in pixels")
    max_sequence_length: int | None = Field(None, ge=1, description="text tokens; default: the model's own "
                                            "(its adapter's default_max_sequence_length)")
    embedded_guidance_scale: float = Field(6.0, gt=0.0, description="HunyuanVideo: the guidance scale it embeds")

    @field_validator("backbone")
    @classmethod
    def _registered(cls, backbone: str) -> str:
        from dcm.models import BACKBONES  # the adapters' registry; imported here: it loads torch

        if backbone not in BACKBONES:
            raise ValueError(f"unknown backbone; allowed: {', '.join(BACKBONES)} (dcm.models.BACKBONES)")
        return backbone

    @model_validator(mode="after")
    def _path_for_real(self) -> ModelParams:
        if self.backbone != "tiny" and not self.path:
            raise ValueError(f"model.backbone = {self.backbone!r} needs model.path: a local diffusers directory "
                             "holding its transformer, vae, text encoder(s) and tokenizer(s)")
        return self

    @property
    def toy_world(self) -> bool:
        """The embedded default: the tiny teacher's videos are the toy world's, whose evaluator knows
        the ground truth; a real backbone's are scored by VBench and fidelity to the teacher only."""
        return self.backbone == "tiny"

    def video_shape(self, world: WorldParams) -> tuple[int, int, int]:
        """(frames, height, width) of the generated videos."""
        if self.toy_world:
            return world.frames, world.size, world.size
        return self.frames, self.height, self.width


class TeacherParams(_Section):
    """Teacher training by flow matching (``dcm.teacher``)."""

    steps: int = Field(8000, ge=1, description="optimizer steps")
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0.0, le=1.0, description="peak learning rate (AdamW)")
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0, description="cosine floor as a fraction of lr")
    warmup_steps: int = Field(250, ge=0)
    restarts: list[Annotated[int, Field(ge=1)]] = Field(
        [1500, 5500], description="steps where the cosine restarts (at restart_lr_ratio of lr) and runs to the next restart "
        "or to `steps`: a finished run continues with its last step here, and a run from scratch with the same "
        "list takes exactly the same steps")
    restart_lr_ratio: float = Field(0.35, gt=0.0, le=1.0, description="learning rate at each restart, as a "
                                    "fraction of lr")
    weight_decay: float = Field(0.01, ge=0.0)
    grad_clip: float = Field(1.0, gt=0.0)
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0)
    caption_dropout: float = Field(0.1, ge=0.0, lt=1.0, description="share of empty prompts, for CFG")
    timestep_sampling: Literal["uniform", "logit_normal"] = Field("logit_normal", description="u uniform (then shifted by flow.shift) or logit-normal")
    loss: Literal["velocity", "sample"] = Field(
        "sample", description="velocity: MSE of the velocity (flow matching; weights a clean-sample error by "
        "1/sigma^2, i.e. mostly the low noise levels); sample: MSE of the one-step clean-sample estimate, which "
        "weights the high noise levels, where layout and motion are decided, as much as the low ones")
    pure_noise_share: float = Field(0.25, ge=0.0, lt=1.0, description="share of each batch trained at sigma 1 "
                                    "exactly, where only the prompt can say where the object is and how it moves")
    train_shift: float | None = Field(1.0, ge=1.0, le=50.0, description="shift applied to the training noise "
                                      "levels (null: flow.shift); higher spends more training at high noise")
    logit_mean: float = 0.0
    logit_std: float = Field(1.0, gt=0.0)
    checkpoint_every: int = Field(250, ge=1)
    eval_every: int = Field(500, ge=1, description="steps between accuracy checks while training")
    eval_prompts: int = Field(48, ge=1, description="validation videos per accuracy check")
    eval_sample_steps: int = Field(20, ge=2, description="Euler steps of the accuracy check's sampler")
    eval_guidance_scale: float = Field(3.0, ge=1.0, le=20.0, description="CFG scale of the accuracy check")
    seed: int = 0

    @model_validator(mode="after")
    def _restarts_inside_the_run(self) -> TeacherParams:
        if self.restarts != sorted(set(self.restarts)) or any(r <= self.warmup_steps or r >= self.steps for r in self.restarts):
            raise ValueError(f"restarts = {self.restarts} must be increasing steps after warmup_steps "
                             f"({self.warmup_steps}) and before steps ({self.steps})")
        return self


#: the description of ``guidance_scale_2`` (WanPipeline's name), beside each teacher ``guidance_scale``
SECOND_SCALE = ("two-expert (Wan2.2-A14B) teacher: the CFG scale where transformer_2 runs, below its boundary_ratio; "
                "guidance_scale applies above; null: guidance_scale")


class TeacherEvalParams(_Section):
    """Held-out evaluation of the trained teacher (``stages/teacher_eval.py``)."""

    videos: int = Field(64, ge=1, description="prompts x held-out seeds to sample")
    guidance_scale: float = Field(1.0, ge=1.0, le=20.0, description="classifier-free guidance scale")
    guidance_scale_2: float | None = Field(None, ge=1.0, le=20.0, description=SECOND_SCALE)
    batch_size: int = Field(16, ge=1)
    probe_sigmas: list[Annotated[float, Field(gt=0.0, le=1.0)]] = Field(
        [0.2, 0.4, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0],
        description="noise levels of the one-step denoising probe (toy world; empty: no probe)")
    seed: int = 0


class TrajectoryParams(_Section):
    """Teacher ODE trajectories (stage ``trajectories``, ``dcm.data.trajectories``)."""

    videos: int = Field(256, ge=1, description="trajectories to generate")
    guidance_scale: float = Field(1.0, ge=1.0, le=20.0, description="teacher CFG scale the students learn")
    guidance_scale_2: float | None = Field(None, ge=1.0, le=20.0, description=SECOND_SCALE)
    batch_size: int = Field(16, ge=1)
    shard_size: int = Field(16, ge=1, description="videos per shard file (the unit of resume)")
    dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    store_every: int = Field(1, ge=1, description="keep every k-th grid point (and the noise end); "
                             "targets at points not kept come from an online teacher Euler step")
    prompt_file: str | None = Field(None, description="text file (one prompt per line), 'vbench' or "
                                    "'vbench:<dimension>'; default: the toy grammar")
    seed: int = 1


class DatasetParams(_Section):
    """A video dataset the students learn from with ``distill.source: data`` (stage ``dataset``,
    ``dcm.data.video_dataset``): encoded once to VAE latents and text embeddings."""

    path: str | None = Field(None, description="a local folder of videos with metadata.jsonl or metadata.csv "
                             "(file_name, text), or such a file; null on the toy world: its ground-truth renders")
    columns: dict[str, str] = Field({}, description="metadata column of file_name and text when named otherwise, "
                                    "e.g. OpenVid: {file_name: video, text: caption}")
    videos_dir: str | None = Field(None, description="folder the file names are relative to (default: the "
                                   "metadata file's)")
    fps: float | None = Field(None, gt=0.0, description="resample clips to this frame rate; null: the first "
                              "frames at the source rate")
    videos: int = Field(256, ge=1, description="toy world: ground-truth videos to render (as trajectories.videos)")
    shard_size: int = Field(16, ge=1, description="videos per shard file (the unit of resume)")
    batch_size: int = Field(4, ge=1, description="clips per VAE encode")
    dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    seed: int = Field(1, description="toy world: which training prompts and seeds (as trajectories.seed)")


class AblationParams(_Section):
    """The paper's Table 3 switches. Without ``od`` there is one vanilla model and no detail
    expert, so ``pe`` and ``gf`` have nothing to act on and are ignored (``tc`` still applies)."""

    od: bool = Field(True, description="optimization decoupling: separate semantic and detail experts")
    pe: bool = Field(True, description="parameter-efficient detail expert (LoRA + copied timestep layers)")
    tc: bool = Field(True, description="temporal coherence loss on the semantic expert")
    gf: bool = Field(True, description="GAN + feature matching on the detail expert")


class DistillParams(_Section):
    """Settings shared by every consistency-distillation stage (``dcm.distill``)."""

    batch_size: int = Field(8, ge=1, description="samples per process per step")
    huber_c: float = Field(0.001, gt=0.0, description="pseudo-Huber c (release: 0.001)")
    target: Literal["online", "ema"] = Field("ema", description="target network (release: online; paper Eq. 4: EMA)")
    target_ema_decay: float = Field(0.95, ge=0.0, lt=1.0)
    weight_decay: float = Field(1e-3, ge=0.0)
    grad_clip: float = Field(1.0, gt=0.0)
    checkpoint_every: int = Field(50, ge=1)
    log_every: int = Field(5, ge=1)
    bucket_every: int = Field(50, ge=1, description="steps between per-noise-level loss/grad probes (vanilla model)")
    buckets: int = Field(10, ge=2, description="noise-level buckets of the probe (paper Fig. 2)")
    validate_every: int = Field(50, ge=0, description="steps between 4-step validation scores of the student "
                                "(toy world; 0: off): the curve that shows whether it has stopped improving")
    validate_videos: int = Field(32, ge=1, description="validation-split videos per check")
    mixed_precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="autocast with fp32 master weights (release: bf16); needs a GPU for bf16/fp16")
    gradient_checkpointing: bool = Field(False, description="recompute block activations in backward (release: on)")
    source: Literal["trajectories", "data"] = Field(
        "trajectories", description="where a training point x_i comes from: the teacher's stored ODE trajectories "
        "(stage trajectories), or a dataset video's clean latent noised to grid point i (stage dataset), the "
        "target then always one guided teacher Euler step from it (the release's recipe)")
    caption_dropout: float = Field(0.1, ge=0.0, lt=1.0, description="source data: share of captions replaced by "
                                   "the empty prompt, for teacher and student alike (release: 0.1)")
    lora_only: bool = Field(False, description="both DCM experts as LoRA adapters alone (no copied layers) on the "
                            "frozen teacher transformer, which stays their teacher, so a 14B model is held once: "
                            "the semantic expert on `transformer` (semantic.lora_*), the detail expert on "
                            "`transformer_2` of a two-expert teacher, else on `transformer` (detail.lora_*); "
                            "replaces ablation.pe. LCM and PCM stay full fine-tunes")
    collapse_variance_ratio: float = Field(0.2, ge=0.0, lt=1.0, description="collapse guard: stop when the "
                                           "student's per-frame variance falls below this share of the teacher's "
                                           "(solid colour); 0: off")
    collapse_motion_ratio: float = Field(0.2, ge=0.0, lt=1.0, description="collapse guard: stop when the "
                                         "student's frame-to-frame change falls below this share of the teacher's "
                                         "(static video); 0: off")
    collapse_psnr_drop: float = Field(6.0, ge=0.0, description="collapse guard: stop when the PSNR to the "
                                      "teacher falls this many dB below its best so far; 0: off")
    seed: int = 0


class LaunchParams(_Section):
    """How the heavy stages (trajectories and the distillation stages) are launched."""

    num_processes: int = Field(1, ge=1, description="processes (GPUs); > 1 re-launches through `accelerate launch`")
    config_file: str | None = Field(None, description="accelerate config, e.g. configs/accelerate/fsdp.yaml")


class SemanticParams(_Section):
    """Semantic expert: full fine-tune on the noise-side sub-trajectory (stage ``semantic``)."""

    steps: int = Field(500, ge=1)
    lr: float = Field(3e-5, gt=0.0, le=1.0, description="release: 1e-6 for 13B models")
    tc_lag: int = Field(3, ge=1, description="temporal coherence lag in latent frames")
    tc_weight: float = Field(1.0, ge=0.0)
    lora_rank: int = Field(16, ge=1, description="with distill.lora_only: the semantic expert's LoRA rank")
    lora_alpha: float = Field(32.0, gt=0.0, description="with distill.lora_only: the semantic expert's LoRA alpha")
    lora_targets: tuple[str, ...] = Field(("to_q", "to_k", "to_v", "to_out.0"),
                                          description="with distill.lora_only: the modules the semantic LoRA adapts")


class DetailParams(_Section):
    """Detail expert on the clean-side sub-trajectory (stage ``detail``)."""

    steps: int = Field(300, ge=1)
    lr: float = Field(3e-5, gt=0.0, le=1.0, description="LoRA / OD learning rate (release: 5e-6)")
    lora_rank: int = Field(16, ge=1, description="release: 128")
    lora_alpha: float = Field(32.0, gt=0.0, description="release: 256")
    lora_targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    g_weight: float = Field(0.5, ge=0.0, description="generator hinge weight")
    fm_weight: float = Field(1.0, ge=0.0, description="feature-matching weight (release: 1.0 Wan, 0.1 Hunyuan)")
    d_lr: float = Field(1e-4, gt=0.0, description="discriminator lr (release: 1e-5)")
    feature_stride: int = Field(2, ge=1, description="tap every stride-th teacher block")
    head_width: int = Field(64, ge=4, description="discriminator head width (release: 1024)")
    head_frames: int = Field(3, ge=1, description="token frames the discriminator heads see at once: 1 scores "
                             "each frame alone; 3 convolves 3x3x3 token neighbourhoods across frames")
    g_weighting: Literal["fixed", "adaptive"] = Field(
        "fixed", description="fixed: g_weight (release); adaptive: g_weight x ||grad consistency|| / ||grad G|| at "
        "the output layer (VQGAN's adaptive weight), so the G term cannot outweigh the consistency term")
    g_warmup_steps: int = Field(0, ge=0, description="ramp the G weight linearly from 0 over these steps (0: off)")


class BaselineParams(_Section):
    """A single-student baseline (stages ``lcm`` and ``pcm``); these defaults are LCM's."""

    steps: int = Field(350, ge=1)
    lr: float = Field(3e-5, gt=0.0, le=1.0)
    phases: int = Field(1, ge=1, description="PCM phases K (LCM is K = 1)")


class PcmParams(BaselineParams):
    """The PCM baseline: its own defaults, so a partial ``pcm`` section is completed with PCM's values."""

    steps: int = Field(250, ge=1)
    lr: float = Field(3e-5, gt=0.0, le=1.0)
    phases: int = Field(4, ge=1, description="PCM phases K (LCM is K = 1)")


class SampleParams(_Section):
    """Few-step sampling of every method on shared prompts and noise (stage ``sample``)."""

    methods: tuple[Literal["teacher", "undistilled", "lcm", "pcm", "dcm"], ...] = Field(
        ("teacher", "undistilled", "lcm", "pcm", "dcm"), description="teacher: flow.steps with its guidance "
        "(trajectories.guidance_scale); undistilled: the same teacher at each student step count (the control); "
        "lcm, pcm, dcm: the students, guidance 1")
    steps: tuple[int, ...] = Field((2, 4, 8), description="student step counts (the teacher uses flow.steps)")
    videos: int = Field(128, ge=1, description="videos per method and step count (held-out prompts and seeds); "
                        "with VBench's suite as prompt_file: how many of its prompts")
    videos_per_prompt: int = Field(5, ge=1, le=5, description="with VBench's suite: videos per prompt, named as "
                                   "VBench's standard mode expects (VBench uses 5)")
    prompt_file: str | None = Field(None, description="text file (one prompt per line), 'vbench' or "
                                    "'vbench:<dimension>'; default: held-out toy prompts")
    batch_size: int = Field(16, ge=1)
    seed: int = Field(1, description="which held-out set (teacher_eval uses 0)")
    schedule: Literal["grid", "stock"] = Field(
        "grid", description="students' steps: grid points (dcm's schedules) or the evenly spaced shifted sigmas "
        "of diffusers' FlowMatchEulerDiscreteScheduler, which an exported pipeline runs")
    latency_batch: int = Field(4, ge=1, description="videos per timed batch")
    latency_repeats: int = Field(10, ge=1, description="interleaved timing rounds after one warm-up: each round times "
                                 "every method and step count once, in a shuffled order; the median is reported")

    @field_validator("steps")
    @classmethod
    def _steps(cls, steps: tuple[int, ...], info: ValidationInfo) -> tuple[int, ...]:
        if not steps or any(k < 1 for k in steps):
            raise ValueError("each step count must be >= 1")
        odd = [k for k in steps if k % 2]
        if "dcm" in info.data.get("methods", ()) and odd:
            raise ValueError(f"dcm splits steps evenly between its two experts, so {odd} cannot be served; "
                             "use even step counts or drop dcm from sample.methods")
        return steps


class EvaluateParams(_Section):
    """Scoring of the samples (stage ``evaluate``)."""

    vbench: bool = Field(True, description="run VBench's temporal_flickering (and any dimension with weights)")


class TrackingParams(_Section):
    experiment: str = Field("dcm", min_length=1, description="MLflow experiment name")


class Params(_Section):
    """Everything in ``params.yaml``."""

    boundary: int = Field(12, ge=1, description="grid index splitting the semantic (noise side) and detail experts")
    world: WorldParams = WorldParams()
    flow: FlowParams = FlowParams()
    model: ModelParams = ModelParams()
    teacher: TeacherParams = TeacherParams()
    teacher_eval: TeacherEvalParams = TeacherEvalParams()
    trajectories: TrajectoryParams = TrajectoryParams()
    dataset: DatasetParams = DatasetParams()
    ablation: AblationParams = AblationParams()
    distill: DistillParams = DistillParams()
    launch: LaunchParams = LaunchParams()
    semantic: SemanticParams = SemanticParams()
    detail: DetailParams = DetailParams()
    lcm: BaselineParams = BaselineParams()
    pcm: PcmParams = PcmParams()
    sample: SampleParams = SampleParams()
    evaluate: EvaluateParams = EvaluateParams()
    tracking: TrackingParams = TrackingParams()

    @model_validator(mode="after")
    def _boundary_on_grid(self) -> Params:
        if not 1 <= self.boundary <= self.flow.steps - 1:
            raise ValueError(
                f"boundary = {self.boundary} must be a grid index in [1, {self.flow.steps - 1}] "
                f"(flow.steps = {self.flow.steps}; 0 is the clean end, {self.flow.steps} the noise end)"
            )
        if self.lcm.phases != 1:
            raise ValueError(f"lcm.phases = {self.lcm.phases}: LCM is one phase by definition; use pcm.phases")
        n, k = self.flow.steps, self.boundary
        for steps in self.sample.steps:
            if steps > n:
                raise ValueError(f"sample.steps has {steps}, more than the {n}-step grid (flow.steps) holds")
            if "dcm" in self.sample.methods and (steps // 2 > n - k or steps // 2 > k):
                raise ValueError(f"sample.steps has {steps}: dcm takes {steps // 2} steps in [{n}, {k}] and "
                                 f"{steps // 2} in [{k}, 0], which boundary = {k} on a {n}-step grid cannot hold")
        from dcm.models import backbone_class

        if self.sample.schedule == "stock" and not backbone_class(self.model.backbone).flow_matching:
            raise ValueError(f"sample.schedule = 'stock' is the flow-matching scheduler's schedule; model.backbone = "
                             f"{self.model.backbone!r} samples its own grid (use sample.schedule = 'grid')")
        if self.model.backbone == "tiny" and self.ablation.tc and self.semantic.tc_lag >= self.world.frames:
            raise ValueError(f"semantic.tc_lag = {self.semantic.tc_lag} must be below world.frames = "
                             f"{self.world.frames} (the tiny teacher's latents are its frames)")
        if self.distill.source == "data" and not self.model.toy_world and not self.dataset.path:
            raise ValueError(f"distill.source = 'data' on model.backbone = {self.model.backbone!r} needs dataset.path: "
                             "a local folder of videos with metadata.jsonl or metadata.csv (file_name, text)")
        second = {key: value for key, value in (("trajectories.guidance_scale_2", self.trajectories.guidance_scale_2),
                                                ("teacher_eval.guidance_scale_2", self.teacher_eval.guidance_scale_2))
                  if value is not None}
        if second and not backbone_class(self.model.backbone).two_expert_pipeline:
            key, value = next(iter(second.items()))
            raise ValueError(f"{key} = {value} is a two-expert (Wan2.2) teacher's second CFG scale; model.backbone = "
                             f"{self.model.backbone!r} has one transformer (set it to null)")
        if self.pcm.phases > self.flow.steps:
            raise ValueError(f"pcm.phases = {self.pcm.phases} must be at most flow.steps = {self.flow.steps}")
        if self.distill.lora_only and self.ablation.gf and self.detail.g_weighting == "adaptive":
            raise ValueError("detail.g_weighting = 'adaptive' reads the gradients at the output projection, which a "
                             "LoRA-only detail expert (distill.lora_only) does not train: use 'fixed'")
        return self

    def with_overrides(self, overrides: dict[str, Any]) -> Params:
        """A validated copy with sections updated key by key (``{"teacher": {"steps": 10}}``)."""
        def merge(into: dict, new: dict) -> dict:
            for key, value in new.items():
                into[key] = merge(dict(into[key]), value) if isinstance(value, dict) and isinstance(
                    into.get(key), dict) else value
            return into

        return parse_params(merge(self.model_dump(), overrides), "overrides")

    def flat(self) -> dict[str, Any]:
        """Dotted keys (``teacher.lr``) for MLflow."""
        return dict(_flatten(self.model_dump()))


#: The params each DVC stage reads, as sections or dotted keys: the one definition. dvc.yaml's
#: ``params`` lists equal these (a test checks), checkpoints and trained students record them, and
#: sampling refuses a student whose recorded values differ from params.yaml.
STAGE_PARAMS: dict[str, tuple[str, ...]] = {
    "teacher": ("world", "flow", "model.backbone", "model.tiny", "model.path", "teacher"),
    "teacher_eval": ("model", "world", "flow", "teacher", "teacher_eval", "sample.prompt_file"),
    "trajectories": ("model", "world", "flow", "trajectories", "launch"),
    "boundary": ("model", "world", "flow", "trajectories", "boundary"),
    "dataset": ("model", "world", "dataset", "distill.source", "launch"),
    "validation": ("model", "world", "flow", "trajectories.guidance_scale", "trajectories.guidance_scale_2",
                   "trajectories.prompt_file", "distill.validate_videos"),
    "semantic": ("model", "boundary", "world", "flow", "trajectories", "dataset", "ablation.od", "ablation.tc",
                 "distill", "semantic", "launch"),
    "detail": ("model", "boundary", "world", "flow", "trajectories", "dataset", "ablation", "distill", "detail",
               "launch"),
    "lcm": ("model", "world", "flow", "trajectories", "dataset", "distill", "lcm", "launch"),
    "pcm": ("model", "world", "flow", "trajectories", "dataset", "distill", "pcm", "launch"),
    "sample": ("model", "boundary", "world", "flow", "trajectories.guidance_scale", "trajectories.guidance_scale_2",
               "sample"),
    "evaluate": ("model.backbone", "world", "flow.steps", "sample", "evaluate"),
    "report": ("boundary", "flow", "trajectories", "ablation.od", "distill.source", "distill.batch_size",
               "semantic.steps", "detail.steps", "sample.methods"),
}


def sample_plan(params: Params) -> list[tuple[str, int]]:
    """(method, steps) pairs the sample stage produces: the teacher once at flow.steps."""
    plan = []
    for method in params.sample.methods:
        plan.extend([(method, params.flow.steps)] if method == "teacher" else [(method, k) for k in params.sample.steps])
    return plan


def stage_values(params: Params, stage: str, ignore: tuple[str, ...] = ()) -> dict[str, Any]:
    """The values (dotted keys, JSON types) of the params ``stage`` reads, minus ``ignore``."""
    import json

    def under(k: str, names: tuple[str, ...]) -> bool:
        return any(k == n or k.startswith(f"{n}.") for n in names)

    chosen = {k: v for k, v in params.flat().items() if under(k, STAGE_PARAMS[stage]) and not under(k, ignore)}
    return json.loads(json.dumps(chosen, default=str))


def fingerprint(values: dict[str, Any]) -> str:
    """A short hash of param values (:func:`stage_values`): a checkpoint is resumed only by a run
    whose fingerprint matches, so a stale checkpoint from other params is never continued."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _flatten(tree: dict[str, Any], prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _format_error(err: ValidationError, source: str) -> str:
    """One line: every bad key with its value and what is allowed (``dcm params`` lists them all)."""
    problems = []
    for item in err.errors():
        key = ".".join(str(p) for p in item["loc"]) or "(top level)"
        value = item.get("input")
        shown = "" if isinstance(value, dict) else f" = {value!r}"
        problems.append(f"{key}{shown}: {item['msg']}")
    return f"invalid parameters in {source}: " + "; ".join(problems)


def parse_params(data: dict[str, Any] | None, source: str = "params") -> Params:
    try:
        return Params.model_validate(data or {})
    except ValidationError as err:
        raise ParamsError(_format_error(err, source)) from None


class _DuplicateKey(yaml.constructor.ConstructorError):
    """A key given twice in one mapping of a YAML file."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping, at any depth, is an error:
    PyYAML keeps the last one silently, so an edit to the first would change nothing."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue  # keys merged in with `<<` may be overridden
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key in lines:
                raise _DuplicateKey(None, None, f"key {key!r} at line {line} is already given at line {lines[key]}",
                                    key_node.start_mark)
            lines[key] = line
        return super().construct_mapping(node, deep=deep)


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate ``params.yaml``."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"parameter file {path} does not exist (run from the repository root, or pass "
                          "--params FILE)")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except _DuplicateKey as err:
        raise ParamsError(f"{path}: {err.problem}; keep one of them (otherwise the last would silently win)") from None
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ParamsError(f"{path} is not valid YAML{at}: {problem}; fix the file (e.g. an unclosed bracket or "
                          "quote) and rerun") from None
    if data is not None and not isinstance(data, dict):
        raise ParamsError(f"{path} must hold a mapping of sections, got {type(data).__name__}")
    return parse_params(data, str(path))
