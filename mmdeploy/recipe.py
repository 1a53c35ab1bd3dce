"""A training recipe: one YAML file, validated into typed sections, with `--set key=value` overrides
(YAML, overrides and error lines: mmdeploy/config.py).

    data:   {manifest, spec: PRESET | {preset, <ClipSpec keys>}, synth: {clips, seed, classes}, cache}
    model:  {audio: {...}, video: {...}, fusion: {type: late}}
    method: {name: mlb, alpha: 0.8, ...}      (parameters beside `name` go to balance.build_method)
    train:  {epochs, batch_size, seed, optimizer: {...}, schedule: {...}, num_workers, device,
             early_stop, augment}

Relative paths (data.manifest, data.cache) resolve against the current working directory, like any
command-line path; run from the repository root to use the recipes as written.
Every problem raises ConfigError with one line that names the dotted key.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mmdeploy.config import apply_override, describe, read_yaml
from mmdeploy.errors import ConfigError
from mmdeploy.spec import ClipSpec, preset


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Synth(_Section):
    clips: int = Field(240, gt=0)
    seed: int = 0
    classes: int = Field(8, ge=2)


class Data(_Section):
    manifest: str
    spec: str | dict[str, Any] = "synth"
    synth: Synth | None = None
    cache: str | None = None

    def clip_spec(self) -> ClipSpec:
        fields = {"preset": self.spec} if isinstance(self.spec, str) else dict(self.spec)
        name = fields.pop("preset", None)
        try:
            base = preset(name).to_dict() if name is not None else {}
        except ConfigError as exc:
            raise ConfigError(f"data.spec: {exc}") from None
        return ClipSpec.from_dict({**base, **fields}, where="data.spec")

    @property
    def manifest_path(self) -> Path:
        return Path(self.manifest).resolve()

    @property
    def cache_path(self) -> Path:
        """data.cache, or `cache/` beside the manifest."""
        return Path(self.cache).resolve() if self.cache else self.manifest_path.parent / "cache"


class Model(_Section):
    audio: dict[str, Any]
    video: dict[str, Any]
    fusion: dict[str, Any] = Field(default_factory=lambda: {"type": "late"})


class Method(BaseModel):
    """`name` plus the method's own parameters (checked by balance.build_method)."""
    model_config = ConfigDict(extra="allow", strict=True)
    name: str = "mlb"

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Optimizer(_Section):
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: list[float] = Field(default_factory=lambda: [0.9, 0.999], min_length=2, max_length=2)
    eps: float = Field(1e-8, gt=0)
    momentum: float = Field(0.9, ge=0)


class Schedule(_Section):
    name: Literal["constant", "cosine", "constant_cosine_restarts"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    t0: int = Field(4, gt=0)
    t_mult: int = Field(2, ge=1)


class Train(_Section):
    epochs: int = Field(gt=0)
    batch_size: int = Field(gt=0)
    seed: int = 0
    optimizer: Optimizer = Field(default_factory=Optimizer)
    schedule: Schedule = Field(default_factory=Schedule)
    num_workers: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    early_stop: int | None = Field(None, gt=0)
    augment: bool = False


class Recipe(_Section):
    data: Data
    model: Model
    method: Method = Field(default_factory=Method)
    train: Train

    @model_validator(mode="after")
    def _check(self) -> "Recipe":
        self.data.clip_spec()  # raises ConfigError naming data.spec.<key>
        if self.data.synth is not None and Path(self.data.manifest).name != "manifest.csv":
            raise ConfigError(f"data.manifest: {self.data.manifest} must be named manifest.csv when data.synth "
                              "is set (the generator writes DIR/manifest.csv)")
        return self


def load_recipe(source: str | Path | dict[str, Any], overrides: list[str] | tuple[str, ...] = (),
                check_files: bool = True) -> Recipe:
    """Read (a YAML path or an already-parsed dict), apply `key=value` overrides, validate.
    With check_files, a missing manifest is an error unless data.synth says how to generate it."""
    raw = _read(source) if isinstance(source, (str, Path)) else _copy(source)
    where = str(source) if isinstance(source, (str, Path)) else "recipe"
    for item in overrides:
        apply_override(raw, item)
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{where}: {describe(exc, Recipe, _UNIONS, top='the recipe')}") from None
    except ConfigError as exc:  # from ClipSpec / preset, already naming data.spec.<key>
        raise ConfigError(f"{where}: {exc}") from None
    if check_files:
        manifest = recipe.data.manifest_path
        if not manifest.is_file() and recipe.data.synth is None:
            raise ConfigError(f"{where}: data.manifest: {manifest} not found; expected a manifest CSV "
                              "(make one with `mmdeploy data synth DIR` or `mmdeploy data index`), pass "
                              "--data MANIFEST, or add data.synth to generate it")
    return recipe


def _read(path: str | Path) -> dict[str, Any]:
    from mmdeploy import assets

    path = Path(path)
    if not path.is_file():  # a shipped recipe by name: `synth-cpu`, or `training/recipes/synth-cpu.yaml` anywhere
        path = assets.by_name("recipes", path.name if path.parent.name == "recipes" else path) or path
    if not path.is_file():
        raise ConfigError(f"{path}: recipe not found; give a YAML path or a shipped recipe name "
                          f"({', '.join(assets.names('recipes'))})")
    return read_yaml(path, "sections data, model, method, train")


def _copy(raw: dict[str, Any]) -> dict[str, Any]:
    import copy

    return copy.deepcopy(raw)


_UNIONS = {"data.spec": "a preset name (synth, cremad, ave, ucf101) or a mapping {preset: NAME, <spec keys>}"}
