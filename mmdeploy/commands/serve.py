"""`mmdeploy serve`: the BentoML service in serving/service.py, with the model and backend set by env vars."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

SERVICE = "serving.service:AVClassifier"


def project_root() -> Path:
    """The checkout holding serving/service.py (the package is installed from it with `pip install -e .`)."""
    from mmdeploy.errors import MmdeployError

    root = Path(__file__).resolve().parents[2]
    if not (root / "serving" / "service.py").is_file():
        raise MmdeployError(f"{root / 'serving' / 'service.py'}: not found; `mmdeploy serve` runs the service of a "
                            "source checkout (pip install -e .), or run `bentoml serve` on a built Bento")
    return root


def serve_command(host: str, port: int, root: Path) -> list[str]:
    return [sys.executable, "-m", "bentoml", "serve", SERVICE, "--working-dir", str(root),
            "--host", host, "--port", str(port)]


def register(app: typer.Typer, data_app: typer.Typer) -> None:
    """Add `serve` to the app."""

    @app.command()
    def serve(
        model: Optional[Path] = typer.Option(None, "--model", help="Run folder (bundle) to serve; default: "
                                                                  "$MMDEPLOY_MODEL, else the BentoML store model."),
        tag: Optional[str] = typer.Option(None, "--tag", help="BentoML store tag (default av-classifier:latest)."),
        backend: Optional[str] = typer.Option(None, "--backend", help="auto | onnxruntime | torch | tensorrt "
                                                                      "(default: $MMDEPLOY_BACKEND or auto)."),
        host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; 0.0.0.0 for every interface."),
        port: int = typer.Option(3000, "--port", min=0, max=65535, help="TCP port."),
    ) -> None:
        """Serve POST /classify, POST /timeline, the page at /ui, /livez, /readyz and /metrics over HTTP.

        Replaces this process with `bentoml serve serving.service:AVClassifier`; settings travel as
        MMDEPLOY_* environment variables (see serving/README.md)."""
        from mmdeploy.bundle import read_meta
        from mmdeploy.runtime import select_backend
        from mmdeploy.serving_core import Settings, model_path

        if model is not None:
            os.environ["MMDEPLOY_MODEL"] = str(model.resolve())
        if tag is not None:
            os.environ["MMDEPLOY_MODEL_TAG"] = tag
        if backend is not None:
            os.environ["MMDEPLOY_BACKEND"] = backend
        settings = Settings.from_env()
        path = model_path(settings)  # a missing model or backend fails here, in one line, not in a worker
        read_meta(path)
        select_backend(path, settings.backend)
        root = project_root()
        typer.echo(f"serving {path} on http://{host}:{port} (/ui, /classify, /timeline, /readyz, /metrics)",
                   err=True)
        os.execv(sys.executable, serve_command(host, port, root))
