"""stores.reinstalled_at: after a reinstall, the store's timers and sends wait for its orders to be read back

While a Shopify app is uninstalled nothing reaches us from the store (no webhooks, no reconcile).
A reinstall used to resume the store's sends at once, on what the journeys had decided in the dark.
An install that ends an uninstall now sets ``reinstalled_at``; until the reconcile has read the
orders changed since and the processor has heard them (``connector/reinstall.py``) the store's
journey timers and outbox wait. Existing stores are not waiting for anything: NULL.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-14
"""
import sqlalchemy as sa
from alembic import op

import connector.storage.models


revision = '0019'
down_revision = '0018'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # plain ADD COLUMN (SQLite has it): a batch rebuild would drop stores and, with foreign keys on,
    # what hangs off them (see 0010)
    op.add_column('stores', sa.Column('reinstalled_at', connector.storage.models.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE stores DROP COLUMN reinstalled_at")  # SQLite >= 3.35, as 0010 needs
    else:
        op.drop_column('stores', 'reinstalled_at')
