"""dcm: Dual-Expert Consistency Model distillation for text-to-video diffusion."""

__version__ = "0.1.0"
