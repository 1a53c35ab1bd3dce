"""`mmdeploy train RECIPE` and `mmdeploy eval RUN`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    """Add the training commands to the app."""

    @app.command()
    def train(
        recipe: Path = typer.Argument(..., help="Recipe YAML, e.g. training/recipes/synth-cpu.yaml."),
        data: Optional[Path] = typer.Option(None, "--data", help="Manifest CSV (overrides data.manifest)."),
        method: Optional[str] = typer.Option(None, "--method",
                                             help="Balancing method: joint, multiloss, ogm-ge, agm, mlb, ..."),
        seed: Optional[int] = typer.Option(None, "--seed", help="Seed (overrides train.seed)."),
        set_: list[str] = typer.Option([], "--set", help="Override a recipe key: --set train.epochs=3 (repeatable)."),
        out: Optional[Path] = typer.Option(None, "--out",
                                           help="Run folder (default: runs/RECIPE-METHOD-TIMESTAMP)."),
        resume: bool = typer.Option(False, "--resume", help="Continue RUN from its last epoch checkpoint."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
    ) -> None:
        """Train a model from a recipe; the run folder is a bundle (best validation epoch).

        Works under `torchrun --nproc-per-node N -m mmdeploy train ...` (DDP; rank 0 writes)."""
        from mmdeploy.train import train as run_training

        if resume and out is None:
            raise typer.BadParameter("--resume needs --out RUN (the run to continue)")
        run_training(recipe, out=out, overrides=set_, method=method, data=data, seed=seed, resume=resume,
                     quiet=quiet)

    @app.command("eval")
    def evaluate(
        run: Path = typer.Argument(..., help="Run folder (bundle) written by `mmdeploy train`."),
        split: str = typer.Option("test", "--split", help="train, val or test."),
        data: Optional[Path] = typer.Option(None, "--data",
                                            help="Manifest CSV [default: the one recorded in the bundle]."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """Accuracy (fused and per modality), macro-F1 and ECE of a bundle on a split."""
        from mmdeploy.evaluate import evaluate as run_eval

        if split not in ("train", "val", "test"):
            raise typer.BadParameter(f"--split {split!r}: choose train, val or test")
        result = run_eval(run, split, data)
        if as_json:
            typer.echo(json.dumps(result))
            return
        per = result["per_modality_acc"]
        typer.echo(f"{run} [{split}, n={result['n']}]: fused {100 * result['fused_acc']:.1f}%  "
                   f"audio {100 * per['audio']:.1f}%  video {100 * per['video']:.1f}%  "
                   f"macro-F1 {result['macro_f1']:.3f}  ECE {result['ece']:.3f}")
