"""The pieces every config section is made of: a described field, a frozen model, the error bad input raises."""
from __future__ import annotations

from typing import Any, Literal, get_origin

from pydantic import BaseModel, ConfigDict, Field


class ConfigError(ValueError):
    """Bad config input; the message names the key, the value and what is allowed."""


def F(default: Any, doc: str, **constraints: Any) -> Any:
    """A field with its one-line description (shown by `wb train --help`) and constraints."""
    return Field(default, description=doc, **constraints)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


_BOUNDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def describe_fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted key, default, description with allowed values and bounds) for every field of a config model."""
    rows = []
    for name, field in model.model_fields.items():
        if isinstance(field.default, BaseModel):
            rows += describe_fields(type(field.default), f"{prefix}{name}.")
            continue
        choices = getattr(field.annotation, "__args__", ())
        allowed = f" [{' | '.join(map(str, choices))}]" if get_origin(field.annotation) is Literal else ""
        bounds = ", ".join(f"{symbol} {getattr(m, op)}" for m in field.metadata
                           for op, symbol in _BOUNDS.items() if hasattr(m, op))
        rows.append((f"{prefix}{name}", field.default, f"{field.description}{allowed}{f' ({bounds})' if bounds else ''}"))
    return rows
