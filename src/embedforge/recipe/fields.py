"""The building blocks of the recipe file's schema: its error type, path fields (relative to the
recipe file; ``pkg:NAME/`` and ``${VAR}`` expanded), the model field (a ModelSpec) and the base of
every section (unknown keys are errors)."""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationInfo

from embedforge.spec import ModelSpec


class RecipeError(ValueError):
    """A recipe that cannot be read, or a stage that failed; the message names the stage or key and the file."""


# ---------------------------------------------------------------------------------------- paths
_HUB_ID = re.compile(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+")


def _base_dir(info: ValidationInfo) -> Path:
    ctx = info.context or {}
    return Path(ctx.get("base_dir", "."))


def expand_path(value: str, base_dir: Path) -> Path:
    """``pkg:NAME/rest`` -> the package's directory / rest; ``${VAR}`` expanded; ``~`` expanded;
    relative paths joined to ``base_dir``."""
    text = str(value)
    if text.startswith("pkg:"):
        name, _, rest = text[4:].partition("/")
        spec = importlib.util.find_spec(name) if name else None
        if spec is None or not spec.submodule_search_locations:
            raise ValueError(f"{text!r}: no installed Python package {name!r}")
        return Path(list(spec.submodule_search_locations)[0]) / rest
    expanded = os.path.expandvars(text)
    if "${" in expanded or re.search(r"\$[A-Za-z_]", expanded):
        raise ValueError(f"{text!r} names an environment variable that is not set")
    path = Path(expanded).expanduser()
    return Path(os.path.normpath(path if path.is_absolute() else base_dir / path))


def _path(value: Any, info: ValidationInfo) -> Any:
    if value is None or isinstance(value, Path):
        return value
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a path, got {value!r}")
    return expand_path(value, _base_dir(info))


RecipePath = Annotated[Path, BeforeValidator(_path)]


def _model_spec(value: Any, info: ValidationInfo) -> Any:
    """A model given as a string (directory or Hub id) or as a mapping of ModelSpec fields."""
    if isinstance(value, ModelSpec):
        return value
    data = {"model": value} if isinstance(value, str) else value
    if not isinstance(data, dict):
        raise ValueError(
            f"a model is a directory, a Hub id or a mapping of {list(ModelSpec.__dataclass_fields__)}"
        )
    data = dict(data)
    name = data.get("model")
    if isinstance(name, str):
        local = expand_path(name, _base_dir(info))
        looks_like_hub = _HUB_ID.fullmatch(name) is not None and not name.startswith(".")
        if name.startswith("pkg:") or local.exists() or not looks_like_hub:
            data["model"] = str(local)
    return ModelSpec.from_dict(data)  # names unknown fields and the allowed ones


SpecField = Annotated[ModelSpec, BeforeValidator(_model_spec)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_enum_values=False)


__all__ = ["RecipeError", "RecipePath", "SpecField", "expand_path"]
