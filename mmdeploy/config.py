"""One way to read configuration: YAML (numbers as people write them: `1e-4`, `1E-4` are floats), dotted
`--set key=value` overrides, and pydantic models whose errors become one line naming the file, the dotted
key and what to write instead. Recipes (mmdeploy/recipe.py), deploy targets (mmdeploy/export.py) and the
ClipSpec (mmdeploy/spec.py) are read with these.
"""
from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from mmdeploy.errors import ConfigError

_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")  # 1e-3, 1E-3, 3.e5: floats (YAML 1.1 wants 1.0e-3)


def parse_yaml(text: str) -> Any:
    """yaml.safe_load, except that `1e-3` is a number. Raises ValueError."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _NUMBER, list("-+0123456789."))
    try:
        return yaml.load(text, Loader=Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ValueError(" ".join(str(exc).split())) from None


def read_yaml(path: str | Path, expected: str) -> dict[str, Any]:
    """A YAML file holding a mapping (an empty file is {}); ConfigError naming the file otherwise.
    `expected` says what the mapping holds, for the message."""
    path = Path(path)
    try:
        raw = parse_yaml(path.read_text())
    except ValueError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with {expected}")
    return raw


def apply_override(raw: dict[str, Any], item: str) -> None:
    """`train.optimizer.lr=3e-4` -> raw["train"]["optimizer"]["lr"] = 0.0003 (value parsed as YAML)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {item!r}: expected dotted.key=value, e.g. --set train.epochs=3")
    try:
        value = parse_yaml(text)
    except ValueError as exc:
        raise ConfigError(f"--set {key}: value {text!r} is not valid YAML ({str(exc).splitlines()[0]})") from None
    node = raw
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {'.'.join(parts[:depth + 1])} is a value, not a section")
        node = child
    node[parts[-1]] = value


def describe(exc: ValidationError, root: type | None = None, unions: dict[str, str] | None = None,
             prefix: str = "", top: str = "this file") -> str:
    """The first validation error as `dotted.key: what is wrong` (unknown keys list the allowed ones of
    `root`'s section, `top` naming the top level; `unions` gives the wording for keys whose type is a union)."""
    err = exc.errors(include_url=False)[0]
    loc = [str(p) for p in err["loc"]]
    key = ".".join([prefix, *loc] if prefix else loc)
    for union_key, hint in (unions or {}).items():  # pydantic appends the union member tried; name the key
        if key.startswith(union_key + "."):
            return f"{union_key}: expected {hint}, got {err.get('input')!r}"
    kind = err["type"]
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        parent = key.rpartition(".")[0]
        allowed = ", ".join(allowed_keys(root, ".".join(loc[:-1]))) if root is not None else ""
        return f"{key}: unknown key {loc[-1]!r}" + (f"; allowed keys in {parent or top}: {allowed}"
                                                  if allowed else "")
    if kind == "missing":
        if loc[-1].isdigit():  # a fixed-length list
            return f"{key.rpartition('.')[0]}: value {int(loc[-1]) + 1} of the list is missing"
        return f"{key}: required key missing"
    if kind == "literal_error":
        choices = str(err.get("ctx", {}).get("expected", "")).replace("'", "").replace(" or ", ", ")
        return f"{key}: {err.get('input')!r} is not one of {choices}"
    msg = err["msg"].replace("Input should be", "expected")
    for pydantic_words, ours in (("a valid dictionary", "a mapping"), ("a valid integer", "an integer"),
                                 ("a valid number", "a number"), ("a valid boolean", "true or false")):
        msg = msg.replace(pydantic_words, ours)
    msg = msg.split(" or instance of ")[0]
    head = f"{key}: " if key else ""  # a check over several keys names them itself
    if msg.startswith("Value error, "):
        return head + msg[len("Value error, "):]
    return f"{head}{msg[0].lower()}{msg[1:]}, got {err.get('input')!r}"


def allowed_keys(root: type, dotted: str) -> list[str]:
    """The field names of the section at `dotted` ("" = the top) of a pydantic model or dataclass."""
    cls = root
    for part in filter(None, dotted.split(".")):
        annotation = _fields(cls)[part]
        options = typing.get_args(annotation) or (annotation,)
        cls = next((o for o in options if isinstance(o, type) and _fields(o)), None)
        if cls is None:
            return []
    return list(_fields(cls))


def _fields(cls: type) -> dict[str, Any]:
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        return {name: f.annotation for name, f in cls.model_fields.items()}
    return {name: f.type for name, f in getattr(cls, "__dataclass_fields__", {}).items()}


def validate(model: type, data: Any, where: str, unions: dict[str, str] | None = None, prefix: str = ""):
    """model(**data) validated; ConfigError `where: dotted.key: what is wrong` otherwise."""
    try:
        if isinstance(model, type) and issubclass(model, BaseModel):
            return model.model_validate(data)
        return model(**data)
    except ValidationError as exc:
        raise ConfigError(f"{where}: {describe(exc, model, unions, prefix)}") from None
