"""A store's own admin token (agency deployments): it opens that store's admin API routes and
dashboard pages, and nothing of any other store; server.admin_token still opens every store."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from connector.config import parse_settings
from connector.storage import models as m
from connector.web import auth
from tests.conftest import SECRETS
from tests.helpers import running_app
from tests.test_dashboard import add_hostile_customer, login
from tests.test_reports import _raw_settings, build_week

TEAM_A = "brand-a-support-token-0123456789"
TEAM_B = "brand-b-support-token-9876543210"


def _with_store_tokens(db_url: str):
    raw = _raw_settings(db_url)
    for store in raw["stores"]:
        if store["key"] == "shop-a":
            store["admin_token"] = TEAM_A
        if store["key"] == "shop-b":
            store["admin_token"] = TEAM_B
    return parse_settings(raw, environ={})


@pytest.fixture
def agency(db_url):
    with running_app(_with_store_tokens(db_url)) as (client, runtime):
        sid = runtime.store_ids["shop-a"]
        build_week(runtime.db, sid)
        add_hostile_customer(runtime.db, sid)
        yield client, runtime


def test_a_stores_token_opens_its_own_admin_api_and_nothing_of_another_store(agency):
    client, runtime = agency
    team_a, team_b = ({"Authorization": f"Bearer {t}"} for t in (TEAM_A, TEAM_B))
    everyone = {"Authorization": f"Bearer {SECRETS['admin']}"}
    own = client.get("/api/stores/shop-a/handoffs?status=open", headers=team_a)
    assert own.status_code == 200 and own.json()["items"]
    assert own.json() == client.get("/api/stores/shop-a/handoffs?status=open", headers=everyone).json()
    assert client.get("/api/stores/shop-a/contacts/+919812345678", headers=team_a).status_code == 200
    # the operator's token opens every store; a store's token does not start an install flow
    assert client.get("/api/stores/shop-b/handoffs?status=open", headers=everyone).status_code == 200
    assert client.get("/woocommerce/connect", params={"store": "woo"}, headers=team_a, follow_redirects=False).status_code == 401
    # brand B's team reads none of brand A's customers, cases, reports or privacy requests, and closes nothing
    # (after five failures in a minute its address gets 429s: the limiter counts these as guesses)
    for path in ("/api/stores/shop-a/handoffs?status=open", "/api/stores/shop-a/contacts/+919812345678",
                 "/api/stores/shop-a/report?week=2026-W47", "/api/stores/shop-a/compliance"):
        r = client.get(path, headers=team_b)
        assert r.status_code in (401, 429) and "Priya" not in r.text and "Kumar" not in r.text, path
    case = own.json()["items"][0]["id"]
    refused = client.post(f"/api/stores/shop-a/handoffs/{case}/close", json={"by": "B's agent"}, headers=team_b)
    assert refused.status_code in (401, 429)
    with runtime.db.engine.connect() as conn:
        assert conn.execute(select(m.Handoff.status).where(m.Handoff.id == case)).scalar_one() == "open"


def test_a_stores_token_signs_in_to_its_own_dashboard_pages_only(agency):
    client, _ = agency
    assert login(client, TEAM_A, next_url="/dashboard/shop-b").headers["location"] == "/dashboard/shop-a"
    page = client.get("/dashboard/shop-a?week=2026-W47")
    assert page.status_code == 200 and "Biggest leak: Conversion" in page.text
    assert 'href="/dashboard/shop-b' not in page.text  # the store menu lists her store only
    other = client.get("/dashboard/shop-b?week=2026-W47")
    assert other.status_code == 404 and "Biggest leak" not in other.text
    assert client.get("/dashboard/shop-b/customer", params={"phone": "+919812345678"}).status_code == 404
    assert client.get("/dashboard", follow_redirects=False).headers["location"] == "/dashboard/shop-a"
    # a session cookie of store A's rewritten to name store B is refused (it is signed with A's token)
    cookie = client.cookies.get(auth.COOKIE)
    assert cookie.count(".") == 4 and ".shop-a." in cookie
    client.cookies.clear()
    client.cookies.set(auth.COOKIE, cookie.replace(".shop-a.", ".shop-b."), path="/dashboard")
    assert 'name="token"' in client.get("/dashboard/shop-b?week=2026-W47").text
    # the operator's session opens every store
    client.cookies.clear()
    assert login(client).status_code == 303
    assert client.get("/dashboard/shop-b?week=2026-W47").status_code == 200


def test_a_store_token_shared_with_another_scope_is_a_config_error(db_url):
    raw = _raw_settings(db_url)
    for store in raw["stores"]:
        store["admin_token"] = SECRETS["admin"] if store["key"] == "shop-a" else None
    raw["stores"] = [{k: v for k, v in s.items() if v is not None} for s in raw["stores"]]
    with pytest.raises(Exception, match="admin_token of store 'shop-a' is also server.admin_token"):
        parse_settings(raw, environ={})
    raw = _raw_settings(db_url)
    for store in raw["stores"]:
        store["admin_token"] = TEAM_A
    with pytest.raises(Exception, match="is also the admin_token of store 'shop-a'"):
        parse_settings(raw, environ={})
