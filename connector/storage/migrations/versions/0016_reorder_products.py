"""reorder_windows.cancel_reason and product_availability.product_id: a product sold again gets its reminders back

A product archived, made a draft or binned had its customers' pending reorder windows cancelled, and
when the store sold it again they stayed cancelled: nothing told them from a window cancelled because
its order was refunded. ``cancel_reason`` says why a window was cancelled (``not_sold`` for the
product); those still ahead (or due within ``late_days``) are planned again when the product is back.
``product_availability`` rows now also hold a product's SKUs and title (``s:`` / ``t:`` keys, for order
lines with no product id), tied to the product by ``product_id``. Windows cancelled before this
migration have no reason and stay cancelled.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-12
"""
import sqlalchemy as sa
from alembic import op


revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # plain ADD COLUMN (SQLite has it), as 0014
    op.add_column('reorder_windows', sa.Column('cancel_reason', sa.String(length=16), nullable=True))
    op.add_column('product_availability', sa.Column('product_id', sa.String(length=64), nullable=True))


def downgrade() -> None:
    for table, column in (('product_availability', 'product_id'), ('reorder_windows', 'cancel_reason')):
        if op.get_bind().dialect.name == "sqlite":
            op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")  # SQLite >= 3.35, as 0010 needs
        else:
            op.drop_column(table, column)
