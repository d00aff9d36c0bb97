"""Reorder reminders withheld while a product is sold out, and put back (fixes after review rev7b, 2026-12-07).

1. A reminder put back when the product is back in stock is planned as a reminder queued then would be: back in the
   store's quiet hours, it waits for the morning (it was "meant" for the evening and skipped as ``too_late``).
2. A stock flip (WooCommerce sends one each time the last unit sells, and again on restock) pauses and resumes the
   runs of every customer waiting for that product with a bounded number of statements, not a few per customer.

Driven through WooCommerce's signed ``product.updated`` webhook, the reorder tick and the dispatcher.
"""

from __future__ import annotations

from datetime import timedelta

from tests.test_reorder import _outbox
from tests.test_reorder_sold_out_2026_12_07b import DUE, _held_for_the_morning, _morning, _stock


def test_a_reminder_withheld_while_sold_out_and_restocked_in_the_evening_goes_the_next_morning(db_url):
    """Her reminder waited for 09:00; the product sold out at 08:30 (the reminder withheld at 09:05) and is back in stock
    at 22:00 the same day, in the store's quiet hours (21:00-09:00 Rome), her window still timely. The reminder is
    meant to go from then: it waits for the morning and goes at 09:05, as any reminder queued at 22:00 would."""
    with _held_for_the_morning(db_url) as (client, runtime, clock, store, sid, settings):
        _stock(client, runtime, clock, DUE + timedelta(minutes=30), "outofstock")
        assert _morning(runtime, settings, clock, store, sid) == [("reminder", "skipped")]
        back = DUE + timedelta(hours=14)  # 22:00 in Rome
        _stock(client, runtime, clock, back, "instock")
        night = _morning(runtime, settings, clock, store, sid, at=back + timedelta(minutes=5))
        [row] = _outbox(runtime)
        sent = _morning(runtime, settings, clock, store, sid, at=DUE + timedelta(days=1, hours=1, minutes=5))
    assert (night, sent) == ([("reminder", "pending")], [("reminder", "dry_run")]), row.skip_reason


def test_a_reminder_restocked_in_the_evening_goes_once_in_the_morning_and_not_at_night(db_url):
    """The same evening restock: at 23:00 and 03:00 nothing goes (quiet hours), at 09:05 the reminder goes, once, and
    nothing more goes later that day."""
    with _held_for_the_morning(db_url) as (client, runtime, clock, store, sid, settings):
        _stock(client, runtime, clock, DUE + timedelta(minutes=30), "outofstock")
        _morning(runtime, settings, clock, store, sid)
        _stock(client, runtime, clock, DUE + timedelta(hours=14), "instock")  # 22:00 in Rome
        at_night = [_morning(runtime, settings, clock, store, sid, at=DUE + timedelta(hours=h)) for h in (15, 19)]
        morning = _morning(runtime, settings, clock, store, sid, at=DUE + timedelta(days=1, hours=1, minutes=5))
        evening = _morning(runtime, settings, clock, store, sid, at=DUE + timedelta(days=1, hours=10))
    assert at_night == [[("reminder", "pending")]] * 2
    assert morning == evening == [("reminder", "dry_run")]


def test_a_reminder_restocked_in_the_daytime_still_goes_at_once(db_url):
    """Back in stock at 10:00 the same morning, outside quiet hours: the reminder goes at the next dispatch, as before."""
    with _held_for_the_morning(db_url) as (client, runtime, clock, store, sid, settings):
        _stock(client, runtime, clock, DUE + timedelta(minutes=30), "outofstock")
        _morning(runtime, settings, clock, store, sid)
        back = DUE + timedelta(hours=2)  # 10:00 in Rome
        _stock(client, runtime, clock, back, "instock")
        sent = _morning(runtime, settings, clock, store, sid, at=back + timedelta(minutes=1))
    assert sent == [("reminder", "dry_run")]
