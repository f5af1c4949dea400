"""Validation of the project's TOML files (studies, calibration plans) by pydantic models, with errors
that name the file, the key, the value and what is allowed."""
from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError


class StudyError(ValueError):
    """A study file that cannot be run; the message names the file, key, value and what is allowed."""


class FileModel(BaseModel):
    """A file's schema: unknown keys are errors."""
    model_config = ConfigDict(extra="forbid", frozen=True)


def validated(model: type[FileModel], raw: dict, path: Path) -> FileModel:
    """raw (a parsed TOML file) as `model`, or StudyError '<path>: <key>: <what is wrong>'."""
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        loc = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in first["loc"]).lstrip(".")
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = f"unknown key; allowed: {', '.join(sorted(_fields_at(model, first['loc'][:-1])))}"
        elif first["type"] == "missing":
            message = "missing (required: " + ", ".join(
                name for name, f in _model_at(model, first["loc"][:-1]).model_fields.items() if f.is_required()) + ")"
        elif first["type"] != "value_error":
            message += f" (got {first.get('input')!r})"
        key, sep, rest = message.partition(": ")  # a model-level check that names its field
        if sep and " " not in key and re.split(r"[.\[]", key)[0] in _fields_at(model, first["loc"]):
            loc, message = f"{loc}.{key}" if loc else key, rest
        raise StudyError(f"{path}: {loc or 'file'}: {message}") from None


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel]:
    for part in loc:
        if isinstance(part, int) or part not in model.model_fields:  # a list index or a dict key
            continue
        annotation = model.model_fields[part].annotation
        inner = getattr(annotation, "__args__", (annotation,))
        model = next(a for a in inner if isinstance(a, type) and issubclass(a, BaseModel))
    return model


def _fields_at(model: type[BaseModel], loc: tuple) -> set[str]:
    try:
        return set(_model_at(model, loc).model_fields)
    except (KeyError, StopIteration):
        return set()
