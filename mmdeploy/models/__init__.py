"""Encoders, fusions and the AVClassifier; `build_model(arch, num_classes)` is the one constructor."""
from mmdeploy.models.classifier import ENCODERS, MODALITIES, AVClassifier, build_model, default_arch
from mmdeploy.models.fusion import FUSIONS

__all__ = ["ENCODERS", "FUSIONS", "MODALITIES", "AVClassifier", "build_model", "default_arch"]
