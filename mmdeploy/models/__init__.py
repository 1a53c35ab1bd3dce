"""Encoders, fusions and the AVClassifier; `build_model(arch, num_classes)` is the one constructor."""
from mmdeploy.models.classifier import MODALITIES, AVClassifier, build_model, default_arch

__all__ = ["MODALITIES", "AVClassifier", "build_model", "default_arch"]
