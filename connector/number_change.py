"""A customer changed her WhatsApp number: her contact follows her to the new one.

Meta tells the business with a system message (``user_changed_number``: from the old number, naming
the new one). Without it she was two people: her consent and STOP stayed on the old number, her journey
runs, open cases and queued messages kept writing to a number she no longer reads, and her first word
from the new number started a stranger with no consent and no history.

So, in the store the message came to (never another store, whose contact with the same number is its own):

- her contact moves to the new number: the same row, so her consent, opt-out, stage, runs, cases and send
  history are hers there as they were (an opted-out customer stays opted out);
- if the new number is already another contact of the store's (she ordered or wrote with it before Meta
  said), that contact becomes hers in full, WhatsApp having said the number is hers (``_join``): her
  orders, checkouts, journey runs (any status), cases, messages (queued and sent, so a reply finds the
  message it answers and her latest run), reorder windows, consent history and timeline move to it, her
  consent joins it (a refusal or an opt-out on either side stands; a consent fills one not given), her
  name, email and customer id fill what it lacks; the old contact is left empty, reachable by no number
  (``moved:<id>``), and counted nowhere. So everything about her reaches the number she uses;
- her messages still queued go to the new number (a message already on its way stays as sent);
- the old number is kept (``previous_numbers``), for WhatsApp's own echoes of the change only, and only
  for ``WINDOW`` after it (``previous_owner``): a late status of a message sent to it, or a reply of hers
  already on its way, still reaches her contact. Mobile numbers are recycled: months on, the number is a
  stranger's, so it never decides who an order, a checkout or a privacy request after the window is
  about: those go by the number as it is now (an order with it creates or finds the contact holding it).
  A number she moved to is nobody's previous number any more.

A change about a number the store does not know moves nothing; Meta's retry of one moves nothing twice.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Select, delete, select, update

from connector import events as ev
from connector.config import STAGES
from connector.contacts import wa_id_to_e164
from connector.rows import contact_by_phone, contact_row, contact_where, phone_key
from connector.storage.models import PreviousNumber, ReorderWindow
from connector.storage.sql import (CHECKOUTS, CONSENT, CONTACTS, HANDOFFS, INBOX, MESSAGES, ORDERS, OUTBOX, RUNS, flush,
                                   insert_later, update_by_id)
from connector.storage.txcache import current

log = logging.getLogger("storeloop.number_change")

PREVIOUS = PreviousNumber.__table__
WINDOWS = ReorderWindow.__table__
SOURCE = "whatsapp_number_change"
MOVED = "moved:"  # the phone_key of a contact whose number went to another one (``_join``)
# How long after a change her old number still finds her, for WhatsApp's echoes of it only. 30 days: the
# Cloud API keeps trying a message it could not deliver for up to 30 days (a template's default time-to-live),
# so a status of one sent to the old number can come that late (Meta retries an unanswered webhook for up to
# 7 days, well inside it), and a reply she wrote before the change arrives within it. Shorter than the time
# telcos keep a given-up number before giving it to someone else (commonly 45 to 90 days), so the number's
# next owner is not taken for her. After it, the old number is a stranger's.
WINDOW = timedelta(days=30)


def previous_owners(store_id: int, key: str, at: datetime) -> Select[Any]:
    """The contacts of this store a number was of before she changed it, within ``WINDOW`` of ``at`` (a change
    after ``at``, of a message on its way before it, counts): a subquery, by the (store_id, phone_key) index."""
    return select(PREVIOUS.c.contact_id).where(PREVIOUS.c.store_id == store_id, PREVIOUS.c.phone_key == key,
                                               PREVIOUS.c.changed_at >= at - WINDOW)


def previous_owner(conn: Connection, store_id: int, key: str | None, at: datetime) -> int | None:
    """The contact of this store a number was of before she changed it within ``WINDOW`` of ``at``, or None.
    Only for WhatsApp's echoes of the change (a status, a reply, an owner looking her up): never an order's
    or a privacy request's owner past the window. The table is not cached, so nothing is flushed."""
    if not key:
        return None
    return conn.execute(previous_owners(store_id, key, at)).scalar()


def previous_owner_of_wa_id(conn: Connection, store_id: int, wa_id: str | None, at: datetime) -> int | None:
    phone = wa_id_to_e164(wa_id)
    return previous_owner(conn, store_id, phone_key(phone), at) if phone is not None else None


def was_her_number(conn: Connection, store_id: int, key: str | None, contact_id: int) -> bool:
    """Whether ``key`` is a number ``contact_id`` changed from (any time ago): an order of hers placed on it
    before the change is still hers when the store's update of it names that number."""
    return bool(key) and conn.execute(select(PREVIOUS.c.id).where(
        PREVIOUS.c.store_id == store_id, PREVIOUS.c.phone_key == key, PREVIOUS.c.contact_id == contact_id)).first() is not None


def _find(conn: Connection, store_id: int, phone: ev.Phone | None, wa_id: str) -> Any:
    row = contact_by_phone(conn, store_id, phone) if phone is not None else None
    if row is None:
        row = contact_where(conn, store_id, CONTACTS.c.wa_id, wa_id)
    return row


def apply_number_change(conn: Connection, store_id: int, e: ev.NumberChanged, now: datetime) -> int | None:
    """Move her contact to ``e.new_phone``; returns her contact's id (None: the store did not know the old number)."""
    flush(conn)  # the direct statements below must see what the batch holds back (a message just queued)
    new_key = phone_key(e.new_phone)
    her = _find(conn, store_id, e.old_phone, e.old_wa_id)
    if her is None:
        moved_to = previous_owner(conn, store_id, phone_key(e.old_phone), e.occurred_at) if e.old_phone is not None else None
        if moved_to is not None and (row := contact_row(conn, moved_to)) is not None and row.phone_key == new_key:
            return row.id  # Meta's retry, or the same news again: done already
        log.info("whatsapp number change for a number this store has no contact on: nothing to move", extra={"store_id": store_id})
        return None
    if her.phone_key == new_key:
        return her.id
    other = _find(conn, store_id, e.new_phone, e.new_wa_id)
    if other is None or other.id == her.id:
        values: dict[str, Any] = dict(phone_key=new_key, phone_e164=e.new_phone.e164, phone_raw=e.new_phone.raw[:80], wa_id=e.new_wa_id,
                                      reachable=True, unreachable_at=None, updated_at=now)
        if e.user_id:
            values["wa_user_id"] = e.user_id
        update_by_id(conn, CONTACTS, her.id, values)  # a new natural key: written now, the cached row evicted
        target = her.id
    else:
        target = other.id
        _join(conn, store_id, her, other, now)
    if e.old_phone is not None:
        old_key = phone_key(e.old_phone)
        conn.execute(delete(PREVIOUS).where(PREVIOUS.c.store_id == store_id, PREVIOUS.c.phone_key == old_key))
        conn.execute(PREVIOUS.insert().values(store_id=store_id, phone_key=old_key, contact_id=target, from_contact_id=her.id,
                                              changed_at=e.occurred_at))
    # her number now: nobody's previous one (a recycled number another customer had left)
    conn.execute(delete(PREVIOUS).where(PREVIOUS.c.store_id == store_id, PREVIOUS.c.phone_key == new_key))
    cache = current(conn)
    if cache is not None:
        cache.keys.pop(("contacts", store_id, new_key), None)  # looked up above and found nobody: it is hers now
    readdressed = _readdress(conn, store_id, target, e.new_phone.e164 or "")
    log.info("whatsapp contact moved to her new number", extra={"store_id": store_id, "contact_id": target, "from_contact_id": her.id,
                                                                 "joined": target != her.id, "queued_messages_readdressed": readdressed})
    return target


USER_ID_KEY = "bsuid:"  # how a business-scoped user id is keyed: a contact known by it alone, a previous id of hers


def previous_user_id_owner(conn: Connection, store_id: int, user_id: str, at: datetime) -> int | None:
    """The contact of this store a business-scoped user id was of before it changed, within ``WINDOW`` of ``at``
    (a message she wrote before the change that Meta delivers after it), or None."""
    return previous_owner(conn, store_id, f"{USER_ID_KEY}{user_id}"[:80], at)


def apply_user_id_change(conn: Connection, store_id: int, e: ev.UserIdChanged, now: datetime) -> int | None:
    """Her contact learns her new business-scoped user id (Meta's ``user_changed_user_id``), so her words, taps and
    WhatsApp marketing "stop" under it (with no number, as a user with a username writes) reach her, not a stranger
    made of the bare id; returns her contact's id (None: the store did not know her). Found by the previous id,
    else her number when the notice names it. If the new id already has a contact of its own (her words under it
    came before the notice: Meta keeps no order), the two are one (``_join``): the one with her number stays (her
    orders, her parcels' news), the other joins it; of two with a number or two without, the previous id's. A
    contact known by her id alone is keyed by her new one. The previous id is kept (``previous_numbers``, keyed
    ``bsuid:<id>``) for ``WINDOW``: a message she wrote under it before the change still finds her, and does not
    take her new id back; after it, the id is a new sender's. Meta's retry changes nothing twice."""
    from connector.state import contact_by_user_id

    flush(conn)  # the direct statements below must see what the batch holds back
    her = contact_by_user_id(conn, store_id, e.old_user_id) if e.old_user_id else None
    if her is None and e.phone is not None:
        her = _find(conn, store_id, e.phone, e.wa_id or "")
    other = contact_by_user_id(conn, store_id, e.new_user_id)
    if her is None:
        if other is not None:
            return other.id  # Meta's retry, or the same news again: done already
        log.info("whatsapp user id change for a user this store has no contact of: nothing to learn", extra={"store_id": store_id})
        return None
    kept = her
    if other is not None and other.id != her.id:
        # her words under the new id came first and made a contact of it, or she wrote under it with her number:
        # both are hers. Her number decides which stays: a parcel's "shipped" goes to a number
        if her.phone_e164 is None and other.phone_e164 is not None:
            kept = other
            _join(conn, store_id, her, other, now)
        else:
            _join(conn, store_id, other, her, now)
    values: dict[str, Any] = {}
    if kept.wa_user_id != e.new_user_id:
        values["wa_user_id"] = e.new_user_id
    new_key = f"{USER_ID_KEY}{e.new_user_id}"[:80]
    if kept.phone_key.startswith(USER_ID_KEY) and kept.phone_key != new_key:
        # known by her id alone: keyed by the one she has now, so her previous one, heard after ``WINDOW``, is a
        # new sender's (a contact of its own under that key), not a clash with hers
        values["phone_key"] = new_key
    if values:
        update_by_id(conn, CONTACTS, kept.id, {**values, "updated_at": now})  # a new natural key: written now
        cache = current(conn)
        if cache is not None and "phone_key" in values:
            cache.keys.pop(("contacts", store_id, kept.phone_key), None)
            cache.keys.pop(("contacts", store_id, new_key), None)
    if e.old_user_id and e.old_user_id != e.new_user_id:
        old_key = f"{USER_ID_KEY}{e.old_user_id}"[:80]
        conn.execute(delete(PREVIOUS).where(PREVIOUS.c.store_id == store_id, PREVIOUS.c.phone_key == old_key))
        conn.execute(PREVIOUS.insert().values(store_id=store_id, phone_key=old_key, contact_id=kept.id, from_contact_id=her.id,
                                              changed_at=e.occurred_at))
    # her id now: nobody's previous one
    conn.execute(delete(PREVIOUS).where(PREVIOUS.c.store_id == store_id, PREVIOUS.c.phone_key == new_key))
    log.info("whatsapp contact learnt her new business-scoped user id",
             extra={"store_id": store_id, "contact_id": kept.id, "joined": other is not None and other.id != her.id})
    return kept.id


def _readdress(conn: Connection, store_id: int, contact_id: int, to: str) -> int:
    """Her WhatsApp messages still waiting to go (``pending``) go to ``to``; returns how many changed."""
    rows = conn.execute(select(OUTBOX.c.id, OUTBOX.c.payload).where(
        OUTBOX.c.store_id == store_id, OUTBOX.c.contact_id == contact_id, OUTBOX.c.channel == "whatsapp",
        OUTBOX.c.status == "pending")).all()
    changed = 0
    for row in rows:
        payload = dict(row.payload or {})
        moved = False
        for part in ("message", "fallback"):
            message = payload.get(part)
            if isinstance(message, dict) and message.get("to") and message["to"] != to:
                payload[part] = {**message, "to": to}
                moved = True
        if moved:
            update_by_id(conn, OUTBOX, row.id, {"payload": payload})
            changed += 1
    return changed


# what a contact has, moved to the contact she is joined to (``_join``: a rare event, one statement a table).
# ``previous_numbers`` keep ``from_contact_id``: the contact that had the number (the erasure finds the emptied
# one by it)
MOVED_WITH_HER = (ORDERS, CHECKOUTS, RUNS, HANDOFFS, OUTBOX, MESSAGES, WINDOWS, CONSENT, INBOX, PREVIOUS)
CACHED = (ORDERS, CHECKOUTS, RUNS, CONTACTS)  # the tables the processor's transaction cache holds rows of


def _join(conn: Connection, store_id: int, her: Any, other: Any, now: datetime) -> None:
    """Her new number is already ``other``'s: ``other`` becomes hers in full. Everything of hers moves to it
    (orders, checkouts, runs of any status, cases, messages queued and sent, reorder windows, consent history,
    timeline), so a parcel of an order she placed before, an unquoted answer to a question she was sent on
    the old number, a report and a privacy request all find one contact on the number she uses. Her old row
    stays, emptied and reachable by no number (``moved:<id>``): rows of this batch written after this
    (the inbox rows' outcomes) may still name it.

    Written at once, past the transaction cache, whose rows of the two contacts and of what moved are
    evicted: the batch's next lookups read them back as they are now."""
    flush(conn)  # what the batch holds back for her is written first, then moved with the rest
    moved: dict[str, list[int]] = {}
    for table in MOVED_WITH_HER:
        where = (table.c.store_id == store_id) & (table.c.contact_id == her.id)
        if table in CACHED:
            moved[table.name] = list(conn.execute(update(table).where(where).values(contact_id=other.id).returning(table.c.id)).scalars())
        else:
            conn.execute(update(table).where(where).values(contact_id=other.id))
    _rekey_reply_case(conn, store_id, her.id, other.id)

    values: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    for category in ("utility", "marketing"):
        mine, theirs = getattr(her, f"consent_{category}"), getattr(other, f"consent_{category}")
        # a refusal on either side stands; a consent she gave fills one the other never gave
        if (mine == "revoked" and theirs != "revoked") or (mine == "granted" and theirs == "unknown"):
            at = getattr(her, f"consent_{category}_at") or now
            values.update({f"consent_{category}": mine, f"consent_{category}_source": SOURCE, f"consent_{category}_at": at})
            history.append(dict(store_id=store_id, contact_id=other.id, category=category, state=mine, source=SOURCE, occurred_at=at,
                                inbox_event_id=None))
    if her.opted_out_at is not None and other.opted_out_at is None:
        values["opted_out_at"] = her.opted_out_at
    if her.last_inbound_at is not None and (other.last_inbound_at is None or other.last_inbound_at < her.last_inbound_at):
        values["last_inbound_at"] = her.last_inbound_at
    for col in ("first_name", "last_name", "email", "external_customer_id"):  # who she is, where the other row does not say
        if getattr(her, col) and not getattr(other, col):
            values[col] = getattr(her, col)
    if her.created_at is not None and (other.created_at is None or her.created_at < other.created_at):
        values["created_at"] = her.created_at  # a customer since she first came, not since her second number did
    if her.stage in STAGES and other.stage in STAGES and STAGES.index(her.stage) > STAGES.index(other.stage):
        values["stage"] = her.stage  # the further on (her orders, if any moved, decide below: ``restage``)
    conn.execute(update(CONTACTS).where(CONTACTS.c.id == other.id).values(**values, updated_at=now))
    # her old contact keeps nothing: no number, no name, nothing that would match it again
    conn.execute(update(CONTACTS).where(CONTACTS.c.id == her.id).values(
        phone_key=f"{MOVED}{her.id}", phone_e164=None, phone_raw=None, wa_id=None, wa_user_id=None, first_name=None, last_name=None,
        email=None, external_customer_id=None, reachable=False, unreachable_at=None, updated_at=now))
    cache = current(conn)
    if cache is not None:
        for table, ids in moved.items():
            for row_id in ids:
                cache.evict(table, row_id)
        for contact_id in (her.id, other.id):
            cache.evict("contacts", contact_id)
        cache.history.clear()  # her sends are the other contact's now: what counts as sent to whom changed
    insert_later(conn, CONSENT, history)
    if moved.get(ORDERS.name):
        from connector.handoffs import restage

        restage(conn, store_id, other.id, now)  # her orders and the other contact's together say where she is


def _rekey_reply_case(conn: Connection, store_id: int, her_id: int, other_id: int) -> None:
    """Her open case of words that answered no journey is keyed by her contact (``handoffs.REPLY_CASE``): keyed
    by the joined one, her next words are added to it. If the joined contact has one open, hers keeps its key."""
    from connector.handoffs import REPLY_CASE

    theirs = f"{REPLY_CASE}{other_id}"
    if conn.execute(select(HANDOFFS.c.id).where(HANDOFFS.c.store_id == store_id, HANDOFFS.c.key == theirs)).first() is None:
        conn.execute(update(HANDOFFS).where(HANDOFFS.c.store_id == store_id, HANDOFFS.c.key == f"{REPLY_CASE}{her_id}").values(key=theirs))
