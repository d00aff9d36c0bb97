"""COD runs waiting on a person get their answer deadline back

A COD order whose customer answered the question in words (``phase`` "with_person": a person was
asked to read it) waited on that person with no timer at all: if nobody acted, the order was neither
tagged nor cancelled, for ever. Such a run now keeps its answer deadline, at which an order whose
case is still open is tagged for a call (``cod_confirmation._unhandled``). The runs stored before
have no timer: this makes each due at once, and its first timer sets the deadline (or, past it,
tags the order if her case is still open). Downgrading clears those timers again: the code before
this revision would have taken one for a reminder's.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06
"""
from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

import connector.storage.models


revision = '0018'
down_revision = '0017'
branch_labels = None
depends_on = None

RUNS = sa.table('journey_runs', sa.column('id', sa.Integer()), sa.column('journey', sa.String()), sa.column('status', sa.String()),
                sa.column('state', sa.JSON()), sa.column('next_due_at', connector.storage.models.UTCDateTime(timezone=True)))


def _with_a_person(timed: bool) -> list[int]:
    """The active COD runs waiting on a person (no choice made), with a timer or without one."""
    due = RUNS.c.next_due_at.is_not(None) if timed else RUNS.c.next_due_at.is_(None)
    rows = op.get_bind().execute(sa.select(RUNS.c.id, RUNS.c.state).where(
        RUNS.c.journey == 'cod_confirmation', RUNS.c.status == 'active', due))
    return [r.id for r in rows if (r.state or {}).get('phase') == 'with_person' and not (r.state or {}).get('choice')]


def _set_timer(ids: list[int], at: datetime | None) -> None:
    for i in range(0, len(ids), 500):
        op.get_bind().execute(sa.update(RUNS).where(RUNS.c.id.in_(ids[i:i + 500])).values(next_due_at=at))


def upgrade() -> None:
    _set_timer(_with_a_person(timed=False), datetime.now(timezone.utc))


def downgrade() -> None:
    _set_timer(_with_a_person(timed=True), None)
