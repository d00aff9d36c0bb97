"""Runs left waiting on a case a person closed are released

Closing a hand-off left the run that waited on it in status ``handoff`` for ever: a failed
delivery's run stopped following the parcel (it never ended, and showed among the customer's active
journeys in every later case). Closing a case now releases its run (``handoffs._release_run``); this
releases the runs whose case was closed before, as that would have: a delivery run ends once every
parcel has arrived ("delivered") or its order was cancelled ("order_cancelled"), else follows the
parcels again (active); any other run that had ended before a person took it (it kept its
``outcome``) ends again. A run whose own case (keyed ``<journey>:<subject>``) is still open is a
person's, and stays so. Nothing to undo: the code before reads active and finished runs as ever.

Revision ID: 0027
Revises: 0026
Create Date: 2026-12-07
"""
from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

import connector.storage.models


revision = '0027'
down_revision = '0026'
branch_labels = None
depends_on = None

RUNS = sa.table('journey_runs', sa.column('id', sa.Integer()), sa.column('store_id', sa.Integer()), sa.column('journey', sa.String()),
                sa.column('subject', sa.String()), sa.column('status', sa.String()), sa.column('state', sa.JSON()),
                sa.column('updated_at', connector.storage.models.UTCDateTime(timezone=True)))
HANDOFFS = sa.table('handoffs', sa.column('store_id', sa.Integer()), sa.column('key', sa.String()), sa.column('status', sa.String()))
ARRIVED = ('delivered', 'picked_up')  # as of this revision (events.DELIVERED_STATUSES)


def _released(journey: str, state: dict) -> tuple[str, str | None] | None:
    """(status, outcome) for a run released from its case; None: left as it is."""
    if journey == 'delivery':
        parcels = state.get('parcels') or {}
        if parcels and all(s in ARRIVED for s in parcels.values()):
            return 'finished', 'delivered'
        return ('finished', 'order_cancelled') if state.get('cancelled') else ('active', None)
    return ('finished', state['outcome']) if state.get('outcome') else None


def upgrade() -> None:
    bind = op.get_bind()
    waiting = bind.execute(sa.select(RUNS.c.id, RUNS.c.store_id, RUNS.c.journey, RUNS.c.subject, RUNS.c.state)
                           .where(RUNS.c.status == 'handoff')).all()
    if not waiting:
        return
    open_keys = {(r.store_id, r.key) for r in bind.execute(sa.select(HANDOFFS.c.store_id, HANDOFFS.c.key).where(HANDOFFS.c.status == 'open'))}
    now = datetime.now(timezone.utc)
    for run in waiting:
        if (run.store_id, f"{run.journey}:{run.subject}"[:255]) in open_keys:
            continue  # a person has its case
        state = dict(run.state or {})
        released = _released(run.journey, state)
        if released is None:
            continue
        status, outcome = released
        state['case_closed_at'] = now.isoformat()
        if outcome is not None:
            state['outcome'] = outcome
        bind.execute(sa.update(RUNS).where(RUNS.c.id == run.id).values(status=status, state=state, updated_at=now))


def downgrade() -> None:
    pass
