"""The JSON codec of every JSON column and stored body: orjson, with the stdlib as fallback.

Why: the processor writes each inbox row's normalised events and every journey run's state
as JSON, and reads stored webhook bodies back; with the stdlib's encoder and decoder that
was about a tenth of processing time (bench/pipeline.py). orjson is 5-10x faster. It
refuses integers over 64 bits, which fall back to the stdlib, so nothing that was storable
before is refused now; NaN is written as null (the stdlib's ``NaN`` is not JSON, and
PostgreSQL refuses it). What is stored reads back the same; only the text differs (no
spaces, UTF-8 instead of ``\\uXXXX``), and nothing queries the text of a JSON column.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

_OPTIONS = orjson.OPT_NON_STR_KEYS  # the stdlib turns int keys into strings; so does this


def dumps(value: Any) -> str:
    """``value`` as JSON text (what a JSON column stores)."""
    try:
        return orjson.dumps(value, option=_OPTIONS).decode("utf-8")
    except TypeError:  # an integer over 64 bits, or a type neither encoder takes (then json raises)
        return json.dumps(value)


def loads(text: str | bytes | bytearray) -> Any:
    """Parse JSON text or bytes; ValueError (as ``json.loads``) for anything that is not JSON."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)  # what orjson refuses but the stdlib reads (NaN, UTF-16), or its error


_NUL = "\x00"


def loads_body(text: bytes) -> Any:
    """A stored webhook body, as ``loads``, with every NUL character taken out of its strings.

    PostgreSQL refuses NUL in text, so one ``\\u0000`` in a customer's email failed every
    statement that named it; no platform means one. Looking for the escape costs a body
    without a backslash (most of them) one ``memchr``: searching 6 KB for the escape itself
    took 2.8 us, a seventh of the body's parse."""
    value = loads(text)
    return _without_nul(value) if b"\\" in text and b"\\u0000" in text else value


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace(_NUL, "")
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    return value
