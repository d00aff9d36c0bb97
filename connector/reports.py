"""The weekly journey audit: one KPI block per stage, message health, lift, and the biggest leak.

Everything is read from what the connector already stores (contacts, runs, outbox,
windows, hand-offs); nothing is estimated. A period is an ISO week in the store's time
zone (``2026-W47``); each figure comes with last week's value so the change is visible.

Money is never added across currencies (a WooCommerce multi-currency store takes orders in
several; there are no exchange rates here): every revenue figure is ``{currency: amount}``,
each run counted in its order's currency, the store's own (``stores.currency``) first
(``connector.money``). No figure divides money by a count, so none needs one currency.

Stages and what counts (runs are counted in the week they started):
- entry: new contacts, where they came from (their first order, checkout or WhatsApp
  message), and the share who gave marketing consent.
- qualification: COD orders asked to confirm, confirmed, cancelled, unanswered, answered in
  words (``with_person``: a person decides, not lost), opted out after the question
  (``opted_out``: flagged for a call, counted lost unless a tap confirms it), the confirmation
  rate and the median minutes from ask to answer (a tap, or her first words).
- conversion: checkouts abandoned (a run starts with the checkout, but one bought or completed
  before ``abandon_after_minutes`` was never abandoned: only runs still open then count,
  ``checkout_recovery.was_abandoned``), reminded (holdout excluded; a reminder counts once WhatsApp took it:
  one held for quiet hours and then dropped, skipped by policy or failed is none), recovered
  (an order within the attribution window after a reminder that went out), the recovery
  rate and recovered revenue; the same for stalled payments (still pending when the reminder
  came, ``payment_recovery.stalled``; recovered: paid, or her card authorised, within the payment journey's
  ``attribution_days`` after its reminder went out, on the order or on her new try at the same purchase, whose
  revenue it is then; a payment made before the reminder went out is none: ``payment_recovery.recovered``; her newer
  unpaid try that went on from a reminded one is the same stalled payment, counted once, in the older try's week, recovered
  if she paid either: ``_one_per_purchase``). An order the store has since cancelled, voided or
  refunded, or whose payment failed (as the orders table has it at report time, whatever order
  the webhooks came in) recovered nothing: it is left out of the count and the revenue (and of
  the lift's conversions); so is a checkout's order still waiting for a payment that is not cash
  on delivery (a bank transfer on hold: no sale until it is paid). One order is credited once, across journeys: of the
  runs that would earn it (a pay reminder, a cart reminder, a reorder reminder; whatever week they started, under any
  number of hers with its email), the one whose reminder reached her last before it keeps it (``keeps_its_order``; a
  tie goes to the later step of the purchase: pay, then cart, then reorder), so a cart whose order was then paid after
  its pay reminder counts as the pay reminder's recovery, not also as a recovered checkout. The other runs are neither
  credited nor lost.
- post-purchase: delivery updates sent / delivered / read, shipments, failed deliveries
  (NDR) and their rate; hand-offs opened and their median resolution time.
- retention: reorder windows opened, reminded (as for checkouts: a reminder WhatsApp took),
  reordered inside the window after a reminder that went out (in an order that still stands,
  as above), the rate and the revenue (each run's product's lines in the reorder, price x
  quantity: an order reordering two reminded products counts each once, not its total twice).

Message health per template (journey step): queued, sent, delivered, read, failed by Meta
code (the failed status webhook's code, else the last send attempt's), skipped by policy
reason, and opt-outs: each marketing opt-out of the week goes to the last message that
reached the contact in the ``OPT_OUT_HOURS`` before it (a STOP answers what was just
received); one with no such message is counted store-wide only.

Lift: for each journey with a holdout, runs of contacts in the holdout (who got nothing) are
the control group, among the runs the funnel counts (abandoned checkouts, stalled payments):
a checkout bought before it was abandoned converts in either group and only waters the lift
down. Conversion is what the journey exists for (an order for the checkout, a payment, a
reorder of the product inside the attribution window), read the same way for
treated and control (never ``attributed``, which needs a message the control never got),
and the report gives the difference with a 95% interval (Newcombe's score interval for a
difference of two proportions), so it says what the messages caused, not only what they
touched. That difference is over everyone the journey covered, reached or not: a treated
customer whose reminder never went out (no consent, opted out, not on WhatsApp) converts
like the holdout and waters it down. The report also says how many treated runs a reminder
reached and the lift per customer reached (the difference divided by that share; no
reminder, no effect, and the holdout is never reached: Bloom's estimator), with its interval
scaled the same way (the share taken as known), which is what one reminder does for the
customer who gets it.

The biggest leak is the stage that lost the most customers this week: consent not given,
COD orders not confirmed, reminded checkouts and payments not recovered, deliveries that
failed, reminded reorders not placed.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Table, bindparam, func, select

from connector import money
from connector.contacts import email_key
from connector.journeys._common import awaits_payment, continued
from connector.journeys.checkout_recovery import STEPS as CART_STEPS, was_abandoned
from connector.journeys.payment_recovery import recovered as pay_recovered, stalled
from connector.journeys.reorder import STEPS as REORDER_STEPS
from connector.number_change import MOVED
from connector.outbox.queue import step_key
from connector.outbox import store as ob
from connector.outbox.store import REACHED_STATES
from connector.storage import models as m
from connector.storage.db import Database

CONTACTS: Table = m.Contact.__table__  # type: ignore[assignment]
ORDERS: Table = m.Order.__table__  # type: ignore[assignment]
CHECKOUTS: Table = m.Checkout.__table__  # type: ignore[assignment]
INBOUND: Table = m.Message.__table__  # type: ignore[assignment]
RUNS: Table = m.JourneyRun.__table__  # type: ignore[assignment]
OUTBOX: Table = m.OutboxMessage.__table__  # type: ignore[assignment]
ATTEMPTS: Table = m.OutboxAttempt.__table__  # type: ignore[assignment]
CONSENT: Table = m.ConsentChange.__table__  # type: ignore[assignment]
HANDOFFS: Table = m.Handoff.__table__  # type: ignore[assignment]
STORES: Table = m.Store.__table__  # type: ignore[assignment]
WINDOWS: Table = m.ReorderWindow.__table__  # type: ignore[assignment]
MESSAGES = INBOUND  # the same table holds what we sent (direction "out", with its outbox id)

_WEEK = re.compile(r"^(\d{4})-W(\d{2})$")
WEEK_YEARS = (1970, 9998)  # a week asked for: its trend's weeks before and the next week exist as dates
Z95 = 1.959964
# customers each group needs before its lift is called anything: on a handful even the score interval is too
# generous (3 of 3 treated against 0 of 1 held out: [+2.8, +100] points, "significant" on four customers). It counts
# customers, not conversions: 1,000 reminded with 100 reordering against 500 held out with none is plenty to tell
MIN_GROUP = 30
REACHED = REACHED_STATES  # WhatsApp took the message (or a dry run stood in for it), as the runner counts
OPT_OUT_HOURS = 72  # an opt-out is put down to the last message that reached the contact this long before it
LIFT_JOURNEYS = ("checkout_recovery", "payment_recovery", "reorder")


@dataclass(frozen=True)
class Period:
    label: str
    start: datetime  # UTC, inclusive
    end: datetime  # UTC, exclusive

    def previous(self, tz: ZoneInfo) -> "Period":
        local = self.start.astimezone(tz).date() - timedelta(days=7)
        return week_period(local.isocalendar().year, local.isocalendar().week, tz)


def week_period(year: int, week: int, tz: ZoneInfo) -> Period:
    monday = date.fromisocalendar(year, week, 1)
    start = datetime.combine(monday, time(0), tz).astimezone(timezone.utc)
    end = datetime.combine(monday + timedelta(days=7), time(0), tz).astimezone(timezone.utc)
    return Period(f"{year}-W{week:02d}", start, end)


def parse_week(label: str | None, tz: ZoneInfo, now: datetime) -> Period:
    """``2026-W47`` (ISO week, in the store's time zone); None: the last complete week."""
    if label is None:
        last = (now.astimezone(tz) - timedelta(days=7)).date().isocalendar()
        return week_period(last.year, last.week, tz)
    match = _WEEK.match(label.strip())
    if not match:
        raise ValueError(f"{label!r} is not an ISO week (use e.g. 2026-W47)")
    if not WEEK_YEARS[0] <= int(match.group(1)) <= WEEK_YEARS[1]:  # the report's weeks before and after stay on the calendar
        raise ValueError(f"{label!r}: no such ISO week (years {WEEK_YEARS[0]} to {WEEK_YEARS[1]})")
    try:
        return week_period(int(match.group(1)), int(match.group(2)), tz)
    except ValueError:
        raise ValueError(f"{label!r}: no such ISO week") from None


def _rate(num: float, den: float) -> float | None:
    return round(num / den, 4) if den else None


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def _money(runs: list[Any], currency: str | None) -> dict[str, str]:
    """The runs' revenue per currency (each run keeps its order's), never added across currencies."""
    return money.by_currency(((r.state.get("currency"), r.state.get("revenue")) for r in runs), currency)


def _iso(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _one_per_checkout(runs: list[Any]) -> list[Any]:
    """A cart that became an unpaid order is one checkout: the order's run, which went on with the
    cart's ladder (``continues``), counts; the cart's own run does not count again."""
    taken_over = {s for r in runs for s in continued(r.state)}
    return [r for r in runs if r.subject not in taken_over] if taken_over else runs


def _one_per_purchase(conn: Connection, store_id: int, runs: list[Any], p: Period) -> list[Any]:
    """Her newer unpaid try at a purchase whose pay reminder was queued goes on from the older try's run
    (``continues``, ``payment_recovery._taking_over``): one stalled payment, counted once, in the week of
    the oldest run of the chain (the one first reminded), as the run whose outcome stands for it: the one
    paid, if she paid one of the tries (the reminded order itself, or the newer try), else the newest. So a
    newer try that started the next week counts in this week (its run read by her contact), and one that goes
    on from a run of an earlier week counts there, not here."""
    subjects = {r.subject for r in runs}
    chained = {r.contact_id for r in runs if r.contact_id is not None and stalled(r.state)}
    later = [r for r in _contacts_payment_runs(conn, store_id, chained, since=p.end)
             if any(s in subjects for s in continued(r.state))]
    chains: dict[str, list[Any]] = {}
    for r in [*runs, *later]:
        oldest = (r.subject, *continued(r.state))[-1]  # continues, then continues_also: the oldest last
        if oldest in subjects:  # else the chain began in an earlier week: counted there
            chains.setdefault(oldest, []).append(r)
    return [max(chain, key=lambda r: (pay_recovered(r.state), bool(r.state.get("paid")), len(continued(r.state))))
            for chain in chains.values()]


# which of a journey's runs its funnel and lift count: a checkout still open at its abandonment time, a
# payment still pending when its reminder came (a run starts at the checkout or the order, before either)
COHORT = {"checkout_recovery": was_abandoned, "payment_recovery": stalled}


def _cohort(conn: Connection, store_id: int, journey: str, p: Period) -> list[Any]:
    """The runs of ``journey`` of the period that reached the point its messages are about (``COHORT``), each
    checkout once, each stalled payment once (``_one_per_purchase``)."""
    runs = _runs(conn, store_id, journey, p)
    counts = COHORT.get(journey)
    if journey == "checkout_recovery":  # a cart that became an unpaid order: one checkout
        runs = _one_per_checkout(runs)
    elif journey == "payment_recovery":  # her newer unpaid try went on from the older one: one payment
        runs = _one_per_purchase(conn, store_id, runs, p)
    return runs if counts is None else [r for r in runs if counts(r.state)]


def _runs(conn: Connection, store_id: int, journey: str, p: Period) -> list[Any]:
    return conn.execute(
        select(RUNS.c.status, RUNS.c.state, RUNS.c.holdout, RUNS.c.started_at, RUNS.c.contact_id, RUNS.c.subject)
        .where(RUNS.c.store_id == store_id, RUNS.c.journey == journey, RUNS.c.started_at >= p.start, RUNS.c.started_at < p.end)
    ).all()


def _chunks(ids: list[Any], size: int = 500) -> Any:
    for i in range(0, len(ids), size):
        yield ids[i:i + size]


# with ``cancelled_at``: an order whose money the store no longer has, or never had (a WooCommerce order whose payment
# failed: it exists before its payment, and stays ``failed`` unless she pays)
CALLED_OFF_PAYMENTS = ("refunded", "voided", "failed")
# the orders' (store_id, external_id) unique index: a run's order, only ever in the report's own store
ORDERS_NOW = select(ORDERS.c.external_id, ORDERS.c.placed_at, ORDERS.c.cancelled_at, ORDERS.c.payment_state, ORDERS.c.is_cod,
                    ORDERS.c.contact_id).where(
    ORDERS.c.store_id == bindparam("sid"), ORDERS.c.external_id.in_(bindparam("ids", expanding=True)))


def _orders_now(conn: Connection, store_id: int, ids: set[str]) -> dict[str, Any]:
    """The store's orders by id as they stand now (placed, cancelled, payment state; whose)."""
    found: dict[str, Any] = {}
    for chunk in _chunks(sorted(ids)):
        found.update((row.external_id, row) for row in conn.execute(ORDERS_NOW, {"sid": store_id, "ids": chunk}))
    return found


def _called_off(order: Any) -> bool:
    """Cancelled, voided, refunded or failed by now: a sale that did not stand (a partial refund still stands)."""
    return order is not None and (order.cancelled_at is not None or order.payment_state in CALLED_OFF_PAYMENTS)


def _awaits_payment(order: Any) -> bool:
    """Still waiting for money that is not cash on delivery (a WooCommerce bank transfer on hold, a Shopify bank
    deposit pending): no sale yet. A cart run from before ``checkout_recovery`` waited for such a payment credited
    the order as placed; it recovers nothing until the order is paid. The journey's own rule, read from the stored
    row (same fields; a failed payment also counts there, and is called off here anyway)."""
    return order is not None and awaits_payment(order)


def run_order(journey: str, run: Any) -> str | None:
    """The order a run credits: ``order_id`` (a payment run from before it was kept: its subject's order)."""
    order_id = run.state.get("order_id")
    if order_id is None and journey == "payment_recovery" and str(run.subject).startswith("order:"):
        order_id = str(run.subject).split(":", 1)[1]
    return None if order_id is None else str(order_id)


def orders_standing(conn: Connection, store_id: int, journey: str, runs: list[Any]) -> list[bool]:
    """For each run: does the order it credits still stand? Read from the order as stored now, not from the
    run, so a cancel or a refund counts whenever it came (before or after the order reached the run). A run
    with no order, or whose order row is gone, stands on its own record."""
    found = _orders_now(conn, store_id, {o for r in runs if (o := run_order(journey, r)) is not None})
    unpaid = _awaits_payment if journey == "checkout_recovery" else (lambda _order: False)  # a cart is recovered by a purchase
    return [not _called_off(order) and not unpaid(order) for order in (found.get(run_order(journey, r) or "") for r in runs)]


def reordered_in_window(conn: Connection, store_id: int, runs: list[Any]) -> list[bool]:
    """For each reorder run: did the customer reorder the product inside the attribution window,
    in an order that still stands (not cancelled, voided or refunded since) and is paid (or cash on
    delivery)? One still waiting for a bank transfer or other manual payment is no reorder yet, as the
    window scans hold it (``windows._reordered_since``); it counts once paid, for either group.

    The run records the reorder (``reordered``, ``order_id``) whether its contact is in the
    holdout or not; the order's own time is compared with ``attribution_ends`` here, so a
    reorder that reached the run after its window (the timer that ends it fires on the next
    tick) counts for neither group. A run whose order row is gone counts on its flag.
    """
    found = _orders_now(conn, store_id, {str(r.state["order_id"]) for r in runs if r.state.get("reordered") and r.state.get("order_id")})
    out = []
    for r in runs:
        order, ends = found.get(str(r.state.get("order_id"))), _iso(r.state.get("attribution_ends"))
        inside = order is None or ends is None or order.placed_at <= ends
        out.append(bool(r.state.get("reordered")) and inside and not _called_off(order) and not _awaits_payment(order))
    return out


def reminders_went_out(conn: Connection, store_id: int, journey: str, steps: tuple[str, ...], runs: list[Any]) -> list[bool]:
    """For each run: did one of its reminders go out (WhatsApp took it)? A run records what it
    queued; its outbox rows (keyed journey, step, subject) say what became of it. A run none of
    whose rows can be read (written by hand, or removed) counts on its own record."""
    # a run that took over another's ladder (``continues``: a cart that became an unpaid order) went out with its sends too
    keys = [[step_key(journey, step, subject)[:255] for subject in (r.subject, *continued(r.state)) for step in steps]
            for r in runs]
    statuses: dict[str, str] = {}
    for chunk in _chunks(sorted({k for ks in keys for k in ks})):
        statuses.update(conn.execute(select(OUTBOX.c.idempotency_key, OUTBOX.c.status)
                                     .where(OUTBOX.c.store_id == store_id, OUTBOX.c.idempotency_key.in_(chunk))).all())
    out = []
    for ks in keys:
        found = [statuses[k] for k in ks if k in statuses]
        out.append(any(s in REACHED for s in found) if found else True)
    return out


def converted(conn: Connection, store_id: int, journey: str, runs: list[Any]) -> list[bool]:
    """What each journey exists to cause, read the same way for treated and holdout runs."""
    if journey in ("checkout_recovery", "payment_recovery"):
        flag = "order_id" if journey == "checkout_recovery" else "paid"
        return [bool(r.state.get(flag)) and ok for r, ok in zip(runs, orders_standing(conn, store_id, journey, runs))]
    if journey == "reorder":
        return reordered_in_window(conn, store_id, runs)
    raise ValueError(f"no conversion defined for {journey}")


# the contacts' payment runs, by the (store_id, contact_id) index: a contact's runs are few
_CONTACTS_PAYMENT_RUNS = select(RUNS.c.subject, RUNS.c.state, RUNS.c.status, RUNS.c.holdout, RUNS.c.started_at, RUNS.c.contact_id).where(
    RUNS.c.store_id == bindparam("sid"), RUNS.c.journey == "payment_recovery", RUNS.c.contact_id.in_(bindparam("cids", expanding=True)))


def _contacts_payment_runs(conn: Connection, store_id: int, contact_ids: set[Any], since: datetime | None = None) -> list[Any]:
    """The payment runs of these contacts, whatever week they started (or started ``since`` then)."""
    query = _CONTACTS_PAYMENT_RUNS if since is None else _CONTACTS_PAYMENT_RUNS.where(RUNS.c.started_at >= since)
    out: list[Any] = []
    for chunk in _chunks(sorted(contact_ids)):
        out += conn.execute(query, {"sid": store_id, "cids": chunk}).all()
    return out


# the journeys whose runs may credit the same order (the pay link of an order she left unpaid, or of her older try at
# it; the reorder reminder she tapped; the cart reminder of the checkout she left): one of them keeps it
# (``keeps_its_order``). Reminders that went out in the same instant: the later in the purchase's course keeps it (the
# reorder reminder leads to a checkout, the checkout to the order, the order to its payment)
CREDIT_RANK = {"reorder": 0, "checkout_recovery": 1, "payment_recovery": 2}
STEPS_OF = {"checkout_recovery": CART_STEPS, "payment_recovery": ("remind",), "reorder": REORDER_STEPS}
_NEVER = datetime.min.replace(tzinfo=timezone.utc)  # a run none of whose reminders can be read: before any that can
# who the customer of these orders is: their contacts' emails (by id), then her contacts with one of them (the
# (store_id, lower(trim(email))) index): she checked out, or was reminded, under another number
_EMAILS = select(CONTACTS.c.email).where(CONTACTS.c.id.in_(bindparam("cids", expanding=True)), CONTACTS.c.email.is_not(None))
_SAME_EMAIL = select(CONTACTS.c.id).where(
    CONTACTS.c.store_id == bindparam("sid"), func.lower(func.trim(CONTACTS.c.email)).in_(bindparam("keys", expanding=True)))
# her runs of the journeys that credit orders, by the (store_id, contact_id) index: a customer's runs are few
_CREDITING_RUNS = select(RUNS.c.journey, RUNS.c.subject, RUNS.c.state, RUNS.c.holdout, RUNS.c.contact_id).where(
    RUNS.c.store_id == bindparam("sid"), RUNS.c.journey.in_(bindparam("js", expanding=True)),
    RUNS.c.contact_id.in_(bindparam("cids", expanding=True)))


def credits_order(journey: str, state: Any, placed: datetime | None = None) -> bool:
    """Whether a run's state credits an order to its reminders, as its stage counts it: a cart recovered, a payment
    recovered (``payment_recovery.recovered``), a reorder attributed inside its window (the order, placed at
    ``placed``, no later than ``attribution_ends``). Whether the order still stands is the order's, the same for all."""
    state = state or {}
    if journey == "payment_recovery":
        return pay_recovered(state)
    if journey == "reorder":
        ends = _iso(state.get("attribution_ends"))
        return bool(state.get("reordered")) and state.get("attributed") is not False and bool(state.get("order_id")) \
            and (placed is None or ends is None or placed <= ends)
    return bool(state.get("recovered")) and bool(state.get("order_id"))


def _her_contacts(conn: Connection, store_id: int, contact_ids: set[Any]) -> set[Any]:
    """These contacts and the store's others with the email of one of them (trimmed, any case): an order reaches her
    runs under her other number by its email (``runner._same_email_contacts``)."""
    keys: set[str] = set()
    for chunk in _chunks(sorted(contact_ids)):
        keys.update(k for e in conn.execute(_EMAILS, {"cids": chunk}).scalars() if (k := email_key(e)) is not None)
    found = set(contact_ids)
    for chunk in _chunks(sorted(keys)):
        found.update(conn.execute(_SAME_EMAIL, {"sid": store_id, "keys": chunk}).scalars())
    return found


def _crediting_runs(conn: Connection, store_id: int, orders: dict[str, Any], ids: set[str],
                    runs: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """Every treated run, of any journey and week, that credits one of the orders ``ids`` (``credits_order``): ``runs``
    (their stage's own), and the runs of the orders' customer: the orders' contacts and the runs', and her contacts
    with the same email. Each (journey, subject) once."""
    found = {(journey, r.subject): (journey, r) for journey, r in runs}
    contacts = {o.contact_id for o in orders.values() if o.contact_id is not None} | {r.contact_id for _j, r in runs if r.contact_id is not None}
    for chunk in _chunks(sorted(_her_contacts(conn, store_id, contacts))):
        for row in conn.execute(_CREDITING_RUNS, {"sid": store_id, "js": list(CREDIT_RANK), "cids": chunk}):
            order = run_order(row.journey, row)
            if not row.holdout and order in ids and credits_order(row.journey, row.state, getattr(orders.get(order), "placed_at", None)):
                found.setdefault((row.journey, row.subject), (row.journey, row))
    return list(found.values())


def _last_reminders(conn: Connection, store_id: int, runs: list[tuple[str, Any]], placed: dict[str, datetime]) -> list[datetime | None]:
    """For each (journey, run): when its last reminder that went out (WhatsApp took it) before the purchase it is
    credited with reached her: before its order was placed for a cart or a reorder; a pay reminder asks for the payment
    of an order already placed, so any of its own (or of the older try it went on from)."""
    keys = [[step_key(journey, step, subject)[:255] for subject in (r.subject, *continued(r.state)) for step in STEPS_OF[journey]]
            for journey, r in runs]
    sent = ob.sent_times(conn, store_id, {k for ks in keys for k in ks})
    out: list[datetime | None] = []
    for (journey, r), ks in zip(runs, keys):
        bound = None if journey == "payment_recovery" else placed.get(run_order(journey, r) or "")
        out.append(max((sent[k] for k in ks if k in sent and (bound is None or sent[k] <= bound)), default=None))
    return out


def keeps_its_order(conn: Connection, store_id: int, journey: str, runs: list[Any]) -> list[bool]:
    """For each of ``journey``'s credited runs: does its journey keep the order it credits? One order is credited once,
    to one journey: of all the runs that credit it (``_crediting_runs``: whatever journey, week or number of hers), the
    one whose reminder reached her last before it (``_last_reminders``) keeps it; reminders that went out in the same
    instant, the later journey in the purchase's course (``CREDIT_RANK``); a run none of whose reminders can be read
    (its outbox rows gone), before any that can. The reorder reminder she tapped, then the cart reminder of the checkout
    she left, makes it the cart's recovery, not also a reorder; a cart ladder ended, then the reorder reminder she
    ordered from, the reorder's; an order left unpaid, then paid after its pay link, the pay reminder's (it came after
    the order was placed, so after any cart or reorder reminder before it); a pay link of her older try, then a reorder
    and a cart reminder before she bought anew, the cart's. One total order: exactly one journey keeps it, never none
    (a reorder of two reminded products in one order keeps it for both, each with its own lines). A run that loses its
    order is neither credited nor lost (she bought)."""
    ids = {o for r in runs if (o := run_order(journey, r)) is not None}
    if not ids:
        return [True] * len(runs)
    orders = _orders_now(conn, store_id, ids)
    crediting = _crediting_runs(conn, store_id, orders, ids, [(journey, r) for r in runs])
    if all(j == journey for j, _r in crediting):
        return [True] * len(runs)
    times = _last_reminders(conn, store_id, crediting, {k: o.placed_at for k, o in orders.items()})
    home: dict[str, tuple[datetime, int, str]] = {}
    for (j, r), at in zip(crediting, times):
        order, claim = run_order(j, r) or "", (at or _NEVER, CREDIT_RANK[j], j)
        home[order] = max(home.get(order, claim), claim)
    return [(o := run_order(journey, r)) is None or home.get(o, (_NEVER, 0, journey))[2] == journey for r in runs]


def _keep_credit(conn: Connection, store_id: int, journey: str, runs: list[Any]) -> tuple[list[Any], int]:
    """The credited runs that keep their order (``keeps_its_order``), and how many gave it up to another journey."""
    kept = keeps_its_order(conn, store_id, journey, runs)
    return [r for r, keep in zip(runs, kept) if keep], kept.count(False)


def _standing(conn: Connection, store_id: int, journey: str, runs: list[Any]) -> list[Any]:
    """The runs whose order still stands: a recovery the store cancelled or refunded since recovered nothing."""
    return [r for r, ok in zip(runs, orders_standing(conn, store_id, journey, runs)) if ok]


# -- stages ------------------------------------------------------------------------------------
def entry(conn: Connection, store_id: int, p: Period) -> dict[str, Any]:
    new = conn.execute(
        select(CONTACTS.c.id, CONTACTS.c.consent_marketing)
        .where(CONTACTS.c.store_id == store_id, CONTACTS.c.created_at >= p.start, CONTACTS.c.created_at < p.end,
               # a contact joined to the one of her new number (``number_change._join``): she is counted there
               ~CONTACTS.c.phone_key.startswith(MOVED, autoescape=True))
    ).all()
    ids = [r.id for r in new]
    first: dict[int, tuple[datetime, str]] = {}
    sources = (
        ("order", ORDERS.c.contact_id, ORDERS.c.placed_at, ORDERS.c.store_id == store_id),
        ("checkout", CHECKOUTS.c.contact_id, CHECKOUTS.c.started_at, CHECKOUTS.c.store_id == store_id),
        ("whatsapp", INBOUND.c.contact_id, INBOUND.c.occurred_at, (INBOUND.c.store_id == store_id) & (INBOUND.c.direction == "in")),
    )
    for source, contact_col, at_col, where in sources:
        for chunk in _chunks(ids):
            query = select(contact_col, func.min(at_col)).where(where, contact_col.in_(chunk)).group_by(contact_col)
            for cid, at in conn.execute(query):
                if at is not None and (cid not in first or at < first[cid][0]):
                    first[cid] = (at, source)
    by_source = Counter(first[c][1] if c in first else "other" for c in ids)
    consented = sum(1 for r in new if r.consent_marketing == "granted")
    return {"new_contacts": len(new), "by_source": dict(sorted(by_source.items())), "marketing_consent": consented,
            "consent_rate": _rate(consented, len(new)), "lost": len(new) - consented}


def qualification(conn: Connection, store_id: int, p: Period) -> dict[str, Any]:
    runs = _runs(conn, store_id, "cod_confirmation", p)
    # asked: the question went out to someone it could reach (``not_reached`` are counted apart:
    # they could not answer, and would lower the confirmation rate for a reason not theirs)
    queued = [r for r in runs if r.state.get("asked_at")]
    asked = [r for r in queued if r.state.get("choice") != "not_reached"]
    choice = Counter(r.state.get("choice") for r in queued)
    confirmed = choice["confirmed"] + choice["confirmed_late"]
    # she answered in words and no tap decided it since: a person has it (the order was neither
    # confirmed here nor lost; one the store cancelled after talking to her is lost)
    with_person = sum(1 for r in asked if r.state.get("phase") == "with_person" and r.state.get("choice") is None
                      and r.state.get("closed_by") != "order.cancelled")
    minutes = []
    for r in asked:
        a = _iso(r.state.get("asked_at"))
        answers = [t for t in (_iso(r.state.get("answered_at")), _iso(r.state.get("replied_at"))) if t]  # a tap, or words
        if a and answers:
            minutes.append((min(answers) - a).total_seconds() / 60)
    return {"cod_orders": len(runs), "asked": len(asked), "confirmed": confirmed, "cancelled": choice["cancelled"],
            "cancel_after_fulfilment": choice["cancel_too_late"], "no_answer": choice["no_answer"],
            "not_reached": choice["not_reached"],  # none of our messages reached them: flagged for a call, never cancelled
            "confirmed_by_store": choice["confirmed_by_store"],  # the store confirmed it itself (a call): not ours, not lost
            "paid": choice["paid"],  # paid in full before she answered (the store's invoice): prepaid now, not lost
            "with_person": with_person,  # answered in words: a person decides, not counted lost
            "opted_out": choice["opted_out"],  # opted out (STOP) after the question: flagged for a call, never cancelled; lost
            "confirmation_rate": _rate(confirmed, len(asked)), "median_minutes_to_answer": _median(minutes),
            "lost": len(asked) - confirmed - choice["confirmed_by_store"] - choice["paid"] - with_person}


# which treated runs queued a reminder, and the steps whose outbox rows say whether it went out
QUEUED = {"checkout_recovery": (lambda r: int(r.state.get("sent", 0)) > 0, CART_STEPS),
          "payment_recovery": (lambda r: stalled(r.state), ("remind",)),  # its own reminder, or its older try's (``continues``)
          "reorder": (lambda r: int(r.state.get("sent", 0)) > 0, REORDER_STEPS)}


def credited_elsewhere(run: Any) -> bool:
    """A pay run whose payment, made on one order for two of her reminded orders, credits another of her runs
    (``credited_to``): she paid, so it is not lost, and one purchase is counted once, as the run it credits."""
    return bool(run.state.get("credited_to"))


def reminded(conn: Connection, store_id: int, journey: str, runs: list[Any]) -> list[Any]:
    """The treated runs of ``runs`` a reminder reached (WhatsApp took it): the funnel's ``reminded``, the lift's reach."""
    queued_if, steps = QUEUED[journey]
    queued = [r for r in runs if not r.holdout and queued_if(r)]
    return [r for r, out in zip(queued, reminders_went_out(conn, store_id, journey, steps, queued)) if out]


def conversion(conn: Connection, store_id: int, p: Period, currency: str | None = None) -> dict[str, Any]:
    checkouts = _cohort(conn, store_id, "checkout_recovery", p)
    reached = reminded(conn, store_id, "checkout_recovery", checkouts)
    standing = _standing(conn, store_id, "checkout_recovery", [r for r in reached if r.state.get("recovered")])
    payments = _cohort(conn, store_id, "payment_recovery", p)
    pay_reminded = [r for r in reminded(conn, store_id, "payment_recovery", payments) if not credited_elsewhere(r)]
    # paid within the journey's attribution window after its reminder went out (``payment_recovery.recovered``:
    # not a payment made before the reminder went out, which a reminder already on its way reached after it)
    paid = _standing(conn, store_id, "payment_recovery", [r for r in pay_reminded if pay_recovered(r.state)])
    # one order, one home: the journey whose reminder reached her last before it (a cart's order paid after its pay link
    # is the pay reminder's; a reorder reminder after the cart reminder, the reorder's): the others' runs are not lost
    recovered, _elsewhere = _keep_credit(conn, store_id, "checkout_recovery", standing)  # in `standing`: not lost
    paid, pay_elsewhere = _keep_credit(conn, store_id, "payment_recovery", paid)
    return {
        "checkouts_abandoned": len(checkouts), "checkouts_reminded": len(reached), "checkouts_recovered": len(recovered),
        "recovery_rate": _rate(len(recovered), len(reached)), "recovered_revenue": _money(recovered, currency),
        "payments_stalled": len(payments), "payments_reminded": len(pay_reminded), "payments_recovered": len(paid),
        "payment_recovery_rate": _rate(len(paid), len(pay_reminded)),
        "payment_recovered_revenue": _money(paid, currency),
        "lost": (len(reached) - len(standing)) + (len(pay_reminded) - len(paid) - pay_elsewhere),
    }


def post_purchase(conn: Connection, store_id: int, p: Period) -> dict[str, Any]:
    statuses = Counter(conn.execute(
        select(OUTBOX.c.status).where(OUTBOX.c.store_id == store_id, OUTBOX.c.journey == "delivery", OUTBOX.c.channel == "whatsapp",
                                      OUTBOX.c.created_at >= p.start, OUTBOX.c.created_at < p.end)
    ).scalars())
    shipments = _runs(conn, store_id, "delivery", p)
    ndr = sum(1 for r in shipments if "failed" in (r.state.get("sent") or []))
    opened = conn.execute(
        select(HANDOFFS.c.opened_at, HANDOFFS.c.closed_at)
        .where(HANDOFFS.c.store_id == store_id, HANDOFFS.c.opened_at >= p.start, HANDOFFS.c.opened_at < p.end)
    ).all()
    hours = [(h.closed_at - h.opened_at).total_seconds() / 3600 for h in opened if h.closed_at is not None]
    return {
        "updates_sent": statuses["sent"] + statuses["delivered"] + statuses["read"], "updates_delivered": statuses["delivered"] + statuses["read"],
        "updates_read": statuses["read"], "updates_failed": statuses["failed"], "shipments": len(shipments), "ndr": ndr,
        "ndr_rate": _rate(ndr, len(shipments)), "handoffs_opened": len(opened), "handoffs_resolved": len(hours),
        "median_hours_to_resolve": _median(hours), "lost": ndr,
    }


def retention(conn: Connection, store_id: int, p: Period, currency: str | None = None) -> dict[str, Any]:
    opened = conn.execute(
        select(func.count()).select_from(WINDOWS)
        .where(WINDOWS.c.store_id == store_id, WINDOWS.c.opened_at >= p.start, WINDOWS.c.opened_at < p.end)
    ).scalar() or 0
    runs = _runs(conn, store_id, "reorder", p)
    reached = reminded(conn, store_id, "reorder", runs)
    # a reorder placed before any reminder went out (one held for quiet hours) is not credited to it
    reordered = [r for r, yes in zip(reached, reordered_in_window(conn, store_id, reached))
                 if yes and r.state.get("attributed") is not False]
    # one order, one home: a cart or pay reminder that reached her after the reorder reminder has it (neither lost)
    # (``keeps_its_order``)
    reordered, elsewhere = _keep_credit(conn, store_id, "reorder", reordered)
    return {"windows_opened": opened, "reminded": len(reached), "skipped_busy": sum(1 for r in runs if r.state.get("skipped")),
            "reordered_in_window": len(reordered), "repeat_rate": _rate(len(reordered), len(reached)),
            "revenue": _money(reordered, currency), "lost": len(reached) - len(reordered) - elsewhere}


STAGES = {"entry": entry, "qualification": qualification, "conversion": conversion, "post_purchase": post_purchase, "retention": retention}
MONEY_STAGES = ("conversion", "retention")  # their revenue figures are told the store's currency (``money.by_currency``)
HEADLINE = {"entry": "consent_rate", "qualification": "confirmation_rate", "conversion": "recovery_rate", "post_purchase": "ndr_rate",
            "retention": "repeat_rate"}


# -- message health, lift, hand-offs -------------------------------------------------------------
def _template_row(name: str) -> dict[str, Any]:
    return {"template": name, "queued": 0, "sent": 0, "delivered": 0, "read": 0, "failed": 0, "failed_by_code": Counter(), "skipped": 0,
            "skipped_by_reason": Counter(), "pending": 0, "opt_outs": 0}


def _template_name(payload: Any) -> str:
    return ((payload or {}).get("message") or {}).get("name") or "-"


# prebuilt, and pinned to their indexes by tests/test_query_plans.py (ix_outbox_attempts_outbox_id,
# ix_messages_store_outbox, ix_consent_changes_store_state_time): a store with months of messages
# must not pay for all of them in every weekly report
ATTEMPT_CODES = (select(ATTEMPTS.c.outbox_id, ATTEMPTS.c.error_code)
                 .where(ATTEMPTS.c.store_id == bindparam("sid"), ATTEMPTS.c.outbox_id.in_(bindparam("oids", expanding=True)))
                 .order_by(ATTEMPTS.c.id))
STATUS_CODES = select(MESSAGES.c.outbox_id, MESSAGES.c.error_code).where(
    MESSAGES.c.store_id == bindparam("sid"), MESSAGES.c.outbox_id.in_(bindparam("oids", expanding=True)),
    MESSAGES.c.direction == "out", MESSAGES.c.error_code.is_not(None))
MARKETING_REVOKED = select(CONSENT.c.contact_id, CONSENT.c.occurred_at).where(
    CONSENT.c.store_id == bindparam("sid"), CONSENT.c.category == "marketing", CONSENT.c.state == "revoked",
    CONSENT.c.occurred_at >= bindparam("start"), CONSENT.c.occurred_at < bindparam("end"))


def _failure_codes(conn: Connection, store_id: int, ids: list[int]) -> dict[int, int | None]:
    """Meta's code for each failed send: the failed status webhook's (kept on the message), else the last attempt's."""
    codes: dict[int, int | None] = {}
    for chunk in _chunks(ids):
        for oid, code in conn.execute(ATTEMPT_CODES, {"sid": store_id, "oids": chunk}):
            codes[oid] = code  # the last attempt's code
        for oid, code in conn.execute(STATUS_CODES, {"sid": store_id, "oids": chunk}):
            codes[oid] = code  # sent, then failed on Meta's side: the status webhook says why
    return codes


def _opt_outs(conn: Connection, store_id: int, p: Period) -> tuple[int, Counter[str], dict[str, str]]:
    """Marketing opt-outs of the week: (total, per journey.step of the last message that reached the contact, names)."""
    revoked = conn.execute(MARKETING_REVOKED, {"sid": store_id, "start": p.start, "end": p.end}).all()
    window = timedelta(hours=OPT_OUT_HOURS)
    reached: dict[int, list[tuple[datetime, str, str]]] = defaultdict(list)
    for chunk in _chunks(sorted({r.contact_id for r in revoked})):
        for row in conn.execute(
            select(MESSAGES.c.contact_id, MESSAGES.c.occurred_at, OUTBOX.c.journey, OUTBOX.c.step, OUTBOX.c.payload)
            .select_from(MESSAGES.join(OUTBOX, OUTBOX.c.id == MESSAGES.c.outbox_id))
            .where(MESSAGES.c.store_id == store_id, MESSAGES.c.direction == "out", MESSAGES.c.status != "failed",
                   MESSAGES.c.contact_id.in_(chunk), MESSAGES.c.occurred_at >= p.start - window, MESSAGES.c.occurred_at < p.end)
        ):
            reached[row.contact_id].append((row.occurred_at, f"{row.journey}.{row.step}", _template_name(row.payload)))
    per_step: Counter[str] = Counter()
    names: dict[str, str] = {}
    for r in revoked:
        before = [m_ for m_ in reached.get(r.contact_id, []) if r.occurred_at - window <= m_[0] <= r.occurred_at]
        if before:
            _at, step, name = max(before)
            per_step[step] += 1
            names.setdefault(step, name)
    return len(revoked), per_step, names


def message_health(conn: Connection, store_id: int, p: Period) -> dict[str, Any]:
    rows = conn.execute(
        select(OUTBOX.c.id, OUTBOX.c.journey, OUTBOX.c.step, OUTBOX.c.status, OUTBOX.c.skip_reason, OUTBOX.c.payload)
        .where(OUTBOX.c.store_id == store_id, OUTBOX.c.channel == "whatsapp", OUTBOX.c.created_at >= p.start, OUTBOX.c.created_at < p.end)
    ).all()
    codes = _failure_codes(conn, store_id, [r.id for r in rows if r.status == "failed"])
    templates: dict[str, dict[str, Any]] = {}
    for r in rows:
        name = _template_name(r.payload)
        t = templates.setdefault(f"{r.journey}.{r.step}", _template_row(name))
        t["queued"] += 1
        if t["template"] == "-" and name != "-":
            t["template"] = name  # rows skipped before rendering (holdout, no consent) carry no message
        if r.status in ("sent", "delivered", "read"):
            t["sent"] += 1
            t["delivered"] += r.status in ("delivered", "read")
            t["read"] += r.status == "read"
        elif r.status == "failed":
            t["failed"] += 1
            t["failed_by_code"][str(codes.get(r.id) or "unknown")] += 1
        elif r.status == "skipped":
            t["skipped"] += 1
            t["skipped_by_reason"][(r.skip_reason or "unknown").split(":")[0]] += 1
        else:
            t["pending"] += 1
    total, per_step, names = _opt_outs(conn, store_id, p)
    for step, n in per_step.items():
        # the message may have gone out before the week began (a Monday STOP to Sunday's message)
        templates.setdefault(step, _template_row(names[step]))["opt_outs"] = n
    for t in templates.values():
        t["failed_by_code"] = dict(sorted(t["failed_by_code"].items()))
        t["skipped_by_reason"] = dict(sorted(t["skipped_by_reason"].items()))
        t["read_rate"] = _rate(t["read"], t["sent"])
    return {"templates": dict(sorted(templates.items())), "opt_outs": total, "opt_outs_without_message": total - sum(per_step.values()),
            "opt_out_hours": OPT_OUT_HOURS}


def _wilson(x: int, n: int) -> tuple[float, float]:
    """Wilson's score interval for x of n: unlike the normal approximation it keeps a width at 0 of n or n of n."""
    p, z2 = x / n, Z95 * Z95
    centre, half = (p + z2 / (2 * n)), Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, (centre - half) / (1 + z2 / n)), min(1.0, (centre + half) / (1 + z2 / n))


def diff_interval(conv_t: int, n_t: int, conv_c: int, n_c: int, reached: int | None = None) -> dict[str, Any]:
    """Treated minus control conversion with a 95% interval (Newcombe's hybrid score interval, built from each
    group's Wilson interval).

    Why not the normal approximation: a group with no conversions (or all) has no spread there, so the interval
    shrinks to a point and rare outcomes look certain (5 of 1,000 against 0 of 500 came out "significant"; Fisher's
    exact test says p = 0.17). The score interval stays honest at zero counts, so large groups with rare or no
    conversions need no special case. ``too_few``: a group has fewer than ``MIN_GROUP`` customers; the figures stay,
    but the difference is never called ``significant``.
    With ``reached`` (treated runs a reminder reached), also the lift per customer reached: the
    difference over the reached share, its interval scaled alike (the share taken as known)."""
    if not n_t or not n_c:
        return {"treated": n_t, "control": n_c, "lift": None, "ci95": None, "significant": None}
    p_t, p_c = conv_t / n_t, conv_c / n_c
    (lo_t, hi_t), (lo_c, hi_c) = _wilson(conv_t, n_t), _wilson(conv_c, n_c)
    lift = p_t - p_c
    lo = lift - math.sqrt((p_t - lo_t) ** 2 + (hi_c - p_c) ** 2)
    hi = lift + math.sqrt((hi_t - p_t) ** 2 + (p_c - lo_c) ** 2)
    too_few = min(n_t, n_c) < MIN_GROUP  # too few to tell: nothing is claimed on a handful of customers
    out = {"treated": n_t, "treated_converted": conv_t, "treated_rate": round(p_t, 4), "control": n_c, "control_converted": conv_c,
           "control_rate": round(p_c, 4), "lift": round(lift, 4), "ci95": [round(lo, 4), round(hi, 4)],
           "relative_lift": round(lift / p_c, 4) if p_c else None, "significant": (lo > 0 or hi < 0) and not too_few,
           "too_few": too_few}
    if reached is not None:
        share = reached / n_t
        out.update(treated_reached=reached, reach_rate=round(share, 4),
                   lift_per_reached=round(lift / share, 4) if reached else None,
                   ci95_per_reached=[round(lo / share, 4), round(hi / share, 4)] if reached else None)
    return out


def lift(conn: Connection, store_id: int, p: Period) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for journey in LIFT_JOURNEYS:
        # runs the journey skipped (the customer was busy elsewhere) were skipped in both groups alike
        # and a pay run whose payment credits another of her runs is that run's purchase, counted once
        runs = [r for r in _cohort(conn, store_id, journey, p) if not r.state.get("skipped") and not credited_elsewhere(r)]
        if not any(r.holdout for r in runs):
            continue  # no holdout configured (or nobody in it yet): nothing to compare against
        outcome = converted(conn, store_id, journey, runs)
        treated = [yes for r, yes in zip(runs, outcome) if not r.holdout]
        control = [yes for r, yes in zip(runs, outcome) if r.holdout]
        out[journey] = diff_interval(sum(treated), len(treated), sum(control), len(control), len(reminded(conn, store_id, journey, runs)))
    return out


def open_handoffs(conn: Connection, store_id: int) -> dict[str, int]:
    rows = conn.execute(
        select(HANDOFFS.c.owner, func.count()).where(HANDOFFS.c.store_id == store_id, HANDOFFS.c.status == "open")
        .group_by(HANDOFFS.c.owner)
    ).all()
    return {owner or "unassigned": n for owner, n in sorted(rows, key=lambda r: (r[0] or ""))}


def _change(now: Any, before: Any) -> Any:
    if isinstance(now, dict) and isinstance(before, dict) and (money.is_money(now) or money.is_money(before)):
        return money.difference(now, before)  # per currency
    if isinstance(now, dict) and isinstance(before, dict):  # counts by key (new contacts by source)
        keys = sorted(set(now) | set(before))
        if all(isinstance(v, int) for v in [*now.values(), *before.values()]):
            return {k: now.get(k, 0) - before.get(k, 0) for k in keys}
        return None
    if isinstance(now, (int, float)) and isinstance(before, (int, float)) and not isinstance(now, bool):
        return round(now - before, 4)
    if isinstance(now, str) and isinstance(before, str):
        try:
            return str(Decimal(now) - Decimal(before))
        except ArithmeticError:
            return None
    return None


def build_report(db: Database, store: Any, store_id: int, period: Period, now: datetime | None = None) -> dict[str, Any]:
    """The whole weekly report as JSON-ready data (CLI, API and dashboard share it); ``now``: the
    worker's clock, for what is true now (``connector_health``)."""
    tz = store.tz
    previous = period.previous(tz)
    currency = getattr(store, "currency", None)
    with db.engine.connect() as conn:
        stages: dict[str, Any] = {}
        for name, fn in STAGES.items():
            kw = {"currency": currency} if name in MONEY_STAGES else {}
            current, before = fn(conn, store_id, period, **kw), fn(conn, store_id, previous, **kw)
            stages[name] = {
                "owner": store.stages[name].owner if name in store.stages else None,
                "headline": HEADLINE[name],
                "metrics": current,
                "previous": before,
                "change": {k: _change(v, before.get(k)) for k, v in current.items() if _change(v, before.get(k)) is not None},
            }
        messages = message_health(conn, store_id, period)
        lifts = lift(conn, store_id, period)
        handoffs = open_handoffs(conn, store_id)
        health = connector_health(conn, store_id, now, getattr(store, "whatsapp_phone_number_id", None))
    leak_stage = max(stages, key=lambda s: stages[s]["metrics"]["lost"])
    lost = stages[leak_stage]["metrics"]["lost"]
    return {
        "store": store.key,
        "currency": currency,  # the store's own, first in every money figure (None: not configured)
        "period": {"week": period.label, "start": period.start.isoformat(), "end": period.end.isoformat(), "timezone": store.timezone,
                   "previous": previous.label},
        "stages": stages,
        "message_health": messages,
        "lift": lifts,
        "biggest_leak": {"stage": leak_stage if lost else None, "lost": lost, "owner": stages[leak_stage]["owner"] if lost else None},
        "open_handoffs": handoffs,
        "connector_health": health,
    }


def connector_health(conn: Connection, store_id: int, now: datetime | None = None, phone_number_id: str | None = None) -> dict[str, Any]:
    """Now, not for the week (as ``open_handoffs``): inbox rows that failed for good (``storeloop
    replay`` processes them again after a fix), journey runs whose timer raised (parked, tried
    again by themselves; ``storeloop replay --timers`` at once), each scheduled job's last outcome,
    the WhatsApp number's state as Meta last said it (quality rating, messaging limit, sends held by a
    restriction), a dispatcher's pause of the store's number (``whatsapp_pause``), the messages held for
    WhatsApp's messaging limit and until when (``messaging_limit_hold``, ``outbox.meter``), and the sites whose
    authentic deliveries were refused as another site than the store's in the last 7 days (``refused_sites``)."""
    from connector.admin import failed_count
    from connector.job_health import job_states
    from connector.journeys.timer_failures import parked_runs
    from connector.number_health import view
    from connector.outbox.store import held_for_limit
    from connector.refused_sites import refused_sites

    now = now or datetime.now(timezone.utc)
    row = conn.execute(select(STORES.c.whatsapp_health, STORES.c.whatsapp_held_until).where(STORES.c.id == store_id)).first()
    whatsapp = view(row.whatsapp_health if row else None, row.whatsapp_held_until if row else None, now)
    return {"inbox_failed": failed_count(conn, store_id), "timers_failing": parked_runs(conn, store_id),
            "jobs": job_states(conn, store_id), "whatsapp": whatsapp, "whatsapp_pause": whatsapp_pause(conn, store_id, phone_number_id, now),
            "messaging_limit_hold": held_for_limit(conn, store_id, now), "refused_sites": refused_sites(conn, store_id, now)}


def whatsapp_pause(conn: Connection, store_id: int, phone_number_id: str | None, now: datetime) -> dict[str, Any] | None:
    """The store's number, if a dispatcher paused its sends and the pause's end is still ahead: over Meta's
    API call rate limit (a wait, nothing to fix) or an account-level refusal (fix the account); Meta's code
    and what it means, since when and the next try, and how many of the store's messages are due by then
    (held by it; a reminder planned days ahead is not). The owner tells a stuck shop from a quiet one by it.
    A pause past its end with nothing left to send is no pause (no probe comes to clear its row)."""
    from adapters.whatsapp.errors import describe
    from connector.outbox.store import paused_number, waiting

    pause = paused_number(conn, phone_number_id, now)
    if pause is None:
        return None
    return {"rate_limit": pause.rate_limit, "code": pause.code, "reason": describe(pause.code),
            "since": pause.since.isoformat() if pause.since is not None else None, "until": pause.until.isoformat(),
            "waiting": waiting(conn, store_id, pause.until)}
