"""Where a key path (``stores[2].journeys.cod_confirmation.reminder_hours``) is written in a TOML file.

``tomllib`` keeps no positions, and a problem in the tenth ``[[stores]]`` table is hard to find by
counting; ``check-config`` names the line of each problem's setting, or of the nearest table or key
above it that is written (a missing key: its table's header). A plain line scan, not a parser: the
file has parsed already, so only headers and ``key = value`` lines matter; anything it cannot place
gets no line, never a wrong one for a key that is written.
"""

from __future__ import annotations

import re

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"""^\s*((?:[A-Za-z0-9_-]+|"[^"\\]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"\\]*"|'[^']*'))*)\s*=""")
_PART = re.compile(r"""[A-Za-z0-9_-]+|"[^"\\]*"|'[^']*'""")


def _parts(dotted: str) -> list[str]:
    return [p[1:-1] if p[0] in "\"'" else p for p in _PART.findall(dotted)]


def _toml_lines(text: str) -> list[str]:
    """The file's lines as TOML counts them: only LF (or CRLF) ends one. ``str.splitlines`` also breaks
    on U+2028, U+2029, U+0085, form feeds..., which are legal inside a string or comment, and would
    shift every later line number."""
    return [line.removesuffix("\r") for line in text.split("\n")]


def key_lines(text: str) -> dict[str, int]:
    """Every table header and ``key = value`` line, by the key path problems are named with (1-based lines)."""
    lines: dict[str, int] = {}
    arrays: dict[str, int] = {}  # an array of tables' path (its parents' indexes in it) -> its last index
    table = ""
    quote: str | None = None  # inside a multi-line string that began on an earlier line
    for number, line in enumerate(_toml_lines(text), 1):
        if quote is not None:
            if line.count(quote) % 2:
                quote = None
            continue
        header = _HEADER.match(line)
        if header is not None:
            path = ""
            parts = _parts(header.group(2))
            for i, part in enumerate(parts):
                path = f"{path}.{part}" if path else part
                if i < len(parts) - 1 and path in arrays:
                    path += f"[{arrays[path]}]"
            if header.group(1) == "[[":
                arrays[path] = arrays.get(path, -1) + 1
                path += f"[{arrays[path]}]"
            table = path
            lines.setdefault(table, number)
            continue
        key = _KEY.match(line)
        if key is not None:
            path = ".".join([table, *_parts(key.group(1))] if table else _parts(key.group(1)))
            lines.setdefault(path, number)
            rest = line[key.end():]
            for opener in ('"""', "'''"):
                if rest.count(opener) % 2:
                    quote = opener
    return lines


def line_of(path: str, lines: dict[str, int]) -> int | None:
    """The line of ``path``, else of the nearest key or table above it that is written."""
    while path:
        if path in lines:
            return lines[path]
        cut = max(path.rfind("."), path.rfind("["))
        if cut <= 0:
            return None
        path = path[:cut]
    return None


def problem_lines(problems: list[str], text: str) -> list[int | None]:
    """The line each ``path: message`` problem's setting is written at (None: nowhere to point)."""
    lines = key_lines(text)
    out: list[int | None] = []
    for problem in problems:
        path = problem.split(": ", 1)[0] if ": " in problem else ""
        out.append(line_of(path, lines) if path and " " not in path else None)
    return out


__all__ = ["key_lines", "line_of", "problem_lines"]
