"""Reorder windows, second review (2026-12-07): a tick that stopped after a batch of windows it only
cancelled or held, a past subscription that silenced a product for good, and two variants of one
product offered as a cart of the first one."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import insert, select

from connector.reorder.windows import run_reorder_tick
from connector.storage import models as m
from tests.helpers import running_app
from tests.test_reorder import T0, Clock, _consent, _order, _outbox, _post, _settings
from tests.test_reorder_suppression import _statuses


# ---- 1. a batch of windows that were only cancelled or held does not end the tick ----------------------
def test_due_windows_behind_a_full_batch_of_cancelled_ones_open_in_the_same_tick(db_url):
    """500 windows came due first whose lines are gone from their orders (returned, or taken off by an
    edit): the tick cancelled them, counted nothing as moved and stopped, so Asha's due window waited for
    the next tick (``worker.reorder_minutes``, 15 minutes; a whole batch more for every further 500 such
    windows, and sold-out products' held windows come back due every 6 hours). It opens in this tick now."""
    settings = _settings(db_url, follow_up_days=None)
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        sid, store = runtime.store_ids["shop-a"], settings.stores[0]
        _post(client, "customers_whats_app_marketing_consent/update", _consent())
        _post(client, "orders/create", _order(5001, T0, qty=1))  # due at T0 + 4 d transit + 30 d - 3 d lead
        runtime.processor.drain()
        clock.now = T0 + timedelta(days=30, hours=12)
        assert run_reorder_tick(runtime.db, store, sid, clock.now)[1].opened == 0  # the daily full scan: nothing due yet
        with runtime.db.engine.begin() as conn:
            contact = conn.execute(select(m.ReorderWindow.contact_id)).scalar_one()
            conn.execute(insert(m.ReorderWindow), [dict(
                store_id=sid, contact_id=contact, order_external_id=f"gone-{n}", product_key="p:9001", product_id="9001",
                variant_id="49001", sku="NEEM-100", title="Neem face wash", quantity=1, placed_at=T0 - timedelta(days=1), anchor="placed",
                anchor_at=T0, cycle_days=30.0, cycle_source="config", opens_at=clock.now, status="pending", updated_at=clock.now)
                for n in range(500)])
        clock.now = T0 + timedelta(days=31, hours=1)  # an incremental tick (the full scan ran 13 hours ago)
        _scan, opened = run_reorder_tick(runtime.db, store, sid, clock.now)
        statuses = _statuses(runtime)
    assert opened.opened == 1
    assert [(o.step, o.status) for o in _outbox(runtime)] == [("reminder", "pending")]
    assert statuses[("5001", "p:9001")] == "opened"
    assert sum(1 for (order, _), status in statuses.items() if order.startswith("gone-") and status == "cancelled") == 500
