"""The JSON codec of every JSON column and stored body: orjson, with the stdlib as fallback.

Why: the processor writes each inbox row's normalised events and every journey run's state
as JSON, and reads stored webhook bodies back; with the stdlib's encoder and decoder that
was about a tenth of processing time (bench/pipeline.py). orjson is 5-10x faster. It
refuses integers over 64 bits, which fall back to the stdlib, so nothing that was storable
before is refused now; NaN is written as null (the stdlib's ``NaN`` is not JSON, and
PostgreSQL refuses it). What is stored reads back the same; only the text differs (no
spaces, UTF-8 instead of ``\\uXXXX``), and nothing queries the text of a JSON column.

A lone UTF-16 surrogate (a ``\\ud800`` escape with no partner) is replaced with U+FFFD as
it is read: it is valid JSON that no database stores as text (nor UTF-8 encodes), and one in
a customer's email used to cost the whole order. orjson refuses it, so the cost falls on the
stdlib fallback alone.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import orjson

log = logging.getLogger("storeloop.json")

_OPTIONS = orjson.OPT_NON_STR_KEYS  # the stdlib turns int keys into strings; so does this


def dumps(value: Any) -> str:
    """``value`` as JSON text (what a JSON column stores)."""
    try:
        return orjson.dumps(value, option=_OPTIONS).decode("utf-8")
    except TypeError:  # an integer over 64 bits, or a type neither encoder takes (then json raises)
        return json.dumps(value)


def loads(text: str | bytes | bytearray) -> Any:
    """Parse JSON text or bytes; ValueError (as ``json.loads``) for anything that is not JSON.
    A lone UTF-16 surrogate in a string is replaced with U+FFFD (logged)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        # what orjson refuses but the stdlib reads (NaN, UTF-16, a lone surrogate), or its error
        return _surrogates_replaced(json.loads(text), text)


def loads_strict(text: str | bytes | bytearray) -> Any:
    """As ``loads`` for what a platform or an engineer sends us: anything orjson refuses stays
    refused with orjson's error (NaN, a document nested too deep), except a lone UTF-16
    surrogate, which is replaced with U+FFFD. Why: a real order must not be refused for one
    bad character in a name, and the platform's retries would only be refused again."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        refused = exc
    if _may_hold_surrogate(text):
        try:
            return _surrogates_replaced(json.loads(text, parse_constant=_no_constant), text)
        except (ValueError, RecursionError):
            pass
    raise refused


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# A surrogate's escape (\\ud800-\\udfff), or one encoded as UTF-8 would (which the stdlib decodes
# with surrogatepass); a body without either is not walked.
_SURROGATE_BYTES = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")
_SURROGATE_TEXT = re.compile(r"\\u[dD][89a-fA-F]|[\ud800-\udfff]")
_LONE = re.compile("[\ud800-\udfff]")  # in a parsed str every surrogate is lone: the stdlib joins pairs
_REPLACEMENT = "\ufffd"
_PATHS_LOGGED = 5


def _may_hold_surrogate(text: str | bytes | bytearray) -> bool:
    return (_SURROGATE_TEXT if isinstance(text, str) else _SURROGATE_BYTES).search(text) is not None


def _surrogates_replaced(value: Any, text: str | bytes | bytearray) -> Any:
    """``value`` with each lone surrogate replaced, and a warning naming where (field paths, no values)."""
    if not _may_hold_surrogate(text):
        return value
    paths: list[str] = []
    value = _replaced(value, "", paths)
    if paths:
        log.warning("a lone UTF-16 surrogate replaced with U+FFFD",
                    extra={"fields": ",".join(paths[:_PATHS_LOGGED]), "count": len(paths)})
    return value


def _replaced(value: Any, path: str, paths: list[str]) -> Any:
    if isinstance(value, str):
        if _LONE.search(value) is None:
            return value
        paths.append(path or "(document)")
        return _LONE.sub(_REPLACEMENT, value)
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            key = _replaced(k, _field(path, "(key)"), paths) if isinstance(k, str) else k
            out[key] = _replaced(v, _field(path, str(key)[:40]), paths)
        return out
    if isinstance(value, list):
        return [_replaced(v, f"{path}[{i}]", paths) for i, v in enumerate(value)]
    return value


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


def _field(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name
