"""The detail expert in its parameter-efficient form (PE, paper Sec. 3.3).

The semantic expert stays frozen and shared. The detail expert adds, on top of it, a PEFT LoRA
on the attention projections and trainable copies of the timestep-dependent layers. Calling the
expert switches those parts in for the duration of the call and back out afterwards, so one
model in memory serves both experts and switching costs no reload.
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from peft import LoraConfig, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file, save_file
from torch import nn

from dcm.io import atomic_path, atomic_write_text

ADAPTER = "detail"


def _set_lora(model: nn.Module, enabled: bool) -> None:
    """Switch the LoRA layers on or off without touching ``requires_grad`` (PEFT's own
    enable/disable toggles it, which would silently stop gradients reaching the LoRA)."""
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module._disable_adapters = not enabled


def _merged_weight(layer: BaseTunerLayer) -> nn.Parameter:
    """The layer's base weight with its LoRA delta added."""
    return nn.Parameter(layer.get_base_layer().weight + layer.get_delta_weight(ADAPTER), requires_grad=False)


def _split(name: str) -> tuple[str, str]:
    parent, _, child = name.rpartition(".")
    return parent, child


class ParameterEfficientExpert(nn.Module):
    """A detail expert made of a frozen base transformer, a LoRA and copied timestep layers."""

    def __init__(self, base: nn.Module, timestep_layers: Sequence[str], lora_rank: int, lora_alpha: float,
                 lora_targets: Sequence[str], base_name: str = "semantic"):
        super().__init__()
        base.requires_grad_(False)
        self.base_name = base_name  # what the base is: "semantic" (the expert) or "transformer_2" (Wan2.2's own)
        self.timestep_layers = tuple(timestep_layers)
        self.lora = {"r": lora_rank, "lora_alpha": lora_alpha, "target_modules": list(lora_targets)}
        base.add_adapter(LoraConfig(**self.lora, init_lora_weights=True), adapter_name=ADAPTER)
        self.base = base
        self.copies = nn.ParameterDict()
        self.copy_modules = nn.ModuleDict()
        for name in self.timestep_layers:
            original = self._get(name)
            key = name.replace(".", "__")
            if isinstance(original, nn.Parameter):
                self.copies[key] = nn.Parameter(original.detach().clone())
            else:
                self.copy_modules[key] = copy.deepcopy(original).requires_grad_(True)
        _set_lora(base, False)
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
        _set_lora(self.base, True)
        try:
            yield self.base
        finally:
            _set_lora(self.base, False)
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
                self._merged = [(m.get_base_layer(), _merged_weight(m))
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

    def trainable_parameters(self) -> list[nn.Parameter]:
        lora = [p for n, p in self.base.named_parameters() if "lora_" in n]
        return lora + list(self.copies.parameters()) + list(self.copy_modules.parameters())

    def base_parameters(self) -> dict[str, torch.Tensor]:
        """The frozen base's own weights (LoRA excluded), for checks and reports."""
        return {n: p for n, p in self.base.named_parameters() if "lora_" not in n}

    def detail_state_dict(self, full: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The LoRA and the copies, from this module or from its whole state dict ``full``
        (gathered by ``accelerator.get_state_dict`` when the module is sharded)."""
        full = self.state_dict() if full is None else full
        # PEFT's key format (adapter name dropped), picked from the keys themselves: PEFT's own
        # get_peft_model_state_dict matches module names, which FSDP's wrappers change.
        state = {f"lora.{k[len('base.'):].replace(f'.{ADAPTER}.', '.')}": v for k, v in full.items()
                 if k.startswith("base.") and ".lora_" in k and f".{ADAPTER}." in k}
        state.update({k: v for k, v in full.items() if k.startswith(("copies.", "copy_modules."))})
        return {k: v.detach().contiguous() for k, v in state.items()}

    def load_detail_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self._merged = None
        lora = {k[len("lora."):]: v for k, v in state.items() if k.startswith("lora.")}
        set_peft_model_state_dict(self.base, lora, adapter_name=ADAPTER)
        self.copies.load_state_dict({k[len("copies."):]: v for k, v in state.items() if k.startswith("copies.")})
        self.copy_modules.load_state_dict(
            {k[len("copy_modules."):]: v for k, v in state.items() if k.startswith("copy_modules.")})

    def save(self, directory: Path, full: dict[str, torch.Tensor] | None = None) -> None:
        """``detail.safetensors`` (LoRA + copies) and ``detail.json`` (how to rebuild it)."""
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(directory / "detail.safetensors") as tmp:
            save_file(self.detail_state_dict(full), str(tmp))
        config = {"kind": "pe", "base": self.base_name, "timestep_layers": list(self.timestep_layers), **self.lora}
        atomic_write_text(directory / "detail.json", json.dumps(config, indent=2) + "\n")

    @staticmethod
    def base_of(directory: Path) -> str:
        """What the expert saved in ``directory`` sits on: "semantic" or "transformer_2"."""
        return json.loads((directory / "detail.json").read_text()).get("base", "semantic")

    @classmethod
    def load(cls, base: nn.Module, directory: Path) -> ParameterEfficientExpert:
        config = json.loads((directory / "detail.json").read_text())
        expert = cls(base, config["timestep_layers"], config["r"], config["lora_alpha"], config["target_modules"],
                     config.get("base", "semantic"))
        expert.load_detail_state_dict(load_file(str(directory / "detail.safetensors")))
        return expert


def count_parameters(parameters) -> int:
    return sum(p.numel() for p in parameters)
