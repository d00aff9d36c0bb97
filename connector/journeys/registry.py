"""Journeys are found through the ``storeloop.journeys`` entry-point group.

A third party adds a journey by publishing a package with
``[project.entry-points."storeloop.journeys"] my_journey = "pkg.module:MyJourney"``;
no fork needed. The built-in ones are registered the same way in our pyproject.toml.

A plugin that cannot be used (it fails to import or to start, or is no journey: no
``name``, ``config_model``, ``subject`` or ``decide``) is logged and left out, and the rest
run. A name is a store's config key, so it must be unique: a plugin that takes a built-in
journey's name, or another plugin's, is refused (the built-in one, or the first by package
and entry-point name, is kept), never silently swapped in.
"""

from __future__ import annotations

import functools
import logging
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from connector.journeys.engine import JourneyConfig

log = logging.getLogger("storeloop.journeys")
GROUP = "storeloop.journeys"
OURS = "storeloop"  # the distribution the built-in journeys come with


def _package(ep: EntryPoint) -> str:
    return ep.dist.name if ep.dist is not None else "?"


def _problem(journey: Any) -> str | None:
    """Why a loaded object is no journey (None: it is one)."""
    name = getattr(journey, "name", None)
    if not isinstance(name, str) or not name:
        return "it has no name"
    config = getattr(journey, "config_model", None)
    if not (isinstance(config, type) and issubclass(config, JourneyConfig)):
        return "its config_model is not a JourneyConfig subclass"
    missing = [m for m in ("subject", "decide") if not callable(getattr(journey, m, None))]
    return f"it has no {' or '.join(missing)}" if missing else None


@functools.cache
def journeys() -> dict[str, Any]:
    found: dict[str, Any] = {}
    source: dict[str, str] = {}
    # ours first, then plugins in a stable order: which of two same-named plugins wins never depends on install order
    for ep in sorted(entry_points(group=GROUP), key=lambda e: (_package(e) != OURS, _package(e), e.name)):
        where = f"{ep.name} = {ep.value!r} ({_package(ep)})"
        try:
            journey = ep.load()()
        except Exception as exc:  # a broken plugin must not take the connector down
            log.error("journey plugin %s failed to load: %s: %s", where, exc.__class__.__name__, exc)
            continue
        problem = _problem(journey)
        if problem is not None:
            log.error("journey plugin %s left out: %s", where, problem)
            continue
        if journey.name in found:
            log.error("journey plugin %s left out: the journey name %r is taken by %s", where, journey.name, source[journey.name])
            continue
        found[journey.name] = journey
        source[journey.name] = where
    return found
