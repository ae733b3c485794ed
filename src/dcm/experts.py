"""Experts that are adapters on a frozen base: the parameter-efficient detail expert (PE, paper
Sec. 3.3) and the LoRA-only experts (``distill.lora_only``).

PE: the semantic expert stays frozen and shared; the detail expert adds, on top of it, a PEFT LoRA
on the attention projections and trainable copies of the timestep-dependent layers. LoRA-only: each
expert is a LoRA alone (no copied layers) on the frozen teacher transformer it starts from, which
stays the teacher too, so a 14B model is held once. Calling an expert switches its parts in for the
duration of the call and back out afterwards; several experts (each its own named PEFT adapter) can
share one base, and switching costs no reload.
"""

from __future__ import annotations

import contextlib
import copy
import json
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from peft import LoraConfig, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file, save_file
from torch import nn

from dcm.io import atomic_path, atomic_write_text
from dcm.layout import adapter_config, adapter_weights

ADAPTER = "detail"


def _set_lora(model: nn.Module, adapter: str | None) -> None:
    """Run the LoRA ``adapter`` of every LoRA layer (None: none) without touching ``requires_grad``
    (PEFT's own enable/disable and set_adapter toggle it, which would silently stop gradients reaching
    a LoRA)."""
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module._disable_adapters = adapter is None
            if adapter is not None:
                module._active_adapter = [adapter]


def _merged_weight(layer: BaseTunerLayer, adapter: str) -> nn.Parameter:
    """The layer's base weight with the ``adapter``'s LoRA delta added."""
    return nn.Parameter(layer.get_base_layer().weight + layer.get_delta_weight(adapter), requires_grad=False)


def _split(name: str) -> tuple[str, str]:
    parent, _, child = name.rpartition(".")
    return parent, child


class ParameterEfficientExpert(nn.Module):
    """An expert made of a frozen base transformer, a LoRA (the PEFT adapter ``adapter``) and copied
    timestep layers (none for a LoRA-only expert)."""

    def __init__(self, base: nn.Module, timestep_layers: Sequence[str], lora_rank: int, lora_alpha: float,
                 lora_targets: Sequence[str], base_name: str = "semantic", adapter: str = ADAPTER):
        super().__init__()
        # the base frozen; other experts' LoRAs on a shared base keep their requires_grad, which PEFT's
        # add_adapter resets (it freezes every adapter but the new one)
        for name, p in base.named_parameters():
            if "lora_" not in name:
                p.requires_grad_(False)
        flags = {id(p): p.requires_grad for p in base.parameters()}  # by identity: PEFT renames what it wraps
        # what the base is: "semantic" (the expert), "transformer" or "transformer_2" (the teacher's own)
        self.base_name, self.adapter = base_name, adapter
        self.timestep_layers = tuple(timestep_layers)
        self.lora = {"r": lora_rank, "lora_alpha": lora_alpha, "target_modules": list(lora_targets)}
        with warnings.catch_warnings():  # several adapters on one base are what this class is for
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            warnings.filterwarnings("ignore", message=f"Adapter {adapter} was active which is now deleted")
            if adapter in (getattr(base, "peft_config", None) or {}):  # loaded before on this base: start afresh
                base.delete_adapters(adapter)
            base.add_adapter(LoraConfig(**self.lora, init_lora_weights=True), adapter_name=adapter)
        self.base = base
        for p in base.parameters():
            p.requires_grad_(flags.get(id(p), True))  # this expert's new LoRA trainable, the rest as it was
        self.copies = nn.ParameterDict()
        self.copy_modules = nn.ModuleDict()
        for name in self.timestep_layers:
            original = self._get(name)
            key = name.replace(".", "__")
            if isinstance(original, nn.Parameter):
                self.copies[key] = nn.Parameter(original.detach().clone())
            else:
                self.copy_modules[key] = copy.deepcopy(original).requires_grad_(True)
        _set_lora(base, None)
        self._merged: list[tuple[nn.Module, nn.Parameter]] | None = None  # see fused()

    def _get(self, name: str):
        parent, child = _split(name)
        return getattr(self.base.get_submodule(parent) if parent else self.base, child)

    def _set(self, name: str, value) -> None:
        parent, child = _split(name)
        module = self.base.get_submodule(parent) if parent else self.base
        if isinstance(value, nn.Module) or (isinstance(value, nn.Parameter) and child in module._parameters):
            setattr(module, child, value)
        elif isinstance(value, nn.Parameter):  # in place of a plain tensor (below)
            module.__dict__.pop(child, None)
            module.register_parameter(child, value)
        else:  # a plain tensor: inside its forward, FSDP (use_orig_params) shows parameters as tensor views
            module._parameters.pop(child, None)
            object.__setattr__(module, child, value)

    def copy_of(self, name: str) -> nn.Module | nn.Parameter:
        """The detail expert's trainable copy of the timestep layer ``name`` (one of ``timestep_layers``)."""
        key = name.replace(".", "__")
        return self.copies[key] if key in self.copies else self.copy_modules[key]

    @contextlib.contextmanager
    def active(self) -> Iterator[nn.Module]:
        """Within this block the base computes the detail expert."""
        originals = {name: self._get(name) for name in self.timestep_layers}
        for name in self.timestep_layers:
            self._set(name, self.copy_of(name))
        _set_lora(self.base, self.adapter)
        try:
            yield self.base
        finally:
            _set_lora(self.base, None)
            for name, original in originals.items():
                self._set(name, original)

    @contextlib.contextmanager
    def fused(self) -> Iterator[nn.Module]:
        """Like :meth:`active`, with the LoRA already in the weights, so a detail step costs exactly
        what a semantic step costs (for sampling, not training). The merged weights of the LoRA
        layers are computed once and swapped in and out, so switching costs no arithmetic and the
        base comes back bit for bit."""
        originals = {name: self._get(name) for name in self.timestep_layers}
        for name in self.timestep_layers:
            self._set(name, self.copy_of(name))
        if self._merged is None:  # (base layer, merged weight) per LoRA layer, found and merged once
            with torch.no_grad():
                self._merged = [(m.get_base_layer(), _merged_weight(m, self.adapter))
                                for m in self.base.modules() if isinstance(m, BaseTunerLayer)]
        layers = [layer for layer, _ in self._merged]
        base_weights = [layer.weight for layer in layers]
        for layer, merged in self._merged:
            layer.weight = merged
        try:
            yield self.base  # LoRA stays switched off: it is in the weights
        finally:
            for layer, weight in zip(layers, base_weights, strict=True):
                layer.weight = weight
            for name, original in originals.items():
                self._set(name, original)

    def train(self, mode: bool = True) -> ParameterEfficientExpert:
        self._merged = None  # training changes the LoRA: merge again at the next fused()
        return super().train(mode)

    def forward(self, *args, **kwargs):
        with self.active() as model:
            return model(*args, **kwargs)

    def lora_parameters(self) -> list[nn.Parameter]:
        """This expert's LoRA (not the other adapters its base may hold)."""
        return [p for n, p in self.base.named_parameters() if "lora_" in n and f".{self.adapter}." in n]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return self.lora_parameters() + list(self.copies.parameters()) + list(self.copy_modules.parameters())

    def twin(self, adapter: str) -> ParameterEfficientExpert:
        """A frozen copy of this expert as another adapter on the same base (the EMA target of a LoRA
        expert whose base is the teacher: no second copy of the base)."""
        twin = ParameterEfficientExpert(self.base, self.timestep_layers, self.lora["r"], self.lora["lora_alpha"],
                                        self.lora["target_modules"], self.base_name, adapter)
        twin.load_detail_state_dict(self.detail_state_dict())
        for p in twin.trainable_parameters():
            p.requires_grad_(False)
        return twin

    def base_parameters(self) -> dict[str, torch.Tensor]:
        """The frozen base's own weights (every LoRA excluded), for checks and reports."""
        return {n: p for n, p in self.base.named_parameters() if "lora_" not in n}

    def detail_state_dict(self, full: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The LoRA and the copies, from this module or from its whole state dict ``full``
        (gathered by ``accelerator.get_state_dict`` when the module is sharded)."""
        full = self.state_dict() if full is None else full
        # PEFT's key format (adapter name dropped), picked from the keys themselves: PEFT's own
        # get_peft_model_state_dict matches module names, which FSDP's wrappers change.
        state = {f"lora.{k[len('base.'):].replace(f'.{self.adapter}.', '.')}": v for k, v in full.items()
                 if k.startswith("base.") and ".lora_" in k and f".{self.adapter}." in k}
        state.update({k: v for k, v in full.items() if k.startswith(("copies.", "copy_modules."))})
        return {k: v.detach().contiguous() for k, v in state.items()}

    def load_detail_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self._merged = None
        lora = {k[len("lora."):]: v for k, v in state.items() if k.startswith("lora.")}
        set_peft_model_state_dict(self.base, lora, adapter_name=self.adapter)
        self.copies.load_state_dict({k[len("copies."):]: v for k, v in state.items() if k.startswith("copies.")})
        self.copy_modules.load_state_dict(
            {k[len("copy_modules."):]: v for k, v in state.items() if k.startswith("copy_modules.")})

    def save(self, directory: Path, full: dict[str, torch.Tensor] | None = None) -> None:
        """The LoRA (+ copies) and how to rebuild the expert, named after its adapter (``detail.safetensors``
        and ``detail.json`` for the detail expert)."""
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(directory / adapter_weights(self.adapter)) as tmp:
            save_file(self.detail_state_dict(full), str(tmp))
        config = {"kind": "pe" if self.timestep_layers else "lora", "base": self.base_name, "adapter": self.adapter,
                  "timestep_layers": list(self.timestep_layers), **self.lora}
        atomic_write_text(directory / adapter_config(self.adapter), json.dumps(config, indent=2) + "\n")

    @staticmethod
    def base_of(directory: Path, adapter: str = ADAPTER) -> str:
        """What the expert saved in ``directory`` sits on: "semantic", "transformer" or "transformer_2"."""
        return json.loads((directory / adapter_config(adapter)).read_text()).get("base", "semantic")

    @classmethod
    def load(cls, base: nn.Module, directory: Path, adapter: str = ADAPTER) -> ParameterEfficientExpert:
        config = json.loads((directory / adapter_config(adapter)).read_text())
        expert = cls(base, config["timestep_layers"], config["r"], config["lora_alpha"], config["target_modules"],
                     config.get("base", "semantic"), config.get("adapter", ADAPTER))
        expert.load_detail_state_dict(load_file(str(directory / adapter_weights(adapter))))
        return expert


def count_parameters(parameters) -> int:
    return sum(p.numel() for p in parameters)
