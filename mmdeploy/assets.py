"""Files a user runs without a checkout: deploy targets (export/*.yaml) and training recipes.

A wheel carries them under mmdeploy/_assets/ (pyproject: hatch force-include); a source checkout has them
at the repository root. `asset_dir` answers the one that exists, packaged first, so the two never differ.
"""
from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_CHECKOUT = {"export": _PACKAGE.parent / "export", "recipes": _PACKAGE.parent / "training" / "recipes"}


def asset_dir(kind: str) -> Path:
    """The folder of `kind` ("export" or "recipes"): inside the installed package, else the checkout's."""
    packaged = _PACKAGE / "_assets" / kind
    return packaged if packaged.is_dir() else _CHECKOUT[kind]


def by_name(kind: str, name: str | Path) -> Path | None:
    """`synth-cpu` -> the shipped recipes/synth-cpu.yaml (likewise `onnx-cpu` for targets); None if not shipped."""
    text = str(name)
    if "/" in text or "\\" in text:
        return None
    stem = text[:-5] if text.endswith(".yaml") else text
    path = asset_dir(kind) / f"{stem}.yaml"
    return path if path.is_file() else None


def names(kind: str) -> list[str]:
    """The shipped names of `kind`, sorted."""
    return sorted(p.stem for p in asset_dir(kind).glob("*.yaml"))
