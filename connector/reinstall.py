"""A reinstall after ``app/uninstalled``: nothing decided while the store was out of sight is acted on blindly.

While the app is uninstalled the store is out of sight: Shopify sends no webhooks and the sync
jobs cannot read it (its token is revoked). Nothing is sent or written back for it (the outbox
claim leaves it out, ``STORE_WAITS``) and its journey timers wait (``InboxProcessor.process_timers``):
a timer fired then would decide on what the store was before the uninstall, and cancel for "no
answer" a COD order the staff had confirmed by phone meanwhile.

An install that ends the uninstall (``resume``, in the install's transaction):

- skips, with reason ``uninstalled``, the messages and store write-backs queued while the store
  was out of sight and still waiting: what reached us then (a customer's tap) was decided on the
  store as it was before. A skipped write-back (her Cancel, her Confirm's tag) goes to a person,
  who checks the order and makes it by hand if it still holds. Notices to the store's team
  (``notify``) still go: they only tell a person of a case;
- keeps the store's timers and sends waiting (``stores.reinstalled_at``) until the orders
  changed since are read back and heard: the next reconcile (the install starts one) ends with
  a ``store/caught_up`` row in the inbox (``caught_up_item``), behind the orders it read, and
  processing it clears the wait (``caught_up``). The timers then fire on fresh facts: a run whose
  order was cancelled or shipped meanwhile ends without a word, the others go on where they
  stopped, late by the gap.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, or_, select, update

from connector import events as ev
from connector.errors import NormalizationError
from connector.storage.db import Database
from connector.storage.inbox import InboxItem
from connector.storage.sql import INBOX, OUTBOX, STORES

log = logging.getLogger("storeloop.install")

SOURCE = "storeloop"  # inbox rows of our own making, not a platform's
CAUGHT_UP = "store/caught_up"
SKIPPED = ("whatsapp", "store")  # the channels whose rows queued out of sight are skipped on reinstall

# a store whose sends and timers wait: uninstalled, or reinstalled and not yet caught up
STORE_WAITS = or_(STORES.c.uninstalled_at.is_not(None), STORES.c.reinstalled_at.is_not(None))


def resume(conn: Connection, store: Any, store_id: int, now: datetime) -> bool:
    """End an uninstall (see the module docstring); False when the store was not uninstalled."""
    from connector.outbox.writebacks import hand_off_unmade

    # an ``app/uninstalled`` still waiting in the inbox (the worker behind, or down) is older than this
    # install: processed after it, it would pause the store again and drop the credentials just stored
    superseded = conn.execute(update(INBOX).where(
        INBOX.c.store_id == store_id, INBOX.c.status == "pending", INBOX.c.source == "shopify", INBOX.c.topic == "app/uninstalled",
    ).values(status="ignored", last_error="superseded: the app was installed again before this was processed")).rowcount
    if superseded:
        log.warning("app/uninstalled superseded by a reinstall before it was processed", extra={"store": store.key})
    since = conn.execute(select(STORES.c.uninstalled_at).where(STORES.c.id == store_id)).scalar()
    if since is None:
        return False
    queued = conn.execute(select(OUTBOX.c.id, OUTBOX.c.channel, OUTBOX.c.payload, OUTBOX.c.journey, OUTBOX.c.contact_id).where(
        OUTBOX.c.store_id == store_id, OUTBOX.c.status == "pending", OUTBOX.c.channel.in_(SKIPPED), OUTBOX.c.created_at >= since,
    ).order_by(OUTBOX.c.id)).all()
    if queued:
        conn.execute(update(OUTBOX).where(OUTBOX.c.id.in_([r.id for r in queued]), OUTBOX.c.status == "pending")
                     .values(status="skipped", skip_reason="uninstalled", updated_at=now))
        hand_off_unmade(conn, store, store_id, [r for r in queued if r.channel == "store"], now)
    conn.execute(update(STORES).where(STORES.c.id == store_id).values(uninstalled_at=None, reinstalled_at=now))
    return True


def caught_up_item(db: Database, store_id: int) -> InboxItem | None:
    """The row that ends a reinstalled store's wait, for a reconcile that has read the orders changed
    while it was uninstalled; None when the store waits for nothing."""
    with db.engine.connect() as conn:
        since = conn.execute(select(STORES.c.reinstalled_at).where(STORES.c.id == store_id)).scalar()
    if since is None:
        return None
    at = since.isoformat()
    return InboxItem(store_id=store_id, source=SOURCE, topic=CAUGHT_UP, dedupe_key=f"caught_up:{at}",
                     raw_body=json.dumps({"reinstalled_at": at}).encode())


def normalize(topic: str, body: dict[str, Any], _store: Any) -> list[ev.Event]:
    """Our own inbox rows (``SOURCE``)."""
    if topic != CAUGHT_UP or not isinstance(body.get("reinstalled_at"), str):
        raise NormalizationError(f"not a row of ours: {topic!r}")
    return [ev.StoreCaughtUp(reinstalled_at=datetime.fromisoformat(body["reinstalled_at"]))]


def caught_up(conn: Connection, store_id: int, event: ev.StoreCaughtUp) -> None:
    """The orders read back after the reinstall were heard: timers and sends resume. A later
    reinstall (uninstalled again meanwhile) waits for its own reconcile."""
    conn.execute(update(STORES).where(STORES.c.id == store_id, STORES.c.reinstalled_at <= event.reinstalled_at)
                 .values(reinstalled_at=None))
