"""inbox_events.event past the retention keeps the event types only

The hourly retention purge deleted the raw bodies of settled inbox rows but left their normalised
``event``, a copy of the same personal data (the customer's name, phone, email, address, the text
she wrote). The purge now reduces the event to its types as it deletes the body; the rows it purged
before (settled, no body left) are reduced here. Privacy requests' own rows (no body: their event
is what was done, no personal data) and erased rows (no event) are left as they are. No schema change.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-17
"""
import sqlalchemy as sa
from alembic import op


revision = '0021'
down_revision = '0020'
branch_labels = None
depends_on = None

_PRIVACY = ('customers/data_request', 'customers/redact', 'shop/redact')
_BATCH = 2000


def _types(event):
    return [{"type": e.get("type")} for e in event if isinstance(e, dict)] if isinstance(event, list) else event


def upgrade() -> None:
    inbox = sa.table('inbox_events', sa.column('id', sa.BigInteger()), sa.column('status', sa.String()),
                     sa.column('topic', sa.String()), sa.column('event', sa.JSON()))
    bodies = sa.table('inbox_bodies', sa.column('id', sa.BigInteger()))
    conn = op.get_bind()
    after = 0
    while True:  # by id, in batches: one statement per batch, whatever the table's size
        rows = conn.execute(
            sa.select(inbox.c.id, inbox.c.event)
            .where(inbox.c.id > after, inbox.c.status.in_(('done', 'ignored')), inbox.c.event.is_not(None),
                   inbox.c.topic.not_in(_PRIVACY), ~sa.exists().where(bodies.c.id == inbox.c.id))
            .order_by(inbox.c.id).limit(_BATCH)
        ).all()
        if not rows:
            return
        changed = [{"_id": r.id, "_event": kept} for r in rows if (kept := _types(r.event)) != r.event]
        if changed:
            conn.execute(inbox.update().where(inbox.c.id == sa.bindparam("_id")).values(event=sa.bindparam("_event")), changed)
        after = rows[-1].id


def downgrade() -> None:
    pass  # what was reduced is gone, as the purge meant
