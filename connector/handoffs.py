"""Hand-offs to a person, and the five stages a contact moves through.

A hand-off carries the whole context (stage, active journey, last order, recent
messages), goes to the owner of the contact's stage, and notifies them through the
stage's outgoing webhook (Slack-compatible JSON) via the outbox. Rules are pure; the
runner applies them inside the processor's transaction.

A customer's typed reply continues the journey it answers. One that quotes our message
answers that message's journey and subject only: it is added to that journey's open case,
or opens a new case for it (its stage owner is told), never another journey's case. One
that quotes nothing is added to the case of the journey it answers by phone (the contact's
latest active run), else to the contact's latest case whose run waits on a person (e.g. a
failed delivery), else, answering no journey, to the contact's open case that last heard
from them within ``reply_match_days``; only with no such case open does it open its own.
Her later messages in an open case tell its owner again at most once per ``follow_up_minutes``.

Meta pausing, disabling, recategorising or rating RED a template the store sends opens a case
about no customer (subject ``template:<name>:<language>``, ``template_requests``); Meta flagging
the store's number, lowering its limit, restricting or disabling the account opens one about its
number (subject ``number:<phone_number_id>``, ``number_requests``).

A case about an order (subject ``order:<id>``) carries that order in its context (``order``)
beside the contact's newest (``last_order``); its alert names the case's own. Alerts escape
Slack's control characters in every value they show.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite

from connector import events as ev
from connector.outbox import store as ob
from connector.policy import keyword_intent
from connector.rows import contact_row
from connector.storage.sql import CONTACTS, FULFILLMENTS, HANDOFFS, MESSAGES, ORDERS, RUNS, flush, update_by_id
from connector.number_health import NumberNews, health_stage, number_news, number_subject
from connector.template_check import template_news, template_quality_news, template_subject


@dataclass(frozen=True, slots=True)
class HandoffRequest:
    key: str
    reason: str
    journey: str | None = None
    subject: str | None = None
    # a free-text reply: stands back when one of the contact's runs asked for it (state
    # ``awaiting_reply``); that journey opens the case itself, saying what the answer is for
    unless_awaited: bool = False
    # a second request for an open case is added to it; True: its owner is notified again
    notify_update: bool = True
    # news for a case, if one is open (a failed parcel delivered after all): none open, nothing to tell
    only_open: bool = False
    # with ``only_open``: the case by its id (one the key does not name: the contact's reply case a
    # customer's words joined); None: the case with ``key``
    case_id: int | None = None
    # a free-text reply: added to the open case of the journey it answers (``journey`` and
    # ``subject`` from the quoted message, or by phone) or, quoting nothing, of a run waiting on a person
    continues_open: bool = False
    # a reply quoting one of our messages: ``journey`` and ``subject`` are that message's, and
    # it continues (or stands back for) that journey only
    quoted: bool = False
    # the stage the case concerns (its journey's ``stage``): that stage's owner takes it, wherever
    # the contact's other orders have moved them since (None, or a stage with no owner: the contact's stage)
    stage: str | None = None


_STAGE_ORDER = {s: i for i, s in enumerate(("entry", "qualification", "conversion", "post_purchase", "retention"))}


def journey_stage(journey: str | None) -> str | None:
    """The stage a journey's cases belong to (its class's ``stage``; None for none, or a plugin that names none)."""
    if journey is None:
        return None
    from connector.journeys.registry import journeys  # the registry loads the journeys, which need nothing from here

    stage = getattr(journeys().get(journey), "stage", None)
    return stage if stage in _STAGE_ORDER else None


def stage_after(event: Any, current: str, *, order_called_off: bool = False) -> str | None:
    """The stage an event moves the contact to (None: unchanged).

    A new order starts a new purchase cycle and may move a contact back (a retention customer
    who orders again is in qualification, conversion or post-purchase for that order), and so
    may a fulfilment (a second order still on its way, or failing to arrive, puts them back in
    post-purchase, with its owner). A payment only moves them forward: a COD order is marked
    paid when the cash is collected, after delivery, and that must not pull the customer out
    of retention. News of an order called off (cancelled, fully refunded) moves no one: where
    that leaves her is for her other orders to say (``restage``, when it is called off); that is the
    event's own order, or for parcel news, which carries none, the stored one (``order_called_off``)."""
    if order_called_off and isinstance(event, ev.FulfillmentUpdated):
        return None  # a carrier scan after the cancel, a return shipment after a refund
    stage = _stage_of(event, current)
    if stage is None or isinstance(event, (ev.OrderPlaced, ev.FulfillmentUpdated)):
        return stage
    return stage if _STAGE_ORDER.get(stage, 0) > _STAGE_ORDER.get(current, 0) else None


def _stage_of(event: Any, current: str) -> str | None:
    order = getattr(event, "order", None)
    if isinstance(order, ev.Order) and ev.called_off(order.cancelled_at, order.payment_state):
        # a cancelled or refunded order is no purchase: news of it (a paid order cancelled without a
        # refund, the store tagging it later) moves no one on; ``restage`` settles where it leaves her
        return None
    if isinstance(event, ev.CheckoutUpdated) and event.checkout.completed_at is None and current == "entry":
        return "conversion"
    if isinstance(event, ev.OrderPlaced):
        o = event.order
        if o.payment_state in ev.PAID_AS_SHE_KNOWS:
            return "post_purchase"
        return "qualification" if o.is_cod else "conversion"
    if isinstance(event, ev.OrderPaid):
        return "post_purchase"
    if isinstance(event, ev.OrderUpdated) and event.order.payment_state in ev.PAID_AS_SHE_KNOWS:
        # WooCommerce says "paid" only this way (an order updated to processing with date_paid)
        return "post_purchase"
    if isinstance(event, ev.FulfillmentUpdated):
        return "retention" if event.fulfillment.shipment_status in ev.DELIVERED_STATUSES else "post_purchase"
    return None


@dataclass(frozen=True, slots=True)
class Purchase:
    """One of her orders that still counts (not ``called_off``), as the stage rules see it."""

    moved_at: datetime  # when it last moved her: placed, or its latest parcel news
    paid: bool  # paid as far as she knows
    cod: bool
    confirmed: bool  # a COD order she, or the store, confirmed
    shipped: bool
    delivered: bool  # its latest parcel news says it is in her hands


def stage_of_purchases(purchases: list[Purchase], checked_out: bool) -> str:
    """The stage her orders that still count give, as ``stage_after`` would have left her had the
    ones called off never been placed: the order that moved her last decides (placed, shipped or
    delivered; a payment moves no one back, so it does not count as news). With none left she is
    where she was before buying: in conversion if she went through a checkout (without the order it
    is a checkout left unfinished), else in entry (an order entered by the store's staff)."""
    latest = max(purchases, key=lambda p: p.moved_at, default=None)
    if latest is None:
        return "conversion" if checked_out else "entry"
    if latest.delivered:
        return "retention"
    if latest.shipped or latest.paid or latest.confirmed:
        return "post_purchase"
    return "qualification" if latest.cod else "conversion"


_HER_ORDERS = select(ORDERS.c.external_id, ORDERS.c.placed_at, ORDERS.c.payment_state, ORDERS.c.fulfillment_state, ORDERS.c.is_cod,
                     ORDERS.c.channel, ORDERS.c.cancelled_at).where(
    ORDERS.c.store_id == bindparam("sid"), ORDERS.c.contact_id == bindparam("cid"))
# by the order id's index alone (the store is checked on the rows): beside ``store_id = ?`` SQLite, which has no
# statistics here, picks the (store_id, external_id) index and reads every fulfilment of the store
_THEIR_PARCELS = select(FULFILLMENTS.c.store_id, FULFILLMENTS.c.order_external_id, FULFILLMENTS.c.source_updated_at,
                        FULFILLMENTS.c.delivered_at).where(FULFILLMENTS.c.order_external_id.in_(bindparam("oids", expanding=True)))
_THEIR_COD_RUNS = select(RUNS.c.subject, RUNS.c.state).where(
    RUNS.c.store_id == bindparam("sid"), RUNS.c.journey == bindparam("journey"), RUNS.c.subject.in_(bindparam("subjects", expanding=True)))


def restage(conn: Connection, store_id: int, contact_id: int, now: datetime) -> str:
    """Put a contact one of whose orders was just called off (cancelled, binned, fully refunded) in
    the stage her other orders give (``stage_of_purchases``): a returning customer whose new COD order
    is cancelled is back in retention, not left with the COD team. The contact row keeps no history;
    her orders, their parcels and her COD answers are it. Runs only on that rare event (a few
    indexed reads); returns the stage."""
    from connector.journeys.cod_confirmation import CONFIRMED, CodConfirmation

    flush(conn)  # the called-off order's change, and orders of hers held back in this batch, must be readable
    params = {"sid": store_id, "cid": contact_id}
    orders = conn.execute(_HER_ORDERS, params).all()
    live = [o for o in orders if not ev.called_off(o.cancelled_at, o.payment_state)]
    parcels: dict[str, Any] = {}
    if live:
        for f in conn.execute(_THEIR_PARCELS, {"oids": [o.external_id for o in live]}):
            if f.store_id != store_id:
                continue
            if f.order_external_id not in parcels or f.source_updated_at > parcels[f.order_external_id].source_updated_at:
                parcels[f.order_external_id] = f
    shipped = {o.external_id for o in live
               if o.fulfillment_state in (ev.FulfillmentState.FULFILLED, ev.FulfillmentState.PARTIAL) or o.external_id in parcels}
    paid = {o.external_id for o in live if o.payment_state in ev.PAID_AS_SHE_KNOWS}
    asked = [f"order:{o.external_id}" for o in live if o.is_cod and o.external_id not in shipped | paid]
    confirmed = {r.subject.split(":", 1)[1] for r in conn.execute(
        _THEIR_COD_RUNS, {"sid": store_id, "journey": CodConfirmation.name, "subjects": asked}) if (r.state or {}).get("choice") in CONFIRMED
    } if asked else set()
    purchases = [Purchase(moved_at=max(o.placed_at, parcels[o.external_id].source_updated_at) if o.external_id in parcels else o.placed_at,
                          paid=o.external_id in paid, cod=o.is_cod, confirmed=o.external_id in confirmed, shipped=o.external_id in shipped,
                          delivered=o.external_id in parcels and parcels[o.external_id].delivered_at is not None)
                 for o in live]
    stage = stage_of_purchases(purchases, checked_out=any(o.channel == ev.SalesChannel.ONLINE for o in orders))
    contact = contact_row(conn, contact_id)
    if contact is not None and contact.stage != stage:
        update_by_id(conn, CONTACTS, contact_id, {"stage": stage, "updated_at": now})
    return stage


# what a customer sent that only a person can take in (adapters/whatsapp/normalize.py names a voice note
# "voice"), as a case's reason names it
SENT = {"image": "a photo", "video": "a video", "voice": "a voice note", "audio": "an audio file",
        "document": "a document", "location": "a location", "contacts": "a contact card",
        "order": "an order from the catalog",
        "unsupported": "a message WhatsApp does not pass on (see the chat)",
        "unknown": "a message WhatsApp does not pass on (see the chat)"}
# the reasons that quote the customer's words after ": ": her message (``rules``: what she sent and what
# it answered first) and the reason she gave for cancelling a COD order (journeys/cod_confirmation.py)
_QUOTING = re.compile(
    r"(customer (?:wrote|sent (?:%s))(?: \(answering [^()]*\))?"
    r"|customer cancelled COD order [^:]*?|customer asked to cancel a COD order that has already shipped)(?:: .*)?"
    % "|".join(re.escape(v) for v in sorted(set(SENT.values()))), re.DOTALL)


def reason_without_words(reason: str, removed: str) -> str:
    """A case's reason without the customer's words it quotes, for the conversation retention: what
    she did and what it answered stay, ``removed`` says what went. A reason of ours (a high-value
    order, a failed delivery, a template or number alert) quotes no one and stays as it is."""
    found = _QUOTING.fullmatch(reason)
    if found:
        return f"{found.group(1)} ({removed})"
    if reason.startswith(("customer wrote", "customer sent")):  # her message in a shape not known here: keep none of it
        return f"{' '.join(reason.split()[:2])} ({removed})"
    return reason


REPLY_CASE = "reply:"  # the key prefix of a customer's own question that answers no journey (``reply:<contact id>``)


def rules(event: Any, contact_id: int | None, store: Any, reply_journey: str | None, reply_subject: str | None,
          quoted: bool = False) -> list[HandoffRequest]:
    """Which events need a person (NDRs come from the delivery journey itself).

    ``reply_journey`` / ``reply_subject``: the journey a reply answers, by the message it
    quotes (``quoted``) or by phone. A reply with one is keyed by it (the key a journey's own
    case has), so it never lands in another journey's case; one with none shares the
    contact's generic ``reply:`` case."""
    out: list[HandoffRequest] = []
    if isinstance(event, (ev.TemplateStatusChanged, ev.TemplateCategoryChanged, ev.TemplateQualityChanged)):
        return template_requests(event, store)
    if isinstance(event, (ev.NumberQualityChanged, ev.AccountUpdated)):
        return number_requests(event, store)
    if contact_id is None:
        return out
    if isinstance(event, ev.MessageReceived) and store.handoff.free_text_replies:
        text = (event.text or "").strip()
        # what only a person can take in (adapters/whatsapp/normalize.py names a voice note "voice");
        # a reaction, a sticker or a system notice has no text and is none of these: no case
        sent = SENT.get(event.message_type)
        if (text or sent) and not (text and keyword_intent(text, store.policy.rules()) is not None):
            # only a quoted reply surely answers that message; one matched by phone carries the
            # journey (the case's journey and subject) without saying so in its reason
            what = f" (answering {reply_journey} {reply_subject})" if reply_journey and quoted else ""
            said = f": {text[:300]}" if text else ""
            reason = f"customer sent {sent}{what}{said}" if sent else f"customer wrote{what}{said}"
            # words go to the run that asked for them (a COD cancel reason); a voice note it cannot read
            # a quoted reply is keyed by what it answers (the key that journey's own case has); one
            # matched by phone shares the contact's reply case, so a conversation stays one case
            # while the run it matched ends or another becomes the latest
            key = f"{reply_journey}:{reply_subject}" if quoted and reply_journey and reply_subject else f"{REPLY_CASE}{contact_id}"
            out.append(HandoffRequest(key, reason, reply_journey, reply_subject, unless_awaited=bool(text),
                                      notify_update=False, continues_open=True, quoted=quoted and bool(reply_journey),
                                      stage=journey_stage(reply_journey)))
    if isinstance(event, ev.OrderPlaced) and store.handoff.order_value_over is not None:
        over = store.handoff.value_over(event.order.currency, getattr(store, "currency", None))
        if over is not None and float(event.order.total) > over:
            # the same order heard placed again (orders/updated came first, then orders/create)
            # adds nothing to its case and tells nobody twice
            out.append(HandoffRequest(f"order:{event.order.external_id}:high_value",
                                      f"high-value order {event.order.name} ({event.order.currency} {event.order.total})",
                                      None, f"order:{event.order.external_id}", notify_update=False))
    return out


def template_requests(event: ev.TemplateStatusChanged | ev.TemplateCategoryChanged | ev.TemplateQualityChanged,
                      store: Any) -> list[HandoffRequest]:
    """Meta paused, disabled, rejected, recategorised or rated RED a template the store sends: a case
    about no customer, one per template (its later news is added to it, and told), for the stage owner
    of the first journey that sends it. Good news (approved again, rated better) only adds to an open case."""
    news = (template_quality_news(store.templates, event) if isinstance(event, ev.TemplateQualityChanged)
            else template_news(store.templates, event))
    if news is None:
        return []
    journey = news.steps[0].split(".", 1)[0]
    key = template_subject(news.name, news.language)
    return [HandoffRequest(key, news.reason[:2000], journey, key, only_open=news.only_open, stage=journey_stage(journey))]


# built once: a statement built per call cost more than the queries themselves (an inbound
# free-text message opens a hand-off; a burst of them spent ~40% of its time building these)
_CONTEXT_CONTACT = select(CONTACTS.c.phone_e164, CONTACTS.c.first_name, CONTACTS.c.last_name, CONTACTS.c.stage).where(
    CONTACTS.c.id == bindparam("cid"))
_ORDER_FIELDS = (ORDERS.c.external_id, ORDERS.c.name, ORDERS.c.total, ORDERS.c.currency, ORDERS.c.payment_state, ORDERS.c.is_cod)
_CONTEXT_ORDER = (select(*_ORDER_FIELDS).where(ORDERS.c.store_id == bindparam("sid"), ORDERS.c.contact_id == bindparam("cid"))
                  .order_by(ORDERS.c.placed_at.desc()).limit(1))
_CASE_ORDER = select(*_ORDER_FIELDS).where(ORDERS.c.store_id == bindparam("sid"), ORDERS.c.external_id == bindparam("oid"))
_CONTEXT_RUNS = select(RUNS.c.journey, RUNS.c.subject, RUNS.c.status).where(
    RUNS.c.store_id == bindparam("sid"), RUNS.c.contact_id == bindparam("cid"), RUNS.c.status != "finished")
_CONTEXT_MESSAGES = (select(MESSAGES.c.direction, MESSAGES.c.kind, MESSAGES.c.body, MESSAGES.c.occurred_at).where(
    MESSAGES.c.store_id == bindparam("sid"), MESSAGES.c.contact_id == bindparam("cid"))
                     .order_by(MESSAGES.c.occurred_at.desc()).limit(5))


def _order_summary(order: Any) -> dict[str, Any] | None:
    return {"id": order.external_id, "name": order.name, "total": str(order.total), "currency": order.currency,
            "payment_state": order.payment_state, "cod": order.is_cod} if order else None


def _context(conn: Connection, store_id: int, contact_id: int | None) -> dict[str, Any]:
    if contact_id is None:
        return {}
    params = {"sid": store_id, "cid": contact_id}
    contact = conn.execute(_CONTEXT_CONTACT, params).first()
    order = conn.execute(_CONTEXT_ORDER, params).first()
    runs = conn.execute(_CONTEXT_RUNS, params).all()
    messages = conn.execute(_CONTEXT_MESSAGES, params).all()
    return {
        "phone": contact.phone_e164 if contact else None,
        "name": " ".join(p for p in (contact.first_name, contact.last_name) if p) if contact else None,
        "stage": contact.stage if contact else None,
        "last_order": _order_summary(order),
        "active_journeys": [{"journey": r.journey, "subject": r.subject, "status": r.status} for r in runs],
        "recent_messages": [{"direction": m_.direction, "type": m_.kind, "text": m_.body, "at": m_.occurred_at.isoformat()} for m_ in messages],
    }


def _with_case_order(conn: Connection, store_id: int, subject: str | None, context: dict[str, Any]) -> dict[str, Any]:
    """The context with ``order``: the order the case is about (its subject ``order:<id>``), which
    need not be the customer's newest (``last_order``): a failed delivery of #9999 while #10000 is
    on its way is about #9999. None for a case about no order (a question quoting nothing)."""
    if not (subject and subject.startswith("order:")):
        return {**context, "order": None} if context else context
    external_id = subject.split(":", 1)[1]
    newest = context.get("last_order")
    order = newest if newest and newest["id"] == external_id else _order_summary(
        conn.execute(_CASE_ORDER, {"sid": store_id, "oid": external_id}).first())
    return {**context, "order": order}


_OPEN_BY_KEY = select(HANDOFFS.c.id, HANDOFFS.c.stage, HANDOFFS.c.context, HANDOFFS.c.journey, HANDOFFS.c.subject,
                      HANDOFFS.c.opened_at).where(
    HANDOFFS.c.store_id == bindparam("sid"), HANDOFFS.c.key == bindparam("key"), HANDOFFS.c.status == "open")
_OPEN_BY_ID = select(HANDOFFS.c.id, HANDOFFS.c.stage, HANDOFFS.c.context, HANDOFFS.c.journey, HANDOFFS.c.subject,
                     HANDOFFS.c.opened_at).where(
    HANDOFFS.c.store_id == bindparam("sid"), HANDOFFS.c.id == bindparam("id"), HANDOFFS.c.status == "open")
_OPEN_BY_KEYS = select(HANDOFFS.c.id, HANDOFFS.c.key, HANDOFFS.c.stage, HANDOFFS.c.context, HANDOFFS.c.journey, HANDOFFS.c.subject,
                       HANDOFFS.c.opened_at).where(
    HANDOFFS.c.store_id == bindparam("sid"), HANDOFFS.c.key.in_(bindparam("keys", expanding=True)), HANDOFFS.c.status == "open")
_ACTIVE_STATES = select(RUNS.c.journey, RUNS.c.subject, RUNS.c.state).where(
    RUNS.c.store_id == bindparam("sid"), RUNS.c.contact_id == bindparam("cid"), RUNS.c.status == "active")
MAX_UPDATES = 20


def _awaited(conn: Connection, store_id: int, contact_id: int | None, req: HandoffRequest) -> bool:
    """Whether one of the contact's active runs asked them something (a COD cancel reason) that
    this reply answers: any such run for a reply quoting nothing, only the quoted one's run for
    a reply quoting our message (words quoting another order's delivery message are no reason)."""
    if contact_id is None:
        return False
    rows = conn.execute(_ACTIVE_STATES, {"sid": store_id, "cid": contact_id})
    return any((r.state or {}).get("awaiting_reply") and (not req.quoted or (r.journey, r.subject) == (req.journey, req.subject))
               for r in rows)


@functools.cache
def _insert_handoff(dialect: str) -> Any:
    """INSERT a case unless one with its key exists (the key's unique index), returning its id."""
    ins = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(HANDOFFS)
    return ins.on_conflict_do_nothing(index_elements=["store_id", "key"]).returning(HANDOFFS.c.id)


_OPEN_BY_SUBJECT = select(HANDOFFS.c.id, HANDOFFS.c.key, HANDOFFS.c.stage, HANDOFFS.c.context, HANDOFFS.c.journey,
                          HANDOFFS.c.subject, HANDOFFS.c.opened_at).where(
    HANDOFFS.c.store_id == bindparam("sid"), HANDOFFS.c.contact_id == bindparam("cid"), HANDOFFS.c.journey == bindparam("j"),
    HANDOFFS.c.subject == bindparam("s"), HANDOFFS.c.status == "open").order_by(HANDOFFS.c.id.desc()).limit(1)


_OPEN_OF_CONTACT = select(HANDOFFS.c.id, HANDOFFS.c.key, HANDOFFS.c.stage, HANDOFFS.c.context, HANDOFFS.c.journey,
                          HANDOFFS.c.subject, HANDOFFS.c.opened_at).where(
    HANDOFFS.c.store_id == bindparam("sid"), HANDOFFS.c.contact_id == bindparam("cid"), HANDOFFS.c.status == "open",
).order_by(HANDOFFS.c.id.desc()).limit(20)


def _last_active(case: Any) -> datetime:
    """When the case last heard something: its opening, or its latest update."""
    updates = (case.context or {}).get("updates") or []
    latest = datetime.fromisoformat(updates[-1]["at"]) if updates and updates[-1].get("at") else None
    return max(case.opened_at, latest) if latest is not None else case.opened_at


def _may_have_case(context: dict[str, Any]) -> bool:
    """Whether the contact could have an open case to continue: one with no order, no open run
    and no message but this one (a new number writing in) has none, and is spared the query (it
    reads the store's open cases: 2,000 new numbers in a batch would read them 2,000 times).
    Every case comes from an order, a run that wrote to them, or an earlier message of theirs."""
    return bool(context.get("last_order") or context.get("active_journeys") or len(context.get("recent_messages") or ()) > 1)


def _continued(conn: Connection, store: Any, store_id: int, contact_id: int | None, req: HandoffRequest,
               context: dict[str, Any], now: datetime) -> Any:
    """The open case a typed reply continues: that of the journey it answers; for a reply that
    quotes nothing, else the latest of the contact's runs waiting on a person (status
    ``handoff``, from the context just read), else, for one that answers no journey, the
    contact's open case that last heard from them within ``reply_match_days`` (the run a quoted
    question answered has ended since: her "hello?" is the same conversation, not a new case).
    A reply quoting our message continues its journey's case only. None: no such case."""
    answered = f"{req.journey}:{req.subject}"[:255] if req.journey and req.subject else None
    keys: set[str] = set()
    if not req.quoted:
        keys = {f"{r['journey']}:{r['subject']}"[:255] for r in context.get("active_journeys") or () if r["status"] == "handoff"}
    if answered:
        keys.add(answered)
    cases = conn.execute(_OPEN_BY_KEYS, {"sid": store_id, "keys": sorted(keys)}).all() if keys else []
    found = next((c for c in cases if c.key == answered), None)
    if found is None and answered and contact_id is not None:
        # a case a reply matched by phone opened for this journey (keyed as the contact's reply case)
        found = conn.execute(_OPEN_BY_SUBJECT, {"sid": store_id, "cid": contact_id, "j": req.journey, "s": req.subject}).first()
    found = found or max(cases, key=lambda c: c.id, default=None)
    if found is None and not req.quoted and req.journey is None and contact_id is not None and _may_have_case(context):
        since = now - timedelta(days=store.handoff.reply_match_days)
        recent = [c for c in conn.execute(_OPEN_OF_CONTACT, {"sid": store_id, "cid": contact_id}) if _last_active(c) >= since]
        found = max(recent, key=_last_active, default=None)
    return found


def _add_update(conn: Connection, store: Any, store_id: int, contact_id: int | None, case: Any, context: dict[str, Any],
                req: HandoffRequest, now: datetime) -> int:
    """Add a request to an open case with a fresh context (about the case's own order, whatever
    order the request names); its owner is told when ``req.notify_update``, or of the customer's
    own later message (``_follow_up``)."""
    context = _with_case_order(conn, store_id, case.subject, context)
    before = case.context or {}
    kept = before.get("updates") or []
    updates = [*kept, {"at": now.isoformat(), "reason": req.reason}][-MAX_UPDATES:]
    # the n-th update of the case, counted past the MAX_UPDATES kept: its notification's key
    # (a key taken from the capped list would repeat from the 21st update on, and be dropped)
    count = int(before.get("update_count") or len(kept)) + 1
    # when its owner was told last (``told_at``; none: at the opening) and of which update
    # (``told_update``, 0: the opening): the follow-up's rate limit, and the case's notification
    # the admin API reports on (``notification_key``)
    told = {k: before[k] for k in ("told_at", "told_update") if k in before}
    notify = req.notify_update or _follow_up(store, case, before, req, now)
    if notify:
        told = {"told_at": now.isoformat(), "told_update": count}
    update_by_id(conn, HANDOFFS, case.id, {"context": {**context, "updates": updates, "update_count": count, **told}})
    if notify:
        _notify(conn, store, store_id, contact_id, case.id, case.stage, case.journey, now, count)
    return case.id


def _follow_up(store: Any, case: Any, before: dict[str, Any], req: HandoffRequest, now: datetime) -> bool:
    """Whether a customer's later message in an open case tells its owner again: "actually, cancel
    my order" an hour on must not wait for someone to re-read the case. Rate-limited (at most one
    alert per case per ``handoff.follow_up_minutes``), so a burst of messages is one alert and the
    case's opening is not followed by a second alert for her next line."""
    minutes = store.handoff.follow_up_minutes
    if not req.continues_open or minutes is None:
        return False
    told_at = datetime.fromisoformat(before["told_at"]) if before.get("told_at") else case.opened_at
    return now - told_at >= timedelta(minutes=minutes)


def notification_key(hid: int, update: int = 0) -> str:
    """The outbox key of a case's notification (``update``: of its n-th update; 0: of its opening)."""
    return f"handoff:{hid}" + (f":update:{update}" if update else "")


def _notify(conn: Connection, store: Any, store_id: int, contact_id: int | None, hid: int, stage: str, journey: str | None,
            now: datetime, update: int = 0) -> None:
    """Queue the stage owner's notification of a case (``update``: the n-th update of it)."""
    owner_cfg = store.stages.get(stage)
    if owner_cfg is not None and owner_cfg.notify_url is not None:
        # ``update``: the alert shows that update, not whatever the case heard last by the time it goes out
        ob.enqueue(conn, store_id=store_id, key=notification_key(hid, update), contact_id=contact_id,
                   journey=journey, step="handoff", category=None, channel="notify",
                   payload={"handoff_id": hid, "stage": stage, **({"update": update} if update else {})}, due_at=now, now=now)


def open_handoff(conn: Connection, store: Any, store_id: int, contact_id: int | None, req: HandoffRequest, now: datetime) -> int | None:
    """Open one hand-off per cause; the same cause again (the customer's answer to a failed
    delivery) is added to the open case's ``updates`` with a fresh context, and its owner is
    told again when ``req.notify_update``. A typed reply (``req.continues_open``) is added to
    the case it continues, if one is open; else it opens its own (keyed by the journey it
    answers, if any), and its stage owner is told. The caller flushes held-back writes first."""
    if req.unless_awaited and _awaited(conn, store_id, contact_id, req):
        return None  # the run that asked takes the answer and opens the case with what it means
    context = _context(conn, store_id, contact_id)
    if req.continues_open:
        case = _continued(conn, store, store_id, contact_id, req, context, now)
        if case is not None:
            return _add_update(conn, store, store_id, contact_id, case, context, req, now)
    if req.only_open:
        case = (conn.execute(_OPEN_BY_ID, {"sid": store_id, "id": req.case_id}) if req.case_id is not None
                else conn.execute(_OPEN_BY_KEY, {"sid": store_id, "key": req.key[:255]})).first()
        return None if case is None else _add_update(conn, store, store_id, contact_id, case, context, req, now)
    joined = _reply_case_of(conn, store_id, contact_id, req)
    if joined is not None:
        # her words about this journey and order opened it: it becomes the run's own case (its key), so a run
        # waiting on it is released when a person closes it, and later news of the run finds it by its key
        update_by_id(conn, HANDOFFS, joined.id, {"key": req.key[:255]})
        return _add_update(conn, store, store_id, contact_id, joined, context, req, now)
    # the journey's stage when the store gave it an owner; else, as before stages came from journeys, the contact's
    stage = req.stage if req.stage in store.stages else (context.get("stage") or "entry")
    owner_cfg = store.stages.get(stage)
    hid = conn.execute(
        _insert_handoff(conn.dialect.name),
        dict(store_id=store_id, contact_id=contact_id, key=req.key[:255], reason=req.reason, stage=stage,
             owner=owner_cfg.owner if owner_cfg else None, journey=req.journey, subject=req.subject,
             context=_with_case_order(conn, store_id, req.subject, context),
             status="open", opened_at=now, closed_at=None, closed_by=None, resolution=None),
    ).scalar()
    if hid is None:
        case = conn.execute(_OPEN_BY_KEY, {"sid": store_id, "key": req.key[:255]}).first()
        if case is None:
            return None  # the key belongs to a closed case (closing frees it): nothing to add to
        return _add_update(conn, store, store_id, contact_id, case, context, req, now)
    _notify(conn, store, store_id, contact_id, hid, stage, req.journey, now)
    return hid


def _reply_case_of(conn: Connection, store_id: int, contact_id: int | None, req: HandoffRequest) -> Any:
    """For a journey's own case (keyed by its journey and subject), the contact's open case her words
    opened about that same journey and subject (matched by phone, so keyed as her reply case): one
    conversation about one order is one case (she asked about her COD order, then tapped Cancel with
    a reason). None: no such case, or the journey's own case is open (the insert adds to it)."""
    if contact_id is None or not req.journey or not req.subject or req.key != f"{req.journey}:{req.subject}"[:255]:
        return None
    if conn.execute(_OPEN_BY_KEY, {"sid": store_id, "key": req.key[:255]}).first() is not None:
        return None
    case = conn.execute(_OPEN_BY_SUBJECT, {"sid": store_id, "cid": contact_id, "j": req.journey, "s": req.subject}).first()
    return case if case is not None and case.key.startswith(REPLY_CASE) else None


def close_handoff(conn: Connection, store_id: int, handoff_id: int, by: str, resolution: str | None, now: datetime) -> bool:
    row = conn.execute(select(HANDOFFS.c.key, HANDOFFS.c.status, HANDOFFS.c.journey, HANDOFFS.c.subject).where(
        HANDOFFS.c.id == handoff_id, HANDOFFS.c.store_id == store_id)).first()
    if row is None or row.status != "open":
        return False
    # the run waiting on the case is locked before the case is written: the worker's batch updates a run,
    # then adds to its case (``_add_update``); taken the other way round, a close while the worker handles
    # that order's news could deadlock on PostgreSQL (the close failing, or the batch retried)
    run = _waiting_run(conn, store_id, row)
    # free the cause's key so the same cause can open a new case later; only an open case is
    # closed: of two people closing it at once, the first keeps their name and resolution and
    # the other is told it is no longer open
    done = conn.execute(
        update(HANDOFFS).where(HANDOFFS.c.id == handoff_id, HANDOFFS.c.store_id == store_id, HANDOFFS.c.status == "open")
        .values(status="closed", closed_at=now, closed_by=by[:120], resolution=resolution, key=f"{row.key}:closed:{handoff_id}"[:255]))
    if done.rowcount != 1:
        return False
    if run is not None:
        _release_run(conn, run, now)
    return True


_WAITING_RUN = select(RUNS.c.id, RUNS.c.journey, RUNS.c.subject, RUNS.c.status, RUNS.c.state, RUNS.c.next_due_at, RUNS.c.contact_id,
                      RUNS.c.started_at).where(RUNS.c.store_id == bindparam("sid"), RUNS.c.journey == bindparam("j"),
                                               RUNS.c.subject == bindparam("s"), RUNS.c.status == "handoff")


def _waiting_run(conn: Connection, store_id: int, case: Any) -> Any:
    """The run that waits on the case (status ``handoff``; the case is its own: keyed by its journey
    and subject), locked; None for a case no run waits on (her own question, a template's, the number's)."""
    if not case.journey or not case.subject or case.key != f"{case.journey}:{case.subject}"[:255]:
        return None
    return conn.execute(_WAITING_RUN.with_for_update(), {"sid": store_id, "j": case.journey, "s": case.subject}).first()


def _release_run(conn: Connection, row: Any, now: datetime) -> None:
    """The run that waited on the case just closed (``_waiting_run``) waits on nobody now; left so, it
    was among her active journeys in every later case, for ever. Its journey says what becomes of it (``case_closed(run)``: the outcome it
    ends with, or None: it goes on, active); a journey that does not say ends a run that had ended
    before the person took it (it kept its ``outcome``: a COD order whose Cancel came too late), and
    leaves any other as it is."""
    from connector.journeys.engine import Run
    from connector.journeys.registry import journeys

    state = dict(row.state or {})
    released = getattr(journeys().get(row.journey), "case_closed", None)
    if released is not None:
        outcome = released(Run(row.journey, row.subject, row.status, state, row.next_due_at, row.contact_id, row.started_at))
    elif state.get("outcome"):
        outcome = state["outcome"]
    else:
        return
    state["case_closed_at"] = now.isoformat()
    if outcome is None:
        update_by_id(conn, RUNS, row.id, {"status": "active", "state": state, "updated_at": now})
    else:
        update_by_id(conn, RUNS, row.id, {"status": "finished", "state": {**state, "outcome": outcome}, "updated_at": now})


def _slack(value: Any) -> str:
    """A value as Slack text: ``&``, ``<`` and ``>`` escaped (Slack's formatting reference). They
    are its control characters: a customer's ``<!channel>`` would ping the whole channel and
    ``<https://evil|shop.myshopify.com/admin>`` would show a link that is not what it says."""
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _told_update(ctx: dict[str, Any], update: int | None) -> dict[str, Any] | None:
    """The update an alert is about: its n-th (``update``), which later ones may have followed before the
    alert went out (she tapped Reschedule, then Cancel: each alert shows its own answer); the latest for
    the opening's alert, one queued before alerts named theirs, or one past the ``MAX_UPDATES`` kept."""
    updates = ctx.get("updates") or []
    if not updates:
        return None
    if update:
        at = len(updates) - (int(ctx.get("update_count") or len(updates)) - update) - 1
        if 0 <= at < len(updates):
            return updates[at]
    return updates[-1]


def notify_text(h: Any, store_name: str, update: int | None = None) -> str:
    """The owner's message: the case's own order first (``Order``); the customer's newest
    (``Last order``) only for a case about no order, or one opened before cases named theirs;
    the update it tells of (``update``: its number, see ``_told_update``).
    Every value is escaped (``_slack``), whoever wrote it; only our own markup (the bold title) is not."""
    ctx = h.context or {}
    label, order = ("Order", ctx["order"]) if ctx.get("order") else ("Last order", ctx.get("last_order") or {})
    owner = h.owner or f"the {h.stage} team"
    lines = [f"*{_slack(store_name)}: hand-off #{h.id}* for {_slack(owner)}", _slack(h.reason)]
    if ctx.get("name") or ctx.get("phone"):
        lines.append(_slack(f"Customer: {ctx.get('name') or ''} {ctx.get('phone') or ''}".strip()))
    if order:
        lines.append(_slack(f"{label}: {order.get('name')} {order.get('currency')} {order.get('total')} ({order.get('payment_state')})"))
    told = _told_update(ctx, update)
    if told:
        lines.append(_slack(f"Update: {told.get('reason')}"))
    return "\n".join(lines)


def number_requests(event: ev.NumberQualityChanged | ev.AccountUpdated, store: Any) -> list[HandoffRequest]:
    """Meta flagged the store's number, lowered its limit, restricted, disabled or warned its account:
    one case about no customer per number (``number:<phone_number_id>``), its later news added to it
    and told, for the owner of the store's first stage with alerts (``number_health.health_stage``).
    Good news (unflagged, lifted, reinstated) only adds to an open case. Only news reaches here:
    ``number_health.record`` drops an update that is stale or says nothing new."""
    news = number_news(event, store)
    return [] if news is None else [number_request(store, news)]


def number_request(store: Any, news: NumberNews) -> HandoffRequest:
    """The request for the number's case that ``news`` makes (also a restriction's end, ``number_health.end_passed_holds``)."""
    key = number_subject(store)
    return HandoffRequest(key, news.reason[:2000], None, key, only_open=news.only_open, stage=health_stage(store))
