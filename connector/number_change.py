"""A customer changed her WhatsApp number: her contact follows her to the new one.

Meta tells the business with a system message (``user_changed_number``: from the old number, naming
the new one). Without it she was two people: her consent and STOP stayed on the old number, her journey
runs, open cases and queued messages kept writing to a number she no longer reads, and her first word
from the new number started a stranger with no consent and no history.

So, in the store the message came to (never another store, whose contact with the same number is its own):

- her contact moves to the new number: the same row, so her consent, opt-out, stage, runs, cases and send
  history are hers there as they were (an opted-out customer stays opted out);
- if the new number is already another contact of the store's (she ordered with it before Meta said), that
  contact is taken as hers, WhatsApp having said the number is hers: her active and waiting runs, open cases,
  queued messages and pending reorder windows move to it, her consent joins it (a refusal or an opt-out on
  either side stands; a consent fills one not given), and the old contact keeps only her history, reachable
  by no number (``moved:<id>``);
- her messages still queued go to the new number (a message already on its way stays as sent);
- the old number is kept (``previous_numbers``), so a late status, reply or order naming it reaches her
  contact, and a number she moved to is nobody's previous number any more.

A change about a number the store does not know moves nothing; Meta's retry of one moves nothing twice.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, select, update

from connector import events as ev
from connector.contacts import wa_id_to_e164
from connector.rows import contact_by_phone, contact_row, contact_where, phone_key
from connector.storage.models import PreviousNumber, ReorderWindow
from connector.storage.sql import CONSENT, CONTACTS, HANDOFFS, OUTBOX, RUNS, flush, insert_later, update_by_id
from connector.storage.txcache import current

log = logging.getLogger("storeloop.number_change")

PREVIOUS = PreviousNumber.__table__
WINDOWS = ReorderWindow.__table__
SOURCE = "whatsapp_number_change"
MOVED = "moved:"  # the phone_key of a contact whose number went to another one (``_join``)
UNFINISHED = ("active", "handoff")  # runs still going or waiting on a person


def previous_owner(conn: Connection, store_id: int, key: str | None) -> int | None:
    """The contact of this store a number used to be of (she changed it since), or None.
    By the (store_id, phone_key) unique index; the table is not cached, so nothing is flushed."""
    if not key:
        return None
    return conn.execute(select(PREVIOUS.c.contact_id).where(PREVIOUS.c.store_id == store_id, PREVIOUS.c.phone_key == key)).scalar()


def previous_owner_of_wa_id(conn: Connection, store_id: int, wa_id: str | None) -> int | None:
    phone = wa_id_to_e164(wa_id)
    return previous_owner(conn, store_id, phone_key(phone)) if phone is not None else None


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
        moved_to = previous_owner(conn, store_id, phone_key(e.old_phone)) if e.old_phone is not None else None
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


def _join(conn: Connection, store_id: int, her: Any, other: Any, now: datetime) -> None:
    """Her new number is already ``other``'s: what reaches her and what she said go to ``other``."""
    for run in conn.execute(select(RUNS.c.id).where(RUNS.c.store_id == store_id, RUNS.c.contact_id == her.id,
                                                    RUNS.c.status.in_(UNFINISHED))).scalars().all():
        update_by_id(conn, RUNS, run, {"contact_id": other.id, "updated_at": now})
    conn.execute(update(HANDOFFS).where(HANDOFFS.c.store_id == store_id, HANDOFFS.c.contact_id == her.id, HANDOFFS.c.status == "open")
                 .values(contact_id=other.id))
    conn.execute(update(OUTBOX).where(OUTBOX.c.store_id == store_id, OUTBOX.c.contact_id == her.id, OUTBOX.c.status == "pending")
                 .values(contact_id=other.id))
    conn.execute(update(WINDOWS).where(WINDOWS.c.store_id == store_id, WINDOWS.c.contact_id == her.id, WINDOWS.c.status == "pending")
                 .values(contact_id=other.id))
    conn.execute(update(PREVIOUS).where(PREVIOUS.c.store_id == store_id, PREVIOUS.c.contact_id == her.id).values(contact_id=other.id))
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
    if values:
        update_by_id(conn, CONTACTS, other.id, {**values, "updated_at": now})
    insert_later(conn, CONSENT, history)
    # her old contact keeps her history (orders, messages), reachable by no number: the old one finds ``other`` now
    update_by_id(conn, CONTACTS, her.id, dict(phone_key=f"{MOVED}{her.id}", phone_e164=None, phone_raw=None, wa_id=None,
                                              wa_user_id=None, reachable=False, unreachable_at=None, updated_at=now))
