"""Journeys are found through the ``storeloop.journeys`` entry-point group.

A third party adds a journey by publishing a package with
``[project.entry-points."storeloop.journeys"] my_journey = "pkg.module:MyJourney"``;
no fork needed. The built-in ones are registered the same way in our pyproject.toml.
"""

from __future__ import annotations

import functools
import logging
from importlib.metadata import entry_points
from typing import Any

log = logging.getLogger("storeloop.journeys")
GROUP = "storeloop.journeys"


@functools.cache
def journeys() -> dict[str, Any]:
    found: dict[str, Any] = {}
    for ep in entry_points(group=GROUP):
        try:
            cls = ep.load()
        except Exception as exc:  # a broken plugin must not take the connector down
            log.error("journey plugin %s failed to load: %s", ep.name, exc)
            continue
        found[cls.name] = cls()
    return found
