"""The dashboard in a real browser: headless Chromium (Debian's ``chromium`` package, which
``.ci/run`` installs) driven by Playwright against the real app served by uvicorn on
127.0.0.1. Pages must load with no console error (a CSP violation is one), the token is
required, and screenshots of the overview and a customer timeline are written to
``artifacts/screenshots/`` (or ``$STORELOOP_SCREENSHOTS``)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from connector.runtime import Runtime
from connector.sandbox.whatsapp import SandboxServer
from connector.storage.db import Database
from connector.web.app import create_app
from connector.web.auth import COOKIE
from tests.conftest import SECRETS
from tests.test_dashboard import XSS_NAME, XSS_PHONE, add_hostile_customer
from tests.test_reports import _settings, build_week

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = Path(os.environ.get("STORELOOP_SCREENSHOTS") or Path(__file__).resolve().parents[1] / "artifacts" / "screenshots")


def _browser_or_skip():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"DASHBOARD BROWSER TEST SKIPPED: no Chromium at {CHROMIUM}; install Debian's package "
                    "(apt-get install -y chromium, as .ci/run does) to run it")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("DASHBOARD BROWSER TEST SKIPPED: the playwright package is missing; pip install -e '.[test]'")
    return sync_playwright


@pytest.fixture
def served(tmp_path, sqlite_template):
    path = tmp_path / "storeloop.db"
    shutil.copy(sqlite_template, path)
    settings = _settings(f"sqlite:///{path}")
    runtime = Runtime(settings, Database.from_url(settings.database.url), run_worker=False)
    with SandboxServer(create_app(settings, runtime)) as server:  # uvicorn on a free 127.0.0.1 port, lifespan and all
        sid = runtime.store_ids["shop-a"]
        build_week(runtime.db, sid)
        add_hostile_customer(runtime.db, sid)
        yield server.url


def test_dashboard_in_headless_chromium(served, capsys):
    sync_playwright = _browser_or_skip()
    started = time.monotonic()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    overview_url = f"{served}/dashboard/shop-a?week=2026-W47"

    def watch(page) -> None:
        page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}") if msg.type in ("error", "warning") else None)
        page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
        page.on("dialog", lambda dialog: (problems.append(f"dialog: {dialog.message}"), dialog.dismiss()))
        page.on("requestfailed", lambda req: problems.append(f"request failed: {req.url}"))

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1360, "height": 900})
            page = context.new_page()
            watch(page)
            # no session: the login form, and none of the store's figures
            page.goto(overview_url)
            assert page.locator("#login").is_visible() and "Biggest leak" not in page.content()
            page.fill("#token", SECRETS["admin"])
            page.click("#login button[type=submit]")
            page.wait_for_url(overview_url)
            # the overview with the hand-built week's figures
            assert page.locator("#stage-conversion .kpi").inner_text() == "50%"
            assert "Biggest leak: Conversion" in page.locator("#leak").inner_text()
            assert page.locator("#handoffs tbody tr").count() == 4 and "Priya" in page.locator("#handoffs").inner_text()
            assert page.locator("#funnels svg").count() == 6 and page.locator("#lift svg").count() == 3
            assert page.locator("#stages svg").count() == 5
            assert page.locator("#stages svg").first.bounding_box()["width"] > 100  # drawn, not collapsed
            cookie = next(c for c in context.cookies() if c["name"] == COOKIE)
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/dashboard"
            assert page.evaluate("document.cookie") == ""  # no script can read the session
            page.screenshot(path=str(SCREENSHOTS / "dashboard-overview.png"), full_page=True)

            # the timeline search, through the header's form
            page.fill("#phone", XSS_PHONE)
            page.click("form[action$='/customer'] button[type=submit]")
            page.wait_for_selector("#timeline")
            assert page.locator("#customer").inner_text().startswith(f"{XSS_NAME} Kumar")  # shown as text, never run
            timeline = page.locator("#timeline li")
            assert timeline.count() == 2 and "Your order #1001 is on its way" in timeline.first.inner_text()
            page.screenshot(path=str(SCREENSHOTS / "dashboard-customer-timeline.png"), full_page=True)

            # a fresh browser has no session: the token is required again
            stranger = browser.new_context()
            other = stranger.new_page()
            watch(other)
            other.goto(overview_url)
            assert other.locator("#login").is_visible() and "Priya" not in other.content()
            stranger.close()

            # logging out ends this browser's session
            page.goto(overview_url)
            page.click("header form[action='/dashboard/logout'] button")
            page.wait_for_selector("#login")
            assert not [c for c in context.cookies() if c["name"] == COOKIE]
        finally:
            browser.close()

    assert problems == [], problems
    for name in ("dashboard-overview.png", "dashboard-customer-timeline.png"):
        assert (SCREENSHOTS / name).stat().st_size > 10_000
    with capsys.disabled():
        print(f"\ndashboard screenshots ({time.monotonic() - started:.1f} s in Chromium): {SCREENSHOTS}")
