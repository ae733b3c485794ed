"""Consistency distillation: one engine for DCM's two experts and the LCM / PCM baselines."""
