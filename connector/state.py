"""Apply store-neutral events to the connector's own picture of each store.

Everything here runs inside the processor's transaction and is scoped by ``store_id``.
State tables only move forward: a payload older than what is stored (Shopify retries
carry the original payload for hours; WooCommerce builds it at delivery time) never
overwrites newer state, also when several workers apply payloads of one row at once: the row
is read locked on PostgreSQL (``rows.order_row``'s ``for_update``), so the second compares
with what the first wrote.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, insert, or_, select, update
from sqlalchemy.exc import NoResultFound

from connector import events as ev
from connector.contacts import email_key
from connector.handoffs import restage
from connector.number_change import (USER_ID_KEY, apply_number_change, apply_user_id_change, previous_owner, previous_owner_of_wa_id,
                                     previous_user_id_owner, was_her_number)
from connector.policy import keyword_intent
from connector.storage.sql import flush, held_later, insert_id, insert_later, insert_row, update_by_id, ATTEMPTS, CHECKOUTS, CONSENT, CONTACTS, FULFILLMENTS, INBOX, LINES, MESSAGES, ORDERS, OUTBOX, RUNS, STORES
from connector.rows import checkout_ordered_at, checkout_row, contact_by_phone, contact_row, contact_where, fulfillment_row, order_row, phone_key
from connector.storage.txcache import by_key, current
from connector.template_check import template_subject

MESSAGE_STATUS_RANK = {"accepted": 0, "sent": 1, "delivered": 2, "read": 3, "played": 4}


class ComplianceFailed(RuntimeError):
    """A privacy request that could not be applied; says nothing about the customer."""


@dataclass(slots=True)
class Outcome:
    """What applying one inbox item did, for the inbox row and the timeline."""

    subject: str | None = None
    contact_id: int | None = None
    stale: bool = False
    held: str | None = None  # a reason to keep the row for a later feature
    private: list[dict[str, Any]] | None = None  # a privacy request: the row keeps this instead of its body and event
    placed: ev.OrderPlaced | None = None  # an order first seen through a later event: the journeys hear it placed first
    order_unknown: bool = False  # a fulfilment of an order not stored yet (Shopify's webhooks come in any order)
    old_news: bool = False  # a fulfilment its order lists that says nothing new (or first seen long after): no journey hears it
    # what the event says of the purchase is as stored (an old order saved again: tagged by an app, a WooCommerce
    # order repeating its paid state and its parcel; a tracking number added): the journeys hear it, but it
    # moves no one to another stage (``JourneyRunner.on_event``'s ``moves_stage``)
    repeated: bool = False
    # the order came out of the bin (WooCommerce ``order.restored``, after ``order.deleted``): the runs the bin
    # ended go on as they were (``JourneyRunner.on_restored``)
    restored: bool = False
    # the order is in the bin after this event: an ``OrderDeleted``'s, or an order event whose order the store
    # reports in it (a sync's read of the bin, whose ``order.deleted`` was lost). The runs it ends keep what they
    # were, as ``OrderDeleted``'s do, so a restore resumes them (``JourneyRunner.on_event``'s ``binned``)
    binned: bool = False


# An order first seen through a later event is still news to the journeys when it was created
# this recently: orders/updated (an app tags new orders within seconds) or orders/paid can beat
# orders/create, whose retry then carries an older payload and is dropped as stale, or
# orders/create is lost. The sync job applies the same rule to orders it finds that were never
# stored (connector/sync.py). Cancelled, refunded, voided and failed orders are no such news.
# So is a fulfilment an order lists, first seen this long after it last changed.
PLACED_WITHIN = timedelta(hours=24)
_NOT_PLACED = (ev.PaymentState.REFUNDED, ev.PaymentState.VOIDED, ev.PaymentState.FAILED)


@functools.cache
def bin_status(platform: str) -> str | None:
    """The status an ``OrderDeleted`` leaves on the stored order: the platform's own word for its bin,
    which the adapters' registry knows (None: the platform has no bin; the stored status stays)."""
    from adapters.registry import bin_statuses  # late: the registry imports the processor, which imports us

    return bin_statuses().get(platform)


def placed_on_first_sight(order: ev.Order, now: datetime) -> bool:
    """Whether an order we never stored, seen first through an update, counts as just placed."""
    return order.cancelled_at is None and order.payment_state not in _NOT_PLACED and order.created_at >= now - PLACED_WITHIN


_COMPLETE_CHECKOUT = update(CHECKOUTS).where(
    CHECKOUTS.c.store_id == bindparam("sid"), CHECKOUTS.c.token == bindparam("tok"), CHECKOUTS.c.completed_at.is_(None),
).values(completed_at=bindparam("at"))


def _fit(column: str, value: str) -> str:
    """Cut text to its contacts column (a 150-character name must not fail the row on PostgreSQL)."""
    length = CONTACTS.c[column].type.length
    return value[:length] if length else value


_CONTACT_BY_EMAIL = (select(CONTACTS)
                     .where(CONTACTS.c.store_id == bindparam("sid"), func.lower(func.trim(CONTACTS.c.email)) == bindparam("key"))
                     .order_by(CONTACTS.c.id.desc()).limit(2))


def contact_by_email(conn: Connection, store_id: int, email: str | None) -> Any:
    """This store's one contact with that email (trimmed, any case), or None: none has it, or
    several do.

    Several contacts with one address are a shared or placeholder one ("noemail@gmail.com",
    the store's own address typed at a COD checkout): matched by it, a guest's order without a
    phone was tied to another customer, who then got its confirmation and its COD question (and
    could confirm or cancel it). Such an order stays without a contact. The (store_id,
    lower(trim(email))) index answers it (migration 0008); contacts held back in the transaction
    cache count with the stored ones.
    """
    key = email_key(email)
    if key is None:
        return None
    cache = current(conn)
    if cache is not None and ("email", store_id, key) in cache.loaded:  # the batch's prefetch read them all
        rows = cache.matching_contacts("email", store_id, key)
        return rows[0] if len(rows) == 1 else None
    found: dict[int, Any] = {}
    if cache is not None:
        found = {r.id: r for r in (cache.get("contacts", cid) for cid in cache.contacts_by_email(key) if cid in cache.held["contacts"])
                 if r is not None and r.store_id == store_id and email_key(r.email) == key}
        if len(found) > 1:
            return None
        if cache.updates_column("contacts", "email"):
            flush(conn)  # a held-back email change must be visible to the query
    for row in conn.execute(_CONTACT_BY_EMAIL, {"sid": store_id, "key": key}).all():
        found.setdefault(row.id, cache.put("contacts", row) if cache is not None else row)
    return next(iter(found.values())) if len(found) == 1 else None


# by the (store_id, wa_user_id) index (migration 0011); it runs only for a sender with neither
# phone nor WhatsApp id (a username user, C9 of platform-facts)
# a contact with a number first: one made from her id alone (she hid her number when she first wrote) and
# the one her number was later seen on share the id, and what she does by id (a STOP) is for the latter
_CONTACT_BY_USER_ID = (select(CONTACTS).where(CONTACTS.c.store_id == bindparam("sid"), CONTACTS.c.wa_user_id == bindparam("v"))
                       .order_by(CONTACTS.c.phone_e164.is_(None), CONTACTS.c.id).limit(1))


def contact_by_user_id(conn: Connection, store_id: int, user_id: str) -> Any:
    """This store's contact with that business-scoped user id (BSUID): the oldest with a phone number,
    else the oldest; None if none.

    As ``rows.contact_where``: a held-back change of the column is flushed first, and contacts
    whose INSERT is held back are looked at only when no stored one matches.
    """
    cache = current(conn)
    if cache is not None and cache.updates_column("contacts", "wa_user_id"):
        flush(conn)
    row = conn.execute(_CONTACT_BY_USER_ID, {"sid": store_id, "v": user_id[:80]}).first()
    if cache is None:
        return row
    if row is not None:
        return cache.put("contacts", row)
    held = [r for r in cache.held_rows("contacts") if r.store_id == store_id and r["wa_user_id"] == user_id[:80]]
    return min(held, key=lambda r: (r["phone_e164"] is None, r.id)) if held else None


def upsert_contact(
    conn: Connection,
    store_id: int,
    now: datetime,
    *,
    phone: ev.Phone | None,
    customer: ev.Customer | None = None,
    wa_id: str | None = None,
    user_id: str | None = None,
    by_email: bool = False,
    new_by_user_id: bool = False,
    echo_at: datetime | None = None,
) -> int | None:
    """Find or create the contact for a phone (or a WhatsApp id); fill in what we learn.

    Without a phone: the platform's customer id, then (``by_email``: orders) the email, so an
    order by a known customer reaches their runs (a checkout reminded on WhatsApp ends as recovered).
    ``new_by_user_id`` (a message she wrote): a sender known by her business-scoped id alone, new to
    the store, becomes a contact keyed by that id, so her words are kept against her and open a case.
    ``echo_at`` (what WhatsApp says from a number, at that time): a number nobody has now that a
    customer changed from within ``number_change.WINDOW`` of it finds her. An order or a store's
    customer update never does: a recycled number is someone else's.
    """
    row = None
    if phone is not None:
        row = contact_by_phone(conn, store_id, phone)
    if row is None and wa_id:
        row = contact_where(conn, store_id, CONTACTS.c.wa_id, wa_id)
    if row is None and phone is not None and echo_at is not None:
        # a number she changed on WhatsApp lately (``number_change``): a late reply on it is hers; what it
        # says of the number (its WhatsApp id) is not, her contact has her new one
        moved_to = previous_owner(conn, store_id, phone_key(phone), echo_at)
        if moved_to is not None and (row := contact_row(conn, moved_to)) is not None:
            wa_id = None
    if row is None and phone is None and not wa_id and user_id:
        # a WhatsApp user who hides their number is named by a business-scoped id only: their
        # STOP must reach the contact that id was learnt on (a message that carried both)
        row = contact_by_user_id(conn, store_id, user_id)
        if row is None and echo_at is not None and (moved_to := previous_user_id_owner(conn, store_id, user_id, echo_at)) is not None:
            row = contact_row(conn, moved_to)  # an id she had before Meta changed it lately (``number_change``): still her
    if row is None and phone is None and customer is not None and customer.external_id:
        row = contact_where(conn, store_id, CONTACTS.c.external_customer_id, customer.external_id)
    if row is None and phone is None and by_email and customer is not None:
        row = contact_by_email(conn, store_id, customer.email)
    fields: dict[str, Any] = {}
    if customer is not None:
        for attr, col in (("first_name", "first_name"), ("last_name", "last_name"), ("email", "email"), ("external_id", "external_customer_id")):
            value = getattr(customer, attr)
            if value:
                fields[col] = value
    if wa_id:
        fields["wa_id"] = wa_id
    if user_id:
        fields["wa_user_id"] = user_id
    fields = {col: _fit(col, value) for col, value in fields.items()}
    if row is None:
        if phone is None and not (user_id and new_by_user_id):
            return None
        values = {
            "store_id": store_id,
            # a new WhatsApp user who hides their number is named by their business-scoped id (C9); we
            # cannot send to them by number, but what they write is kept and reaches a person
            "phone_key": phone_key(phone) if phone is not None else f"{USER_ID_KEY}{user_id}"[:80],
            "phone_e164": phone.e164 if phone is not None else None,
            "phone_raw": phone.raw[:80] if phone is not None else None,
            "reachable": phone is not None and phone.e164 is not None,
            "created_at": now,
            "updated_at": now,
            "consent_utility": "unknown",
            "consent_marketing": "unknown",
            "stage": "entry",
            **fields,
        }
        return insert_id(conn, CONTACTS, values)
    contact = row
    changed = {k: v for k, v in fields.items() if getattr(contact, k) != v}
    if "wa_user_id" in changed and contact.wa_user_id and echo_at is not None \
            and previous_user_id_owner(conn, store_id, changed["wa_user_id"], echo_at) == contact.id:
        del changed["wa_user_id"]  # a message written under her previous id, delivered late: her new one stands
    if changed:
        changed["updated_at"] = now
        update_by_id(conn, CONTACTS, contact.id, changed)
    return contact.id


def record_consent(
    conn: Connection,
    store_id: int,
    contact_id: int,
    category: str,
    state: str,
    source: str,
    at: datetime,
    inbox_id: int | None,
    *,
    only_if_unknown: bool = False,
) -> bool:
    """Set a consent state and keep its history; a change older than the stored one is ignored."""
    contact = contact_row(conn, contact_id)
    if contact is None:
        raise NoResultFound(f"contact {contact_id} not found")
    current = getattr(contact, f"consent_{category}")
    current_at = getattr(contact, f"consent_{category}_at")
    if only_if_unknown and current != "unknown":
        return False
    if current_at is not None and at < current_at:
        return False
    if current == state and getattr(contact, f"consent_{category}_source") == source:
        return False
    values: dict[str, Any] = {
        f"consent_{category}": state,
        f"consent_{category}_source": source,
        f"consent_{category}_at": at,
        "updated_at": at,
    }
    update_by_id(conn, CONTACTS, contact_id, values)
    insert_later(conn, CONSENT, [dict(store_id=store_id, contact_id=contact_id, category=category, state=state,
                                      source=source[:64], occurred_at=at, inbox_event_id=inbox_id)])
    return True


SKU_LENGTH = LINES.c.sku.type.length  # what a line keeps of a SKU: a product's SKUs are cut alike to match its lines
TRACKING_LENGTH = FULFILLMENTS.c.tracking_number.type.length


def _cut(value: str | None, length: int) -> str | None:
    """Text cut to its column (PostgreSQL refuses a longer value and the whole row with it)."""
    return value[:length] if value else value


def _line_rows(store_id: int, order_id: int, lines: tuple[ev.LineItem, ...]) -> list[dict[str, Any]]:
    return [
        {
            "store_id": store_id,
            "order_id": order_id,
            "external_id": li.external_id,
            "product_id": li.product_id,
            "variant_id": li.variant_id,
            "sku": _cut(li.sku, SKU_LENGTH),  # a longer one fails the order's row on PostgreSQL
            "title": li.title[:255],
            "quantity": li.quantity,
            "price": li.price,
        }
        for li in lines
    ]


def apply_order(conn: Connection, store_id: int, order: ev.Order, contact_id: int | None, now: datetime) -> str:
    """Upsert an order and its lines: "new" (first stored now), "changed", "called_off" (changed, and
    the purchase it was is off now: cancelled, fully refunded or voided), or "stale" (nothing
    written: a newer payload is stored).

    Payment terms are kept from the events that carry them: an event without terms leaves the
    stored ones as they are. The reconcile reads Shopify orders through Admin GraphQL, which does
    not read terms (the read_payment_terms scope), and must not make an order on "due on
    fulfilment" look owed at once. So terms the store removes again stay on record: harmless once
    the order is paid (nothing chases a paid order); an unpaid order whose terms were dropped is
    still treated as on them (not chased before their last due date; with none, not at all).
    """
    existing = order_row(conn, store_id, order.external_id, for_update=True)  # PostgreSQL: locked until we commit
    if existing is not None and existing.source_updated_at > order.updated_at:
        return "stale"
    # read before the update below (it changes the cached row in place)
    counted = existing is not None and not ev.called_off(existing.cancelled_at, existing.payment_state)
    values = {
        "name": order.name[:64],
        "contact_id": contact_id,
        "payment_state": order.payment_state.value,
        "fulfillment_state": order.fulfillment_state.value,
        "platform_status": (order.platform_status or None) and order.platform_status[:40],
        "is_cod": order.is_cod,
        "total": order.total,
        "currency": order.currency[:8],
        "customer_total": order.customer_total,
        "customer_currency": order.customer_currency and order.customer_currency[:8],
        "checkout_token": order.checkout_token,
        "status_url": order.status_url,
        "payment_url": order.payment_url,
        "tags": list(order.tags),
        "test": order.test,
        "channel": order.channel.value,
        "delivery": order.delivery.value,
        "placed_at": order.created_at,
        "cancelled_at": order.cancelled_at,
        "source_updated_at": order.updated_at,
        "updated_at": now,
    }
    if order.payment_terms is not None or order.payment_due_at is not None:
        values["payment_terms"] = order.payment_terms and order.payment_terms[:32]
        values["payment_due_at"] = order.payment_due_at
    if existing is None:
        order_id = insert_id(conn, ORDERS, dict(store_id=store_id, external_id=order.external_id, **values))
    else:
        order_id = existing.id
        if contact_id is None:
            values.pop("contact_id")
        update_by_id(conn, ORDERS, order_id, values)
        if held_later(conn, LINES, order_id):
            flush(conn)  # lines held back for this order must exist to be replaced
        conn.execute(delete(LINES).where(LINES.c.order_id == order_id))
    insert_later(conn, LINES, _line_rows(store_id, order_id, order.line_items), key=order_id)
    if order.checkout_token:
        _complete_checkout(conn, store_id, order.checkout_token, order.created_at)
    if existing is None:
        return "new"
    return "called_off" if counted and ev.called_off(order.cancelled_at, order.payment_state) else "changed"


def _order_contact(conn: Connection, store_id: int, order: ev.Order, now: datetime) -> int | None:
    """The contact an order event is about: by the number it names as it is now (``upsert_contact``), except
    for an order stored as hers that names a number she has changed from since (the store's updates of an
    order placed before the change carry the old number for ever): it stays hers, and no contact is made
    for the old number (her parcel's news goes to the number she uses, not to one she gave up)."""
    phone = order.customer.phone
    if phone is not None:
        stored = order_row(conn, store_id, order.external_id)
        if stored is not None and stored.contact_id is not None and was_her_number(conn, store_id, phone_key(phone), stored.contact_id):
            return stored.contact_id
    return upsert_contact(conn, store_id, now, phone=phone, customer=order.customer, by_email=True)


def _complete_checkout(conn: Connection, store_id: int, token: str, at: datetime) -> None:
    """An order completes the checkout it came from (the first completion stands)."""
    cache = current(conn)
    if cache is not None:
        known, checkout = cache.lookup(("checkouts", store_id, token))
        if known:  # the cache has the row as stored (or knows there is none)
            if checkout is not None and checkout.completed_at is None:
                update_by_id(conn, CHECKOUTS, checkout.id, {"completed_at": at})
            return
    conn.execute(_COMPLETE_CHECKOUT, {"sid": store_id, "tok": token, "at": at})


def _opted_in_contact(conn: Connection, store_id: int, checkout: ev.Checkout, contact_id: int | None, now: datetime) -> int | None:
    """The contact a checkout's marketing opt-in belongs to: the number it was given for
    (``marketing_phone``), found or created (with the buyer's name only: the email and the
    platform's customer id name the checkout's own contact), else the checkout's contact."""
    wanted, own = checkout.marketing_phone, checkout.customer.phone
    if wanted is None or (own is not None and phone_key(wanted) == phone_key(own)):
        return contact_id
    named = ev.Customer(first_name=checkout.customer.first_name, last_name=checkout.customer.last_name)
    return upsert_contact(conn, store_id, now, phone=wanted, customer=named)


def _withdrawn_opt_in(conn: Connection, store_id: int, checkout: ev.Checkout, contact_id: int | None, inbox_id: int) -> None:
    """She ticked the checkout's marketing opt-in and unticked it before leaving: a newer read of the same open
    checkout (its own webhook, not the poll's read of her account; not a completion, which a cart plugin may post
    without the field) says no. The consent the tick gave is taken back, to unknown as before it, so no cart reminder
    goes to someone who declined. Only one this checkout gave (a checkout opt-in since it started); one given
    elsewhere (WhatsApp, the store's consent webhook) stands. A tick of the same time is no later word (unticked wins);
    a newer read stored since that cannot see the box (the poll's) is none either."""
    stored = checkout_row(conn, store_id, checkout.token)
    if stored is None or not stored.accepts_marketing:
        return  # no read of this checkout ticked: nothing to take back (and no query for the checkouts that never do)
    if stored.source_updated_at > checkout.updated_at and _own_read_since(conn, store_id, checkout.token, checkout.updated_at, ticked=True):
        return  # an older untick: she ticked again since
    # her contact, and the number the tick was for when it asked for its own (``_opted_in_contact``; the untick
    # names it no more): the contacts this checkout's earlier reads granted marketing (``_opt_in_grants``)
    for cid in sorted({*([contact_id] if contact_id is not None else []), *_opt_in_grants(conn, store_id, checkout.token, stored.started_at)}):
        contact = contact_row(conn, cid)
        if contact is None or (contact.consent_marketing, contact.consent_marketing_source) != ("granted", "checkout_opt_in") \
                or contact.consent_marketing_at is None or contact.consent_marketing_at < stored.started_at:
            continue
        record_consent(conn, store_id, cid, "marketing", "unknown", "checkout_opt_in_withdrawn", checkout.updated_at, inbox_id)


def _answered_tick(conn: Connection, store_id: int, checkout: ev.Checkout) -> bool:
    """Whether this read's tick was answered before it came: a read of the checkout's own as new as it or newer
    (Shopify sends in no set order; at the same time, unticked wins) said unticked. Only the checkout's own reads
    count: the poll's cannot see the box (its ``accepts_marketing`` is her account's consent). Asked only when the
    stored read is not older than this one (in order, nothing newer was heard: no query)."""
    stored = checkout_row(conn, store_id, checkout.token)
    return stored is not None and stored.source_updated_at >= checkout.updated_at and _own_read_since(
        conn, store_id, checkout.token, checkout.updated_at, ticked=False)


def _deliveries(conn: Connection, store_id: int, token: str) -> tuple[Any, list[tuple[int, Any]]]:
    """This checkout's inbox rows (its webhooks', the poll's): those of earlier batches by their subject (a subquery
    of their ids, on the (store, subject) index), and those this batch applied before the row at hand, with their
    events (their subject is written when the batch ends: ``TxCache.applied_rows``)."""
    subject = f"checkout:{token}"[:160]
    cache = current(conn)
    return (select(INBOX.c.id).where(INBOX.c.store_id == store_id, INBOX.c.subject == subject),
            cache.applied_rows(store_id, subject) if cache is not None else [])


def _own_read_since(conn: Connection, store_id: int, token: str, at: datetime, *, ticked: bool) -> bool:
    """Whether one of the checkout's own reads (``phone_on_checkout``: not the poll's; not a completion) said the
    opt-in was ``ticked``: an untick as of ``at`` or later, a tick strictly later (at the same time, unticked wins)."""
    earlier, batch = _deliveries(conn, store_id, token)
    reads = [events for _, events in batch]
    for (data,) in conn.execute(select(INBOX.c.event).where(INBOX.c.id.in_(earlier), INBOX.c.event.is_not(None))):
        try:
            reads.append(ev.load_events(data))
        except ValueError:
            continue  # stored by an older version in another shape: says nothing
    for events in reads:
        for e in events:
            if not isinstance(e, ev.CheckoutUpdated) or e.checkout.token != token:
                continue
            c = e.checkout
            if c.phone_on_checkout and c.completed_at is None and c.accepts_marketing == ticked and (
                    c.updated_at > at if ticked else c.updated_at >= at):
                return True
    return False


def _opt_in_grants(conn: Connection, store_id: int, token: str, since: datetime) -> set[int]:
    """The contacts a checkout opt-in granted marketing since ``since`` through a delivery of this checkout
    (``_deliveries``: earlier batches' by their subject, this batch's by the processor's list): the consent history's
    (store, category, state, time) index, then those rows' deliveries. The batch's held history rows are written
    first, so a grant of this batch is read as one of an earlier batch, whatever the batch wrote in between."""
    flush(conn)
    earlier, batch = _deliveries(conn, store_id, token)
    delivered = CONSENT.c.inbox_event_id.in_(earlier)
    if batch:
        delivered = or_(delivered, CONSENT.c.inbox_event_id.in_([row_id for row_id, _ in batch]))
    return {cid for (cid,) in conn.execute(select(CONSENT.c.contact_id).where(
        CONSENT.c.store_id == store_id, CONSENT.c.category == "marketing", CONSENT.c.state == "granted", CONSENT.c.occurred_at >= since,
        CONSENT.c.source == "checkout_opt_in", delivered))}


def _checkout_contact(conn: Connection, store_id: int, token: str) -> int | None:
    """The contact a stored checkout has. A read that cannot see the checkout's own phone (Shopify's poll:
    the customer's account phone, which may be an old number) keeps it: taken as hers, her checkout would
    seem to name another contact, and its ladder would end before a reminder (``contact_changed``)."""
    stored = checkout_row(conn, store_id, token, for_update=True)  # the row ``apply_checkout`` then locks and writes
    return stored.contact_id if stored is not None else None


def apply_checkout(conn: Connection, store_id: int, checkout: ev.Checkout, contact_id: int | None) -> bool:
    existing = checkout_row(conn, store_id, checkout.token, for_update=True)
    if existing is not None and existing.source_updated_at > checkout.updated_at:
        return False
    values = {
        "contact_id": contact_id,
        "recovery_url": checkout.recovery_url,
        "total": checkout.total,
        "currency": checkout.currency[:8],
        "accepts_marketing": checkout.accepts_marketing,
        "line_items": [li.model_dump(mode="json") for li in checkout.line_items],
        "started_at": checkout.created_at,
        "completed_at": checkout.completed_at,
        "source_updated_at": checkout.updated_at,
    }
    if existing is None:
        # Shopify sends webhooks in no set order: a checkout heard after its order is born completed
        ordered = checkout_ordered_at(conn, store_id, checkout.token) if checkout.completed_at is None else None
        if ordered is not None:
            values["completed_at"] = ordered
        insert_id(conn, CHECKOUTS, dict(store_id=store_id, token=checkout.token, **values))
        return ordered is None  # an order came first: kept, but nothing left to recover
    if contact_id is None:
        values.pop("contact_id")
    if not checkout.phone_on_checkout:
        # a read that cannot see the box (the poll's: her account's consent) leaves what the checkout's own reads said,
        # unless it granted: an untick then still finds what there is to take back (``_withdrawn_opt_in``)
        values["accepts_marketing"] = existing.accepts_marketing or checkout.accepts_marketing
    if existing.completed_at is not None and checkout.completed_at is None:
        values.pop("completed_at")  # an order already completed it; a late update must not reopen it
        update_by_id(conn, CHECKOUTS, existing.id, values)
        return False  # nor start a cart ladder for it (one heard before it had a phone has no run yet)
    update_by_id(conn, CHECKOUTS, existing.id, values)
    return True


def apply_fulfillment(conn: Connection, store_id: int, f: ev.Fulfillment, now: datetime, *, news_only: bool = False) -> bool:
    """Store the fulfilment unless what is stored is newer; False if not written. ``news_only`` (a
    fulfilment its order lists, sent again with every order update): the same as stored, as of the
    same time, is not written either, so an order update that changes no parcel costs no write and
    tells no journey anything."""
    existing = fulfillment_row(conn, store_id, f.external_id, for_update=True)
    if existing is not None and existing.source_updated_at > f.updated_at:
        return False
    # cut to their columns: a carrier name or number longer than it fails the row on PostgreSQL, and since
    # order webhooks list their fulfilments, that row would be the order's own update
    company, number = _cut(f.tracking_company, TRACKING_LENGTH), _cut(f.tracking_number, TRACKING_LENGTH)
    if news_only and existing is not None and existing.source_updated_at == f.updated_at and (
            existing.status, existing.shipment_status, existing.tracking_company, existing.tracking_number, existing.tracking_url) == (
            f.status[:24], f.shipment_status.value, company, number, f.tracking_url):
        return False
    values = {
        "order_external_id": f.order_external_id,
        "status": f.status[:24],
        "shipment_status": f.shipment_status.value,
        "tracking_company": company,
        "tracking_number": number,
        "tracking_url": f.tracking_url,
        "created_at": f.created_at,
        "source_updated_at": f.updated_at,
        "updated_at": now,  # the reorder-window scan picks up changed fulfilments by this
    }
    if f.shipment_status in ev.DELIVERED_STATUSES and (existing is None or existing.delivered_at is None):
        values["delivered_at"] = f.updated_at  # the first "delivered" (or "picked up") is when the customer got it
    if existing is None:
        insert_row(conn, FULFILLMENTS, dict(store_id=store_id, external_id=f.external_id, **values))
    else:
        update_by_id(conn, FULFILLMENTS, existing.id, values)
    return True


def _flush_if_held(conn: Connection, contact_id: int | None) -> None:
    """A row about to name this contact needs it stored first, if its INSERT is held back."""
    cache = current(conn)
    if cache is not None and contact_id is not None and contact_id in cache.held["contacts"]:
        flush(conn)


# Built once, for inbound messages and statuses alike: a burst of either spent more building
# its statements than running them (bench/HISTORY.md).
_MESSAGE_BY_WAMID = select(MESSAGES.c.id, MESSAGES.c.status, MESSAGES.c.error_code, MESSAGES.c.contact_id).where(
    MESSAGES.c.store_id == bindparam("sid"), MESSAGES.c.wamid == bindparam("wamid"))
_INSERT_MESSAGE = insert(MESSAGES)
# with the contact's ``reachable`` as stored: a delivered status can undo a 131026 without reading the contact apart
_OUTBOX_FOR_STATUS = select(OUTBOX.c.id, OUTBOX.c.status, OUTBOX.c.contact_id, OUTBOX.c.category, OUTBOX.c.payload,
                            OUTBOX.c.journey, OUTBOX.c.step, OUTBOX.c.idempotency_key, OUTBOX.c.attempts, CONTACTS.c.reachable).select_from(
    OUTBOX.outerjoin(CONTACTS, CONTACTS.c.id == OUTBOX.c.contact_id)).where(OUTBOX.c.store_id == bindparam("sid"))
_RUN_BY_KEY = select(RUNS).where(RUNS.c.store_id == bindparam("sid"), RUNS.c.journey == bindparam("j"), RUNS.c.subject == bindparam("s"))
# 131049 (Meta's per-user marketing limit): the same message again a day later, on three days at most
ENGAGEMENT_LIMIT_SENDS = 3


def another_day(conn: Connection, store_id: int, journey: str | None, payload: dict[str, Any] | None, tries: int) -> bool:
    """Whether a message WhatsApp held back for the user's marketing limit (131049) is worth
    sending again tomorrow: not after its third try (``tries`` counts the one refused), and
    only while its journey run is still going (a cart reminder after the cart's run ended, or
    weeks later, is not the one it was). The same rule whether 131049 came in a failed status
    webhook or in the answer to the send (outbox.dispatcher)."""
    if tries >= ENGAGEMENT_LIMIT_SENDS:
        return False
    subject = (payload or {}).get("subject")
    if not journey or not subject:
        return True
    # through the transaction cache, as the runner reads runs: a run status the batch still holds counts
    run = by_key(conn, "journey_runs", (store_id, journey, subject), _RUN_BY_KEY, {"sid": store_id, "j": journey, "s": subject})
    return run is None or run.status == "active"
_OUTBOX_BY_ID = _OUTBOX_FOR_STATUS.where(OUTBOX.c.id == bindparam("oid"))
_OUTBOX_BY_WAMID = _OUTBOX_FOR_STATUS.where(OUTBOX.c.wamid == bindparam("wamid"))


def record_inbound(
    conn: Connection, store_id: int, contact_id: int | None, wamid: str, kind: str, body: str | None, at: datetime, now: datetime
) -> None:
    """An inbound WhatsApp message: into the timeline once, and it (re)opens the 24 h window."""
    exists = conn.execute(_MESSAGE_BY_WAMID, {"sid": store_id, "wamid": wamid}).first()
    if exists is None:
        _flush_if_held(conn, contact_id)
        conn.execute(_INSERT_MESSAGE, dict(store_id=store_id, contact_id=contact_id, direction="in", wamid=wamid, kind=kind,
                                           body=body, status="received", occurred_at=at, updated_at=now))
    if contact_id is not None:
        contact = contact_row(conn, contact_id)
        if contact.last_inbound_at is None or contact.last_inbound_at < at:
            update_by_id(conn, CONTACTS, contact_id, dict(last_inbound_at=at, updated_at=now))
            _release_held(conn, contact_id, now)
        if not contact.reachable:
            reachable_again(conn, store_id, contact_id, at, now)


def _release_held(conn: Connection, contact_id: int, now: datetime) -> None:
    """Her messages held for the messaging limit are due now: her service window is open, so a template starts no
    conversation (the claim meters it again). With the transaction cache, one read of the batch's writers' rows at
    its flush (``outbox.store.release_of_contacts``)."""
    from connector.outbox.store import release_of_contacts

    cache = current(conn)
    if cache is None:
        release_of_contacts(conn, [contact_id], now)
    else:
        cache.defer("outbox.release_held", _release_deferred, (contact_id, now))


def _release_deferred(conn: Connection, items: list[tuple[int, datetime]]) -> None:
    from connector.outbox.store import release_of_contacts

    release_of_contacts(conn, [cid for cid, _ in items], min(now for _, now in items))


# 131026 (undeliverable): when we last tried a send WhatsApp refused so, by the send's time: a
# message refused in a failed status webhook, or an attempt refused in the answer to the send
UNDELIVERABLE = 131026
_UNDELIVERABLE_MESSAGE = select(func.max(MESSAGES.c.occurred_at)).where(
    MESSAGES.c.store_id == bindparam("sid"), MESSAGES.c.contact_id == bindparam("cid"), MESSAGES.c.error_code == UNDELIVERABLE)
_UNDELIVERABLE_ATTEMPT = select(func.max(ATTEMPTS.c.started_at)).select_from(ATTEMPTS.join(OUTBOX, OUTBOX.c.id == ATTEMPTS.c.outbox_id)).where(
    OUTBOX.c.store_id == bindparam("sid"), OUTBOX.c.contact_id == bindparam("cid"), ATTEMPTS.c.error_code == UNDELIVERABLE)


def reachable_again(conn: Connection, store_id: int, contact_id: int, at: datetime, now: datetime) -> None:
    """She is on WhatsApp after all: she wrote to the store at ``at``, or a message of ours reached
    her then (delivered, read). 131026 also stands for passing causes (terms not accepted, an old
    app: platform-facts C4), so this undoes one from a send made by ``at``; one from a later send
    stands (a late webhook of older news). A contact with no number (it never parsed, or was erased
    for a privacy request) stays unreachable. Reachable, she has no retry clock (``unreachable_at``)."""
    contact = contact_row(conn, contact_id)
    if contact is None or contact.reachable or contact.phone_e164 is None:
        return
    params = {"sid": store_id, "cid": contact_id}
    refused = [t for q in (_UNDELIVERABLE_MESSAGE, _UNDELIVERABLE_ATTEMPT) if (t := conn.execute(q, params).scalar()) is not None]
    if not refused or max(refused) <= at:
        update_by_id(conn, CONTACTS, contact_id, dict(reachable=True, unreachable_at=None, updated_at=now))


def _settle_outbox(conn: Connection, store_id: int, e: ev.MessageStatusChanged, now: datetime) -> Any:
    """Move the outbox row a status names (by our callback data, else by wamid); returns that row (as it was), or None."""
    from connector.outbox.store import STATUS_RANK, outbox_id_from_callback

    oid = outbox_id_from_callback(e.callback_data)
    if oid is not None:
        row = conn.execute(_OUTBOX_BY_ID, {"sid": store_id, "oid": oid}).first()
    else:
        row = conn.execute(_OUTBOX_BY_WAMID, {"sid": store_id, "wamid": e.message_id}).first()
    if row is None:
        return None
    values: dict[str, Any] = {"wamid": e.message_id, "updated_at": now}
    if e.status == "failed":
        values.update(status="failed", last_error=f"{e.error_code}: {e.error_title or 'failed'}"[:2000])
        if e.error_code == 131049 and another_day(conn, store_id, row.journey, row.payload, int(row.attempts or 0)):  # not before 24 h, then the same message again
            # planned again for that day (not held: ``policy.send_by`` counts from then)
            again = e.occurred_at + timedelta(hours=24)
            values.update(status="pending", due_at=again, planned_at=again, last_error="131049: retry after 24 h")
        if row.contact_id is not None:
            apply_contact_error(conn, store_id, row.contact_id, e.error_code, e.occurred_at, now)
        if e.error_code == 131047 and row.status != "failed":
            # the 24 h window had closed: the same step goes out once more, as its template
            from connector.outbox.store import queue_fallback

            queue_fallback(conn, store_id, row.idempotency_key, row.contact_id, row.journey, row.step, row.payload, now)
    elif row.status == "failed" or STATUS_RANK.get(e.status, -1) <= STATUS_RANK.get(row.status, -1):
        values = {}  # statuses only move forward; a failure stays a failure
    else:
        values.update(status=e.status, last_error=None)
    if values:
        update_by_id(conn, OUTBOX, row.id, values)
    return row


def apply_contact_error(conn: Connection, store_id: int, contact_id: int, code: int | None, at: datetime, now: datetime) -> None:
    """What Meta's failure says about the person, not the message, whether it came back from the
    send call itself or in a failed status webhook (outbox.store.CONTACT_ERRORS).
    131026 (undeliverable): the contact is unreachable, later sends are skipped as such, until
    she writes to the store or a later message reaches her (``reachable_again``), or until the
    store's retry period from this refusal has passed (``policy.worth_trying``: one new message
    tries her number again, and its own 131026 restarts the clock); not when she wrote after this
    failure (its webhook came late). The clock keeps the latest refusal or try: an older refusal
    arriving late does not set it back.
    131050 (the user stopped marketing on WhatsApp): marketing consent revoked and their
    marketing runs end. Any other code: nothing."""
    if code == UNDELIVERABLE:
        contact = contact_row(conn, contact_id)
        if contact.last_inbound_at is None or contact.last_inbound_at <= at:
            since = None  # a number we no longer hold (erased) is never tried again
            if contact.phone_e164 is not None:
                since = at if contact.unreachable_at is None else max(at, contact.unreachable_at)
            update_by_id(conn, CONTACTS, contact_id, dict(reachable=False, unreachable_at=since, updated_at=now))
    elif code == 131050 and record_consent(conn, store_id, contact_id, "marketing", "revoked", "whatsapp_error_131050", at, None):
        end_marketing_runs(conn, store_id, contact_id, "whatsapp_error_131050", now)


def apply_status(conn: Connection, store_id: int, e: ev.MessageStatusChanged, now: datetime) -> int | None:
    """Statuses arrive out of order: sent < delivered < read only moves forward; failed is kept with its code.
    A message of ours reaching a contact marked unreachable makes her reachable again (``reachable_again``)."""
    sent = _settle_outbox(conn, store_id, e, now)
    outbox_id, contact_id = (sent.id, sent.contact_id) if sent is not None else (None, None)
    row = conn.execute(_MESSAGE_BY_WAMID, {"sid": store_id, "wamid": e.message_id}).first()
    if row is None:
        if contact_id is None and e.recipient_id:
            found = contact_where(conn, store_id, CONTACTS.c.wa_id, e.recipient_id)
            # a message to the number she had before she changed it: still hers
            contact_id = found.id if found is not None else previous_owner_of_wa_id(conn, store_id, e.recipient_id, e.occurred_at)
        _flush_if_held(conn, contact_id)
        conn.execute(_INSERT_MESSAGE, dict(store_id=store_id, contact_id=contact_id, direction="out", wamid=e.message_id,
                                           kind="template" if outbox_id else "unknown", status=e.status, error_code=e.error_code,
                                           outbox_id=outbox_id, occurred_at=e.occurred_at, updated_at=now))
    else:
        if e.status == "failed":
            update_by_id(conn, MESSAGES, row.id, dict(status="failed", error_code=e.error_code, updated_at=now))
        elif row.status != "failed" and MESSAGE_STATUS_RANK.get(e.status, -1) > MESSAGE_STATUS_RANK.get(row.status, -1):
            update_by_id(conn, MESSAGES, row.id, dict(status=e.status, updated_at=now))
        contact_id = row.contact_id or contact_id
    if sent is not None and sent.contact_id is not None and MESSAGE_STATUS_RANK.get(e.status, -1) >= MESSAGE_STATUS_RANK["delivered"]:
        if not _reachable_now(conn, sent.contact_id, sent.reachable):
            reachable_again(conn, store_id, sent.contact_id, e.occurred_at, now)
    return contact_id


def _reachable_now(conn: Connection, contact_id: int, stored: bool | None) -> bool:
    """The contact's ``reachable``: the transaction cache's copy when it holds her row (it may hold a
    change not written yet), else the value read with the outbox row."""
    cache = current(conn)
    cached = cache.get("contacts", contact_id) if cache is not None else None
    return bool(cached.reachable) if cached is not None else stored is None or bool(stored)


# A contact's runs by the (store_id, contact_id) index; the caller keeps the active ones.
# With ``status = 'active'`` beside ``contact_id IN (...)`` SQLite's planner took the
# (store_id, status) timer index and read every active run of the store.
RUNS_OF_CONTACTS = select(RUNS).where(
    RUNS.c.store_id == bindparam("sid"), RUNS.c.contact_id.in_(bindparam("cids", expanding=True))).order_by(RUNS.c.id)


def cache_active_runs(conn: Connection, store_id: int, contact_ids: Any) -> None:
    """Put every active run of these contacts in the transaction cache (one query for those it
    does not know yet) and note them as complete. A cached copy of a run wins over its stored
    row, and held-back new runs are cached already, so nothing needs flushing first."""
    cache = current(conn)
    assert cache is not None
    cids = sorted(c for c in contact_ids if (store_id, c) not in cache.active_runs_known)
    if cids:
        for row in conn.execute(RUNS_OF_CONTACTS, {"sid": store_id, "cids": cids}):
            if row.status == "active":
                cache.put("journey_runs", row)
        cache.active_runs_known.update((store_id, c) for c in cids)


def active_runs(conn: Connection, store_id: int, contact_id: int) -> list[Any]:
    """The contact's active journey runs in id order (through the transaction cache when there is one)."""
    cache = current(conn)
    if cache is None:
        return [r for r in conn.execute(RUNS_OF_CONTACTS, {"sid": store_id, "cids": [contact_id]}) if r.status == "active"]
    cache_active_runs(conn, store_id, [contact_id])
    return [r for r in cache.runs_of_contact(store_id, contact_id) if r.status == "active"]


def active_runs_of(conn: Connection, store_id: int, contact_ids: Iterable[int]) -> list[Any]:
    """``active_runs`` of many contacts at once (one query per 500 contacts the transaction cache does not know
    yet), in id order."""
    cids = sorted({c for c in contact_ids if c is not None})
    cache = current(conn)
    found: list[Any] = []
    for start in range(0, len(cids), 500):
        part = cids[start:start + 500]
        if cache is None:
            found.extend(r for r in conn.execute(RUNS_OF_CONTACTS, {"sid": store_id, "cids": part}) if r.status == "active")
            continue
        cache_active_runs(conn, store_id, part)
        found.extend(r for c in part for r in cache.runs_of_contact(store_id, c) if r.status == "active")
    return sorted(found, key=lambda r: r.id)


def end_marketing_runs(conn: Connection, store_id: int, contact_id: int, source: str, now: datetime) -> int:
    """Any opt-out (STOP, a store's consent webhook, WhatsApp's marketing "stop", error 131050)
    ends the contact's marketing runs at once, outcome ``opted_out``: no reminder is left to
    be skipped, and the report says why the run ended. Utility runs (COD, delivery) go on;
    the policy gate still decides each of their sends. Returns how many runs ended."""
    from connector.journeys.registry import journeys

    marketing = {name for name, j in journeys().items() if getattr(j, "marketing", False)}
    ended = 0
    for r in active_runs(conn, store_id, contact_id):
        if r.journey in marketing:
            state = {**(r.state or {}), "outcome": "opted_out", "opted_out_via": source[:64], "opted_out_at": now.isoformat()}
            update_by_id(conn, RUNS, r.id, {"status": "finished", "state": state, "next_due_at": None, "updated_at": now})
            ended += 1
    return ended


# What answers a STOP typed on WhatsApp: START, WhatsApp's own marketing "resume" (or "signup"), and
# the store's WhatsApp marketing consent. An SMS opt-in in the store is no answer to it.
WHATSAPP_OPT_INS = frozenset({"whatsapp_keyword_start", "whatsapp_preference_resume", "whatsapp_preference_signup",
                              "shopify_whatsapp_marketing"})


def _opted_in_after(contact: Any, at: datetime) -> bool:
    """Whether a WhatsApp opt-in newer than ``at`` is on record (the consent it granted, with its time)."""
    for category in ("marketing", "utility"):
        when = getattr(contact, f"consent_{category}_at")
        if (getattr(contact, f"consent_{category}") == "granted" and getattr(contact, f"consent_{category}_source") in WHATSAPP_OPT_INS
                and when is not None and when > at):
            return True
    return False


def apply_erased_withdrawal(conn: Connection, store_id: int, event: ev.ConsentChanged, inbox_id: int, now: datetime) -> int | None:
    """A store's consent withdrawal about a customer the connector erased (her marked customer id:
    ``erased.Book``): the rest of the event is ignored, but an opt-out must still stop what is sent to
    her number, so it is applied to the contact that number already has (one she started since, say
    by messaging the store), as any withdrawal is: consent revoked, marketing runs ended. Nothing new
    is created and nothing of the event is written on that contact (not her customer id). Returns the
    contact's id, or None when her number has none (or the event is no withdrawal)."""
    if event.state is not ev.ConsentState.REVOKED or event.phone is None:
        return None
    contact = contact_by_phone(conn, store_id, event.phone)
    if contact is None:
        return None
    if record_consent(conn, store_id, contact.id, event.category.value, event.state.value, event.source,
                      event.occurred_at or now, inbox_id) and event.category is ev.ConsentCategory.MARKETING:
        end_marketing_runs(conn, store_id, contact.id, event.source, now)
    return int(contact.id)


def lift_opt_out(conn: Connection, store_id: int, contact_id: int, source: str, at: datetime, inbox_id: int) -> None:
    """A WhatsApp opt-in other than START (WhatsApp's "resume", the store's WhatsApp marketing consent)
    newer than the contact's STOP lifts it as START does: she hears from the store again, and the
    utility consent the STOP took comes back. One older than the STOP (a late webhook) changes nothing."""
    contact = contact_row(conn, contact_id)
    if contact.opted_out_at is None or contact.opted_out_at > at:
        return
    took_utility = contact.consent_utility == "revoked" and contact.consent_utility_source == "whatsapp_keyword_stop"
    update_by_id(conn, CONTACTS, contact_id, dict(opted_out_at=None, updated_at=at))
    if took_utility:
        record_consent(conn, store_id, contact_id, "utility", "granted", source, at, inbox_id)


def apply_keyword(conn: Connection, store_id: int, contact_id: int, intent: str, at: datetime, inbox_id: int) -> None:
    """STOP opts the contact out of everything at once; START opts back in to marketing; "Stop
    promotions" (``stop_marketing``) revokes marketing consent only.

    Keywords can arrive out of order (WhatsApp retries, two messages a second apart): one older
    than the contact's last opposite keyword changes nothing, so a STOP at 10:01 stands against
    a START sent at 10:00 and delivered after it, and a START at 10:02 against a STOP at 10:01.
    Any WhatsApp opt-in counts as START here (``WHATSAPP_OPT_INS``): a STOP older than her
    "resume" changes nothing either.
    """
    contact = contact_row(conn, contact_id)
    if contact is None:
        raise NoResultFound(f"contact {contact_id} not found")
    if intent == "stop_marketing":  # "Stop promotions": marketing only, as WhatsApp's own marketing "stop" preference
        if record_consent(conn, store_id, contact_id, "marketing", "revoked", "whatsapp_keyword_stop_promotions", at, inbox_id):
            end_marketing_runs(conn, store_id, contact_id, "whatsapp_keyword_stop_promotions", at)
        return
    if intent == "stop":
        if _opted_in_after(contact, at):
            return
        if contact.opted_out_at is None or contact.opted_out_at < at:  # the latest STOP: what a START is held against
            update_by_id(conn, CONTACTS, contact_id, dict(opted_out_at=at, updated_at=at))
        record_consent(conn, store_id, contact_id, "marketing", "revoked", "whatsapp_keyword_stop", at, inbox_id)
        record_consent(conn, store_id, contact_id, "utility", "revoked", "whatsapp_keyword_stop", at, inbox_id)
        end_marketing_runs(conn, store_id, contact_id, "whatsapp_keyword_stop", at)
    else:
        if contact.opted_out_at is not None and contact.opted_out_at > at:
            return
        update_by_id(conn, CONTACTS, contact_id, dict(opted_out_at=None, updated_at=at))
        record_consent(conn, store_id, contact_id, "marketing", "granted", "whatsapp_keyword_start", at, inbox_id)
        record_consent(conn, store_id, contact_id, "utility", "granted", "whatsapp_keyword_start", at, inbox_id)


def _answer_payloads(store: Any) -> set[str]:
    """The button payloads the store's journeys take as answers (COD Confirm / Cancel and its cancel
    reasons, the NDR choices): by the settings' convention, every ``*_payloads`` list and the keys of
    a ``*_reasons`` table (payload -> reason)."""
    found: set[str] = set()
    for config in store.journeys.values():
        for name, value in config:
            if name.endswith("_payloads") or (name.endswith("_reasons") and isinstance(value, dict)):
                found.update(value)
    return found


def tap_intent(event: ev.ButtonReplied, store: Any) -> str | None:
    """'stop', 'start' or 'stop_marketing' for a tap on a quick reply that says so, by its payload or else
    its label (a marketing template's "Stop promotions" button: marketing only), as if typed; a journey's own button (a COD
    Cancel, an NDR choice) is that journey's answer, never a keyword, whatever its label."""
    if event.payload in _answer_payloads(store):
        return None
    rules = store.policy.rules()
    return keyword_intent(event.payload, rules) or keyword_intent(event.title, rules)


def apply_product_cycle(conn: Connection, store: Any, store_id: int, p: ev.ProductUpdated, now: datetime) -> None:
    """Keep the product's tagged cycle (``replenish:30d``, or the metafield) in ``product_cycles``, and
    whether it can be bought in ``product_availability``.

    A changed cycle makes the next reorder-window tick a full scan, so every buyer of the product gets
    windows on the new cycle, and windows no cycle names any more (the tag removed, and neither the
    config nor history names one) are cancelled by it. A product no longer sold (archived, a draft, in
    the bin) has its pending windows cancelled here and now: no reminder may link to it, even from a
    tick that runs before any scan; sold again, those come back, and a full scan plans the rest.
    """
    from connector.reorder.cycles import cycle_from_tags, parse_cycle, product_key
    from connector.storage.models import ProductCycle

    days = None
    if p.replenish:
        try:
            days = parse_cycle(p.replenish)
        except ValueError:
            days = None  # a malformed metafield is ignored like a malformed tag
    if days is None:
        days = cycle_from_tags(p.tags)
    key = product_key(p.product_id, None, None)
    # lines that name no product id (a custom item, a product the platform no longer links) are keyed by SKU, else title
    keys = [key, *(product_key(None, _cut(sku, SKU_LENGTH), None) for sku in p.skus),
            *([product_key(None, None, p.title)] if p.title.strip() else [])]
    changed = _apply_availability(conn, store, store_id, p.product_id, keys, (p.available, p.in_stock), now)
    table = ProductCycle.__table__
    current = conn.execute(select(table.c.id, table.c.cycle_days).where(
        table.c.store_id == store_id, table.c.product_key == key, table.c.source == "tag")).first()
    if current is not None and (days is None or current.cycle_days != days):
        conn.execute(table.delete().where(table.c.id == current.id))
        changed = True
    if days is not None and (current is None or current.cycle_days != days):
        conn.execute(table.insert().values(store_id=store_id, product_key=key, source="tag", cycle_days=days, samples=0, updated_at=now))
        changed = True
    if changed:
        _rescan_reorder_windows(conn, store_id)


def apply_product_deleted(conn: Connection, store: Any, store_id: int, p: ev.ProductDeleted, now: datetime) -> None:
    """A product deleted (or binned) is no longer sold. Its body is only the id: the SKUs and titles its
    windows were bought under (what a line keeps once the platform unlinks the product) are read from
    those windows, so a later order update that drops the product id plans no reminder for it either.
    Its tagged cycle stays: a product back from the bin has it still."""
    from connector.reorder.cycles import product_key
    from connector.storage.models import ReorderWindow

    windows = ReorderWindow.__table__
    key = product_key(p.product_id, None, None)
    bought_as = conn.execute(select(windows.c.sku, windows.c.title).where(
        windows.c.store_id == store_id, windows.c.product_key == key).distinct()).all()
    keys = [key, *(product_key(None, sku, None) for sku, _ in bought_as if sku),
            *(product_key(None, None, title) for _, title in bought_as if title and title.strip())]
    if _apply_availability(conn, store, store_id, p.product_id, keys, (False, True), now):
        _rescan_reorder_windows(conn, store_id)


def _rescan_reorder_windows(conn: Connection, store_id: int) -> None:
    """The next reorder tick is a full scan (windows replanned for every buyer, cycles relearned)."""
    from connector.storage.models import SyncCursor

    cursors = SyncCursor.__table__
    conn.execute(cursors.delete().where(cursors.c.store_id == store_id, cursors.c.name == "reorder_relearned"))


def _apply_availability(conn: Connection, store: Any, store_id: int, product_id: str, keys: list[str], after: tuple[bool, bool],
                        now: datetime) -> bool:
    """Record whether the product can be bought, (available, in stock), under each of its keys (rows only
    while it cannot; a key recorded before for the same product, a SKU it no longer has, goes with the
    rest). True when it is sold again (the full scan plans what was bought meanwhile). Stopping being sold
    cancels its pending reorder windows, being sold again brings those back (``windows.product_not_sold``,
    ``product_sold_again``); sold out only holds them as they come due, so a stock flip, which WooCommerce
    sends each time the last unit sells, is recorded but forces no full scan, nor does stopping being sold.
    Either pauses the runs of windows already opened (a reminder held for quiet hours is not sent), and being
    buyable again (sold, in stock) lets them go on (``product_sold_out``, ``product_back_in_stock``)."""
    from connector.reorder.windows import product_back_in_stock, product_not_sold, product_sold_again, product_sold_out
    from connector.storage.models import ProductAvailability

    table = ProductAvailability.__table__
    rows = conn.execute(select(table.c.id, table.c.product_key, table.c.available, table.c.in_stock).where(
        table.c.store_id == store_id, table.c.product_key.in_(keys) | (table.c.product_id == product_id))).all()
    before = {r.product_key: (bool(r.available), bool(r.in_stock)) for r in rows}
    every = sorted(set(keys) | set(before))
    stale = [k for k in every if before.get(k, (True, True)) != after]
    if not stale:
        return False
    gone = [r.id for r in rows if r.product_key in stale]
    if gone:
        conn.execute(table.delete().where(table.c.id.in_(gone)))
    if after != (True, True):
        conn.execute(table.insert(), [dict(store_id=store_id, product_key=k, product_id=product_id, available=after[0], in_stock=after[1],
                                           updated_at=now) for k in stale])
    flipped = [k for k in stale if before.get(k, (True, True))[0] != after[0]]
    if flipped and not after[0]:
        product_not_sold(conn, store, store_id, flipped, now)
        return False  # its windows are cancelled here, and every tick's scan plans none for it (``CycleBook.unavailable``)
    stock = [k for k in stale if k not in flipped] if after[0] else []  # sold before and after: only its stock changed
    if stock:
        (product_back_in_stock if after[1] else product_sold_out)(conn, store, store_id, stock, now)
    if flipped:
        product_sold_again(conn, store, store_id, flipped, now, in_stock=after[1])
    return bool(flipped)  # sold again: purchases planned nothing while it was not sold; the full scan plans them


def apply_event(conn: Connection, store: Any, store_id: int, event: ev.Event, inbox_id: int, now: datetime) -> Outcome:
    """Dispatch one event to the state it changes."""
    out = Outcome()
    match event:
        case ev.OrderPlaced() | ev.OrderUpdated() | ev.OrderPaid() | ev.OrderCancelled() | ev.OrderFulfilled():
            order = event.order
            out.subject = f"order:{order.external_id}"
            out.contact_id = _order_contact(conn, store_id, order, now)
            if out.contact_id is not None and order.customer.phone is not None and store.policy.utility_consent_from_order:
                record_consent(conn, store_id, out.contact_id, "utility", "granted", "order_with_phone", order.created_at, inbox_id, only_if_unknown=True)
            # read (locked, as apply_order reads it) before apply_order, which changes the cached row in place
            before = order_row(conn, store_id, order.external_id, for_update=True)
            known = (before.payment_state, before.contact_id) if before is not None else None
            binned = (before is not None and before.cancelled_at is not None and before.platform_status is not None
                      and before.platform_status == bin_status(store.platform))
            written = apply_order(conn, store_id, order, out.contact_id, now)
            out.stale = written == "stale"
            out.repeated = (isinstance(event, (ev.OrderUpdated, ev.OrderPaid)) and out.contact_id is not None
                            and known == (order.payment_state.value, out.contact_id))
            if written == "new" and not isinstance(event, ev.OrderPlaced) and placed_on_first_sight(order, now):
                out.placed = ev.OrderPlaced(order=order)
            out.restored = binned and written != "stale" and order.cancelled_at is None
            out.binned = (order.cancelled_at is not None and order.platform_status is not None
                          and order.platform_status == bin_status(store.platform))
            if out.restored and out.contact_id is not None:
                restage(conn, store_id, out.contact_id, now)  # her order counts again
            if written == "called_off":
                owner = out.contact_id if out.contact_id is not None else order_row(conn, store_id, order.external_id).contact_id
                if owner is not None:
                    restage(conn, store_id, owner, now)  # she is where her other orders leave her
        case ev.CheckoutUpdated(checkout=checkout):
            out.subject = f"checkout:{checkout.token}"
            read = upsert_contact(conn, store_id, now, phone=checkout.customer.phone, customer=checkout.customer)
            out.contact_id = read if checkout.phone_on_checkout else (_checkout_contact(conn, store_id, checkout.token) or read)
            if checkout.accepts_marketing:
                opted_in = None if _answered_tick(conn, store_id, checkout) else _opted_in_contact(conn, store_id, checkout, read, now)
                if opted_in is not None:
                    record_consent(conn, store_id, opted_in, "marketing", "granted", "checkout_opt_in", checkout.updated_at, inbox_id,
                                   only_if_unknown=True)
            elif checkout.phone_on_checkout and checkout.completed_at is None:
                _withdrawn_opt_in(conn, store_id, checkout, read, inbox_id)
            out.stale = not apply_checkout(conn, store_id, checkout, out.contact_id)
        case ev.OrderDeleted(order_external_id=oid):
            out.subject, out.binned = f"order:{oid}", True
            stored = order_row(conn, store_id, oid, for_update=True)
            if stored is not None:
                out.contact_id = stored.contact_id
                if stored.cancelled_at is None:
                    counted = not ev.called_off(None, stored.payment_state)
                    # binned: cancelled for every journey (their timers read it: no COD reminder, no
                    # "no answer" cancel that would take it out of the bin, no cart or pay reminder)
                    binned_as = bin_status(store.platform)
                    update_by_id(conn, ORDERS, stored.id, {"cancelled_at": now, "updated_at": now,
                                                           **({"platform_status": binned_as} if binned_as else {})})
                    if counted and stored.contact_id is not None:
                        restage(conn, store_id, stored.contact_id, now)
        case ev.FulfillmentUpdated(fulfillment=f):
            out.subject = f"order:{f.order_external_id}"
            placed = order_row(conn, store_id, f.order_external_id)
            out.contact_id = placed.contact_id if placed is not None else None
            out.order_unknown = placed is None
            before = fulfillment_row(conn, store_id, f.external_id, for_update=True)
            out.repeated = before is not None and (before.status, before.shipment_status) == (f.status[:24], f.shipment_status.value)
            if event.listed_on_order:
                # unchanged, or first seen long after it last changed (an old order updated since the install):
                # no news for anyone, and the order's update stands (its row is not stale for this)
                written = apply_fulfillment(conn, store_id, f, now, news_only=True)
                out.old_news = not written or (before is None and f.updated_at < now - PLACED_WITHIN)
            else:
                out.stale = not apply_fulfillment(conn, store_id, f, now)
        case ev.CustomerUpdated(customer=customer):
            out.subject = f"customer:{customer.external_id}" if customer.external_id else None
            out.contact_id = upsert_contact(conn, store_id, now, phone=customer.phone, customer=customer)
        case ev.ConsentChanged():
            out.contact_id = upsert_contact(
                conn, store_id, now, phone=event.phone,
                customer=ev.Customer(external_id=event.customer_external_id) if event.customer_external_id else None,
            )
            if out.contact_id is not None and event.state is not ev.ConsentState.UNKNOWN:
                changed = record_consent(conn, store_id, out.contact_id, event.category.value, event.state.value, event.source,
                                         event.occurred_at or now, inbox_id)
                if changed and event.category is ev.ConsentCategory.MARKETING and event.state is ev.ConsentState.REVOKED:
                    end_marketing_runs(conn, store_id, out.contact_id, event.source, now)
                if event.state is ev.ConsentState.GRANTED and event.source in WHATSAPP_OPT_INS and event.occurred_at is not None:
                    lift_opt_out(conn, store_id, out.contact_id, event.source, event.occurred_at, inbox_id)  # undated: not shown newer
        case ev.MessageReceived() | ev.ButtonReplied():
            out.subject = f"wamid:{event.context_message_id}" if event.context_message_id else None
            out.contact_id = upsert_contact(conn, store_id, now, phone=event.phone, wa_id=event.wa_id, user_id=event.user_id,
                                            new_by_user_id=True, echo_at=event.occurred_at)
            if isinstance(event, ev.ButtonReplied):
                kind, body, intent = "button", event.payload, tap_intent(event, store)
            else:
                kind, body, intent = event.message_type, event.text, keyword_intent(event.text, store.policy.rules())
            record_inbound(conn, store_id, out.contact_id, event.message_id, kind[:32], body, event.occurred_at, now)
            if intent is not None and out.contact_id is not None:
                apply_keyword(conn, store_id, out.contact_id, intent, event.occurred_at, inbox_id)
        case ev.NumberChanged() | ev.UserIdChanged():
            # her contact, runs, cases and queued messages follow her to the new number (her contact learns her new
            # business-scoped id); no journey hears it
            out.contact_id = (apply_number_change(conn, store_id, event, now) if isinstance(event, ev.NumberChanged)
                              else apply_user_id_change(conn, store_id, event, now))
            out.old_news = True
            if conn.execute(_MESSAGE_BY_WAMID, {"sid": store_id, "wamid": event.message_id}).first() is None:
                _flush_if_held(conn, out.contact_id)
                # on her timeline, without the numbers (Meta's text names both); WhatsApp's notice is not her
                # writing: the 24 h window stays as it was
                conn.execute(_INSERT_MESSAGE, dict(store_id=store_id, contact_id=out.contact_id, direction="in", wamid=event.message_id,
                                                   kind="system", body=None, status="received", occurred_at=event.occurred_at,
                                                   updated_at=now))
        case ev.MessageStatusChanged():
            out.subject = f"wamid:{event.message_id}"
            out.contact_id = apply_status(conn, store_id, event, now)
        case ev.MarketingPreferenceChanged():
            out.contact_id = upsert_contact(conn, store_id, now, phone=event.phone, wa_id=event.wa_id, user_id=event.user_id,
                                            echo_at=event.occurred_at)
            state = {"stop": "revoked", "resume": "granted", "signup": "granted"}.get(event.value)
            if out.contact_id is not None and state is not None:
                source = f"whatsapp_preference_{event.value}"
                if record_consent(conn, store_id, out.contact_id, "marketing", state, source, event.occurred_at, inbox_id) and state == "revoked":
                    end_marketing_runs(conn, store_id, out.contact_id, source, now)
                if state == "granted":
                    lift_opt_out(conn, store_id, out.contact_id, source, event.occurred_at, inbox_id)
        case ev.TemplateStatusChanged() | ev.TemplateCategoryChanged():
            out.subject = template_subject(event.name, event.language)  # nothing stored: the hand-off rules read it
        case ev.NumberQualityChanged() | ev.AccountUpdated() | ev.TemplateQualityChanged() | ev.BusinessCapabilityChanged():
            from connector import number_health

            out.subject = (template_subject(event.name, event.language) if isinstance(event, ev.TemplateQualityChanged)
                           else number_health.number_subject(store))
            # kept on the store row; an older update than the one kept is stale, and one that says what is
            # known already (Meta's retry, the same news again), or that nothing here reads, tells nobody
            verdict, news = number_health.record(conn, store, store_id, event, now)
            out.stale = verdict == "stale"
            out.old_news = verdict in ("same", "none")
            if news is not None:  # a capability update lowered the limit: the hand-off rules cannot tell (it names no old one)
                from connector.handoffs import number_request, open_handoff

                flush(conn)  # the case's context reads from the database
                open_handoff(conn, store, store_id, None, number_request(store, news), now)
        case ev.ProductUpdated():
            apply_product_cycle(conn, store, store_id, event, now)
        case ev.ProductDeleted():
            apply_product_deleted(conn, store, store_id, event, now)
        case ev.AppUninstalled():
            from connector.storage.models import StoreCredential

            update_by_id(conn, STORES, store_id, dict(uninstalled_at=now))
            # Shopify revokes the app's tokens on uninstall: keep no dead secrets (a new install stores fresh ones)
            conn.execute(StoreCredential.__table__.delete().where(
                StoreCredential.__table__.c.store_id == store_id, StoreCredential.__table__.c.kind.like("shopify_%")))
        case ev.StoreCaughtUp():
            from connector.reinstall import caught_up

            caught_up(conn, store_id, event)
        case ev.ComplianceRequested():
            from connector.compliance import handle

            try:
                handled = handle(conn, store, store_id, event, inbox_id, now)
            except Exception as exc:  # the message of a database error can quote the customer's phone or email
                raise ComplianceFailed(f"{event.kind} failed ({exc.__class__.__name__}); it is retried") from None
            out.subject = f"compliance:{handled.request_id}"
            out.private = [handled.summary]
    return out
