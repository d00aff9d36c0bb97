"""erased_refs: an erased customer's orders and platform customer id, so later events about them are ignored

After an erasure the store still holds her orders: a later update of one of them (WooCommerce's
``order.updated``, Shopify's ``orders/updated``, a fulfilment, the reconcile reading it back) or of her
account carried her name, phone, email and address back under a new contact. Each erasure now records
the order ids it reached and a keyed hash of her customer id (``connector/erased.py``), under the store's
one key (a row of kind ``key``: the partial unique index ``uq_erased_refs_one_key`` keeps it one when two
first erasures race).

Erasures made before this migration recorded nothing, so it marks them here, store by store: the
orders of each contact a customer erasure left (a ``customer_redact`` row of ``compliance_requests``
lists her contact id, and her ``phone_key`` is still ``redacted:<id>``), with that request's time, and
her platform customer id, hashed as ``erased.customer_hash`` does (a frozen copy below), when the contact still carries one.
Every erasure so far removed it from the contact, and orders keep none, so in practice only her orders
are marked: her account's later updates are not recognised. Contacts a shop erasure left (no
``customer_redact`` request names them) are not marked, as a shop erasure now deletes its store's marks.
By id, in batches; a mark already there stays as it is, so running it again changes nothing.

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-18
"""
import hashlib
import hmac
import secrets
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql, sqlite

import connector.storage.models


revision = '0023'
down_revision = '0022'
branch_labels = None
depends_on = None

_BATCH = 2000  # orders (and requests) read per statement
_CHUNK = 500  # contact ids per IN list
_TIME = connector.storage.models.UTCDateTime(timezone=True)
# connector/erased.py and compliance.erased_contact as at this revision (a migration does not follow the app)
ORDER, CUSTOMER, KEY = 'order', 'customer', 'key'
# an erased contact's phone_key is 'redacted:<id>': a range on it
_ERASED_FROM, _ERASED_UNTIL = 'redacted:', 'redacted;'  # ';' follows ':'


def upgrade() -> None:
    op.create_table('erased_refs',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('store_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('ref', sa.String(length=64), nullable=False),
    sa.Column('erased_at', connector.storage.models.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['store_id'], ['stores.id'], name=op.f('fk_erased_refs_store_id_stores')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_erased_refs')),
    sa.UniqueConstraint('store_id', 'kind', 'ref', name='uq_erased_refs_store_kind_ref')
    )
    op.create_index('uq_erased_refs_one_key', 'erased_refs', ['store_id'], unique=True,
                    sqlite_where=sa.text("kind = 'key'"), postgresql_where=sa.text("kind = 'key'"))
    _mark_earlier_erasures(op.get_bind())


def downgrade() -> None:
    op.drop_index('uq_erased_refs_one_key', table_name='erased_refs')
    op.drop_table('erased_refs')


# the tables as they are at this revision (not the models, which follow the latest one)
_stores = sa.table('stores', sa.column('id', sa.Integer()))
_requests = sa.table('compliance_requests', sa.column('id', sa.BigInteger()), sa.column('store_id', sa.Integer()),
                     sa.column('kind', sa.String()), sa.column('contact_ids', sa.JSON()), sa.column('created_at', _TIME))
_contacts = sa.table('contacts', sa.column('id', sa.BigInteger()), sa.column('store_id', sa.Integer()),
                     sa.column('phone_key', sa.String()), sa.column('external_customer_id', sa.String()))
_orders = sa.table('orders', sa.column('id', sa.BigInteger()), sa.column('store_id', sa.Integer()),
                   sa.column('external_id', sa.String()), sa.column('contact_id', sa.BigInteger()))
_marks = sa.table('erased_refs', sa.column('store_id', sa.Integer()), sa.column('kind', sa.String()),
                  sa.column('ref', sa.String()), sa.column('erased_at', _TIME))


def _mark_earlier_erasures(conn: sa.Connection) -> None:
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
    """Mark the orders (and any customer id left) of those of these contacts that are still erased."""
    contacts = conn.execute(
        sa.select(_contacts.c.id, _contacts.c.external_customer_id)
        .where(_contacts.c.store_id == store_id, _contacts.c.id.in_(sorted(erased_at)),
               _contacts.c.phone_key >= _ERASED_FROM, _contacts.c.phone_key < _ERASED_UNTIL)
    ).all()
    if not contacts:
        return
    customers = [dict(store_id=store_id, kind=CUSTOMER, ref=c.external_customer_id, erased_at=erased_at[c.id])
                 for c in contacts if c.external_customer_id]
    if customers:
        key = _store_key(conn, store_id)
        _insert(conn, [{**row, 'ref': _customer_hash(key, row['ref'])} for row in customers])
    still = sorted(c.id for c in contacts)
    after = 0
    while True:  # by order id: one customer may have thousands of orders
        rows = conn.execute(
            sa.select(_orders.c.id, _orders.c.external_id, _orders.c.contact_id)
            .where(_orders.c.store_id == store_id, _orders.c.contact_id.in_(still), _orders.c.id > after)
            .order_by(_orders.c.id).limit(_BATCH)
        ).all()
        if not rows:
            return
        _insert(conn, [dict(store_id=store_id, kind=ORDER, ref=r.external_id[:64], erased_at=erased_at[r.contact_id])
                       for r in rows if r.external_id])
        after = rows[-1].id


def _store_key(conn: sa.Connection, store_id: int) -> str:
    """The store's hashing key (``erased._store_key``'s, on this revision's table): made unless the store
    has one (the ``uq_erased_refs_one_key`` index keeps it one), then read."""
    dialect = postgresql if conn.dialect.name == 'postgresql' else sqlite
    conn.execute(dialect.insert(_marks).on_conflict_do_nothing(index_elements=['store_id'], index_where=_marks.c.kind == KEY),
                 [dict(store_id=store_id, kind=KEY, ref=secrets.token_hex(32), erased_at=datetime.now(timezone.utc))])
    return conn.execute(sa.select(_marks.c.ref).where(_marks.c.store_id == store_id, _marks.c.kind == KEY)).scalar_one()


def _customer_hash(key: str, customer_id: str) -> str:
    """``erased.customer_hash`` as at this revision: HMAC-SHA256 of the id under the store's key (hex)."""
    return hmac.new(bytes.fromhex(key), customer_id.encode('utf-8'), hashlib.sha256).hexdigest()


def _insert(conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
    """A mark already there (this step run before) stays as it is."""
    if not rows:
        return
    dialect = postgresql if conn.dialect.name == 'postgresql' else sqlite
    conn.execute(dialect.insert(_marks).on_conflict_do_nothing(index_elements=['store_id', 'kind', 'ref']), rows)
