"""`mmdeploy data index cremad|ave|ucf101 ROOT --out MANIFEST`: raw dataset trees -> manifests."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import typer

ROOT = typer.Argument(..., help="Dataset root folder (the layout is described in training/README.md).")
STRICT = typer.Option(False, "--strict", help="Fail (exit 2) instead of skipping problem clips.")
WORKERS = typer.Option(None, "--workers", min=1, help="Probe processes (default: all cores).")


def _out(dataset: str) -> typer.Option:
    return typer.Option(Path(f"data/{dataset}/manifest.csv"), "--out", "-o", help="Manifest CSV to write.")


def _run(name: str, root: Path, out: Path, strict: bool, build: Callable) -> None:
    """Index, print the summary and the skip report, honour --strict, write the manifest."""
    from mmdeploy.data.indexing import sidecar_path, write_index

    t0 = time.perf_counter()
    index = build()
    seconds = time.perf_counter() - t0
    if strict:
        index.report.raise_if_problems(root)
    for line in index.report.lines():
        typer.echo(f"warning: {line}" if line.startswith("skipped") else line, err=True)
    path = write_index(index, out, root)
    counts = index.counts()
    groups = len({it.group for it in index.items})
    typer.echo(f"{name}: {len(index.items)} clips, {len(index.classes)} classes, {groups} groups "
               f"(train {counts['train']}, val {counts['val']}, test {counts['test']}), "
               f"{index.report.skipped} skipped, indexed in {seconds:.1f} s -> {path}")
    for suffix in index.sidecars:
        typer.echo(f"{suffix}: {sidecar_path(path, suffix)}")


def register(data_app: typer.Typer) -> None:
    """Add `data index cremad|ave|ucf101`."""
    index_app = typer.Typer(no_args_is_help=True, help="Index a real dataset tree into a manifest CSV.")
    data_app.add_typer(index_app, name="index")

    @index_app.command("cremad")
    def cremad(root: Path = ROOT, out: Path = _out("cremad"),
               seed: int = typer.Option(0, help="Seed of the actor split."),
               ratios: str = typer.Option("0.7,0.15,0.15", help="train,val,test fractions of the actors."),
               audio: str = typer.Option("wav", help="Audio source: wav (AudioWAV/*.wav) or flv (the FLV's track)."),
               min_seconds: float = typer.Option(0.0, help="Skip clips whose audio is shorter (s)."),
               strict: bool = STRICT, workers: int | None = WORKERS) -> None:
        """CREMA-D: VideoFlash/*.flv + AudioWAV/*.wav, emotion labels, speaker-independent split."""
        from mmdeploy.data.cremad import index_cremad
        from mmdeploy.data.indexing import parse_ratios

        fractions = parse_ratios(ratios)
        _run("cremad", root, out, strict, lambda: index_cremad(
            root, seed=seed, ratios=fractions, audio=audio, min_seconds=min_seconds, workers=workers))

    @index_app.command("ave")
    def ave(root: Path = ROOT, out: Path = _out("ave"), strict: bool = STRICT,
            workers: int | None = WORKERS) -> None:
        """AVE: <VideoID>.mp4 + trainSet/valSet/testSet.txt; the annotated event is the window."""
        from mmdeploy.data.ave import index_ave

        _run("ave", root, out, strict, lambda: index_ave(root, workers=workers))

    @index_app.command("ucf101")
    def ucf101(root: Path = ROOT, out: Path = _out("ucf101"),
               split: int = typer.Option(1, help="Official split 1, 2 or 3."),
               seed: int = typer.Option(0, help="Seed of the group-level validation split."),
               min_seconds: float = typer.Option(3.0, help="Skip clips shorter than this (s); the paper keeps "
                                                           "clips with >= 4 frames at 1 fps."),
               strict: bool = STRICT, workers: int | None = WORKERS) -> None:
        """UCF101: official split, clips with audio, 51-class audio subset + class map JSON."""
        from mmdeploy.data.ucf101 import index_ucf101

        _run("ucf101", root, out, strict, lambda: index_ucf101(
            root, split=split, seed=seed, min_seconds=min_seconds, workers=workers))
