"""App factory for uvicorn (one app per worker process, config from STORELOOP_CONFIG)."""

from __future__ import annotations

import os

from starlette.applications import Starlette

from connector.config import load_settings
from connector.logs import configure_logging
from connector.web.app import create_app


def app() -> Starlette:
    settings = load_settings(os.environ["STORELOOP_CONFIG"])
    configure_logging(settings.server.log_level)
    return create_app(settings, run_worker=os.environ.get("STORELOOP_RUN_WORKER", "1") == "1",
                      ingest_here=os.environ.get("STORELOOP_WORKERS", "1") == "1")
