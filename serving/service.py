"""The BentoML project's entry point. The service itself ships inside the package (mmdeploy/service.py), so a
plain `pip install mmdeploy-av` serves it too; this file lets `bentoml serve service:AVClassifier` work from
inside serving/ as well. From the repository root, `bentoml serve` reads [tool.bentoml.build] in pyproject.
"""
from mmdeploy.service import AVClassifier, AVModel

__all__ = ["AVClassifier", "AVModel"]
