"""stores.whatsapp_health, stores.whatsapp_held_until: Meta's news of the number and the account

Meta's ``phone_number_quality_update``, ``account_update`` and ``message_template_quality_update``
webhooks used to be kept in the inbox and read by nobody. The store row now keeps what they said,
each part with the time Meta sent it (an older update arriving late does not overwrite a newer
one), and, while Meta restricts or disables the account, until when its WhatsApp sends wait.
Existing stores have heard nothing yet: NULL.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-16
"""
import sqlalchemy as sa
from alembic import op

import connector.storage.models


revision = '0020'
down_revision = '0019'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # plain ADD COLUMN (SQLite has it): a batch rebuild would drop stores and, with foreign keys on,
    # what hangs off them (see 0010)
    op.add_column('stores', sa.Column('whatsapp_health', sa.JSON(), nullable=True))
    op.add_column('stores', sa.Column('whatsapp_held_until', connector.storage.models.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    for column in ('whatsapp_held_until', 'whatsapp_health'):
        if op.get_bind().dialect.name == "sqlite":
            op.execute(f"ALTER TABLE stores DROP COLUMN {column}")  # SQLite >= 3.35, as 0010 needs
        else:
            op.drop_column('stores', column)
