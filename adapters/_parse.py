"""Strict readers for untrusted webhook JSON, shared by the adapters.

Platform payloads are stored raw and normalised later by the worker. A body of the
wrong shape must mark its inbox row failed with a reason a human can act on, so every
reader here either returns a value of the expected type or raises
``NormalizationError`` naming the field (``line_items[2].price: not a number``);
``KeyError``/``TypeError`` never escape. Missing and ``null`` are treated alike.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, ParamSpec, TypeVar

from pydantic import ValidationError

from connector.errors import NormalizationError

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
_INT_RE = re.compile(r"-?\d+")


def _path(where: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{where}[{key}]"
    return f"{where}.{key}" if where else key


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(type(value), type(value).__name__)


def fail(where: str, reason: str) -> NormalizationError:
    return NormalizationError(f"{where}: {reason}" if where else reason)


def as_object(value: Any, where: str) -> dict[str, Any]:
    """The body itself (or any value) must be a JSON object."""
    if not isinstance(value, Mapping):
        raise fail(where or "body", f"expected an object, got {_kind(value)}")
    return dict(value)


def get_obj(d: Mapping[str, Any], key: str, where: str = "") -> dict[str, Any] | None:
    value = d.get(key)
    if value is None:
        return None
    return as_object(value, _path(where, key))


def get_list(d: Mapping[str, Any], key: str, where: str = "") -> list[Any]:
    value = d.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise fail(_path(where, key), f"expected a list, got {_kind(value)}")
    return value


def get_objects(d: Mapping[str, Any], key: str, where: str = "") -> list[tuple[str, dict[str, Any]]]:
    """A list of objects, each paired with its path for later error messages."""
    out = []
    for i, item in enumerate(get_list(d, key, where)):
        path = _path(_path(where, key), i)
        out.append((path, as_object(item, path)))
    return out


def get_str(d: Mapping[str, Any], key: str, where: str = "") -> str | None:
    """A string; blank strings count as absent (WooCommerce sends ``""`` for unset fields)."""
    value = d.get(key)
    if value is not None and not isinstance(value, str):
        raise fail(_path(where, key), f"expected a string, got {_kind(value)}")
    if value is None or not value.strip():
        return None
    return value


def get_id(d: Mapping[str, Any], key: str, where: str = "", *, zero_is_none: bool = False) -> str | None:
    """A platform id (integer or string) as a string; ``0`` means "none" where ``zero_is_none``."""
    value = d.get(key)
    if isinstance(value, bool) or (value is not None and not isinstance(value, (int, str))):
        raise fail(_path(where, key), f"expected an id, got {_kind(value)}")
    if isinstance(value, str):
        value = value.strip() or None
    if value is not None and zero_is_none and str(value) == "0":
        value = None
    return None if value is None else str(value)


def get_bool(d: Mapping[str, Any], key: str, where: str = "", *, default: bool = False) -> bool:
    value = d.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise fail(_path(where, key), f"expected true/false, got {_kind(value)}")
    return value


def kept_quantity(line: Mapping[str, Any], current: str, original: str, where: str = "") -> int | None:
    """A line's quantity after removals (``current``: Shopify's current quantity, REST or GraphQL
    name); None for a line at 0 (an order edit took it out, or it was refunded and restocked),
    which is no purchase. Without it (a checkout's line, an older payload) the ``original`` counts."""
    quantity = get_int(line, current, where)
    if quantity is None:
        return get_int(line, original, where, default=1)
    return quantity if quantity > 0 else None


def get_int(d: Mapping[str, Any], key: str, where: str = "", *, default: int | None = None) -> int | None:
    """An integer, also accepted as a digit string (Meta writes numbers as strings)."""
    value = d.get(key)
    if value is None:
        return default
    if isinstance(value, bool):
        raise fail(_path(where, key), "expected an integer, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _INT_RE.fullmatch(value.strip()):
        return int(value.strip())
    raise fail(_path(where, key), f"not an integer: {value!r}"[:120])


def get_decimal(d: Mapping[str, Any], key: str, where: str = "") -> Decimal | None:
    """Money as ``Decimal`` via ``str`` so a float like ``12.1`` stays ``12.1``."""
    value = d.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise fail(_path(where, key), f"expected a number, got {_kind(value)}")
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise fail(_path(where, key), f"not a number: {value!r}"[:120]) from None
    if not number.is_finite():
        raise fail(_path(where, key), f"not a finite number: {value!r}")
    return number


def get_datetime(d: Mapping[str, Any], key: str, where: str = "") -> datetime | None:
    """An ISO-8601 timestamp as an aware UTC datetime; a naive one is taken as UTC.

    WooCommerce's ``*_gmt`` fields are naive UTC; Shopify's carry an offset.
    """
    value = d.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise fail(_path(where, key), f"expected a timestamp string, got {_kind(value)}")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise fail(_path(where, key), f"unparseable timestamp {value!r}"[:120]) from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


def get_unix_time(d: Mapping[str, Any], key: str, where: str = "") -> datetime | None:
    """Unix seconds (int or digit string, as Meta sends them) as an aware UTC datetime."""
    seconds = get_int(d, key, where)
    if seconds is None:
        return None
    try:
        return datetime.fromtimestamp(seconds, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        raise fail(_path(where, key), f"timestamp out of range: {seconds}") from None


def required(value: T | None, where: str, key: str) -> T:
    """A getter's result that must be present: ``required(get_str(o, "name", w), w, "name")``."""
    if value is None:
        raise fail(_path(where, key), "missing")
    return value


def req_obj(d: Mapping[str, Any], key: str, where: str = "") -> dict[str, Any]:
    return required(get_obj(d, key, where), where, key)


def req_str(d: Mapping[str, Any], key: str, where: str = "") -> str:
    return required(get_str(d, key, where), where, key)


def req_id(d: Mapping[str, Any], key: str, where: str = "") -> str:
    return required(get_id(d, key, where), where, key)


def req_decimal(d: Mapping[str, Any], key: str, where: str = "") -> Decimal:
    return required(get_decimal(d, key, where), where, key)


def req_datetime(d: Mapping[str, Any], key: str, where: str = "") -> datetime:
    return required(get_datetime(d, key, where), where, key)


def req_unix_time(d: Mapping[str, Any], key: str, where: str = "") -> datetime:
    return required(get_unix_time(d, key, where), where, key)


def first_str(*values: str | None) -> str | None:
    """The first value that is a non-blank string."""
    for value in values:
        if value is not None and value.strip():
            return value
    return None


def guard(platform: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Last line of defence: a shape the readers did not foresee still becomes a
    ``NormalizationError`` (the row is marked failed) instead of crashing the worker."""

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return fn(*args, **kwargs)
            except NormalizationError:
                raise
            except ValidationError as exc:
                err = exc.errors(include_url=False, include_input=False)[0]
                loc = ".".join(str(p) for p in err["loc"]) or exc.title
                raise NormalizationError(f"{platform}: invalid {loc}: {err['msg']}") from None
            except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
                raise NormalizationError(f"{platform}: unexpected payload shape ({type(exc).__name__}: {exc})"[:200]) from None

        return wrapper

    return decorate
