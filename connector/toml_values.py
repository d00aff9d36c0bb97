"""Numbers and booleans as TOML writes them.

TOML has integers, floats and booleans of its own, so a quoted one (``port = "8080"``,
``enabled = "false"``) is a typo; pydantic would turn it into a number or a boolean without a
word (``"false"`` as a string reads as False, ``"no"`` too, and ``enabled = 0`` as False). Every
settings model checks its fields with ``scalar_problem`` before pydantic converts them.

A value read from the environment (``"env:NAME"``) is text by nature: it is marked ``FromEnv``
and converted as before, so ``port = "env:PORT"`` keeps working.
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Union

from pydantic import BaseModel, ValidationInfo


class FromEnv(str):
    """Text read from an environment variable (``config._resolve_env``): may stand for a number."""

    __slots__ = ()


def _members(annotation: Any) -> tuple[Any, ...]:
    """The types a field's annotation allows (a union's members; ``Annotated`` unwrapped)."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _members(typing.get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return tuple(m for arg in typing.get_args(annotation) for m in _members(arg))
    return (annotation,)


def _scalars(annotation: Any) -> set[type]:
    return {t for t in _members(annotation) if t in (int, float, bool)}


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def scalar_problem(value: Any, annotation: Any) -> str | None:
    """Why ``value`` (as read from TOML) does not fit a numeric or boolean field, or None.

    Checks the value itself, each item of a list field (``tuple[float, ...]``), and each entry of a
    table whose entries are numbers (``dict[str, float]``: ``{ INR = "20000" }`` is the same typo);
    a table of text is left to the field's own validator (a reorder cycle "30d" names a number)."""
    if isinstance(value, FromEnv):
        return None
    if isinstance(value, dict):
        for member in _members(annotation):
            if typing.get_origin(member) is dict:
                args = typing.get_args(member)
                entry_kinds = _scalars(args[1]) if len(args) == 2 else set()
                if entry_kinds:
                    for key, entry in value.items():
                        problem = None if isinstance(entry, FromEnv) else _mismatch(entry, entry_kinds)
                        if problem:
                            return f"entry {key} {problem}"
        return None
    kinds = _scalars(annotation)
    if kinds:
        return _mismatch(value, kinds)
    if isinstance(value, (list, tuple)):
        for member in _members(annotation):
            if typing.get_origin(member) in (tuple, list):
                args = [a for a in typing.get_args(member) if a is not Ellipsis]
                item_kinds = _scalars(args[0]) if len(args) == 1 else set()
                if item_kinds:
                    for i, item in enumerate(value):
                        problem = None if isinstance(item, FromEnv) else _mismatch(item, item_kinds)
                        if problem:
                            return f"item {i + 1} {problem}"
    return None


def _mismatch(value: Any, kinds: set[type]) -> str | None:
    if isinstance(value, str):
        if kinds == {bool}:
            return f"is the text {value!r}: write true or false, without quotes"
        return f"is the text {value!r}: write the number without quotes"
    if isinstance(value, bool) and bool not in kinds:
        return f"must be a number, not {_shown(value)}"
    if isinstance(value, (int, float)) and not isinstance(value, bool) and kinds == {bool}:
        return f"must be true or false, not {_shown(value)}"
    return None


def checked_scalar(model: type[BaseModel], value: Any, info: ValidationInfo) -> Any:
    """``value`` of the field ``info`` names, refused when TOML wrote it as the wrong kind (a
    settings model's ``field_validator("*", mode="before")``)."""
    field = model.model_fields.get(info.field_name or "")
    problem = scalar_problem(value, field.annotation) if field is not None else None
    if problem:
        raise ValueError(problem)
    return str(value) if isinstance(value, FromEnv) else value
