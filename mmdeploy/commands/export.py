"""`mmdeploy export RUN` (ONNX, parity, TensorRT, CPU engines, BentoML) and `mmdeploy doctor` (what can run here)."""
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
        target: Optional[str] = typer.Option(None, "--target", help="Deploy target: export/NAME.yaml or NAME "
                                             "(onnx-cpu, openvino-int8, openvino-bf16, onnx-int8, ...)."),
        calibration: Optional[int] = typer.Option(None, "--calibration", min=1, max=100_000, help="int8 targets: "
                                                  "calibration windows from the training split (default: the "
                                                  "target's calibration.windows, 300)."),
        bento: bool = typer.Option(False, "--bento", help="Save the bundle + ONNX into the BentoML model store."),
        as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    ) -> None:
        """Export a bundle to ONNX (+ TensorRT or a CPU engine), check parity / the accuracy gate against fp32,
        optionally store it in BentoML."""
        from mmdeploy.errors import ConfigError

        if fp16 and fp32:
            raise ConfigError("--fp16 and --fp32: choose one")
        from mmdeploy.export import export as run_export
        from mmdeploy.export import load_target

        chosen = load_target(target) if target else None
        cpu_engine = chosen is not None and chosen.cpu_engine  # reuses a current ONNX file unless --onnx
        summary = run_export(run, target=chosen, onnx=onnx or not (trt or bento or cpu_engine), trt=trt,
                             precision="fp16" if fp16 else "fp32" if fp32 else None, bento=bento,
                             calibration=calibration)
        if as_json:
            typer.echo(json.dumps(summary, indent=2))
            return
        typer.echo(f"onnx     {summary['onnx']}  ({'exported' if summary['onnx_exported'] else 'current, reused'}, "
                   f"target {summary['target']})")
        for name, rep in summary["parity"].items():
            if "skipped" in rep:
                typer.echo(f"parity   {name}: skipped ({rep['skipped']})")
                continue
            if "top1_agreement" in rep and "windows" in rep:  # a CPU engine's accuracy gate
                typer.echo(_gate_line(name, rep))
                continue
            typer.echo(f"parity   {name}: max_abs_diff {rep['max_abs_diff']:.2e} <= tol {rep['tolerance']:g}, "
                       f"top-1 agreement {rep['top1_agreement']:.2f}, batches {rep['batches']}, inputs {rep['inputs']}")
        if "timing" in summary:
            typer.echo(_timing_line(summary["timing"]))
        if "engine" in summary:
            typer.echo(f"engine   {summary['engine']}  ({'built' if summary['engine_built'] else 'reused'})")
        if "bento" in summary:
            typer.echo(f"bentoml  {summary['bento']}")

    @app.command()
    def doctor(as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
               model: Optional[Path] = typer.Option(None, "--model", help="Also say which backend `auto` picks "
                                                    "for this bundle, and why.")) -> None:
        """Which runtime backends and execution providers are usable here, versions, GPU, CPU features, and why not."""
        from mmdeploy.environment import problems
        from mmdeploy.runtime import doctor as report

        broken = problems()  # first: a package that does not load would make the report below fail
        if broken and not as_json:
            for line in broken:
                typer.echo(f"error: {line}", err=True)
            raise typer.Exit(2)
        info = {"environment": broken, **report()}
        if model is not None:
            from mmdeploy.runtime import explain

            info["auto"] = explain(model)
        if as_json:
            typer.echo(json.dumps(info, indent=2))
            raise typer.Exit(2 if broken else 0)
        typer.echo("environment  ok: every package and native extension loads and matches the pins")
        typer.echo("versions  " + "  ".join(f"{k} {v or '-'}" for k, v in info["versions"].items()))
        gpu = info["gpu"]
        typer.echo(f"gpu       {gpu['name'] or 'none'} (torch CUDA build {gpu['torch_cuda_build'] or '-'})")
        cpu = info["cpu"]
        typer.echo(f"cpu       {cpu['model']}: " + (", ".join(cpu["features"].values()) or "no int8/bf16 features "
                                                    "(int8 and bf16 engines may be slower than fp32 here)"))
        typer.echo("onnxruntime providers  " + (", ".join(info["onnxruntime_providers"]) or "none"))
        for name, status in info["backends"].items():
            typer.echo(f"{'ok' if status['usable'] else 'no':<4}{name:<22}{status['reason'] or ''}")
        typer.echo("auto order: " + " -> ".join(info["auto_order"]))
        if "auto" in info:
            typer.echo(f"auto for {model}: {info['auto']['why']}")
            for name, reason in info["auto"]["skipped"].items():
                typer.echo(f"  passed over {name}: {reason}")


def _gate_line(name: str, rep: dict) -> str:
    """One line of a CPU engine's accuracy gate (parity.json has every number)."""
    delta = rep.get("accuracy_delta_points")
    acc = (f"test accuracy {rep['accuracy']:.2f} % vs fp32 {rep['accuracy_fp32']:.2f} % ({delta:+.2f} points, "
           f"max drop {rep['tolerance']['max_drop']:g})" if delta is not None else "no labels (random inputs)")
    kept = f", fp32 kept: {rep['fp32_layers']}" if "fp32_layers" in rep else ""
    return (f"gate     {name}: {acc}, top-1 agreement {100 * rep['top1_agreement']:.1f} % on {rep['windows']} "
            f"held-out windows (min {100 * rep['tolerance']['min_agreement']:g} %), max-abs {rep['max_abs_diff']:.3g}"
            f"{kept}")


def _timing_line(timing: dict) -> str:
    """Median ms per batch of every CPU engine timed against onnxruntime-cpu, as `auto` reads them."""
    ref = timing["ms"].get("onnxruntime-cpu", {})
    parts = []
    for name, ms in timing["ms"].items():
        cells = [f"b{b} {ms[b]:.1f} ms" + (f" ({ref[b] / ms[b]:.1f}x)" if b in ref and name != "onnxruntime-cpu"
                                          else "") for b in sorted(ms, key=int)]
        parts.append(f"{name} " + ", ".join(cells))
    return f"timing   {timing['cpu_model']}, {timing['threads']} threads, load {timing['load_average'] or 0:.1f}: " + \
        "; ".join(parts)
