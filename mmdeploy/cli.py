"""The `mmdeploy` command: a thin typer app. Each area registers its commands from mmdeploy/commands/.

Commands import their heavy dependencies (torch, av, onnxruntime, bentoml) inside the command body, so
`mmdeploy --help` stays fast. Errors a user can cause (MmdeployError) become one line on stderr and
exit code 2, never a traceback.
"""
from __future__ import annotations

import sys

import typer

from mmdeploy.commands import batch, bundle, classify, compare, data, export, index, live, media, serve, train
from mmdeploy.errors import MmdeployError

CONTEXT = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, context_settings=CONTEXT,
                  help="Train balanced audio-video classifiers, export them, classify video files.")
data_app = typer.Typer(no_args_is_help=True, context_settings=CONTEXT, help="Make datasets: synthetic clips, manifests of raw layouts.")
app.add_typer(data_app, name="data")


def _version(value: bool) -> None:
    if value:
        from mmdeploy import __version__

        typer.echo(f"mmdeploy {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", "-V", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Train balanced audio-video classifiers, export them, classify video files."""


for module in (media, train, export, classify, live, batch, serve, bundle):
    module.register(app)
for module in (data, index):
    module.register(data_app)
compare.register(app, data_app)  # its register still takes both apps (mmdeploy/commands/compare.py)


def main() -> None:
    try:
        app()  # standalone: click prints usage errors itself and exits 2
    except MmdeployError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("error: interrupted", err=True)
        sys.exit(130)
