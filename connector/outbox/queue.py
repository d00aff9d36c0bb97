"""Queue a journey step's message: render its template, gate it, record it once.

The idempotency key is (journey, step, subject), so a repeated or reordered event can
never queue a step twice. A message the policy blocks is still recorded, as ``skipped``
with its reason, so the weekly report can say why someone was not messaged.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, select

from connector.config import ShopifyStore, WooCommerceStore
from connector.journeys.registry import journeys
from connector.messages import InteractiveButtons, TextMessage
from connector.outbox import store as ob
from connector.policy import CART_JOURNEYS, ContactFacts, PolicyRules, SendHistory, check
from connector.storage.sql import CONTACTS, OUTBOX, flush, update_by_id
from connector.storage.txcache import by_id, current
from connector.templates import MissingValueError, render_stored


@dataclass(frozen=True, slots=True)
class Queued:
    outbox_id: int | None  # None: already queued (duplicate), or held for the batch's executemany (ob.enqueue)
    status: str  # pending | skipped | duplicate
    reason: str | None = None
    deferred: bool = False  # pending, but not to go now (quiet hours, a later due time)


def _queued(conn: Connection, new_id: int | None, reason: str | None, deferred: bool = False) -> Queued:
    if new_id is None and current(conn) is None:
        return Queued(None, "duplicate")
    return Queued(new_id, "skipped" if reason else "pending", reason, deferred and not reason)


_CONTACT = select(CONTACTS).where(CONTACTS.c.id == bindparam("cid"))
# by the unique (store_id, key) index alone; status and reason are checked on the one row
_BY_KEY = select(OUTBOX.c.id, OUTBOX.c.status, OUTBOX.c.skip_reason).where(
    OUTBOX.c.store_id == bindparam("sid"), OUTBOX.c.idempotency_key == bindparam("key"))


def _contact(conn: Connection, store: ShopifyStore | WooCommerceStore, store_id: int, contact_id: int):  # type: ignore[no-untyped-def]
    """The contact's phone and the facts the gate needs; it must belong to this store."""
    contact = by_id(conn, "contacts", contact_id, _CONTACT, {"cid": contact_id})
    if contact is None or contact.store_id != store_id:
        raise ValueError(f"contact {contact_id} does not belong to store {store.key}")
    return contact


def gate_category(journey: str | None, category: str | None) -> str | None:
    """The category a message is gated and recorded as: a step of a marketing journey (its class
    says ``marketing = True``: checkout recovery, reorder) is marketing whatever its template's
    category says, so a cart reminder bound to a "utility" template still needs the marketing
    opt-in, counts toward the cap and waits out quiet hours. Other journeys keep the template's."""
    if journey is not None and getattr(journeys().get(journey), "marketing", False):
        return "marketing"
    return category


def _needs_history(category: str, journey: str) -> bool:
    """The gate reads the send history only for marketing and for cart journeys (policy.check)."""
    return category == "marketing" or journey in CART_JOURNEYS


def _facts(contact) -> ContactFacts:  # type: ignore[no-untyped-def]
    return ContactFacts(contact.consent_utility, contact.consent_marketing, contact.opted_out_at, contact.last_inbound_at, contact.reachable,
                        contact.unreachable_at)


def _history_since(rules: PolicyRules, now: datetime) -> datetime:
    """How far back the gate reads a contact's sends (the frequency cap, a cart reminder's quiet after an order)."""
    return now - max(rules.marketing_cap_window, rules.cart_quiet_after_order)


def step_key(journey: str, step: str, subject: str, occurrence: int = 1) -> str:
    """The idempotency key of a journey step's message: (journey, step, subject), and for a
    step's second or later time (``Send.occurrence``) its number after the step."""
    return f"{journey}:{step}:{subject}" if occurrence <= 1 else f"{journey}:{step}#{occurrence}:{subject}"


def queue_template(
    conn: Connection,
    *,
    store: ShopifyStore | WooCommerceStore,
    store_id: int,
    contact_id: int,
    journey: str,
    step: str,
    subject: str,
    context: dict[str, Any],
    now: datetime,
    due_at: datetime | None = None,
    retry_missing_value: bool = False,
    occurrence: int = 1,
    retry_withdrawn: bool = False,
) -> Queued:
    """Render, gate and queue a journey step's template. ``retry_missing_value``: the step may be
    on record as skipped for a missing value (``Send.retry_missing_value``); that row is queued.
    ``retry_withdrawn``: the step may be on record as withdrawn before it went (``journey_ended``:
    ``Send.retry_withdrawn``); that row is queued, with the message as it reads now.
    ``occurrence``: the step's nth time for this subject (``step_key``)."""
    tpl = store.template_for(f"{journey}.{step}")
    key = step_key(journey, step, subject, occurrence)
    contact = _contact(conn, store, store_id, contact_id)
    reason: str | None = None
    payload: dict[str, Any] = {"subject": subject}
    category = gate_category(journey, tpl.category) if tpl else None
    if tpl is None:
        reason = "no_template_configured"
    elif contact.phone_e164 is None:
        reason = "unreachable"
    else:
        try:
            payload["message"] = render_stored(tpl, context, to=contact.phone_e164, callback_data=None)
        except MissingValueError as exc:
            reason = f"missing_value: {exc}"
    when = due_at or now
    if reason is None:
        facts = _facts(contact)
        rules = store.policy.rules()
        history = SendHistory()
        if _needs_history(category or "utility", journey):  # one query saved per utility message
            history = ob.send_history(conn, [contact_id], _history_since(rules, now)).get(contact_id, SendHistory())
        decision = check(category=category or "utility", kind="template", journey=journey, contact=facts, history=history, rules=rules, tz=store.tz, now=when)
        if decision.deferred:
            when = decision.defer_until or when
        elif not decision.allowed:
            reason = decision.reason
    if reason is None and (retry_missing_value or retry_withdrawn):
        requeued = _requeue_skipped(conn, store_id, key, payload, when, now, missing_value=retry_missing_value,
                                    withdrawn=retry_withdrawn)
        if requeued is not None:
            return Queued(requeued, "pending", deferred=when > now)
    new_id = ob.enqueue(
        conn, store_id=store_id, key=key, contact_id=contact_id, journey=journey, step=step, category=category,
        payload=payload, due_at=when, now=now, skip_reason=reason,
    )
    return _queued(conn, new_id, reason, when > now)


def put_back(conn: Connection, *, store: ShopifyStore | WooCommerceStore, store_id: int, keys: list[str], reason: str,
             now: datetime) -> list[str]:
    """Put back to waiting the messages with these keys withheld as ``reason`` (``ob.unskip``), each planned as queueing
    it now would plan it (``queue_template``): from now, or its own due time if later, and past the policy gate's
    deferral from then (quiet hours): a reorder reminder put back at 22:00 waits for the morning, and its latest useful
    send time (``policy.send_by``) counts from then, so it is not skipped as ``too_late`` for the night. What the
    gate refuses outright (the cap, no consent) is left to the dispatcher's gate, which decides again when it is due.
    The contacts' facts and send history are read once for the lot (per 500 rows). The keys put back."""
    rules = store.policy.rules()

    def plan(rows: list[Any]) -> dict[int, datetime]:
        planned: dict[int, datetime] = {}
        for start in range(0, len(rows), 500):
            part = rows[start:start + 500]
            cids = sorted({r.contact_id for r in part if r.contact_id is not None})
            facts = ob.contact_facts(conn, cids)
            read = sorted({r.contact_id for r in part if r.contact_id in facts and _needs_history(r.category or "utility", r.journey or "")})
            history = ob.send_history(conn, read, _history_since(rules, now)) if read else {}
            for r in part:
                when = max(r.due_at, now) if r.due_at is not None else now
                if r.contact_id in facts:
                    kind = ((r.payload or {}).get("message") or {}).get("kind", "template")
                    decision = check(category=r.category or "utility", kind=kind, journey=r.journey, contact=facts[r.contact_id],
                                     history=history.get(r.contact_id, SendHistory()), rules=rules, tz=store.tz, now=when)
                    if decision.deferred:
                        when = decision.defer_until or when
                planned[r.id] = when
        return planned

    return ob.unskip(conn, store_id, keys, reason, now, plan=plan)


# the row FOR UPDATE: the dispatcher's claim (SKIP LOCKED) passes over it until the new message is written
_WAITING_BY_KEY = select(OUTBOX.c.id, OUTBOX.c.status, OUTBOX.c.payload).where(
    OUTBOX.c.store_id == bindparam("sid"), OUTBOX.c.idempotency_key == bindparam("key"), OUTBOX.c.channel == "whatsapp"
).with_for_update()


def refresh_template(
    conn: Connection,
    *,
    store: ShopifyStore | WooCommerceStore,
    store_id: int,
    contact_id: int,
    journey: str,
    step: str,
    subject: str,
    context: dict[str, Any],
    now: datetime,
) -> bool:
    """Render a step's message again with ``context`` if it is still waiting (``pending``: held for quiet hours,
    a retry), keeping its time and gate (``engine.Refresh``); True if it was. One that went out, is being sent
    or was skipped stays as it was, and so does one the new values cannot fill (a missing value)."""
    tpl = store.template_for(f"{journey}.{step}")
    if tpl is None:
        return False
    flush(conn)  # the row may be held for the batch's executemany
    row = conn.execute(_WAITING_BY_KEY, {"sid": store_id, "key": step_key(journey, step, subject)[:255]}).first()
    if row is None or row.status != "pending":
        return False
    contact = _contact(conn, store, store_id, contact_id)
    if contact.phone_e164 is None:
        return False
    try:
        message = render_stored(tpl, context, to=contact.phone_e164, callback_data=None)
    except MissingValueError:
        return False
    update_by_id(conn, OUTBOX, row.id, {"payload": {**(row.payload or {}), "message": message}, "updated_at": now})
    return True


def _requeue_skipped(conn: Connection, store_id: int, key: str, payload: dict[str, Any], due_at: datetime,
                     now: datetime, *, missing_value: bool, withdrawn: bool) -> int | None:
    """The key's row skipped for a missing value (``missing_value``), or withdrawn before it went (``withdrawn``:
    skipped ``journey_ended``), becomes pending with the full message; its id, or None (no such row: the key is
    new, or its message was queued or sent, or skipped for another reason, and stays once)."""
    flush(conn)  # the skipped row may be held for the batch's executemany
    row = conn.execute(_BY_KEY, {"sid": store_id, "key": key[:255]}).first()
    why = (row.skip_reason or "") if row is not None else ""
    if row is None or row.status != "skipped" or not (
            (missing_value and why.startswith("missing_value")) or (withdrawn and why == "journey_ended")):
        return None
    update_by_id(conn, OUTBOX, row.id, {"status": "pending", "skip_reason": None, "payload": payload, "due_at": due_at,
                                     "planned_at": due_at, "updated_at": now})
    return row.id


def queue_free_form(
    conn: Connection,
    *,
    store: ShopifyStore | WooCommerceStore,
    store_id: int,
    contact_id: int,
    journey: str,
    step: str,
    subject: str,
    message: InteractiveButtons | TextMessage,
    category: str,
    now: datetime,
    fallback_context: dict[str, Any] | None = None,
) -> Queued:
    """Queue an interactive or text message (a reply inside the 24-hour window).

    With ``fallback_context`` and a template bound to the same ``journey.step``, the
    rendered template is kept beside the message: if WhatsApp answers 131047 (the window
    had closed after all), the same step goes out as that template instead.
    """
    contact = _contact(conn, store, store_id, contact_id)
    facts = _facts(contact)
    category = gate_category(journey, category) or category
    decision = check(category=category, kind=message.kind, journey=journey, contact=facts, history=SendHistory(),
                     rules=store.policy.rules(), tz=store.tz, now=now)
    reason = None if decision.allowed or decision.deferred else decision.reason
    if contact.phone_e164 is None:
        reason = "unreachable"
    payload: dict[str, Any] = {"subject": subject, "message": message.model_copy(update={"to": contact.phone_e164 or message.to}).model_dump(mode="json")}
    tpl = store.template_for(f"{journey}.{step}")
    if fallback_context is not None and tpl is not None and contact.phone_e164:
        try:
            payload["fallback"] = render_stored(tpl, fallback_context, to=contact.phone_e164, callback_data=None)
            payload["fallback_category"] = gate_category(journey, tpl.category)
        except MissingValueError:
            pass
    new_id = ob.enqueue(
        conn, store_id=store_id, key=step_key(journey, step, subject), contact_id=contact_id, journey=journey, step=step,
        category=category, payload=payload, due_at=decision.defer_until or now, now=now, skip_reason=reason,
    )
    return _queued(conn, new_id, reason)
