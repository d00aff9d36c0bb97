"""The dashboard: server-rendered HTML behind the admin token, charts as inline SVG.

Pages (every one answers the login form until the browser holds a session, see ``auth``):

- ``GET /dashboard``: the first configured store's overview.
- ``GET /dashboard/{store}?week=2026-W47``: stage KPIs this week against last (with a
  six-week trend), each journey's funnel, lift against the holdout with its 95% interval,
  the biggest leak, message health, the open hand-off queue, and the connector's health now
  (failed inbox rows with how to replay them, each scheduled job's last outcome). Default week: the last
  complete one in the store's time zone (the same rule as the report).
- ``GET /dashboard/{store}/customer?phone=...``: a customer's timeline (``contact_view``).
- ``POST /dashboard/login`` (form field ``token``) and ``POST /dashboard/logout``.

Nothing is fetched from elsewhere: no script at all, one inline style sheet allowed by a
per-response CSP nonce, SVG drawn here. Templates autoescape everything.
"""

from __future__ import annotations

import logging
import secrets
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit
from zoneinfo import ZoneInfo

import anyio.to_thread
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from connector import admin, money
from connector.reports import CONTACTS, HANDOFFS, HEADLINE, STAGES, Period, build_report, parse_week
from connector.storage.db import Database
from connector.web import auth, charts

log = logging.getLogger("storeloop.dashboard")

TEMPLATES = Path(__file__).resolve().parent / "templates"
_env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(default=True, default_for_string=True),
                   trim_blocks=True, lstrip_blocks=True)
_env.filters["pct"] = charts.pct
_env.filters["pp"] = charts.pp

MAX_FORM_BYTES = 4096
TREND_WEEKS = 6
LOWER_IS_BETTER = {"ndr_rate"}
STAGE_TITLES = {"entry": "Entry", "qualification": "Qualification", "conversion": "Conversion", "post_purchase": "Post-purchase",
                "retention": "Retention"}
JOURNEY_TITLES = {"checkout_recovery": "Checkout recovery", "payment_recovery": "Payment recovery", "reorder": "Reorder reminders"}


def security_headers(nonce: str) -> dict[str, str]:
    return {
        "Content-Security-Policy": (f"default-src 'none'; style-src 'nonce-{nonce}'; img-src 'self' data:; form-action 'self'; "
                                    "frame-ancestors 'none'; base-uri 'none'"),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "Cache-Control": "no-store",
    }


def _render(template: str, status: int = 200, headers: dict[str, str] | None = None, **context: Any) -> HTMLResponse:
    nonce = secrets.token_urlsafe(16)
    html = _env.get_template(template).render(nonce=nonce, **context)
    return HTMLResponse(html, status_code=status, headers={**security_headers(nonce), **(headers or {})})


def _redirect(url: str) -> RedirectResponse:
    response = RedirectResponse(url, status_code=303)
    response.headers.update(security_headers(secrets.token_urlsafe(16)))
    return response


def _admin_token(request: Request) -> str | None:
    token = request.app.state.runtime.settings.server.admin_token
    return token.get_secret_value() if token is not None and token.get_secret_value() else None


def _store_tokens(request: Request) -> dict[str, str]:
    """Each store's own admin token (opens that store's pages only)."""
    return {s.key: s.admin_token.get_secret_value() for s in request.app.state.runtime.settings.stores
            if s.admin_token is not None and s.admin_token.get_secret_value()}


def _scope(request: Request) -> str | None:
    """``auth.ALL_STORES``, the one store key the session opens, or None (not signed in)."""
    return auth.session_scope(request.cookies.get(auth.COOKIE), _admin_token(request), _store_tokens(request))


def _signed_in(request: Request) -> bool:
    return _scope(request) is not None


def _https(request: Request) -> bool:
    """The browser is on https: served so, or through a TLS-terminating proxy that says so. Its
    X-Forwarded-Proto is read even when uvicorn does not trust the proxy (another host): a client
    that lies about it only gets a Secure cookie its own plain-http requests then lack."""
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.url.scheme == "https" or forwarded == "https"


def _cross_site(request: Request) -> bool:
    """A POST another site's page made the browser send (SameSite keeps the cookie off it, but a
    forged sign-in or sign-out needs none). The browser's ``Sec-Fetch-Site`` says where the form
    came from; without it (an older browser) an ``Origin`` naming another host does. The
    dashboard's own forms send ``Origin: null`` (its pages send no referrer), so that is not proof."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site.strip().lower() not in ("same-origin", "none")
    origin = request.headers.get("origin", "").strip()
    if not origin or origin == "null":
        return False
    ours = {request.headers.get("host", "").lower()}
    public = request.app.state.runtime.settings.server.public_base_url
    if public:
        ours.add(urlsplit(public).netloc.lower())
    return urlsplit(origin).netloc.lower() not in ours


def _refuse_cross_site(request: Request, what: str) -> Response:
    log.warning("dashboard %s refused: the form came from another site", what, extra={"client": _client(request)})
    return sign_in_form(request, 403, "That request came from another site; sign in here.", next_url="/dashboard")


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _limiter(request: Request) -> auth.LoginLimiter:
    state = request.app.state
    limiter = getattr(state, "dashboard_login_limiter", None)
    if limiter is None:
        limiter = state.dashboard_login_limiter = auth.LoginLimiter()
    return limiter


def _safe_next(value: str | None) -> str:
    """Only a path inside the dashboard: never another host (no open redirect)."""
    if not value or not value.startswith("/dashboard") or "\\" in value or any(ord(c) < 32 for c in value):
        return "/dashboard"
    parts = urlsplit(value)
    return value if not parts.scheme and not parts.netloc else "/dashboard"


def sign_in_form(request: Request, status: int = 200, error: str | None = None, headers: dict[str, str] | None = None,
                next_url: str | None = None) -> HTMLResponse:
    if next_url is None:
        next_url = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return _render("login.html", status, headers, error=error, next_url=_safe_next(next_url),
                   configured=_admin_token(request) is not None or bool(_store_tokens(request)))


# -- login / logout --------------------------------------------------------------------------------
async def _form(request: Request) -> dict[str, list[str]]:
    """A small urlencoded form (the login's two fields); anything else reads as empty."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return {}
    try:
        return parse_qs(body.decode("utf-8", "replace"), max_num_fields=10)
    except ValueError:
        return {}


async def login_page(request: Request) -> Response:
    return _redirect("/dashboard") if _signed_in(request) else sign_in_form(request, next_url="/dashboard")


async def login(request: Request) -> Response:
    if _cross_site(request):
        return _refuse_cross_site(request, "sign-in")
    client, limiter = _client(request), _limiter(request)
    wait = limiter.retry_after(client)
    if wait:
        log.warning("dashboard login refused: too many failed attempts", extra={"client": client})
        return sign_in_form(request, 429, f"Too many failed attempts. Try again in {wait} seconds.",
                           {"Retry-After": str(wait)}, next_url="/dashboard")
    form = await _form(request)
    next_url = _safe_next((form.get("next") or ["/dashboard"])[0])
    given = (form.get("token") or [None])[0]
    presented = given.strip() if given else None
    everyone = _admin_token(request)
    store = None
    if not auth.token_matches(presented, everyone):
        store = next((key for key, token in _store_tokens(request).items() if auth.token_matches(presented, token)), None)
        if store is None:
            limiter.failed(client)
            log.warning("dashboard login with a wrong token", extra={"client": client})
            return sign_in_form(request, 401, "That is not the admin token.", next_url=next_url)
    if store is None:
        limiter.forgive(client)  # the admin token itself: nothing left to guess (``LoginLimiter.forgive``)
    log.info("dashboard login", extra={"client": client, "store": store or "all"})
    session = auth.issue_session(everyone or "") if store is None else auth.issue_session(_store_tokens(request)[store], store=store)
    response = _redirect(next_url if store is None or next_url.startswith(f"/dashboard/{store}") else f"/dashboard/{store}")
    response.set_cookie(auth.COOKIE, session, max_age=auth.SESSION_SECONDS,
                        path=auth.COOKIE_PATH, secure=_https(request), httponly=True, samesite="strict")
    return response


async def logout(request: Request) -> Response:
    if _cross_site(request):
        return _refuse_cross_site(request, "sign-out")
    response = _redirect("/dashboard")
    response.delete_cookie(auth.COOKIE, path=auth.COOKIE_PATH, secure=_https(request), httponly=True,
                           samesite="strict")
    return response


# -- data ---------------------------------------------------------------------------------------------
def _local(value: Any, tz: ZoneInfo) -> str:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    if not isinstance(value, datetime):
        return "–"
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(tz).strftime("%Y-%m-%d %H:%M")


def _age(opened: datetime, now: datetime) -> str:
    if opened.tzinfo is None:
        opened = opened.replace(tzinfo=timezone.utc)
    minutes = int((now - opened).total_seconds() // 60)
    if minutes < 1:
        return "just now"
    if minutes < 120:
        return f"{minutes} min"
    if minutes < 48 * 60:
        return f"{minutes // 60} h"
    return f"{minutes // 1440} d"


def handoff_queue(db: Database, store_id: int, now: datetime, limit: int = 200) -> list[dict[str, Any]]:
    """Open hand-offs, oldest first, with the customer they are about and whether their owner was told."""
    query = (
        select(HANDOFFS.c.id, HANDOFFS.c.reason, HANDOFFS.c.stage, HANDOFFS.c.owner, HANDOFFS.c.journey, HANDOFFS.c.opened_at,
               HANDOFFS.c.context, CONTACTS.c.first_name, CONTACTS.c.last_name, CONTACTS.c.phone_e164)
        .select_from(HANDOFFS.outerjoin(CONTACTS, CONTACTS.c.id == HANDOFFS.c.contact_id))
        .where(HANDOFFS.c.store_id == store_id, HANDOFFS.c.status == "open")
        .order_by(HANDOFFS.c.opened_at, HANDOFFS.c.id)
        .limit(limit)
    )
    with db.engine.connect() as conn:
        rows = conn.execute(query).all()
        told = admin.notifications(conn, store_id, rows)
    return [
        {"id": r.id, "reason": r.reason, "stage": r.stage, "owner": r.owner, "journey": r.journey, "opened_at": r.opened_at,
         "age": _age(r.opened_at, now), "name": " ".join(p for p in (r.first_name, r.last_name) if p) or None, "phone": r.phone_e164,
         "notify": told[r.id]}
        for r in rows
    ]


def _trends(db: Database, store_id: int, period: Period, tz: ZoneInfo, report: dict[str, Any]) -> dict[str, list[tuple[str, Any]]]:
    """Each stage's headline over the last TREND_WEEKS weeks (the report has the last two)."""
    weeks = [period]
    for _ in range(TREND_WEEKS - 1):
        weeks.insert(0, weeks[0].previous(tz))
    out: dict[str, list[tuple[str, Any]]] = {name: [] for name in STAGES}
    with db.engine.connect() as conn:
        for week in weeks[:-2]:
            for name, fn in STAGES.items():
                out[name].append((week.label, fn(conn, store_id, week)[HEADLINE[name]]))
    for name, stage in report["stages"].items():
        out[name] += [(weeks[-2].label, stage["previous"][HEADLINE[name]]), (period.label, stage["metrics"][HEADLINE[name]])]
    return out


def _funnels(stages: dict[str, Any]) -> list[dict[str, Any]]:
    s = {k: v["metrics"] for k, v in stages.items()}
    c, q, p, r, e = s["conversion"], s["qualification"], s["post_purchase"], s["retention"], s["entry"]
    return [
        {"title": "Checkout recovery", "stage": "conversion", "steps": [("abandoned", c["checkouts_abandoned"]),
         ("reminded", c["checkouts_reminded"]), ("recovered", c["checkouts_recovered"])],
         "note": f"recovered revenue {money.shown(c['recovered_revenue'])}"},
        {"title": "Payment recovery", "stage": "conversion", "steps": [("stalled", c["payments_stalled"]),
         ("reminded", c["payments_reminded"]), ("paid", c["payments_recovered"])],
         "note": f"recovered revenue {money.shown(c['payment_recovered_revenue'])}"},
        {"title": "COD confirmation", "stage": "qualification", "steps": [("COD orders", q["cod_orders"]), ("asked", q["asked"]),
         ("confirmed", q["confirmed"])],
         "note": f"cancelled {q['cancelled']}, no answer {q['no_answer']}, not reached {q['not_reached']}, "
                 f"with a person {q['with_person']}, opted out {q['opted_out']}, median answer "
                 f"{'–' if q['median_minutes_to_answer'] is None else q['median_minutes_to_answer']} min"},
        {"title": "Delivery updates", "stage": "post_purchase", "steps": [("sent", p["updates_sent"]),
         ("delivered", p["updates_delivered"]), ("read", p["updates_read"])],
         "note": f"{p['shipments']} shipments, {p['ndr']} failed deliveries (NDR {charts.pct(p['ndr_rate'])})"},
        {"title": "Reorder reminders", "stage": "retention", "steps": [("windows opened", r["windows_opened"]),
         ("reminded", r["reminded"]), ("reordered", r["reordered_in_window"])],
         "note": f"revenue {money.shown(r['revenue'])}, {r['skipped_busy']} skipped (customer busy in another journey)"},
        {"title": "Opt-in", "stage": "entry", "steps": [("new contacts", e["new_contacts"]), ("marketing consent", e["marketing_consent"])],
         "note": "by source: " + (", ".join(f"{k} {v}" for k, v in e["by_source"].items()) or "–")},
    ]


def _fmt_metric(key: str, value: Any) -> str:
    if value is None:
        return "–"
    if key.endswith("_rate") and isinstance(value, (int, float)):
        return charts.pct(value)
    if money.is_money(value, key):
        return money.shown(value)
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items()) or "–"
    return str(value)


def _fmt_change(key: str, value: Any) -> str:
    if value is None:
        return ""
    if money.is_money(value):
        return money.shown_change(value)
    if isinstance(value, dict):
        return ", ".join(f"{k} {v:+g}" for k, v in value.items())
    if key.endswith("_rate") and isinstance(value, (int, float)):
        return charts.pp(value)
    if isinstance(value, (int, float)):
        return f"{value:+g}"
    return value if str(value).startswith("-") else f"+{value}"


def overview_data(db: Database, store: Any, store_id: int, period: Period, now: datetime | None = None) -> dict[str, Any]:
    now = now or datetime.now(timezone.utc)
    report = build_report(db, store, store_id, period, now)
    trends = _trends(db, store_id, period, store.tz, report)
    cards = []
    for name, stage in report["stages"].items():
        key = stage["headline"]
        now_v, before_v, change = stage["metrics"][key], stage["previous"][key], stage["change"].get(key)
        good = None if change in (None, 0) else (change < 0) == (key in LOWER_IS_BETTER)
        cards.append({
            "name": name, "title": STAGE_TITLES.get(name, name), "owner": stage["owner"], "headline": key.replace("_", " "),
            "value": charts.pct(now_v), "previous": charts.pct(before_v), "change": charts.pp(change) if change is not None else "",
            "good": good, "lost": stage["metrics"]["lost"],
            "trend": charts.trend(trends[name], label=f"{STAGE_TITLES.get(name, name)}: {key.replace('_', ' ')}, last {TREND_WEEKS} weeks"),
            "rows": [(k.replace("_", " "), _fmt_metric(k, v), _fmt_metric(k, stage["previous"].get(k)), _fmt_change(k, stage["change"].get(k)))
                     for k, v in stage["metrics"].items()],
        })
    funnels = [{**f, "svg": charts.funnel(f["steps"], label=f"{f['title']} funnel")} for f in _funnels(report["stages"])]
    lifts = [{"journey": j, "title": JOURNEY_TITLES.get(j, j), **res, "svg": charts.interval(res, label=f"{JOURNEY_TITLES.get(j, j)}: lift against holdout")}
             for j, res in report["lift"].items()]
    # this store's number, if a dispatcher paused its sends (``reports.whatsapp_pause``): an account-level
    # refusal (fix the account) or Meta's call rate limit (a wait). Shown here, behind the store's sign-in,
    # not on the open /readyz
    pause = report["connector_health"].get("whatsapp_pause")
    return {"report": report, "cards": cards, "funnels": funnels, "lifts": lifts,
            "whatsapp_paused": pause if pause and not pause["rate_limit"] else None,
            "whatsapp_rate_limited": pause if pause and pause["rate_limit"] else None,
            "handoffs": handoff_queue(db, store_id, now), "leak_title": STAGE_TITLES.get(report["biggest_leak"]["stage"] or "", "")}


# -- pages --------------------------------------------------------------------------------------------
def _stores(request: Request) -> list[Any]:
    """The stores this session opens (a store's own token: that store only)."""
    scope = _scope(request)
    return [s for s in request.app.state.runtime.settings.stores if scope == auth.ALL_STORES or s.key == scope]


def _page_context(request: Request, store: Any, week: str | None) -> dict[str, Any]:
    return {"stores": _stores(request), "store": store, "week": week,
            "week_query": ("?" + urlencode({"week": week})) if week else ""}


async def index(request: Request) -> Response:
    if not _signed_in(request):
        return sign_in_form(request)
    stores = _stores(request)
    if not stores:
        return _render("error.html", 404, message="No store is configured.", stores=[], store=None, week=None, week_query="")
    query = f"?{request.url.query}" if request.url.query else ""
    return _redirect(f"/dashboard/{stores[0].key}{query}")


def _resolve(request: Request) -> tuple[Any, int] | Response:
    runtime = request.app.state.runtime
    key = request.path_params["store_key"]
    store, store_id = runtime.stores_by_key.get(key), runtime.store_ids.get(key)
    if store is None or store_id is None or store not in _stores(request):  # another store's session: as if absent
        return _render("error.html", 404, message=f"No store {key!r} here.", stores=_stores(request), store=None, week=None,
                       week_query="")
    return store, store_id


async def overview(request: Request) -> Response:
    if not _signed_in(request):
        return sign_in_form(request)
    resolved = _resolve(request)
    if isinstance(resolved, Response):
        return resolved
    store, store_id = resolved
    asked = request.query_params.get("week") or None
    try:
        period = parse_week(asked, store.tz, datetime.now(timezone.utc))
    except ValueError as exc:
        return _render("error.html", 400, message=str(exc), **_page_context(request, store, None))
    runtime = request.app.state.runtime
    data = await anyio.to_thread.run_sync(partial(overview_data, runtime.db, store, store_id, period, runtime.clock()))
    tz = store.tz
    return _render("overview.html", **_page_context(request, store, period.label), **data,
                   prev_week=period.previous(tz).label, next_week=_next_week(period, tz), local=lambda v: _local(v, tz))


def _next_week(period: Period, tz: ZoneInfo) -> str | None:
    iso = period.end.astimezone(tz).date().isocalendar()
    label = f"{iso.year}-W{iso.week:02d}"
    return label if period.end <= datetime.now(timezone.utc) else None


async def customer(request: Request) -> Response:
    if not _signed_in(request):
        return sign_in_form(request)
    resolved = _resolve(request)
    if isinstance(resolved, Response):
        return resolved
    store, store_id = resolved
    phone = (request.query_params.get("phone") or "").strip()[:64]
    view = None
    if phone:
        runtime = request.app.state.runtime
        view = await anyio.to_thread.run_sync(partial(admin.contact_view, runtime.db, store_id, phone, store.default_country, now=runtime.clock()))
    week = request.query_params.get("week") or None
    tz = store.tz
    return _render("customer.html", 200 if view or not phone else 404, **_page_context(request, store, week), phone=phone, view=view,
                   local=lambda v: _local(v, tz))


ROUTES = [
    Route("/dashboard", index, methods=["GET"]),
    Route("/dashboard/login", login, methods=["POST"]),
    Route("/dashboard/login", login_page, methods=["GET"]),
    Route("/dashboard/logout", logout, methods=["POST"]),
    Route("/dashboard/{store_key}", overview, methods=["GET"]),
    Route("/dashboard/{store_key}/customer", customer, methods=["GET"]),
]
