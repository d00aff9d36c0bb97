"""Review rv2 (2026-12-07) of three merged changes on main: 78f22d2 (credit: pay recovery credits a COD or bank-transfer
second try and listens through the attribution window), 94198f0 (bin: the sync's read of the bin keeps the runs) and
1546d27 (reorder: windows revived when the reordering order is called off). Each suspected fault is proven here as a
strict xfail test through the app (the scenarios' harness, or the reorder tests' running app). No production fix."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from connector.storage import models as m
from tests.conftest import sqlite_template  # noqa: F401
from tests.scenarios.conftest import _world_server, scenario, sqlite_url, world  # noqa: F401
from tests.scenarios.stores import WOOCOMMERCE
from tests.scenarios.test_woo_recovery import bank_transfer, paid
from tests.test_payment_review2_2026_12_07 import pay_reminders, recovered, start
from tests.test_payment_second_try_credit import reminded_declined_card

RAVI = "+919812345678"  # her other number (the same billing email and name: one customer, two phones)


def pay_runs(sc: Any) -> dict[str, dict[str, Any]]:
    with sc.runtime.db.engine.connect() as conn:
        return {r.subject: {"status": r.status, **r.state}
                for r in conn.execute(select(m.JourneyRun).where(m.JourneyRun.journey == "payment_recovery"))}


# ---- 78f22d2: a bank-transfer second try ---------------------------------------------------------------------------

def test_her_bank_transfer_try_under_her_other_number_is_credited_when_paid(sqlite_url, scenario, world):
    """#7301's card declined; half an hour after its pay link she checks out again by bank transfer with her other
    number (#7302, on hold, her email and name). The pay run takes it as her try and waits for the money (its held
    reminder withdrawn, 'no sale yet'). The store marks the transfer received the next morning: that is the payment
    the reminder asked for, as it is when she uses the same number."""
    sc = start(sqlite_url, scenario, "woocommerce")
    reminded_declined_card(sc)
    sc.later(minutes=30)
    transfer = bank_transfer(WOOCOMMERCE.order(2, RAVI, sc.now, cod=False, total="1349.00"), sc.now)
    sc.woo("order.created", transfer)
    sc.later(hours=1)
    first = pay_runs(sc)[f"order:{WOOCOMMERCE.order_id(1)}"]
    assert first.get("awaits_order") == str(WOOCOMMERCE.order_id(2))  # the run did take it as her try, and waits
    sc.later(hours=19)
    sc.woo("order.updated", paid(transfer, sc.now))
    sc.later(days=4, step=timedelta(hours=6))
    assert pay_reminders(sc) == ["#7301"]
    assert recovered(sc) == (1, 1, {"INR": "1349.00"})


# ---- 1546d27: a window revived when the reordering order is refunded ----------------------------------------------

@pytest.mark.parametrize("full", [False, True], ids=["incremental tick", "daily full scan"])
def test_a_refunded_reorder_whose_reminder_went_out_does_not_remind_her_again(db_url, full):
    """Asha buys a face wash (#6501, 30-day cycle) and another the next day (#6502, 29 hours on: a purchase of its own,
    so #6501's window is marked reordered). #6502's window opens on its day: she is reminded. An hour later #6502 is
    refunded (a return). Her first pack's window, never opened, is revived as 'her latest purchase' and, its time barely
    past (``late_days``), opens as well: a second reminder for the same product the same day. Which scan runs after
    the refund decides it (the full scan counts #6502's opened window as her reorder and marks it back)."""
    from connector.reorder.windows import refresh_windows, run_reorder_tick
    from tests.helpers import running_app
    from tests.test_reorder import T0, Clock, _consent, _order, _outbox, _post, _settings

    settings = _settings(db_url, follow_up_days=None)
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        sid, store = runtime.store_ids["shop-a"], settings.stores[0]
        _post(client, "customers_whats_app_marketing_consent/update", _consent())
        _post(client, "orders/create", _order(6501, T0, qty=1))
        runtime.processor.drain()
        run_reorder_tick(runtime.db, store, sid, T0 + timedelta(hours=1))
        clock.now = T0 + timedelta(hours=29)
        second = _order(6502, clock.now, qty=1)
        _post(client, "orders/create", second)
        runtime.processor.drain()
        run_reorder_tick(runtime.db, store, sid, clock.now + timedelta(hours=1))
        clock.now = T0 + timedelta(days=31, hours=30)  # #6502's window: placed + 4 days' transit + 30 - 3 lead
        run_reorder_tick(runtime.db, store, sid, clock.now)
        assert [o.step for o in _outbox(runtime)] == ["reminder"]
        clock.now += timedelta(hours=1)
        _post(client, "orders/updated", {**second, "updated_at": clock.now.isoformat(), "financial_status": "refunded"})
        runtime.processor.drain()
        clock.now += timedelta(hours=1)
        if full:
            refresh_windows(runtime.db, store, sid, clock.now, full=True)
        scan, _ = run_reorder_tick(runtime.db, store, sid, clock.now)
        assert scan.mode == "incremental"
        sent = [(o.step, o.payload["message"]["body"][1]["text"], o.idempotency_key.split(":")[3]) for o in _outbox(runtime)]
    assert sent == [("reminder", "Neem face wash", "6502")]  # #6502's, once
