"""The student under training: its module, its optimizer and its target network (paper Eq. 4: the
student's EMA, or the online student itself), and what a checkpoint keeps of them."""

from __future__ import annotations

import copy

import torch
from accelerate import Accelerator
from torch import nn

from dcm.config import Params
from dcm.distill.methods import StudentPlan
from dcm.experts import ParameterEfficientExpert, count_parameters
from dcm.layout import Layout
from dcm.models.base import Backbone
from dcm.students import expert_base, expert_base_name


def build_student(plan: StudentPlan, params: Params, teacher: Backbone, layout: Layout,
                  share: bool = True) -> tuple[nn.Module, list[nn.Parameter]]:
    """The trainable module and its trainable parameters: a copy of the teacher transformer of the
    student's phase (:meth:`Backbone.teacher_expert`); (PE) a LoRA and copied timestep layers on a
    frozen base (paper Sec. 3.3), the semantic expert or a two-expert teacher's ``transformer_2``; or
    (LoRA-only) a LoRA alone on the teacher transformer of its phase. A teacher transformer as base is
    the teacher's own module when ``share`` (its LoRA is off outside the expert's calls), a copy under
    FSDP, which shards what it wraps."""
    low_noise = plan.role == "detail"
    if plan.pe or plan.lora:
        name = expert_base_name(teacher, plan.lora, low_noise)
        base = expert_base(teacher, layout, name)
        if name != "semantic" and not share:
            base = copy.deepcopy(base)
        if params.distill.gradient_checkpointing:
            teacher.enable_gradient_checkpointing(base)
        section = params.detail if low_noise else params.semantic
        student = ParameterEfficientExpert(base, () if plan.lora else teacher.timestep_layers, section.lora_rank,
                                           section.lora_alpha, section.lora_targets, base_name=name,
                                           adapter="detail" if low_noise else "semantic")
        student.shares_teacher = name != "semantic" and share
        return student, student.trainable_parameters()
    student = copy.deepcopy(teacher.teacher_expert(low_noise)).requires_grad_(True)
    if params.distill.gradient_checkpointing:
        teacher.enable_gradient_checkpointing(student)
    return student, list(student.parameters())


def trainable_parameters(module: nn.Module) -> list[nn.Parameter]:
    if isinstance(module, ParameterEfficientExpert):
        return module.trainable_parameters()
    return list(module.parameters())


def _weights(student: nn.Module, full: dict | None = None) -> dict:
    """What a checkpoint keeps of a student; ``full``: its whole state dict already gathered (FSDP)."""
    if isinstance(student, ParameterEfficientExpert):
        return student.detail_state_dict(full)
    return student.state_dict() if full is None else full


def _load_weights(student: nn.Module, state: dict) -> None:
    if isinstance(student, ParameterEfficientExpert):
        student.load_detail_state_dict(state)
    else:
        student.load_state_dict(state)


def _free_root_after_forward(root: nn.Module, _inputs, _output) -> None:
    """FSDP (version 1) keeps its root unit's gathered weights after a forward, for the backward that
    follows; the EMA target has none, so the gathered copy would serve its next forward (and its saved
    state) with the weights from before the EMA steps in between. Free it as the other units are."""
    from torch.distributed.fsdp._runtime_utils import _reshard

    if root._handle is not None:
        _reshard(root, root._handle, free_unsharded_flat_param=True)


class Student:
    """The trainable module, its AdamW and its target network. :meth:`prepare` hands the module and
    optimizer to accelerate; ``model`` is then what to call and ``raw`` the unwrapped module."""

    def __init__(self, module: nn.Module, trainable: list[nn.Parameter], params: Params, lr: float):
        d = params.distill
        self.module, self.ema_decay = module, d.target_ema_decay
        self.trainable_count = count_parameters(trainable)
        self.optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=d.weight_decay)
        self.ema = None
        if d.target == "ema":  # an expert on the teacher's own module: a second adapter, not a second base
            self.ema = (module.twin(f"{module.adapter}_ema") if getattr(module, "shares_teacher", False)
                        else copy.deepcopy(module).requires_grad_(False))

    def prepare(self, accelerator: Accelerator, sharded: bool) -> None:
        self.model, self.optimizer = accelerator.prepare(self.module, self.optimizer)
        self.raw = accelerator.unwrap_model(self.model)
        # under FSDP the EMA is sharded like the student, so each process moves its own shards towards the
        # student's, and the target's forward gathers them as the student's does
        self.ema_model = accelerator.prepare_model(self.ema) if sharded and self.ema is not None else self.ema
        self.ema_raw = None if self.ema is None else accelerator.unwrap_model(self.ema_model)
        # the online target calls the prepared model: under FSDP the unwrapped one holds only this rank's shards
        self.target = self.ema_model if self.ema is not None else self.model
        if sharded and self.ema is not None:
            self.ema_model.register_forward_hook(_free_root_after_forward)

    def update_target(self) -> None:
        """One EMA step of the target towards the student (nothing for the online target)."""
        if self.ema is None:
            return
        with torch.no_grad():
            for e, p in zip(trainable_parameters(self.ema_raw), trainable_parameters(self.raw), strict=True):
                e.lerp_(p.detach(), 1 - self.ema_decay)

    def state_dict(self, accelerator: Accelerator, sharded: bool) -> dict:
        """The checkpoint's part of the student (every process calls it: gathering is a collective
        under FSDP); the optimizer is ``None`` when sharded, each process keeps its own shards."""
        full = accelerator.get_state_dict(self.model)
        state = {"student": _weights(self.raw, full), "optimizer": None if sharded else self.optimizer.state_dict()}
        if self.ema is not None:
            state["ema"] = _weights(self.ema_raw, accelerator.get_state_dict(self.ema_model) if sharded else None)
        return state

    def load_state_dict(self, state: dict) -> None:
        """Before :meth:`prepare`; a sharded optimizer comes back through :meth:`load_optimizer_shards`."""
        _load_weights(self.module, state["student"])
        if state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None:
            _load_weights(self.ema, state["ema"])

    def optimizer_shards(self) -> dict:
        return {"optimizer": self.optimizer.state_dict()}

    def load_optimizer_shards(self, shards: dict) -> None:
        """After :meth:`prepare`: this process's shards of the optimizer."""
        self.optimizer.load_state_dict(shards["optimizer"])
