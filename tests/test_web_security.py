"""The dashboard and admin API against a hostile browser, a TLS proxy and a store team guessing
the operator's token (the web security audit). Each test drives the real app over HTTP."""

from __future__ import annotations

import pytest

from connector.web import auth
from tests.conftest import SECRETS
from tests.helpers import running_app
from tests.test_dashboard import OVERVIEW, TOKEN, login
from tests.test_reports import _settings
from tests.test_store_tokens import TEAM_A, _with_store_tokens

ADMIN = {"Authorization": f"Bearer {TOKEN}"}
SIGNED_OUT = 'name="token"'  # the sign-in form


@pytest.fixture
def app(db_url):
    with running_app(_settings(db_url)) as (client, runtime):
        yield client, runtime


def cookie_attributes(response) -> set[str]:
    [session] = [c for c in response.headers.get_list("set-cookie") if c.startswith(auth.COOKIE + "=")]
    return {part.strip().split("=")[0].lower() for part in session.split(";")[1:]}


# ---- the session cookie behind a TLS-terminating proxy ---------------------------------------

def test_behind_an_https_proxy_the_session_cookie_never_travels_over_plain_http(app):
    """TLS ends at a proxy on another host (a container network): uvicorn does not trust its
    X-Forwarded-Proto, so the app sees http. The browser is on https all the same, and a cookie
    without Secure would also go out on any plain-http request to the host, readable on the way."""
    client, _ = app
    proxied = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "198.51.100.20"}
    signed_in = client.post("/dashboard/login", data={"token": TOKEN, "next": "/dashboard"}, headers=proxied,
                            follow_redirects=False)
    assert signed_in.status_code == 303
    assert {"secure", "httponly", "samesite", "path", "max-age"} <= cookie_attributes(signed_in)
    signed_out = client.post("/dashboard/logout", headers=proxied, follow_redirects=False)
    assert "secure" in cookie_attributes(signed_out)
    # served directly over http (a tunnel to the box), the cookie must still work there
    client.cookies.clear()
    direct = login(client)
    assert direct.status_code == 303 and "secure" not in cookie_attributes(direct)
    assert "Biggest leak" in client.get(OVERVIEW).text


# ---- cross-site POSTs to the dashboard -------------------------------------------------------

def test_another_site_cannot_sign_the_browser_in_or_out(app):
    """SameSite=Strict keeps the cookie off cross-site requests, but a cross-site form can still
    POST a token of the attacker's choosing to /dashboard/login (the owner then works in a session
    someone else opened) or POST /dashboard/logout; the browser says where a form came from."""
    client, _ = app
    for hostile in ({"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"},
                    {"Sec-Fetch-Site": "same-site", "Origin": "https://shop.connector.example"},
                    {"Origin": "https://evil.example"}):  # an older browser: no Sec-Fetch-Site, an Origin all the same
        r = client.post("/dashboard/login", data={"token": TOKEN, "next": "/dashboard"}, headers=hostile, follow_redirects=False)
        assert r.status_code == 403 and auth.COOKIE not in r.headers.get("set-cookie", ""), hostile
        assert "another site" in r.text
        assert SIGNED_OUT in client.get(OVERVIEW).text
    # the dashboard's own form: same-origin (its Origin is "null", the page sends no referrer)
    own = client.post("/dashboard/login", data={"token": TOKEN, "next": "/dashboard"},
                      headers={"Sec-Fetch-Site": "same-origin", "Origin": "null"}, follow_redirects=False)
    assert own.status_code == 303 and auth.COOKIE in own.headers["set-cookie"]
    assert login(client, next_url=OVERVIEW).status_code == 303  # no fetch metadata at all (a script, an old browser)
    assert client.post("/dashboard/login", data={"token": TOKEN}, headers={"Origin": "http://testserver"},
                       follow_redirects=False).status_code == 303
    # a cross-site logout is refused and the owner stays signed in
    forced = client.post("/dashboard/logout", headers={"Sec-Fetch-Site": "cross-site"}, follow_redirects=False)
    assert forced.status_code == 403 and auth.COOKIE not in forced.headers.get("set-cookie", "")
    assert "Biggest leak" in client.get(OVERVIEW).text
    out = client.post("/dashboard/logout", headers={"Sec-Fetch-Site": "same-origin"}, follow_redirects=False)
    assert out.status_code == 303 and "Max-Age=0" in out.headers["set-cookie"]
    assert SIGNED_OUT in client.get(OVERVIEW).text


# ---- a store's team guessing the operator's token --------------------------------------------

def test_a_store_teams_own_sign_in_does_not_reset_its_count_of_wrong_tokens(db_url):
    """Brand A's team holds a valid token for its own store. Signing in with it between guesses
    must not wipe the failures: otherwise they guess server.admin_token (every store) without limit."""
    with running_app(_with_store_tokens(db_url)) as (client, _):
        for _ in range(auth.LOGIN_ATTEMPTS - 1):
            assert login(client, "guess-operator-token").status_code == 401
        assert login(client, TEAM_A).status_code == 303  # her own store: allowed
        assert login(client, "guess-operator-token").status_code == 401  # the fifth failure in the minute
        assert login(client, "another-guess").status_code == 429
        assert login(client, SECRETS["admin"]).status_code == 429


def test_a_store_teams_own_api_calls_do_not_reset_its_count_of_wrong_tokens(db_url):
    with running_app(_with_store_tokens(db_url)) as (client, _):
        own = {"Authorization": f"Bearer {TEAM_A}"}
        guess = {"Authorization": "Bearer guess-operator-token"}
        for _ in range(auth.LOGIN_ATTEMPTS - 1):
            assert client.get("/api/stores/shop-b/handoffs", headers=guess).status_code == 401
        assert client.get("/api/stores/shop-a/handoffs", headers=own).status_code == 200
        assert client.get("/api/stores/shop-b/handoffs", headers=guess).status_code == 401
        assert client.get("/api/stores/shop-b/handoffs", headers=guess).status_code == 429
        assert client.get("/api/stores/shop-b/handoffs", headers=ADMIN).status_code == 429


def test_the_admin_tokens_own_success_clears_the_count_behind_a_shared_address(db_url):
    """Behind one proxy address, a script with a stale token fails four times; the operator's call with
    server.admin_token itself goes through and forgives the count (its holder has nothing to guess), so
    the next stale failures do not lock everyone out at once."""
    with running_app(_with_store_tokens(db_url)) as (client, _):
        stale = {"Authorization": "Bearer stale-token"}
        for _ in range(auth.LOGIN_ATTEMPTS - 1):
            assert client.get("/api/stores/shop-a/handoffs", headers=stale).status_code == 401
        assert client.get("/api/stores/shop-a/handoffs", headers=ADMIN).status_code == 200
        answers = [client.get("/api/stores/shop-a/handoffs", headers=stale).status_code for _ in range(auth.LOGIN_ATTEMPTS - 1)]
        assert answers == [401] * (auth.LOGIN_ATTEMPTS - 1)
        assert client.get("/api/stores/shop-a/handoffs", headers=ADMIN).status_code == 200


# ---- bad input answers a clear 4xx, never a 500 ----------------------------------------------

TOO_BIG = "99999999999999999999999"  # no row id is this large (64-bit)


def test_an_id_too_large_for_the_database_is_not_found_not_a_server_error(app):
    client, _ = app
    assert client.get(f"/api/stores/shop-a/compliance/{TOO_BIG}", headers=ADMIN).status_code == 404
    closed = client.post(f"/api/stores/shop-a/handoffs/{TOO_BIG}/close", json={"by": "Ravi"}, headers=ADMIN)
    assert closed.status_code == 404 and "no open hand-off" in closed.json()["error"]
    for path in ("inbox", "handoffs"):
        r = client.get(f"/api/stores/shop-a/{path}", params={"before_id": TOO_BIG}, headers=ADMIN)
        assert r.status_code == 400 and "before_id" in r.json()["error"], path
    replay = client.post("/api/stores/shop-a/inbox/replay", json={"ids": [1, int(TOO_BIG)]}, headers=ADMIN)
    assert replay.status_code == 400 and "ids" in replay.json()["error"]
    for huge in ("1" * 5000, "12abc", "-1"):  # beyond what int() reads at all, not digits, negative: no such row
        assert client.get(f"/api/stores/shop-a/compliance/{huge}", headers=ADMIN).status_code == 404, huge[:8]
        assert client.post(f"/api/stores/shop-a/handoffs/{huge}/close", json={"by": "Ravi"}, headers=ADMIN).status_code == 404


@pytest.mark.parametrize("week", ["9999-W52", "0001-W01", "0001-W06"])
def test_a_week_at_the_edge_of_the_calendar_is_refused_with_the_reason(app, week):
    """The overview draws six weeks back and the report compares with the week before: a week
    whose neighbours fall off the calendar is a 400 saying so, on the dashboard and in the API."""
    client, _ = app
    assert login(client).status_code == 303
    page = client.get("/dashboard/shop-a", params={"week": week})
    assert page.status_code == 400 and "no such ISO week" in page.text
    api = client.get("/api/stores/shop-a/report", params={"week": week}, headers=ADMIN)
    assert api.status_code == 400 and "no such ISO week" in api.json()["error"]
