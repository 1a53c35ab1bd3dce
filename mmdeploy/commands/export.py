"""`mmdeploy export RUN` (ONNX, parity, TensorRT, BentoML) and `mmdeploy doctor` (what can run here)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    """Add `export` and `doctor` to the app."""

    @app.command()
    def export(
        run: Path = typer.Argument(..., help="Bundle folder written by `mmdeploy train`."),
        onnx: bool = typer.Option(False, "--onnx", help="(Re-)export RUN/export/model.onnx and check parity "
                                  "(the default unless --trt/--bento reuse a current one)."),
        trt: bool = typer.Option(False, "--trt", help="Also build a TensorRT engine (needs TensorRT + CUDA GPU)."),
        fp16: bool = typer.Option(False, "--fp16", help="TensorRT engine in fp16 (default for --trt)."),
        fp32: bool = typer.Option(False, "--fp32", help="TensorRT engine in fp32."),
        target: Optional[str] = typer.Option(None, "--target", help="Deploy target: export/NAME.yaml or NAME."),
        bento: bool = typer.Option(False, "--bento", help="Save the bundle + ONNX into the BentoML model store."),
        as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    ) -> None:
        """Export a bundle to ONNX (+ TensorRT), check parity against PyTorch, optionally store it in BentoML."""
        from mmdeploy.errors import ConfigError

        if fp16 and fp32:
            raise ConfigError("--fp16 and --fp32: choose one")
        from mmdeploy.export import export as run_export
        from mmdeploy.export import load_target

        summary = run_export(run, target=load_target(target) if target else None, onnx=onnx or not (trt or bento), trt=trt,
                             precision="fp16" if fp16 else "fp32" if fp32 else None, bento=bento)
        if as_json:
            typer.echo(json.dumps(summary, indent=2))
            return
        typer.echo(f"onnx     {summary['onnx']}  ({'exported' if summary['onnx_exported'] else 'current, reused'}, "
                   f"target {summary['target']})")
        for name, rep in summary["parity"].items():
            if "skipped" in rep:
                typer.echo(f"parity   {name}: skipped ({rep['skipped']})")
                continue
            typer.echo(f"parity   {name}: max_abs_diff {rep['max_abs_diff']:.2e} <= tol {rep['tolerance']:g}, "
                       f"top-1 agreement {rep['top1_agreement']:.2f}, batches {rep['batches']}, inputs {rep['inputs']}")
        if "engine" in summary:
            typer.echo(f"engine   {summary['engine']}  ({'built' if summary['engine_built'] else 'reused'})")
        if "bento" in summary:
            typer.echo(f"bentoml  {summary['bento']}")

    @app.command()
    def doctor(as_json: bool = typer.Option(False, "--json", help="Print the report as JSON.")) -> None:
        """Which runtime backends and execution providers are usable here, versions, GPU, and why not."""
        from mmdeploy.environment import problems
        from mmdeploy.runtime import doctor as report

        broken = problems()  # first: a package that does not load would make the report below fail
        if broken and not as_json:
            for line in broken:
                typer.echo(f"error: {line}", err=True)
            raise typer.Exit(2)
        info = {"environment": broken, **report()}
        if as_json:
            typer.echo(json.dumps(info, indent=2))
            raise typer.Exit(2 if broken else 0)
        typer.echo("environment  ok: every package and native extension loads and matches the pins")
        typer.echo("versions  " + "  ".join(f"{k} {v or '-'}" for k, v in info["versions"].items()))
        gpu = info["gpu"]
        typer.echo(f"gpu       {gpu['name'] or 'none'} (torch CUDA build {gpu['torch_cuda_build'] or '-'})")
        typer.echo("onnxruntime providers  " + (", ".join(info["onnxruntime_providers"]) or "none"))
        for name, status in info["backends"].items():
            typer.echo(f"{'ok' if status['usable'] else 'no':<4}{name:<22}{status['reason'] or ''}")
        typer.echo("auto order: " + " -> ".join(info["auto_order"]))
