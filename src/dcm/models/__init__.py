"""Backbone adapters: everything dcm needs to know about a text-to-video model."""

from dcm.models.tiny import TinyBackbone, build_tiny_backbone, load_backbone

__all__ = ["TinyBackbone", "build_tiny_backbone", "load_backbone"]
