"""Options that several commands share, defined once."""
from __future__ import annotations

from typing import Optional

import typer

BACKEND_HELP = ("Runtime: auto (the best usable), a family (onnxruntime, openvino, torch, tensorrt) or one backend "
                "of the registry (onnxruntime-cpu, openvino-int8, torch-cpu, ...: `mmdeploy doctor` lists them).")


def check_backend(value: Optional[str]) -> Optional[str]:
    """--backend of classify, watch, batch and serve: checked against the runtime registry before any work
    (one line, exit 2, for a name it does not know)."""
    if value is None:
        return None
    from mmdeploy.runtime import check_name

    return check_name(value, "--backend")


def backend_option(default: Optional[str] = "auto", help: str = BACKEND_HELP):
    return typer.Option(default, "--backend", help=help, callback=check_backend)
