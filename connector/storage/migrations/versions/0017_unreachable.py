"""contacts.unreachable_at: a number WhatsApp refused (131026) is tried again some days later

131026 marked a contact unreachable until she wrote to the store or a later message of ours reached
her; a customer who installed WhatsApp a week later never heard from the store again. The contact now
keeps when her number was last refused (or last tried again), and the policy gate lets one new message
through once ``policy.unreachable_retry_days`` have passed. Contacts already unreachable with a number
take their last update as that time (the refusal is what last changed them, as a rule); those without
a number (it never parsed, or was erased) keep none and are never tried.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-12
"""
import sqlalchemy as sa
from alembic import op

import connector.storage.models


revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # plain ADD COLUMN (SQLite has it): a batch rebuild would drop contacts and, with foreign keys on,
    # what hangs off them (see 0010)
    op.add_column('contacts', sa.Column('unreachable_at', connector.storage.models.UTCDateTime(timezone=True), nullable=True))
    contacts = sa.table('contacts', sa.column('reachable', sa.Boolean()), sa.column('phone_e164', sa.String()),
                        sa.column('updated_at', connector.storage.models.UTCDateTime(timezone=True)),
                        sa.column('unreachable_at', connector.storage.models.UTCDateTime(timezone=True)))
    op.execute(contacts.update().where(contacts.c.reachable.is_(False), contacts.c.phone_e164.is_not(None))
               .values(unreachable_at=contacts.c.updated_at))


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE contacts DROP COLUMN unreachable_at")  # SQLite >= 3.35, as 0010 needs
    else:
        op.drop_column('contacts', 'unreachable_at')
