"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-24
"""
from alembic import op
import sqlalchemy as sa
import connector.storage.models


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table('leases',
    sa.Column('name', sa.String(length=120), nullable=False),
    sa.Column('holder', sa.String(length=64), nullable=False),
    sa.Column('expires_at', connector.storage.models.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_leases'))
    )
    op.create_table('stores',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('platform', sa.String(length=20), nullable=False),
    sa.Column('uninstalled_at', connector.storage.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_at', connector.storage.models.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_stores')),
    sa.UniqueConstraint('key', name=op.f('uq_stores_key'))
    )
    op.create_table('contacts',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('store_id', sa.Integer(), nullable=False),
    sa.Column('phone_key', sa.String(length=80), nullable=False),
    sa.Column('phone_e164', sa.String(length=20), nullable=True),
    sa.Column('phone_raw', sa.String(length=80), nullable=True),
    sa.Column('reachable', sa.Boolean(), nullable=False),
    sa.Column('wa_id', sa.String(length=32), nullable=True),
    sa.Column('wa_user_id', sa.String(length=80), nullable=True),
    sa.Column('external_customer_id', sa.String(length=64), nullable=True),
    sa.Column('first_name', sa.String(length=120), nullable=True),
    sa.Column('last_name', sa.String(length=120), nullable=True),
    sa.Column('email', sa.String(length=255), nullable=True),
    sa.Column('consent_utility', sa.String(length=16), nullable=False),
    sa.Column('consent_utility_source', sa.String(length=64), nullable=True),
    sa.Column('consent_utility_at', connector.storage.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('consent_marketing', sa.String(length=16), nullable=False),
    sa.Column('consent_marketing_source', sa.String(length=64), nullable=True),
    sa.Column('consent_marketing_at', connector.storage.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('opted_out_at', connector.storage.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_inbound_at', connector.storage.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('stage', sa.String(length=20), nullable=False),
    sa.Column('created_at', connector.storage.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', connector.storage.models.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['store_id'], ['stores.id'], name=op.f('fk_contacts_store_id_stores')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_contacts')),
    sa.UniqueConstraint('store_id', 'phone_key', name='uq_contacts_store_phone')
    )
    with op.batch_alter_table('contacts', schema=None) as batch_op:
        batch_op.create_index('ix_contacts_store_customer', ['store_id', 'external_customer_id'], unique=False)
        batch_op.create_index('ix_contacts_store_wa_id', ['store_id', 'wa_id'], unique=False)

    op.create_table('fulfillments',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('store_id', sa.Integer(), nullable=False),
    sa.Column('external_id', sa.String(length=64), nullable=False),
    sa.Column('order_external_id', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=24), nullable=False),
    sa.Column('shipment_status', sa.String(length=32), nullable=False),
    sa.Column('tracking_company', sa.String(length=120), nullable=True),
    sa.Column('tracking_number', sa.String(length=120), nullable=True),
    sa.Column('tracking_url', sa.Text(), nullable=True),
    sa.Column('created_at', connector.storage.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('source_updated_at', connector.storage.models.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['store_id'], ['stores.id'], name=op.f('fk_fulfillments_store_id_stores')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_fulfillments')),
    sa.UniqueConstraint('store_id', 'external_id', name='uq_fulfillments_store_external')
    )
    with op.batch_alter_table('fulfillments', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_fulfillments_order_external_id'), ['order_external_id'], unique=False)

    op.create_table('sync_cursors',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('store_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('value', sa.Text(), nullable=True),
    sa.Column('updated_at', connector.storage.models.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['store_id'], ['stores.id'], name=op.f('fk_sync_cursors_store_id_stores')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sync_cursors')),
    sa.UniqueConstraint('store_id', 'name', name='uq_sync_cursors_store_name')
    )
    op.create_table('checkouts',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('store_id', sa.Integer(), nullable=False),
    sa.Column('token', sa.String(length=128), nullable=False),
    sa.Column('contact_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('recovery_url', sa.Text(), nullable=True),
    sa.Column('total', sa.Numeric(precision=14, scale=2), nullable=False),
    sa.Column('currency', sa.String(length=8), nullable=False),
    sa.Column('accepts_marketing', sa.Boolean(), nullable=False),
    sa.Column('line_items', sa.JSON(), nullable=False),
    sa.Column('started_at', connector.storage.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('completed_at', connector.storage.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('source_updated_at', connector.storage.models.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['contact_id'], ['contacts.id'], name=op.f('fk_checkouts_contact_id_contacts')),
    sa.ForeignKeyConstraint(['store_id'], ['stores.id'], name=op.f('fk_checkouts_store_id_stores')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_checkouts')),
    sa.UniqueConstraint('store_id', 'token', name='uq_checkouts_store_token')
    )
    op.create_table('consent_changes',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('store_id', sa.Integer(), nullable=False),
    sa.Column('contact_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('category', sa.String(length=16), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('source', sa.String(length=64), nullable=False),
    sa.Column('occurred_at', connector.storage.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('inbox_event_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.ForeignKeyConstraint(['contact_id'], ['contacts.id'], name=op.f('fk_consent_changes_contact_id_contacts')),
    sa.ForeignKeyConstraint(['store_id'], ['stores.id'], name=op.f('fk_consent_changes_store_id_stores')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_consent_changes'))
    )
    with op.batch_alter_table('consent_changes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_consent_changes_contact_id'), ['contact_id'], unique=False)

    op.create_table('inbox_events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('store_id', sa.Integer(), nullable=False),
    sa.Column('source', sa.String(length=20), nullable=False),
    sa.Column('topic', sa.String(length=80), nullable=False),
    sa.Column('dedupe_key', sa.String(length=255), nullable=False),
    sa.Column('received_at', connector.storage.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('triggered_at', connector.storage.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('headers', sa.JSON(), nullable=False),
    sa.Column('raw_body', sa.LargeBinary(), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('available_at', connector.storage.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('event', sa.JSON(), nullable=True),
    sa.Column('subject', sa.String(length=160), nullable=True),
    sa.Column('contact_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('processed_at', connector.storage.models.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['contact_id'], ['contacts.id'], name=op.f('fk_inbox_events_contact_id_contacts')),
    sa.ForeignKeyConstraint(['store_id'], ['stores.id'], name=op.f('fk_inbox_events_store_id_stores')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_inbox_events')),
    sa.UniqueConstraint('store_id', 'dedupe_key', name='uq_inbox_events_store_dedupe')
    )
    with op.batch_alter_table('inbox_events', schema=None) as batch_op:
        batch_op.create_index('ix_inbox_events_status_id', ['status', 'id'], unique=False)
        batch_op.create_index('ix_inbox_events_store_contact', ['store_id', 'contact_id'], unique=False)
        batch_op.create_index('ix_inbox_events_store_subject', ['store_id', 'subject'], unique=False)

    op.create_table('journey_runs',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('store_id', sa.Integer(), nullable=False),
    sa.Column('journey', sa.String(length=40), nullable=False),
    sa.Column('subject', sa.String(length=160), nullable=False),
    sa.Column('contact_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('state', sa.JSON(), nullable=False),
    sa.Column('holdout', sa.Boolean(), nullable=False),
    sa.Column('next_due_at', connector.storage.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('started_at', connector.storage.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', connector.storage.models.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['contact_id'], ['contacts.id'], name=op.f('fk_journey_runs_contact_id_contacts')),
    sa.ForeignKeyConstraint(['store_id'], ['stores.id'], name=op.f('fk_journey_runs_store_id_stores')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_journey_runs')),
    sa.UniqueConstraint('store_id', 'journey', 'subject', name='uq_journey_runs_store_subject')
    )
    op.create_table('messages',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('store_id', sa.Integer(), nullable=False),
    sa.Column('contact_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('direction', sa.String(length=8), nullable=False),
    sa.Column('wamid', sa.String(length=255), nullable=True),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('body', sa.Text(), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('error_code', sa.Integer(), nullable=True),
    sa.Column('outbox_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('occurred_at', connector.storage.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', connector.storage.models.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['contact_id'], ['contacts.id'], name=op.f('fk_messages_contact_id_contacts')),
    sa.ForeignKeyConstraint(['store_id'], ['stores.id'], name=op.f('fk_messages_store_id_stores')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_messages')),
    sa.UniqueConstraint('store_id', 'wamid', name='uq_messages_store_wamid')
    )
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.create_index('ix_messages_store_contact', ['store_id', 'contact_id'], unique=False)

    op.create_table('orders',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('store_id', sa.Integer(), nullable=False),
    sa.Column('external_id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('contact_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('payment_state', sa.String(length=24), nullable=False),
    sa.Column('fulfillment_state', sa.String(length=24), nullable=False),
    sa.Column('platform_status', sa.String(length=40), nullable=True),
    sa.Column('is_cod', sa.Boolean(), nullable=False),
    sa.Column('total', sa.Numeric(precision=14, scale=2), nullable=False),
    sa.Column('currency', sa.String(length=8), nullable=False),
    sa.Column('checkout_token', sa.String(length=128), nullable=True),
    sa.Column('status_url', sa.Text(), nullable=True),
    sa.Column('payment_url', sa.Text(), nullable=True),
    sa.Column('tags', sa.JSON(), nullable=False),
    sa.Column('test', sa.Boolean(), nullable=False),
    sa.Column('placed_at', connector.storage.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('cancelled_at', connector.storage.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('source_updated_at', connector.storage.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', connector.storage.models.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['contact_id'], ['contacts.id'], name=op.f('fk_orders_contact_id_contacts')),
    sa.ForeignKeyConstraint(['store_id'], ['stores.id'], name=op.f('fk_orders_store_id_stores')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_orders')),
    sa.UniqueConstraint('store_id', 'external_id', name='uq_orders_store_external')
    )
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.create_index('ix_orders_store_checkout', ['store_id', 'checkout_token'], unique=False)
        batch_op.create_index('ix_orders_store_contact', ['store_id', 'contact_id'], unique=False)

    op.create_table('outbox',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('store_id', sa.Integer(), nullable=False),
    sa.Column('idempotency_key', sa.String(length=255), nullable=False),
    sa.Column('channel', sa.String(length=16), nullable=False),
    sa.Column('contact_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('journey', sa.String(length=40), nullable=True),
    sa.Column('step', sa.String(length=40), nullable=True),
    sa.Column('category', sa.String(length=16), nullable=True),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('due_at', connector.storage.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('lease_until', connector.storage.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('leased_by', sa.String(length=64), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('skip_reason', sa.String(length=64), nullable=True),
    sa.Column('wamid', sa.String(length=255), nullable=True),
    sa.Column('created_at', connector.storage.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', connector.storage.models.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['contact_id'], ['contacts.id'], name=op.f('fk_outbox_contact_id_contacts')),
    sa.ForeignKeyConstraint(['store_id'], ['stores.id'], name=op.f('fk_outbox_store_id_stores')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_outbox')),
    sa.UniqueConstraint('store_id', 'idempotency_key', name='uq_outbox_store_key')
    )
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.create_index('ix_outbox_status_due', ['status', 'due_at'], unique=False)

    op.create_table('order_lines',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('store_id', sa.Integer(), nullable=False),
    sa.Column('order_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('external_id', sa.String(length=64), nullable=True),
    sa.Column('product_id', sa.String(length=64), nullable=True),
    sa.Column('variant_id', sa.String(length=64), nullable=True),
    sa.Column('sku', sa.String(length=128), nullable=True),
    sa.Column('title', sa.String(length=255), nullable=False),
    sa.Column('quantity', sa.Integer(), nullable=False),
    sa.Column('price', sa.Numeric(precision=14, scale=2), nullable=False),
    sa.ForeignKeyConstraint(['order_id'], ['orders.id'], name=op.f('fk_order_lines_order_id_orders'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['store_id'], ['stores.id'], name=op.f('fk_order_lines_store_id_stores')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_order_lines'))
    )
    with op.batch_alter_table('order_lines', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_order_lines_order_id'), ['order_id'], unique=False)

    op.create_table('outbox_attempts',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('store_id', sa.Integer(), nullable=False),
    sa.Column('outbox_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('started_at', connector.storage.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('duration_ms', sa.Integer(), nullable=True),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('error_code', sa.Integer(), nullable=True),
    sa.Column('error_detail', sa.String(length=255), nullable=True),
    sa.ForeignKeyConstraint(['outbox_id'], ['outbox.id'], name=op.f('fk_outbox_attempts_outbox_id_outbox'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['store_id'], ['stores.id'], name=op.f('fk_outbox_attempts_store_id_stores')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_outbox_attempts'))
    )
    with op.batch_alter_table('outbox_attempts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_outbox_attempts_outbox_id'), ['outbox_id'], unique=False)




def downgrade() -> None:

    with op.batch_alter_table('outbox_attempts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_outbox_attempts_outbox_id'))

    op.drop_table('outbox_attempts')
    with op.batch_alter_table('order_lines', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_order_lines_order_id'))

    op.drop_table('order_lines')
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_index('ix_outbox_status_due')

    op.drop_table('outbox')
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_index('ix_orders_store_contact')
        batch_op.drop_index('ix_orders_store_checkout')

    op.drop_table('orders')
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_index('ix_messages_store_contact')

    op.drop_table('messages')
    op.drop_table('journey_runs')
    with op.batch_alter_table('inbox_events', schema=None) as batch_op:
        batch_op.drop_index('ix_inbox_events_store_subject')
        batch_op.drop_index('ix_inbox_events_store_contact')
        batch_op.drop_index('ix_inbox_events_status_id')

    op.drop_table('inbox_events')
    with op.batch_alter_table('consent_changes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_consent_changes_contact_id'))

    op.drop_table('consent_changes')
    op.drop_table('checkouts')
    op.drop_table('sync_cursors')
    with op.batch_alter_table('fulfillments', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_fulfillments_order_external_id'))

    op.drop_table('fulfillments')
    with op.batch_alter_table('contacts', schema=None) as batch_op:
        batch_op.drop_index('ix_contacts_store_wa_id')
        batch_op.drop_index('ix_contacts_store_customer')

    op.drop_table('contacts')
    op.drop_table('stores')
    op.drop_table('leases')

