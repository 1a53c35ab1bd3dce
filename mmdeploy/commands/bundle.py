"""`mmdeploy bundle reseal RUN` and `mmdeploy bundle verify RUN`: a bundle's format and integrity."""
from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add `bundle reseal|verify` to the app."""
    bundle_app = typer.Typer(no_args_is_help=True, help="Check or convert a model bundle (run folder).")
    app.add_typer(bundle_app, name="bundle")

    @bundle_app.command()
    def reseal(run: Path = typer.Argument(..., help="A format-1 bundle whose weights you trust.")) -> None:
        """Re-save a format-1 bundle (no weights digest) in the current format; the weights must still load
        strictly into the architecture and class count model.json records."""
        from mmdeploy.bundle import FORMAT_VERSION, reseal as run_reseal

        typer.echo(f"resealed {run_reseal(run)} (format version {FORMAT_VERSION})")

    @bundle_app.command()
    def verify(run: Path = typer.Argument(..., help="Bundle folder.")) -> None:
        """Check a bundle as every load does (no pickle, weights digest, input shapes, sealed metadata)."""
        from mmdeploy.bundle import verify_bundle

        meta = verify_bundle(run)
        typer.echo(f"ok {run}: sha256 {meta['weights']['sha256']}, inputs {meta['inputs']}")
