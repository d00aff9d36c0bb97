"""Delivery runs waiting on parcels no carrier reports on get the week's timer they never had

A parcel that never gets carrier news (a local courier Shopify does not track) now holds a delivery
run ``UNTRACKED_WAIT`` (7 days) at most: once only such parcels are left (the others arrived), the
journey sets a listening timer, and the run ends quietly when it fires (outcome ``untracked_parcel``).
It sets that timer when the last tracked parcel arrives; a run already in that shape before the rule
never met that moment, so it had no timer and stayed active for ever (her "latest" run, taking her
unquoted replies months later). This gives each such run (active, or with a person, as the journey
sets it then too) the timer: a week after the run's last change (its news), as the journey counts it
from the news that left only such parcels; one whose week is over ends at the next timer round.
Marked as listening (no message planned), as the journey marks it, so the reorder's busy check does
not count her busy. A run with a timer already, or none of whose parcels lacks news, is left as it is.
Nothing to undo: each timer is one the journey sets itself.

Revision ID: 0028
Revises: 0027
Create Date: 2026-12-08
"""
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa
from alembic import op

import connector.storage.models


revision = '0028'
down_revision = '0027'
branch_labels = None
depends_on = None

_BATCH = 2000  # runs read per statement
_TIME = connector.storage.models.UTCDateTime(timezone=True)
# connector/journeys/delivery_updates.py as at this revision
UNTRACKED_WAIT = timedelta(days=7)
ARRIVED = ('delivered', 'picked_up')  # events.DELIVERED_STATUSES
NO_NEWS = 'none'  # events.ShipmentStatus.NONE
LISTENING = '_listening'  # runner.LISTENING: the run's timer plans no message

RUNS = sa.table('journey_runs', sa.column('id', sa.BigInteger()), sa.column('journey', sa.String()),
                sa.column('status', sa.String()), sa.column('state', sa.JSON()), sa.column('next_due_at', _TIME),
                sa.column('updated_at', _TIME))


def _untracked_left(parcels: dict) -> bool:
    """Every parcel with carrier news has arrived, and some never had any (``delivery_updates._untracked_left``)."""
    statuses = parcels.values()
    return NO_NEWS in statuses and all(s in ARRIVED or s == NO_NEWS for s in statuses)


def upgrade() -> None:
    bind = op.get_bind()
    now = datetime.now(timezone.utc)
    after = 0
    while True:
        rows = bind.execute(
            sa.select(RUNS.c.id, RUNS.c.state, RUNS.c.updated_at)
            .where(RUNS.c.journey == 'delivery', RUNS.c.status.in_(('active', 'handoff')), RUNS.c.next_due_at.is_(None),
                   RUNS.c.id > after)
            .order_by(RUNS.c.id).limit(_BATCH)
        ).all()
        if not rows:
            return
        for run in rows:
            state = dict(run.state or {})
            parcels = state.get('parcels')
            if not isinstance(parcels, dict) or not _untracked_left(parcels):
                continue
            state[LISTENING] = True
            due = (run.updated_at or now) + UNTRACKED_WAIT
            bind.execute(sa.update(RUNS).where(RUNS.c.id == run.id).values(next_due_at=due, state=state))
        after = rows[-1].id


def downgrade() -> None:
    pass
