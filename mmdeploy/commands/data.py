"""`mmdeploy data synth` (synthetic imbalanced clips), `data verify` (every file against its manifest's SHA-256)
and `mmdeploy data cache` (precompute features)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Optional

import typer


def register(data_app: typer.Typer) -> None:
    """Add this area's commands to the app."""

    @data_app.command()
    def synth(out: Path = typer.Argument(..., help="Folder for clips/*.mp4 and manifest.csv."),
              clips: int = typer.Option(480, help="Number of clips, spread evenly over the classes."),
              seed: int = typer.Option(0, help="Seed for pixels, samples, labels and splits."),
              classes: int = typer.Option(8, help="Number of classes (2-12)."),
              workers: int = typer.Option(0, help="Processes (0 = one per CPU)."),
              audio_snr_db: float = typer.Option(0.0, "--audio-snr-db", help="dB added to the audio SNR (-6..+6 dB): "
                                                 "+ makes the audio cue stronger (more imbalance), - weaker."),
              label_noise: float = typer.Option(0.0, "--label-noise", help="Fraction of train labels replaced by "
                                                "another class (val/test stay clean).")) -> None:
        """Write H.264 + AAC clips whose audio cue is easy and video cue is slow to learn."""
        import time

        from mmdeploy.data.manifest import read_manifest
        from mmdeploy.data.synth import generate

        t0 = time.perf_counter()
        path = generate(out, clips=clips, seed=seed, classes=classes, workers=workers or None,
                        audio_snr_db=audio_snr_db, label_noise=label_noise)
        counts = Counter(it.split for it in read_manifest(path).items)
        typer.echo(f"{path}: {clips} clips, {classes} classes, train {counts['train']} / val {counts['val']} / "
                   f"test {counts['test']} ({time.perf_counter() - t0:.1f} s)")

    @data_app.command()
    def verify(manifest: Path = typer.Argument(..., help="Manifest CSV with a sha256 column (as `data synth` "
                                                           "writes it).")) -> None:
        """Check every file against the SHA-256 its manifest records: is this set byte for byte the one the
        manifest describes? Exit 2 with one line per missing or changed file."""
        from mmdeploy.data.manifest import check_digests, read_manifest
        from mmdeploy.errors import ConfigError

        items = read_manifest(manifest).items
        checked = sum(1 for it in items if it.sha256)
        if not checked:
            raise ConfigError(f"{manifest}: no sha256 column values to check; `mmdeploy data synth` writes them")
        problems = check_digests(read_manifest(manifest))
        for line in problems:
            typer.echo(f"error: {line}", err=True)
        if problems:
            raise typer.Exit(2)
        typer.echo(f"{manifest}: {checked} files match their SHA-256")

    @data_app.command()
    def cache(manifest: Path = typer.Argument(..., help="Manifest CSV."),
              spec: str = typer.Option("synth", help="Spec preset name or a spec JSON file."),
              cache_dir: Path = typer.Option(Path(".cache/features"), "--cache", help="Cache root folder."),
              workers: int = typer.Option(0, help="Processes (0 = one per CPU); ray: tasks at once."),
              engine: str = typer.Option("local", "--engine", help="local: process pool; ray: Ray tasks across a "
                                                                   "cluster (the cache folder must be shared)."),
              address: Optional[str] = typer.Option(None, "--address", help="ray: join this cluster (none: start "
                                                                            "a local Ray instance).")) -> None:
        """Decode every clip once and store its features; lists the files that could not be decoded.

        With --engine ray the features of a large dataset are computed across a Ray cluster into a shared
        --cache folder (every node must see the clips and the folder at the same paths)."""
        from mmdeploy.data.cache import warm_cache
        from mmdeploy.data.manifest import read_manifest
        from mmdeploy.errors import ConfigError
        from mmdeploy.spec import ClipSpec, preset

        if spec.endswith(".json") and not Path(spec).is_file():
            raise ConfigError(f"{spec}: spec file not found; pass a preset name or a spec JSON file")
        clip_spec = ClipSpec.from_json(Path(spec).read_text()) if spec.endswith(".json") else preset(spec)
        items = read_manifest(manifest).items
        if engine not in ("local", "ray"):
            raise ConfigError(f"--engine {engine!r}: choose local or ray")
        from mmdeploy.pipeline import decode_options
        from mmdeploy.settings import Settings

        failures = warm_cache(items, clip_spec, cache_dir, workers=workers or None, engine=engine, address=address,
                              options=decode_options(Settings.from_env()))
        for _, reason in failures:
            typer.echo(f"skipped {reason}", err=True)
        typer.echo(f"{cache_dir / clip_spec.digest()}: {len(items) - len(failures)} of {len(items)} clips cached")
