"""orders.payment_terms and orders.payment_due_at: an order on terms stays on terms after a reconcile

A Shopify B2B order on "due on fulfilment" terms got "complete your payment" an hour after it was
placed: its orders/create webhook carries the terms (and rightly started no reminder), but the
15-minute reconcile reads the order through Admin GraphQL, which does not read payment terms (that
needs the read_payment_terms scope, which existing installs lack), and its OrderUpdated started
the reminder as for an order owed at once. The order now keeps the terms an event carried; an
event without terms leaves them as stored, and payment recovery decides from what is stored.
Orders stored before have no terms on record until an event that carries them is applied (their
next webhook).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-08
"""
import sqlalchemy as sa
from alembic import op

import connector.storage.models


revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # plain ADD COLUMN (SQLite has it): a batch rebuild would drop orders, and with foreign keys on
    # that would take its order_lines with it (see 0010)
    op.add_column('orders', sa.Column('payment_terms', sa.String(length=32), nullable=True))
    op.add_column('orders', sa.Column('payment_due_at', connector.storage.models.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    for column in ('payment_due_at', 'payment_terms'):
        if op.get_bind().dialect.name == "sqlite":
            op.execute(f"ALTER TABLE orders DROP COLUMN {column}")  # SQLite >= 3.35, as 0010 needs
        else:
            op.drop_column('orders', column)
