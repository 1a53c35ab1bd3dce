"""`mmdeploy compare RECIPE`: methods x seeds, mean ± std with 95 % CIs, paired tests, a plot."""
from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer, data_app: typer.Typer) -> None:
    """Add the compare command to the app."""

    @app.command()
    def compare(
        recipe: Path = typer.Argument(..., help="Recipe YAML (or a shipped recipe name), e.g. synth-compare."),
        methods: str = typer.Option("joint,multiloss,mlb,mcr,ensemble,pretrain-finetune", "--methods",
                                    help="Comma-separated methods; the first is the reference of the paired tests."),
        seeds: int = typer.Option(5, "--seeds", help="Seeds 0..N-1 for every method."),
        jobs: int = typer.Option(1, "--jobs", help="Runs trained at once (processes; torch threads are split)."),
        out: Path = typer.Option(Path("runs/compare"), "--out", help="Folder: runs/ and compare.{csv,json,md,png}."),
        set_: list[str] = typer.Option([], "--set", help="Recipe override for every run: --set train.epochs=8."),
        method_set: list[str] = typer.Option([], "--method-set",
                                             help="Override for one method: --method-set mcr.permutations=8."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="Only the final table."),
    ) -> None:
        """Train every method x seed (finished runs are skipped, interrupted ones resumed), then write the
        comparison table (CSV, JSON, Markdown), paired t and exact Wilcoxon tests vs the first method, and
        a plot."""
        import shlex
        import sys

        from mmdeploy.compare import compare as run_compare

        say = (lambda _: None) if quiet else (lambda line: typer.echo(line, err=True))
        result = run_compare(recipe, methods, seeds, out, jobs, set_, method_set, say=say,
                             command=" ".join(["mmdeploy", *map(shlex.quote, sys.argv[1:])]))
        from mmdeploy.compare.report import markdown

        typer.echo(markdown(result), nl=False)
