"""`mmdeploy serve`: the BentoML service (mmdeploy/service.py), with the settings (mmdeploy/settings.py) its
options and the environment give."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from mmdeploy.commands.options import backend_option

SERVICE = "mmdeploy.service:AVClassifier"  # ships in the package: works from a wheel, no checkout needed


def serve_command(host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "bentoml", "serve", SERVICE, "--host", host, "--port", str(port)]


def register(app: typer.Typer) -> None:
    """Add `serve` to the app."""

    @app.command()
    def serve(
        model: Optional[Path] = typer.Option(None, "--model", help="Run folder (bundle) to serve; default: "
                                                                  "$MMDEPLOY_MODEL, else the BentoML store model."),
        tag: Optional[str] = typer.Option(None, "--tag", help="BentoML store tag (default av-classifier:latest)."),
        backend: Optional[str] = backend_option(None, "Runtime, as in classify (default: $MMDEPLOY_BACKEND or "
                                                      "auto)."),
        host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; 0.0.0.0 for every interface."),
        port: int = typer.Option(3000, "--port", min=0, max=65535, help="TCP port."),
    ) -> None:
        """Serve POST /classify, POST /timeline, the page at /ui, /livez, /readyz and /metrics over HTTP.

        Replaces this process with `bentoml serve mmdeploy.service:AVClassifier`; the settings travel as
        MMDEPLOY_* environment variables (see serving/README.md), the options here win."""
        from mmdeploy.bundle import read_meta
        from mmdeploy.runtime import select_backend
        from mmdeploy.serving.answers import model_path
        from mmdeploy.settings import Settings

        overrides = {"model": str(model.resolve()) if model is not None else None, "model_tag": tag,
                     "backend": backend}
        settings = Settings.from_env(**{k: v for k, v in overrides.items() if v is not None})
        path = model_path(settings)  # a missing model or backend fails here, in one line, not in a worker
        read_meta(path)
        select_backend(path, settings.backend)
        typer.echo(f"serving {path} on http://{host}:{port} (/ui, /classify, /timeline, /readyz, /metrics)",
                   err=True)
        # the settings travel to the service's processes as its environment (read back there, once)
        os.execve(sys.executable, serve_command(host, port), {**os.environ, **settings.to_env()})
