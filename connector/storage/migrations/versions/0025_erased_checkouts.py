"""erased_refs: the checkouts of earlier erasures, so a guest's abandoned cart stays erased

Each customer erasure now also records the tokens of the checkouts it reached (kind ``checkout``,
``connector/erased.py``): a later update of one (Shopify's ``checkouts/update`` for a cart a guest
left, the abandoned-checkout poll reading it back) carried her phone back under a new contact, and
the checkout-recovery journey messaged her. A guest has no customer id and her checkout no order, so
nothing else recognised it.

Erasures made before this migration marked no checkout, so it marks them here, store by store, as
0023 marked their orders: the checkouts of each contact a customer erasure left (a ``customer_redact``
row of ``compliance_requests`` lists her contact id, and her ``phone_key`` is still ``redacted:<id>``),
and those her orders name (``orders.checkout_token``), with that request's time. Their recovery links
are not marked (the erasure removed them), so the poll reading such a checkout back under a newer
recovery link, which does not carry the token, is not recognised; one whose link carries its token,
and every webhook of it, are. No schema change. A mark already there stays as it is, so running it
again changes nothing.

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-07
"""
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql, sqlite

import connector.storage.models


revision = '0025'
down_revision = '0024'
branch_labels = None
depends_on = None

_BATCH = 2000  # requests (and checkouts) read per statement
_CHUNK = 500  # contact ids per IN list
_TIME = connector.storage.models.UTCDateTime(timezone=True)
CHECKOUT = 'checkout'  # erased.CHECKOUT, as at this revision
# an erased contact's phone_key is 'redacted:<id>' (compliance.erased_contact, as at this revision): a range on it
_ERASED_FROM, _ERASED_UNTIL = 'redacted:', 'redacted;'  # ';' follows ':'


def upgrade() -> None:
    _mark_earlier_checkouts(op.get_bind())


def downgrade() -> None:
    # the marks stay meaningful to 0024's code, which reads orders' and customers' only
    op.execute(sa.text("DELETE FROM erased_refs WHERE kind = 'checkout'"))


# the tables as they are at this revision (not the models, which follow the latest one)
_stores = sa.table('stores', sa.column('id', sa.Integer()))
_requests = sa.table('compliance_requests', sa.column('id', sa.BigInteger()), sa.column('store_id', sa.Integer()),
                     sa.column('kind', sa.String()), sa.column('contact_ids', sa.JSON()), sa.column('created_at', _TIME))
_contacts = sa.table('contacts', sa.column('id', sa.BigInteger()), sa.column('store_id', sa.Integer()),
                     sa.column('phone_key', sa.String()))
_orders = sa.table('orders', sa.column('id', sa.BigInteger()), sa.column('store_id', sa.Integer()),
                   sa.column('checkout_token', sa.String()), sa.column('contact_id', sa.BigInteger()))
_checkouts = sa.table('checkouts', sa.column('id', sa.BigInteger()), sa.column('store_id', sa.Integer()),
                      sa.column('token', sa.String()), sa.column('contact_id', sa.BigInteger()))
_marks = sa.table('erased_refs', sa.column('store_id', sa.Integer()), sa.column('kind', sa.String()),
                  sa.column('ref', sa.String()), sa.column('erased_at', _TIME))


def _mark_earlier_checkouts(conn: sa.Connection) -> None:
    for store_id in conn.execute(sa.select(_stores.c.id).order_by(_stores.c.id)).scalars().all():
        erased_at = _customer_erasures(conn, store_id)
        ids = sorted(erased_at)
        for i in range(0, len(ids), _CHUNK):
            _mark_contacts(conn, store_id, {c: erased_at[c] for c in ids[i:i + _CHUNK]})


def _customer_erasures(conn: sa.Connection, store_id: int) -> dict[int, datetime]:
    """The store's contacts its customer erasures reached, each with its first erasure's time."""
    found: dict[int, datetime] = {}
    after = 0
    while True:
        rows = conn.execute(
            sa.select(_requests.c.id, _requests.c.contact_ids, _requests.c.created_at)
            .where(_requests.c.store_id == store_id, _requests.c.kind == 'customer_redact', _requests.c.id > after)
            .order_by(_requests.c.id).limit(_BATCH)
        ).all()
        if not rows:
            return found
        for row in rows:
            for contact_id in row.contact_ids or []:
                if isinstance(contact_id, int) and (contact_id not in found or row.created_at < found[contact_id]):
                    found[contact_id] = row.created_at
        after = rows[-1].id


def _mark_contacts(conn: sa.Connection, store_id: int, erased_at: dict[int, datetime]) -> None:
    """Mark the checkouts (theirs, and their orders') of those of these contacts that are still erased."""
    still = sorted(conn.execute(
        sa.select(_contacts.c.id).where(_contacts.c.store_id == store_id, _contacts.c.id.in_(sorted(erased_at)),
                                        _contacts.c.phone_key >= _ERASED_FROM, _contacts.c.phone_key < _ERASED_UNTIL)
    ).scalars())
    if not still:
        return
    for table, token in ((_checkouts, _checkouts.c.token), (_orders, _orders.c.checkout_token)):
        after = 0
        while True:  # by row id: one customer may have thousands
            rows = conn.execute(
                sa.select(table.c.id, token.label('token'), table.c.contact_id)
                .where(table.c.store_id == store_id, table.c.contact_id.in_(still), token.is_not(None), table.c.id > after)
                .order_by(table.c.id).limit(_BATCH)
            ).all()
            if not rows:
                break
            _insert(conn, [dict(store_id=store_id, kind=CHECKOUT, ref=r.token[:64], erased_at=erased_at[r.contact_id])
                           for r in rows if r.token])
            after = rows[-1].id


def _insert(conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
    """A mark already there (this step run before, or an erasure since) stays as it is."""
    if not rows:
        return
    dialect = postgresql if conn.dialect.name == 'postgresql' else sqlite
    conn.execute(dialect.insert(_marks).on_conflict_do_nothing(index_elements=['store_id', 'kind', 'ref']), rows)
