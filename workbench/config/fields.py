"""The pieces every config section is made of: a described field, a frozen model, the error bad input raises."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ConfigError(ValueError):
    """Bad config input; the message names the key, the value and what is allowed."""


def F(default: Any, doc: str, **constraints: Any) -> Any:
    """A field with its one-line description (shown by `wb train --help`) and constraints."""
    return Field(default, description=doc, **constraints)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
