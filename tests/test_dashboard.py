"""The HTML dashboard over HTTP: login, sessions, rate limit, headers, escaping, and the figures
of the hand-built week from test_reports (SQLite and PostgreSQL)."""

from __future__ import annotations

import logging
import re
import time
from datetime import datetime, timedelta, timezone

import pytest

from connector.reports import parse_week
from connector.storage import models as m
from connector.web import auth
from tests.conftest import SECRETS
from tests.helpers import running_app
from tests.test_reports import MON, TZ, _settings, build_week

TOKEN = SECRETS["admin"]
XSS_NAME = "<script>alert(1)</script>"
XSS_PHONE = "+919812345678"
OVERVIEW = "/dashboard/shop-a?week=2026-W47"
HEADERS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}


def add_hostile_customer(db, store_id: int) -> None:
    """A customer whose name, message and hand-off reason are HTML: all must come out as text."""
    at = MON + timedelta(days=2)
    with db.engine.begin() as conn:
        cid = conn.execute(m.Contact.__table__.insert().values(
            store_id=store_id, phone_key=XSS_PHONE, phone_e164=XSS_PHONE, first_name=XSS_NAME, last_name="Kumar",
            consent_marketing="granted", consent_utility="granted", created_at=MON - timedelta(days=30), updated_at=at,
        )).inserted_primary_key[0]
        conn.execute(m.Message.__table__.insert().values(
            store_id=store_id, contact_id=cid, direction="in", kind="text", body='where is my order? <img src=x onerror="alert(2)">',
            occurred_at=at))
        conn.execute(m.Message.__table__.insert().values(
            store_id=store_id, contact_id=cid, direction="out", kind="template", body="Your order #1001 is on its way", status="read",
            occurred_at=at + timedelta(minutes=5)))
        conn.execute(m.Order.__table__.insert().values(
            store_id=store_id, external_id="1001", name="#1001", contact_id=cid, payment_state="pending", fulfillment_state="fulfilled",
            is_cod=True, total="1299.00", currency="INR", placed_at=at - timedelta(days=3), source_updated_at=at))
        conn.execute(m.JourneyRun.__table__.insert().values(
            store_id=store_id, journey="order_confirmation", subject="order:1001", contact_id=cid, status="finished", state={},
            holdout=False, started_at=at - timedelta(days=3), updated_at=at))
        conn.execute(m.Handoff.__table__.insert().values(
            store_id=store_id, contact_id=cid, key="hostile", reason="customer wrote: <b onmouseover=alert(3)>help</b>",
            stage="post_purchase", owner="Priya", status="open", opened_at=at, context={}))


def login(client, token: str = TOKEN, next_url: str = "/dashboard"):
    return client.post("/dashboard/login", data={"token": token, "next": next_url}, follow_redirects=False)


def assert_secure_headers(response) -> None:
    for name, value in HEADERS.items():
        assert response.headers.get(name) == value, (name, response.headers.get(name))
    csp = response.headers["content-security-policy"]
    for directive in ("default-src 'none'", "img-src 'self' data:", "form-action 'self'", "frame-ancestors 'none'"):
        assert directive in csp
    nonce = re.search(r"style-src 'nonce-([^']+)'", csp).group(1)
    if response.headers.get("content-type", "").startswith("text/html") and response.text:
        assert f'<style nonce="{nonce}">' in response.text  # the one inline style sheet is the allowed one


@pytest.fixture
def app_with_week(db_url):
    with running_app(_settings(db_url)) as (client, runtime):
        sid = runtime.store_ids["shop-a"]
        build_week(runtime.db, sid)
        add_hostile_customer(runtime.db, sid)
        yield client, runtime


def test_every_page_asks_for_the_token_first_and_shows_nothing(app_with_week):
    client, _ = app_with_week
    for path in ("/dashboard", OVERVIEW, "/dashboard/shop-a/customer?phone=%2B919812345678", "/dashboard/nope", "/dashboard/login"):
        r = client.get(path, follow_redirects=False)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), path
        assert '<form method="post" action="/dashboard/login">' in r.text and 'name="token"' in r.text
        for leaked in ("Priya", "Ravi", "50%", "Biggest leak", "Kumar", "alert", "<svg"):
            assert leaked not in r.text, (path, leaked)
        assert_secure_headers(r)
    # the form brings the user back where they were going
    assert 'name="next" value="/dashboard/shop-a?week=2026-W47"' in client.get(OVERVIEW).text


def test_wrong_token_is_401_then_429_and_the_token_is_never_logged(app_with_week):
    client, _ = app_with_week
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("storeloop.dashboard")
    logger.addHandler(handler)
    try:
        for _ in range(auth.LOGIN_ATTEMPTS):
            r = login(client, "guess-" + TOKEN[:-1])
            assert r.status_code == 401 and "not the admin token" in r.text and auth.COOKIE not in r.headers.get("set-cookie", "")
            assert_secure_headers(r)
        sixth = login(client, "another-guess")
        assert sixth.status_code == 429 and int(sixth.headers["retry-after"]) > 0 and "Too many failed attempts" in sixth.text
        assert_secure_headers(sixth)
        # while locked out even the right token waits: guessing gains nothing
        assert login(client).status_code == 429
    finally:
        logger.removeHandler(handler)
    assert len([r for r in records if "wrong token" in r.getMessage()]) == auth.LOGIN_ATTEMPTS
    for record in records:
        text = record.getMessage() + " " + " ".join(str(v) for v in record.__dict__.values())
        assert "guess" not in text and TOKEN not in text
    assert records[0].client == "testclient"


def test_limiter_window_and_memory_bound():
    limiter = auth.LoginLimiter(attempts=2, window=60, max_clients=3)
    limiter.failed("a", now=0)
    limiter.failed("a", now=10)
    assert limiter.retry_after("a", now=11) == 49 and limiter.retry_after("b", now=11) == 0
    assert limiter.retry_after("a", now=60.5) == 0  # the first failure aged out
    for client in "bcdef":
        limiter.failed(client, now=70)
    assert len(limiter._failures) <= 3


def test_the_overview_shows_the_known_week(app_with_week):
    client, _ = app_with_week
    r = login(client, next_url=OVERVIEW)
    assert r.status_code == 303 and r.headers["location"] == OVERVIEW
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{auth.COOKIE}=v1.") and "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert "Path=/dashboard" in cookie and f"Max-Age={auth.SESSION_SECONDS}" in cookie and "Secure" not in cookie  # plain HTTP here
    assert_secure_headers(r)

    page = client.get(OVERVIEW)
    assert page.status_code == 200
    assert_secure_headers(page)
    html = page.text
    # stage overview: conversion's recovery rate 50% (4 reminded, 2 recovered), entry's consent 50% against 100%
    conversion = html.split('id="stage-conversion"')[1].split('id="stage-post_purchase"')[0]
    assert '<div class="kpi">50%</div>' in conversion and "Ravi" in conversion and "recovery rate" in conversion
    entry = html.split('id="stage-entry"')[1].split('id="stage-qualification"')[0]
    assert '<div class="kpi">50%</div>' in entry and "last week 100%" in entry and "−50 pp" in entry
    assert '<div class="kpi">40%</div>' in html  # COD confirmation rate: 2 of 5 asked
    # week over week, new contacts by source: this week's counts, last week's, and the change per source
    assert ('<td>by source</td><td class="num">checkout 1, order 1, other 1, whatsapp 1</td><td class="num">whatsapp 1</td>'
            '<td class="num">checkout +1, order +1, other +1, whatsapp +0</td>') in entry
    assert "750.50" in html and "<svg" in html
    # funnels: checkout 6 abandoned -> 4 reminded -> 2 recovered
    assert re.search(r"abandoned</text>.*?>6<", html) and re.search(r"reminded</text>.*?>4<tspan[^>]*> \(67%\)", html)
    # the biggest leak, named with its owner
    assert "Biggest leak: Conversion</strong> — 4 customers lost this week; owner Ravi" in html
    # lift for each journey with a holdout: checkout 50% treated vs 50% holdout, payments, reorders; intervals drawn and written
    assert "lift ±0 pp, 95% interval −53.6 pp to +53.6 pp" in html and "no evidence yet" in html
    assert "lift +16.7 pp, 95% interval −41 pp to +61 pp" in html and "lift +25 pp, 95% interval −32 pp to +65.5 pp" in html
    # message health: opt-outs against the message that preceded them
    health = html.split('id="health"')[1]
    assert re.search(r"<td>reorder.reminder</td><td>reorder_v1</td>.*?<td class=\"num\">1</td></tr>", health.replace("\n", ""))
    assert "Marketing opt-outs this week: 4" in health and "(1 with none)" in health
    # the hand-off queue: Priya's open hand-offs (build_week's and the hostile customer's) and the unassigned one
    queue = html.split('id="handoffs"')[1].split('id="health"')[0]
    assert "4 open: unassigned 1, Priya 2, Ravi 1" in queue and queue.count("<td>Priya</td>") == 2 and "<td>unassigned</td>" in queue
    # nothing external and no script at all
    assert "<script" not in html.lower() and " src=" not in html
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", html)
    # the week selector: another week, and the default (the last complete week)
    older = client.get("/dashboard/shop-a?week=2026-W46")
    assert older.status_code == 200 and "week 2026-W46" in older.text  # 1 of 2 reminded checkouts recovered
    assert "Biggest leak: Conversion</strong> — 1 customer lost this week; owner Ravi" in older.text
    default = parse_week(None, TZ, datetime.now(timezone.utc)).label
    assert f"week {default} (Asia/Kolkata)" in client.get("/dashboard/shop-a").text
    bad = client.get("/dashboard/shop-a?week=2026-47")
    assert bad.status_code == 400 and "ISO week" in bad.text
    assert_secure_headers(bad)
    # the store selector
    assert client.get("/dashboard/shop-b?week=2026-W47").status_code == 200
    assert client.get("/dashboard/nope").status_code == 404
    assert client.get("/dashboard", follow_redirects=False).headers["location"] == "/dashboard/shop-a"


def test_tampered_expired_and_foreign_sessions_are_refused(app_with_week):
    client, _ = app_with_week
    good = auth.issue_session(TOKEN)
    version, expires, nonce, signature = good.split(".")
    forged = [
        f"{version}.{int(expires) + 3600}.{nonce}.{signature}",  # longer life, old signature
        f"{version}.{expires}.{nonce}x.{signature}",
        f"{version}.{expires}.{nonce}.{signature[:-2]}AA",
        auth.issue_session(TOKEN, now=time.time() - auth.SESSION_SECONDS - 1),  # expired
        auth.issue_session("some-other-deployments-token"),
        auth.issue_session(TOKEN, ttl=10 * auth.SESSION_SECONDS),  # validly signed but beyond any session's life
        "", "garbage", good + ".",
    ]
    for value in forged:
        client.cookies.set(auth.COOKIE, value, path="/dashboard")
        r = client.get(OVERVIEW)
        assert r.status_code == 200 and 'name="token"' in r.text and "Ravi" not in r.text, value
    client.cookies.set(auth.COOKIE, good, path="/dashboard")
    assert "Biggest leak: Conversion" in client.get(OVERVIEW).text
    assert auth.session_valid(good, TOKEN) and not auth.session_valid(good, TOKEN + "x")


def test_logout_and_open_redirects(app_with_week):
    client, _ = app_with_week
    assert login(client, next_url="//evil.example/x").headers["location"] == "/dashboard"
    assert login(client, next_url="https://evil.example/dashboard").headers["location"] == "/dashboard"
    assert "Biggest leak" in client.get(OVERVIEW).text
    out = client.post("/dashboard/logout", follow_redirects=False)
    assert out.status_code == 303 and f"{auth.COOKIE}=" in out.headers["set-cookie"] and "Max-Age=0" in out.headers["set-cookie"]
    assert 'name="token"' in client.get(OVERVIEW).text


def test_customer_timeline_search_escapes_what_customers_wrote(app_with_week):
    client, _ = app_with_week
    assert login(client).status_code == 303
    # any phone format, read with the store's default country
    r = client.get("/dashboard/shop-a/customer", params={"phone": "098123 45678", "week": "2026-W47"})
    assert r.status_code == 200
    assert_secure_headers(r)
    html = r.text
    assert XSS_NAME not in html and "&lt;script&gt;alert(1)&lt;/script&gt; Kumar" in html
    assert "<img" not in html and "where is my order? &lt;img src=x onerror=&#34;alert(2)&#34;&gt;" in html
    assert "Your order #1001 is on its way" in html and html.index("Your order #1001") < html.index("where is my order")  # newest first
    assert "marketing: <strong>granted</strong>" in html
    # the hostile hand-off reason and name on the overview are text too
    overview = client.get(OVERVIEW).text
    assert XSS_NAME not in overview and "&lt;script&gt;alert(1)&lt;/script&gt; Kumar</a>" in overview
    assert "<b onmouseover" not in overview and "&lt;b onmouseover=alert(3)&gt;help&lt;/b&gt;" in overview
    assert 'href="/dashboard/shop-a/customer?phone=%2B919812345678"' in overview
    # a contact from build_week, and a phone nobody has
    assert client.get("/dashboard/shop-a/customer", params={"phone": "+919000000001"}).status_code == 200
    missing = client.get("/dashboard/shop-a/customer", params={"phone": "<b>+1 555</b>"})
    assert missing.status_code == 404 and "No contact with phone &lt;b&gt;+1 555&lt;/b&gt;" in missing.text
    # stores stay apart: shop-b has no such customer
    assert client.get("/dashboard/shop-b/customer", params={"phone": XSS_PHONE}).status_code == 404


def test_the_bearer_api_is_unaffected(app_with_week):
    client, _ = app_with_week
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert client.get("/api/stores/shop-a/report?week=2026-W47", headers=bearer).json()["biggest_leak"]["stage"] == "conversion"
    assert login(client).status_code == 303
    # a dashboard session is not an API credential (the cookie is scoped to /dashboard, and the API reads no cookie)
    session = client.cookies.get(auth.COOKIE)
    r = client.get("/api/stores/shop-a/report?week=2026-W47", headers={"Cookie": f"{auth.COOKIE}={session}"})
    assert r.status_code == 401
    assert client.get("/api/stores/shop-a/handoffs?status=open", headers=bearer).status_code == 200
