"""`mmdeploy data synth` (synthetic imbalanced clips) and `mmdeploy data cache` (precompute features)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import typer


def register(app: typer.Typer, data_app: typer.Typer) -> None:
    """Add this area's commands to the app."""

    @data_app.command()
    def synth(out: Path = typer.Argument(..., help="Folder for clips/*.mp4 and manifest.csv."),
              clips: int = typer.Option(480, help="Number of clips, spread evenly over the classes."),
              seed: int = typer.Option(0, help="Seed for pixels, samples, labels and splits."),
              classes: int = typer.Option(8, help="Number of classes (2-12)."),
              workers: int = typer.Option(0, help="Processes (0 = one per CPU).")) -> None:
        """Write H.264 + AAC clips whose audio cue is easy and video cue is slow to learn."""
        import time

        from mmdeploy.data.manifest import read_manifest
        from mmdeploy.data.synth import generate

        t0 = time.perf_counter()
        path = generate(out, clips=clips, seed=seed, classes=classes, workers=workers or None)
        counts = Counter(it.split for it in read_manifest(path).items)
        typer.echo(f"{path}: {clips} clips, {classes} classes, train {counts['train']} / val {counts['val']} / "
                   f"test {counts['test']} ({time.perf_counter() - t0:.1f} s)")

    @data_app.command()
    def cache(manifest: Path = typer.Argument(..., help="Manifest CSV."),
              spec: str = typer.Option("synth", help="Spec preset name or a spec JSON file."),
              cache_dir: Path = typer.Option(Path(".cache/features"), "--cache", help="Cache root folder."),
              workers: int = typer.Option(0, help="Processes (0 = one per CPU).")) -> None:
        """Decode every clip once and store its features; lists the files that could not be decoded."""
        from mmdeploy.data.cache import warm_cache
        from mmdeploy.data.manifest import read_manifest
        from mmdeploy.errors import ConfigError
        from mmdeploy.spec import ClipSpec, preset

        if spec.endswith(".json") and not Path(spec).is_file():
            raise ConfigError(f"{spec}: spec file not found; pass a preset name or a spec JSON file")
        clip_spec = ClipSpec.from_json(Path(spec).read_text()) if spec.endswith(".json") else preset(spec)
        items = read_manifest(manifest).items
        failures = warm_cache(items, clip_spec, cache_dir, workers=workers or None)
        for _, reason in failures:
            typer.echo(f"skipped {reason}", err=True)
        typer.echo(f"{cache_dir / clip_spec.digest()}: {len(items) - len(failures)} of {len(items)} clips cached")
