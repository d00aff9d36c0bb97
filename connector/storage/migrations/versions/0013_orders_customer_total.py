"""orders.customer_total and orders.customer_currency: messages show the customer their own money

On a Shopify Markets store an order charged EUR 92.50 to the customer was shown to them as
"USD 100.00" (the shop's money) in the COD ask and the confirmation. The order now keeps what
the customer was charged, in their currency, when it is not the shop's; ``total``/``currency``
stay the shop's money, which revenue is counted in. Null: the same as the shop's.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""
import sqlalchemy as sa
from alembic import op


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('orders', sa.Column('customer_total', sa.Numeric(precision=14, scale=2), nullable=True))
    op.add_column('orders', sa.Column('customer_currency', sa.String(length=8), nullable=True))


def downgrade() -> None:
    for column in ('customer_currency', 'customer_total'):
        if op.get_bind().dialect.name == "sqlite":
            op.execute(f"ALTER TABLE orders DROP COLUMN {column}")  # SQLite >= 3.35, as 0010 needs
        else:
            op.drop_column('orders', column)
