"""The distillation methods, one object each (paper Sec. 3): LCM, PCM, DCM's semantic expert with its
Temporal Coherence loss (Sec. 3.4, Eq. 8), DCM's detail expert with its GAN and feature-matching
losses (Sec. 3.4, Eq. 9-10), and the vanilla model (no expert split, Table 3 row 1).

Every method learns the consistency objective (Eq. 6-7) on its phases; an object adds its own loss
terms, the state it trains beside the student (the detail expert's discriminator and optimizer),
and how its 4-step validation sample is taken. The training loop (:mod:`dcm.distill.trainer`) is
the same for all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn

from dcm import flow
from dcm.config import Params, ParamsError
from dcm.data.trajectories import latent_shape
from dcm.distill import objective
from dcm.distill.discriminator import Discriminator, FeatureTaps, d_hinge, g_hinge
from dcm.distill.phases import Phase, Role, phases_for
from dcm.experts import ParameterEfficientExpert
from dcm.layout import Layout
from dcm.models.base import Backbone
from dcm.sampling import schedule, uniform_indices
from dcm.students import load_semantic

ValidationModels = list[tuple[nn.Module, list[int], float]]  # (model, grid indices it steps over, guidance)


@dataclass(frozen=True)
class StudentPlan:
    """What one stage trains: role, phases, and which losses and parametrisation apply."""

    role: Role
    steps: int
    lr: float
    tc: bool
    gf: bool
    pe: bool
    lora: bool = False  # a LoRA alone on the frozen teacher transformer (distill.lora_only)

    @property
    def kind(self) -> str:
        """What the stage writes (:class:`dcm.students.StudentRecord`'s kind)."""
        return "lora" if self.lora else "pe" if self.pe else "full"

    @classmethod
    def for_stage(cls, stage: str, params: Params) -> StudentPlan | None:
        """``None`` when the stage has nothing to train (the detail stage without OD)."""
        a, lora = params.ablation, params.distill.lora_only
        if stage == "semantic":
            return cls("semantic" if a.od else "vanilla", params.semantic.steps, params.semantic.lr, a.tc, False, False,
                       lora)
        if stage == "detail":
            if not a.od:
                return None
            return cls("detail", params.detail.steps, params.detail.lr, False, a.gf, a.pe and not lora, lora)
        if stage in ("lcm", "pcm"):
            section = getattr(params, stage)
            return cls(stage, section.steps, section.lr, False, False, False)
        raise ValueError(f"unknown distillation stage {stage!r}")


@dataclass
class Losses:
    """One step's loss terms (logged) and their weighted sum (back-propagated)."""

    terms: dict[str, torch.Tensor]
    total: torch.Tensor


class Method:
    """The consistency objective on the role's phases; its validation sample takes 4 uniform steps
    over the whole grid with the student alone (LCM's and PCM's schedule)."""

    probes_buckets: ClassVar[bool] = False  # loss and gradients by noise level (paper Fig. 2)

    def __init__(self, params: Params, plan: StudentPlan, teacher: Backbone):
        self.params, self.plan, self.teacher = params, plan, teacher
        self.phases: list[Phase] = phases_for(plan.role, params.flow.steps, params.boundary, params.pcm.phases)

    def losses(self, pred: torch.Tensor, target: torch.Tensor, text: torch.Tensor, gen: torch.Generator,
               step: int) -> Losses:
        """The step's losses from the student's jump ``pred`` and its target (Eq. 6-7); ``text``: the
        batch's prompt embeddings, ``gen``: the step's generator."""
        consistency = objective.pseudo_huber(pred, target, self.params.distill.huber_c)
        return Losses({"loss_consistency": consistency}, consistency)

    def after_student_step(self, losses: Losses) -> dict[str, torch.Tensor]:
        """What the method trains after the student's update; returns its loss terms."""
        return {}

    def prepare(self, accelerator: Accelerator, student: nn.Module, sharded: bool) -> None:
        """Hand the method's own trainable state to accelerate; ``student``: the unwrapped student."""

    def state_dict(self, accelerator: Accelerator, sharded: bool) -> dict:
        """The checkpoint's part of the method's own state (every process calls it)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Before :meth:`prepare`, from the checkpoint's dict."""

    def optimizer_shards(self) -> dict:
        return {}

    def load_optimizer_shards(self, shards: dict) -> None:
        """After :meth:`prepare`: this process's shards of the method's optimizers."""

    def validation_models(self, student: nn.Module) -> ValidationModels:
        return [(student, uniform_indices(self.params.flow.steps, 0, 4), 1.0)]


class LCM(Method):
    """One consistency model over the whole trajectory: every point jumps to the clean end."""

    probes_buckets = True


class PCM(Method):
    """One network, consistent within each of ``pcm.phases`` even phases: every point jumps to the end
    of its phase."""


class SemanticExpert(Method):
    """DCM's semantic expert on ``[N, boundary]`` with the Temporal Coherence loss (Eq. 8) when
    ``ablation.tc``. Its validation sample hands over to the guided teacher (8 Euler steps), so its
    score measures the layout and motion it hands over."""

    def __init__(self, params: Params, plan: StudentPlan, teacher: Backbone):
        super().__init__(params, plan, teacher)
        shape = latent_shape(params, teacher)
        if plan.tc and shape[1] <= params.semantic.tc_lag:
            raise ValueError(f"semantic.tc_lag = {params.semantic.tc_lag} needs more latent frames than that; this "
                             f"backbone's latents have {shape[1]} (shape {shape}); lower semantic.tc_lag or "
                             "turn ablation.tc off")

    def losses(self, pred: torch.Tensor, target: torch.Tensor, text: torch.Tensor, gen: torch.Generator,
               step: int) -> Losses:
        losses = super().losses(pred, target, text, gen, step)
        if self.plan.tc:
            losses.terms["loss_tc"] = objective.temporal_coherence(pred, target, self.params.semantic.tc_lag)
            losses.total = losses.total + self.params.semantic.tc_weight * losses.terms["loss_tc"]
        return losses

    def validation_models(self, student: nn.Module) -> ValidationModels:
        n, k = self.params.flow.steps, self.params.boundary
        return [(student, uniform_indices(n, k, 2), 1.0),
                (self.teacher.transformer, uniform_indices(k, 0, min(k, 8)), self.params.trajectories.guidance_scale)]


class Vanilla(SemanticExpert):
    """Without the expert split (``ablation.od`` off): one model over both sub-trajectories, sampled
    alone on DCM's schedule."""

    probes_buckets = True

    def validation_models(self, student: nn.Module) -> ValidationModels:
        return [(student, schedule("dcm", 4, self.params.flow.steps, self.params.boundary), 1.0)]


@dataclass
class AdversarialLosses(Losses):
    """The detail expert's losses, with what its discriminator step reads: the teacher's features of
    the student's (fake) and the target's (real) noised jumps, and their token grid."""

    fake_features: list[torch.Tensor]
    real_features: list[torch.Tensor]
    grid: tuple[int, int, int]


class DetailExpert(Method):
    """DCM's detail expert on ``[boundary, 0]``. With ``ablation.gf``: a GAN whose discriminator heads
    read the frozen teacher's features (Eq. 9), feature matching on the teacher's velocities (Eq. 10),
    and the discriminator with its optimizer as the method's own state. Its validation sample starts
    with the (trained) semantic expert, as DCM samples."""

    def __init__(self, params: Params, plan: StudentPlan, teacher: Backbone, layout: Layout, sigmas: torch.Tensor):
        super().__init__(params, plan, teacher)
        self.layout, self.detail_sigmas = layout, sigmas[1:params.boundary + 1]
        self.semantic: nn.Module | None = None  # for validation, loaded at the first check
        self.disc: nn.Module | None = None
        # the teacher whose features the GAN and FM terms read: a two-expert teacher's low-noise transformer_2
        self.feature_model = teacher.teacher_expert(low_noise=True)
        if plan.gf:
            d = params.detail
            self.taps = FeatureTaps(teacher.feature_blocks(self.feature_model), d.feature_stride)
            self.disc = Discriminator(teacher.feature_dim(), len(self.taps.indices), d.head_width, d.head_frames)
            self.d_optimizer = torch.optim.AdamW(self.disc.parameters(), lr=d.d_lr, betas=(0.0, 0.999))
            if params.distill.gradient_checkpointing:  # the GAN and feature losses backpropagate through the teacher
                teacher.enable_gradient_checkpointing(self.feature_model)

    def prepare(self, accelerator: Accelerator, student: nn.Module, sharded: bool) -> None:
        self.accelerator, self.student = accelerator, student
        if self.disc is None:
            return
        self.disc, self.d_optimizer = accelerator.prepare(self.disc, self.d_optimizer)
        if sharded and self.params.detail.g_weighting == "adaptive":
            raise ParamsError("detail.g_weighting = 'adaptive' takes gradients of one layer, which FSDP shards; "
                              "use 'fixed' (with detail.g_warmup_steps) under FSDP, or DDP")

    def losses(self, pred: torch.Tensor, target: torch.Tensor, text: torch.Tensor, gen: torch.Generator,
               step: int) -> Losses:
        losses = super().losses(pred, target, text, gen, step)
        if self.disc is None:
            return losses
        teacher, terms = self.teacher, losses.terms
        sigma_a = self.detail_sigmas[torch.randint(len(self.detail_sigmas), (self.params.distill.batch_size,),
                                                   generator=gen)]
        noise = torch.randn(pred.shape, generator=gen).to(pred.device)
        grid = teacher.token_grid(pred.shape)
        self.accelerator.unwrap_model(self.disc).requires_grad_(False)
        with self.taps.capture() as fake_features:
            v_fake = teacher.velocity(self.feature_model, flow.add_noise(pred, noise, sigma_a), sigma_a, text)
        with torch.no_grad(), self.taps.capture() as real_features:
            v_real = teacher.velocity(self.feature_model, flow.add_noise(target, noise, sigma_a), sigma_a, text)
        fake_features, real_features = list(fake_features), list(real_features)
        terms["loss_g"] = g_hinge(self.disc(fake_features, grid))
        terms["loss_fm"] = F.mse_loss(v_fake.float(), v_real.float())
        terms["g_scale"] = self.g_scale(terms["loss_consistency"], terms["loss_g"], step)
        total = losses.total + terms["g_scale"] * terms["loss_g"] + self.params.detail.fm_weight * terms["loss_fm"]
        return AdversarialLosses(terms, total, fake_features, real_features, grid)

    def g_scale(self, consistency: torch.Tensor, g_loss: torch.Tensor, step: int) -> torch.Tensor:
        """The G term's weight: ``detail.g_weight``, ramped over ``detail.g_warmup_steps``, and with
        ``detail.g_weighting: adaptive`` scaled by VQGAN's ratio of the two losses' gradient norms at the
        output layer, so the hinge term cannot drown the consistency term (paper Eq. 10 leaves it open)."""
        d = self.params.detail
        weight = d.g_weight * (min(1.0, step / d.g_warmup_steps) if d.g_warmup_steps else 1.0)
        if d.g_weighting == "fixed":
            return torch.tensor(weight)
        layer = self.output_layer()
        g_cons = torch.autograd.grad(consistency, layer, retain_graph=True)[0]
        g_adv = torch.autograd.grad(g_loss, layer, retain_graph=True)[0]
        return weight * (g_cons.norm() / (g_adv.norm() + 1e-4)).clamp(0.0, 1e4).detach()

    def output_layer(self) -> nn.Parameter:
        """The weight of the student's output projection (its trainable copy under PE)."""
        if isinstance(self.student, ParameterEfficientExpert):
            return self.student.copy_of("proj_out").weight
        return self.student.get_submodule("proj_out").weight

    def after_student_step(self, losses: Losses) -> dict[str, torch.Tensor]:
        """One hinge step of the discriminator heads on the features of this step's G pass."""
        if not isinstance(losses, AdversarialLosses):
            return {}
        acc = self.accelerator
        acc.unwrap_model(self.disc).requires_grad_(True)
        fake_logits = self.disc([f.detach() for f in losses.fake_features], losses.grid)
        real_logits = self.disc(losses.real_features, losses.grid)
        loss_d = d_hinge(real_logits, fake_logits)
        acc.backward(loss_d)
        acc.clip_grad_norm_(self.disc.parameters(), 1.0)
        self.d_optimizer.step()
        self.d_optimizer.zero_grad(set_to_none=True)
        return {"loss_d": loss_d}

    def state_dict(self, accelerator: Accelerator, sharded: bool) -> dict:
        if self.disc is None:
            return {}
        return {"disc": accelerator.get_state_dict(self.disc),
                "d_optimizer": None if sharded else self.d_optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if self.disc is None:
            return
        self.disc.load_state_dict(state["disc"])
        if state["d_optimizer"] is not None:
            self.d_optimizer.load_state_dict(state["d_optimizer"])

    def optimizer_shards(self) -> dict:
        return {} if self.disc is None else {"d_optimizer": self.d_optimizer.state_dict()}

    def load_optimizer_shards(self, shards: dict) -> None:
        if self.disc is not None:
            self.d_optimizer.load_state_dict(shards["d_optimizer"])

    def validation_models(self, student: nn.Module) -> ValidationModels:
        n, k = self.params.flow.steps, self.params.boundary
        if self.semantic is None:
            on_semantic = isinstance(student, ParameterEfficientExpert) and student.base_name == "semantic"
            self.semantic = student.base if on_semantic else load_semantic(self.teacher, self.layout)
        return [(self.semantic, uniform_indices(n, k, 2), 1.0), (student, uniform_indices(k, 0, 2), 1.0)]


def method_for(plan: StudentPlan, params: Params, teacher: Backbone, layout: Layout, sigmas: torch.Tensor) -> Method:
    """The method object of ``plan``; ``sigmas``: the grid's noise levels on the training device."""
    if plan.role == "detail":
        return DetailExpert(params, plan, teacher, layout, sigmas)
    return {"lcm": LCM, "pcm": PCM, "semantic": SemanticExpert, "vanilla": Vanilla}[plan.role](params, plan, teacher)
