"""Reorder windows: cycles (pure), the journey's decisions, then webhooks -> windows -> messages."""

from __future__ import annotations

import asyncio
import random
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from sqlalchemy import select

from connector import events as ev
from connector.config import parse_settings
from connector.errors import ConfigError
from connector.journeys.engine import Facts, Finish, Run, Send, Start, TimerFired, Wake
from connector.journeys.reorder import Reorder, ReorderConfig
from connector.reorder.cycles import CycleBook, Purchase, customer_cadence, cycle_from_tags, parse_cycle, product_key
from connector.outbox.dispatcher import Dispatcher
from connector.outbox.senders import DryRunSender
from connector.reorder.windows import Line, learn_cycles, open_due_windows, refresh_windows, run_reorder_tick, upcoming
from connector.reports import build_report, parse_week
from connector.storage import models as m
from tests.conftest import FIXTURES, PHONE_ID_A, PHONE_ID_WOO, SECRETS, settings_dict
from tests.helpers import dumps, load_json, meta_signature, running_app, shopify_headers

T0 = datetime(2026, 9, 1, 6, 0, tzinfo=timezone.utc)


# ---- cycles ------------------------------------------------------------------------------
def test_cycles_parse_and_tags():
    assert [parse_cycle(x) for x in ("30d", "4w", "2m", "45", "1.5 weeks")] == [30, 28, 60, 45, 10.5]
    for bad in ("thirty", "0d", "30y", ""):
        with pytest.raises(ValueError):
            parse_cycle(bad)
    assert cycle_from_tags(["organic", "Replenish:6w", "replenish:10d"]) == 42
    assert cycle_from_tags(["replenish:soon", "vegan"]) is None


def _history(rng: random.Random, true_days: float, buyers: int, *, jitter: float = 3.0, qty_choices=(1,)) -> list[tuple[int, list[Line]]]:
    """Synthetic repeat buyers of one product: each next order after qty x true_days, +/- jitter days."""
    out = []
    for contact in range(buyers):
        at = T0 + timedelta(days=rng.uniform(0, 30))
        lines = []
        for n in range(rng.randint(2, 5)):
            qty = rng.choice(qty_choices)
            lines.append(Line(f"o{contact}-{n}", at, False, "p1", "v1", "SKU", "Neem", qty, None, None))
            at += timedelta(days=true_days * qty + rng.uniform(-jitter, jitter))
        out.append((contact, lines))
    return out


@pytest.mark.parametrize("true_days", [21.0, 30.0, 45.0, 90.0])
def test_learned_median_is_within_a_day_of_the_truth(true_days):
    rng = random.Random(int(true_days))
    learned = learn_cycles(_history(rng, true_days, 40, qty_choices=(1, 1, 2, 3)), min_repeat_buyers=5)
    days, buyers = learned["p:p1"]
    assert abs(days - true_days) < 1.0 and buyers == 40


def test_nothing_is_learned_before_enough_buyers_came_back():
    assert learn_cycles(_history(random.Random(1), 30, 4), min_repeat_buyers=5) == {}
    assert "p:p1" in learn_cycles(_history(random.Random(1), 30, 5), min_repeat_buyers=5)


def test_quantity_scales_the_interval_per_unit():
    # two packs bought, next order 60 days later: 30 days per pack
    assert customer_cadence([Purchase(T0, 2), Purchase(T0 + timedelta(days=60), 1), Purchase(T0 + timedelta(days=90), 1)]) == 30


def test_precedence_is_config_then_tag_then_customer_then_learned():
    # p:1 has all four: a config cycle, a tag, a learned cycle and the customer's own cadence
    book = CycleBook(config={"SKU-1": 20.0}, tags={"p:1": 45.0, "p:2": 40.0}, learned={"p:1": 50.0, "p:2": 55.0, "p:3": 60.0})
    assert book.resolve(key="p:1", product_id="1", variant_id="v", sku="SKU-1", customer=33) == (20.0, "config")
    assert book.resolve(key="p:1", product_id="1", variant_id="v", sku="OTHER", customer=33) == (45.0, "tag")
    assert book.resolve(key="p:2", product_id="2", variant_id="v", sku=None, customer=33) == (40.0, "tag")
    assert book.resolve(key="p:3", product_id="3", variant_id="v", sku=None, customer=33) == (33, "customer")
    assert book.resolve(key="p:3", product_id="3", variant_id="v", sku=None) == (60.0, "learned")
    assert book.resolve(key="p:4", product_id="4", variant_id="v", sku=None) is None


def test_a_cycle_typo_in_the_config_is_a_clear_error():
    raw = settings_dict("sqlite://")
    raw["stores"][0]["journeys"] = {"reorder": {"cycles": {"NEEM-100": "thirty days"}}}
    with pytest.raises(ConfigError, match="reorder.cycles.*not a cycle"):
        parse_settings(raw, environ={})


# ---- the journey's decisions ----------------------------------------------------------------
def opened(**kw) -> ev.ReorderWindowOpened:
    base = dict(window_id=1, order_external_id="1001", product_key="p:9001", product_id="9001", variant_id="49001", title="Neem face wash",
                quantity=2, opens_at=T0, cycle_days=30, cycle_source="config", link="https://shop-a.myshopify.com/cart/49001:2")
    return ev.ReorderWindowOpened(**{**base, **kw})


FACTS = Facts(store_name="Acme", contact_id=7, first_name="Asha")


def test_reorder_reminds_follows_up_once_and_attributes_a_reorder():
    j, cfg = Reorder(), ReorderConfig(follow_up_days=3, attribution_days=14, discount_code="AGAIN10")
    cmds = j.decide(opened(), None, FACTS, cfg, T0)
    start, send = cmds[0], cmds[1]
    assert isinstance(start, Start) and isinstance(send, Send) and send.step == "reminder"
    assert send.context["reorder.link"].endswith("/cart/49001:2") and send.context["discount.code"] == "AGAIN10"
    assert cmds[-1] == Wake(T0 + timedelta(days=3))
    state = {**start.state}
    run = Run("reorder", "reorder:1001:p:9001", "active", state, T0 + timedelta(days=3), 7, T0)
    follow = j.decide(TimerFired(T0 + timedelta(days=3)), run, FACTS, cfg, T0 + timedelta(days=3))
    assert [c.step for c in follow if isinstance(c, Send)] == ["follow_up"]
    run2 = Run(run.journey, run.subject, "active", {**state, "sent": 2}, None, 7, T0)
    assert j.decide(TimerFired(T0 + timedelta(days=6)), run2, FACTS, cfg, T0 + timedelta(days=6)) == [Wake(T0 + timedelta(days=14))]
    other = ev.Order(external_id="2002", name="#2002", created_at=T0 + timedelta(days=5), updated_at=T0 + timedelta(days=5),
                     payment_state=ev.PaymentState.PAID, total=Decimal("499"), currency="INR", customer=ev.Customer(),
                     line_items=(ev.LineItem(product_id="777", title="Soap"),))
    assert j.decide(ev.OrderPlaced(order=other), run2, FACTS, cfg, T0) == []  # another product: keep waiting
    again = other.model_copy(update={"line_items": (ev.LineItem(product_id="9001", variant_id="49001", title="Neem face wash", quantity=2,
                                                                price=Decimal("249.50")),)})
    done = j.decide(ev.OrderPlaced(order=again), run2, FACTS, cfg, T0 + timedelta(days=5))
    assert done[-1] == Finish("reordered") and done[0].state["attributed"] is True and done[0].state["revenue"] == "499.00"


def test_reorder_skips_a_customer_busy_in_another_journey_and_ignores_a_second_opening():
    j, cfg = Reorder(), ReorderConfig()
    cmds = j.decide(opened(busy_with=("cod_confirmation",)), None, FACTS, cfg, T0)
    assert not any(isinstance(c, Send) for c in cmds) and cmds[-1] == Finish("skipped_busy")
    assert cmds[0].state["skipped"] == "cod_confirmation"
    run = Run("reorder", "reorder:1001:p:9001", "active", {"sent": 1}, None, 7, T0)
    assert j.decide(opened(), run, FACTS, cfg, T0) == []


# ---- webhooks -> windows -> messages ---------------------------------------------------------
TEMPLATES = [
    {"step": "reorder.reminder", "name": "reorder_v1", "category": "marketing",
     "body_text": "Hi {{1}}, running low on {{2}}? Reorder in one tap: {{3}}", "body": ["customer.first_name", "reorder.product", "reorder.link"]},
    {"step": "reorder.follow_up", "name": "reorder_nudge_v1", "category": "marketing",
     "body_text": "Still time to restock {{1}}: {{2}}", "body": ["reorder.product", "reorder.link"]},
]


class Clock:
    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _order(order_id: int, placed: datetime, *, phone: str = "+91 98765 43210", qty: int = 2, product: str = "9001",
           variant: str = "49001", sku: str = "NEEM-100", customer_id: int = 115310627314723954) -> dict:
    o = load_json(FIXTURES / "shopify" / "orders_create.sample.json")
    stamp = placed.isoformat()
    o.update(id=order_id, name=f"#{order_id}", financial_status="paid", payment_gateway_names=["razorpay"], cancelled_at=None, cancel_reason=None,
             test=False, created_at=stamp, updated_at=stamp, processed_at=stamp, phone=phone, checkout_token=f"tok{order_id}")
    o["customer"] = {**o["customer"], "id": customer_id, "phone": phone, "first_name": "Asha"}
    o["line_items"] = [{**o["line_items"][0], "id": order_id * 10, "product_id": int(product), "variant_id": int(variant), "sku": sku,
                        "title": "Neem face wash", "quantity": qty, "current_quantity": qty, "price": "249.50"}]
    return o


def _delivered(order_id: int, at: datetime) -> dict:
    f = load_json(FIXTURES / "shopify" / "fulfillments_update.sample.json")
    f.update(id=order_id + 5, order_id=order_id, status="success", shipment_status="delivered", created_at=(at - timedelta(days=3)).isoformat(),
             updated_at=at.isoformat())
    return f


def _consent(customer_id: int = 115310627314723954, phone: str = "+919876543210") -> dict:
    c = load_json(FIXTURES / "shopify" / "customers_whats_app_marketing_consent_update.sample.json")
    c.update(customer_id=customer_id, phone_number=phone)
    c["whats_app_marketing_consent"] = {"state": "subscribed", "opt_in_level": "single_opt_in", "updated_at": "2026-08-01T00:00:00Z",
                                        "collected_from": "other"}
    return c


def _post(client, topic: str, payload: dict) -> None:
    body = dumps(payload)
    r = client.post("/webhooks/shopify", content=body, headers=shopify_headers(body, SECRETS["shop_a"], "shop-a.myshopify.com", topic))
    assert r.status_code == 200, r.text


def _settings(db_url: str, **journey):
    raw = settings_dict(db_url)
    raw["stores"][0].update(templates=TEMPLATES, policy={"quiet_hours": ""},
                            journeys={"reorder": {"cycles": {"NEEM-100": "30d"}, "lead_days": 3, **journey}})
    return parse_settings(raw, environ={})


def _outbox(runtime) -> list:
    with runtime.db.engine.connect() as conn:
        return conn.execute(select(m.OutboxMessage).where(m.OutboxMessage.journey == "reorder").order_by(m.OutboxMessage.id)).all()


def test_a_delivered_order_opens_its_window_once_and_a_reorder_inside_it_is_attributed(db_url):
    settings = _settings(db_url, follow_up_days=3, attribution_days=14)
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        sid = runtime.store_ids["shop-a"]
        store = settings.stores[0]
        _post(client, "customers_whats_app_marketing_consent/update", _consent())
        _post(client, "orders/create", _order(1001, T0))
        delivered_at = T0 + timedelta(days=4)
        clock.now = delivered_at
        _post(client, "fulfillments/update", _delivered(1001, delivered_at))
        runtime.processor.drain()

        refresh_windows(runtime.db, store, sid, clock.now)
        [w] = upcoming(runtime.db, sid, clock.now + timedelta(days=90))
        # delivered + 30 days x 2 packs - 3 days lead
        assert (w.anchor, w.cycle_source, w.quantity, w.opens_at) == ("delivered", "config", 2, delivered_at + timedelta(days=57))

        clock.now = w.opens_at - timedelta(hours=1)
        assert run_reorder_tick(runtime.db, store, sid, clock.now)[1].opened == 0  # not yet
        clock.now = w.opens_at + timedelta(hours=1)
        for _ in range(2):  # a second tick (or a second worker) opens nothing twice
            run_reorder_tick(runtime.db, store, sid, clock.now)
        [reminder] = _outbox(runtime)
        assert (reminder.step, reminder.status) == ("reminder", "pending")
        params = [p["text"] for p in reminder.payload["message"]["body"]]
        assert params == ["Asha", "Neem face wash", "https://shop-a.myshopify.com/cart/49001:2"]
        _dispatch(runtime, settings, clock)  # it goes out: a reorder can be credited to it

        clock.now += timedelta(days=3)
        runtime.processor.process_timers()  # the follow-up
        _dispatch(runtime, settings, clock)
        clock.now += timedelta(days=2)
        _post(client, "orders/create", _order(1002, clock.now, qty=1))  # the reorder, inside the window
        runtime.processor.drain()
        run_reorder_tick(runtime.db, store, sid, clock.now)
        with runtime.db.engine.connect() as conn:
            [r] = conn.execute(select(m.JourneyRun).where(m.JourneyRun.journey == "reorder")).all()
            windows = {x.order_external_id: x for x in conn.execute(select(m.ReorderWindow))}
    assert [o.step for o in _outbox(runtime)] == ["reminder", "follow_up"]
    assert (r.status, r.state["outcome"], r.state["attributed"], r.state["order_id"]) == ("finished", "reordered", True, "1002")
    # the first window is done; the reorder has its own window, one 30-day pack from its order date + transit
    assert (windows["1001"].status, windows["1001"].reorder_order_id) == ("reordered", "1002")
    assert windows["1002"].status == "pending" and windows["1002"].anchor == "placed"


@pytest.mark.parametrize("full", [False, True], ids=["incremental tick", "daily full scan"])
def test_a_product_the_customer_returned_gets_no_reorder_reminder(db_url, full):
    """Shopify's orders/updated after a return (refunded and restocked) or an order edit keeps the line,
    with ``current_quantity: 0``. Before, it was stored with its original quantity: the customer was
    reminded to reorder the soap they had sent back. The window planned before the return is cancelled
    when it comes due, whichever scan ran after the change."""
    settings = _settings(db_url, cycles={"NEEM-100": "30d", "SOAP-1": "30d"})
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        sid, store = runtime.store_ids["shop-a"], settings.stores[0]
        order = _order(1001, T0, qty=1)
        soap = {**order["line_items"][0], "id": 10012, "product_id": 9002, "variant_id": 49002, "sku": "SOAP-1", "title": "Sandal soap"}
        order["line_items"].append(soap)
        _post(client, "customers_whats_app_marketing_consent/update", _consent())
        _post(client, "orders/create", order)
        clock.now = T0 + timedelta(days=4)
        _post(client, "fulfillments/update", _delivered(1001, clock.now))
        runtime.processor.drain()
        refresh_windows(runtime.db, store, sid, clock.now)
        due = {w.product_key: w.opens_at for w in upcoming(runtime.db, sid, clock.now + timedelta(days=90))}
        assert due.keys() == {"p:9001", "p:9002"} and due["p:9001"] == due["p:9002"]

        clock.now += timedelta(days=2)  # the soap comes back: refunded and restocked
        returned = {**order, "updated_at": clock.now.isoformat(), "financial_status": "partially_refunded",
                    "line_items": [order["line_items"][0], {**soap, "current_quantity": 0, "fulfillable_quantity": 0}]}
        _post(client, "orders/updated", returned)
        runtime.processor.drain()
        refresh_windows(runtime.db, store, sid, clock.now, full=full)
        clock.now = due["p:9001"] + timedelta(hours=1)  # both windows' time
        open_due_windows(runtime.db, store, sid, clock.now)
        with runtime.db.engine.connect() as conn:
            lines = conn.execute(select(m.OrderLine.sku, m.OrderLine.quantity)).all()
            windows = {w.product_key: w.status for w in conn.execute(select(m.ReorderWindow))}
    assert [(r.step, r.payload["message"]["body"][1]["text"]) for r in _outbox(runtime)] == [("reminder", "Neem face wash")]
    assert lines == [("NEEM-100", 1)] and windows == {"p:9001": "opened", "p:9002": "cancelled"}


def test_history_imported_late_expires_instead_of_messaging_and_an_earlier_reorder_skips_the_window(db_url):
    settings = _settings(db_url)
    clock = Clock(T0 + timedelta(days=200))
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        sid = runtime.store_ids["shop-a"]
        _post(client, "customers_whats_app_marketing_consent/update", _consent())
        _post(client, "orders/create", _order(3001, T0))  # long ago: its window passed months ago
        # another customer reordered before their window opened
        _post(client, "orders/create", _order(3002, T0 + timedelta(days=170), phone="+91 98123 45678", customer_id=2))
        runtime.processor.drain()
        scan, opened_ = run_reorder_tick(runtime.db, settings.stores[0], sid, clock.now)
        assert scan.mode == "full" and (opened_.expired, opened_.opened) == (1, 0)
        clock.now += timedelta(hours=12)  # customer 2 reorders before their window (2 x 30 d) opens
        _post(client, "orders/create", _order(3003, clock.now, phone="+91 98123 45678", customer_id=2, qty=1))
        runtime.processor.drain()
        scan, opened_ = run_reorder_tick(runtime.db, settings.stores[0], sid, clock.now)
        with runtime.db.engine.connect() as conn:
            windows = {w.order_external_id: w for w in conn.execute(select(m.ReorderWindow))}
    assert scan.mode == "incremental" and opened_.opened == 0
    assert {k: w.status for k, w in windows.items()} == {"3001": "expired", "3002": "reordered", "3003": "pending"}
    assert windows["3002"].reorder_order_id == "3003"
    assert _outbox(runtime) == []


def _says(client, wa_id: str, text: str, at: datetime):
    """A signed WhatsApp webhook: the customer ``wa_id`` writes ``text`` at ``at``."""
    env = {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp", "metadata": {"display_phone_number": "1", "phone_number_id": PHONE_ID_A},
        "contacts": [{"profile": {"name": "Asha"}, "wa_id": wa_id}],
        "messages": [{"from": wa_id, "id": f"wamid.{wa_id}.{int(at.timestamp())}", "timestamp": str(int(at.timestamp())), "type": "text",
                      "text": {"body": text}}]}}]}]}
    body = dumps(env)
    return client.post("/webhooks/whatsapp", content=body, headers={"X-Hub-Signature-256": meta_signature(body, SECRETS["wa_app"])})


def _two_customers_ordered(client) -> list[int]:
    """Customers 1 and 2 opted in to WhatsApp marketing and each ordered the 30-day product at T0 (orders 4001, 4002)."""
    for cid, phone in ((1, "+91 98765 43210"), (2, "+91 98123 45678")):
        _post(client, "customers_whats_app_marketing_consent/update", _consent(cid, phone.replace(" ", "")))
        _post(client, "orders/create", _order(4000 + cid, T0, phone=phone, customer_id=cid, qty=1))
    return [1, 2]


def test_a_customer_in_another_journey_or_opted_out_gets_no_reminder(db_url):
    raw = settings_dict(db_url)
    raw["stores"][0].update(
        templates=TEMPLATES + [{"step": "cod_confirmation.ask", "name": "cod_v1", "category": "utility", "body_text": "Confirm {{1}}?",
                                "body": ["order.name"]}],
        policy={"quiet_hours": ""},
        journeys={"reorder": {"cycles": {"NEEM-100": "30d"}}, "cod_confirmation": {}})
    settings = parse_settings(raw, environ={})
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        sid = runtime.store_ids["shop-a"]
        _two_customers_ordered(client)
        runtime.processor.drain()
        clock.now = T0 + timedelta(days=32)  # both windows opened a day ago (4 d transit + 30 d - 3 d lead)
        # customer 1 has a COD order waiting for confirmation; customer 2 wrote STOP
        cod = _order(4100, clock.now, phone="+91 98765 43210", customer_id=1, product="5555", variant="55551", sku="OTHER")
        cod.update(financial_status="pending", payment_gateway_names=["Cash on Delivery (COD)"])
        _post(client, "orders/create", cod)
        runtime.processor.drain()
        assert _says(client, "919812345678", "STOP", clock.now).status_code == 200
        runtime.processor.drain()
        run_reorder_tick(runtime.db, settings.stores[0], sid, clock.now)
        with runtime.db.engine.connect() as conn:
            runs = {r.subject: r for r in conn.execute(select(m.JourneyRun).where(m.JourneyRun.journey == "reorder"))}
    outbox = _outbox(runtime)
    assert runs["reorder:4001:p:9001"].state["outcome"] == "skipped_busy"
    assert [(o.status, o.skip_reason) for o in outbox] == [("skipped", "opted_out")]


def _carts_and_reorders(db_url: str, *, quiet_hours: str):
    """Reorder reminders beside a three-step cart ladder (30 min, 6.5 h, 24.5 h after the cart), a cap
    high enough for all of them."""
    raw = settings_dict(db_url)
    raw["stores"][0].update(
        templates=TEMPLATES + [{"step": f"checkout_recovery.{step}", "name": f"cart_{step}_v1", "category": "marketing",
                                "body_text": "Your cart is waiting: {{1}}", "body": ["checkout.recovery_url"]}
                               for step in ("first", "second", "third")],
        policy={"quiet_hours": quiet_hours, "marketing_cap": 10},
        journeys={"reorder": {"cycles": {"NEEM-100": "30d"}, "lead_days": 3},
                  "checkout_recovery": {"abandon_after_minutes": 30, "ladder_minutes": [0, 360, 1440], "attribution_days": 7}})
    return parse_settings(raw, environ={})


def test_a_cart_ladder_that_only_listens_no_longer_keeps_the_customer_from_the_reorder_reminder(db_url):
    """Both customers left a cart before their windows opened. The first one's three reminders went on
    days 25-26: her run now only waits out the attribution window (no message is planned), so she is
    reminded to reorder when the window opens on day 31. The second left hers on day 31: a reminder is
    still to come, so she is busy and skipped. Before, a finished ladder kept a customer "busy" for its
    whole attribution week, and every reorder window opening then was skipped for good."""
    from tests.scenarios.payloads import shopify_checkout

    settings = _carts_and_reorders(db_url, quiet_hours="")
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        sid = runtime.store_ids["shop-a"]
        _two_customers_ordered(client)
        runtime.processor.drain()

        def until(at: datetime) -> None:
            while clock.now < at:
                clock.now = min(at, clock.now + timedelta(hours=1))
                runtime.processor.drain()
                while runtime.processor.process_timers(500):
                    pass

        until(T0 + timedelta(days=25))
        _post(client, "checkouts/create", shopify_checkout("cart1", "+919876543210", clock.now))
        until(T0 + timedelta(days=31, hours=12))
        _post(client, "checkouts/create", shopify_checkout("cart2", "+919812345678", clock.now))
        until(T0 + timedelta(days=32))
        run_reorder_tick(runtime.db, settings.stores[0], sid, clock.now)
        with runtime.db.engine.connect() as conn:
            runs = {r.subject: r for r in conn.execute(select(m.JourneyRun).where(m.JourneyRun.journey == "reorder"))}
            carts = {r.subject: (r.status, r.next_due_at is not None, int(r.state["sent"]))
                     for r in conn.execute(select(m.JourneyRun).where(m.JourneyRun.journey == "checkout_recovery"))}

    assert carts == {"checkout:cart1": ("active", True, 3), "checkout:cart2": ("active", True, 2)}  # the first listens, the second is mid-ladder
    assert [o.payload["subject"] for o in _outbox(runtime) if o.status == "pending"] == ["reorder:4001:p:9001"]
    assert (runs["reorder:4002:p:9001"].state["outcome"], runs["reorder:4002:p:9001"].state["skipped"]) == ("skipped_busy", "checkout_recovery")


def test_a_ladder_whose_last_reminder_waits_for_the_morning_still_keeps_the_customer_busy(db_url):
    """Quiet hours (11:00-20:00 here) hold Asha's last cart reminder, queued at noon, until 20:00. Her run
    plans no more messages, but one is still to go: she is busy, and her reorder window opening at 13:30
    is skipped, not queued to reach her beside the cart reminder at 20:00."""
    from tests.scenarios.payloads import shopify_checkout

    settings = _carts_and_reorders(db_url, quiet_hours="11:00-20:00")
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        sid = runtime.store_ids["shop-a"]
        _two_customers_ordered(client)
        runtime.processor.drain()
        clock.now = T0 + timedelta(days=30)
        _post(client, "checkouts/create", shopify_checkout("cart1", "+919876543210", clock.now))
        while clock.now < T0 + timedelta(days=31, hours=2):  # the last reminder is queued at 12:00 IST, held until 20:00
            clock.now += timedelta(minutes=30)
            runtime.processor.drain()
            while runtime.processor.process_timers(500):
                pass
        run_reorder_tick(runtime.db, settings.stores[0], sid, clock.now)
        with runtime.db.engine.connect() as conn:
            runs = {r.subject: r for r in conn.execute(select(m.JourneyRun).where(m.JourneyRun.journey == "reorder"))}
    assert (runs["reorder:4001:p:9001"].state["outcome"], runs["reorder:4001:p:9001"].state["skipped"]) == ("skipped_busy", "checkout_recovery")
    assert "reorder:4001:p:9001" not in [o.payload["subject"] for o in _outbox(runtime) if o.status == "pending"]


def test_a_closed_hand_off_no_longer_keeps_the_customer_from_the_reorder_reminder(db_url):
    """Both customers' failed deliveries reached the desk two days before their windows opened: a hand-off each, their
    delivery runs in status "handoff". The delivery desk closed the first case (its run follows the parcel again): that
    customer is reminded to reorder when the window opens. The second case is still open, so a person is on it: no reminder."""
    raw = settings_dict(db_url)
    raw["stores"][0].update(templates=TEMPLATES, policy={"quiet_hours": ""},
                            journeys={"reorder": {"cycles": {"NEEM-100": "30d"}, "lead_days": 3}, "delivery": {}})
    settings = parse_settings(raw, environ={})
    clock = Clock(T0)
    admin = {"Authorization": f"Bearer {SECRETS['admin']}"}
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        sid = runtime.store_ids["shop-a"]
        _two_customers_ordered(client)
        runtime.processor.drain()
        for cid in (1, 2):
            failed = _delivered(4000 + cid, T0 + timedelta(days=2))
            _post(client, "fulfillments/update", {**failed, "id": failed["id"] + cid, "shipment_status": "attempted_delivery"})
        clock.now = T0 + timedelta(days=30)  # the courier's failure report reaches the desk late: the cases open now
        runtime.processor.drain()
        cases = client.get("/api/stores/shop-a/handoffs", params={"status": "open"}, headers=admin).json()["items"]
        first = next(h for h in cases if h["subject"] == "order:4001")
        assert client.post(f"/api/stores/shop-a/handoffs/{first['id']}/close", headers=admin, json={"by": "Ravi"}).status_code == 200
        clock.now = T0 + timedelta(days=32)
        run_reorder_tick(runtime.db, settings.stores[0], sid, clock.now)
        with runtime.db.engine.connect() as conn:
            runs = {r.subject: r for r in conn.execute(select(m.JourneyRun).where(m.JourneyRun.journey == "reorder"))}
            delivery = {r.subject: r.status for r in conn.execute(select(m.JourneyRun).where(m.JourneyRun.journey == "delivery"))}
    assert delivery == {"order:4001": "active", "order:4002": "handoff"}
    assert [o.payload["subject"] for o in _outbox(runtime) if o.status == "pending"] == ["reorder:4001:p:9001"]
    assert (runs["reorder:4002:p:9001"].state["outcome"], runs["reorder:4002:p:9001"].state["skipped"]) == ("skipped_busy", "delivery")


def test_an_open_high_value_note_does_not_keep_the_customer_from_the_reorder_reminder(db_url):
    """A big order opens a hand-off that only tells the team (no one answers it, so it may stay open for good);
    no one is talking with the customer, so the reorder reminder still goes out."""
    raw = settings_dict(db_url)
    raw["stores"][0].update(templates=TEMPLATES, policy={"quiet_hours": ""}, handoff={"order_value_over": 400},
                            journeys={"reorder": {"cycles": {"NEEM-100": "30d"}, "lead_days": 3}})
    settings = parse_settings(raw, environ={})
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        _post(client, "customers_whats_app_marketing_consent/update", _consent())
        _post(client, "orders/create", _order(4001, T0, qty=2))  # 2 x 249.50: over 400
        runtime.processor.drain()
        cases = client.get("/api/stores/shop-a/handoffs", params={"status": "open"},
                           headers={"Authorization": f"Bearer {SECRETS['admin']}"}).json()["items"]
        clock.now = T0 + timedelta(days=62)
        run_reorder_tick(runtime.db, settings.stores[0], runtime.store_ids["shop-a"], clock.now)
    assert [c["subject"] for c in cases] == ["order:4001"]
    assert [o.status for o in _outbox(runtime)] == ["pending"]


def test_a_thank_you_case_no_one_closed_weeks_ago_does_not_keep_the_customer_from_the_reorder_reminder(db_url):
    """"Got it, thanks!" opened a case that nobody closed (many stores never do). A month on, no one is talking
    with her: the reorder reminder goes out."""
    settings = _settings(db_url)
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        _post(client, "customers_whats_app_marketing_consent/update", _consent())
        _post(client, "orders/create", _order(4001, T0, qty=1))
        runtime.processor.drain()
        clock.now = T0 + timedelta(days=5)
        assert _says(client, "919876543210", "Got it, thanks!", clock.now).status_code == 200
        runtime.processor.drain()
        cases = client.get("/api/stores/shop-a/handoffs", params={"status": "open"},
                           headers={"Authorization": f"Bearer {SECRETS['admin']}"}).json()["items"]
        clock.now = T0 + timedelta(days=32)
        run_reorder_tick(runtime.db, settings.stores[0], runtime.store_ids["shop-a"], clock.now)
    assert len(cases) == 1
    assert [o.status for o in _outbox(runtime)] == ["pending"]


def test_windows_command_lists_what_goes_out_this_week(tmp_path):
    from typer.testing import CliRunner

    from connector.cli import app

    db_url = f"sqlite:///{tmp_path / 'w.db'}"
    settings = _settings(db_url)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = lambda: now
        _post(client, "orders/create", _order(5001, now - timedelta(days=28), qty=1))  # opens in about 3 days
        _post(client, "orders/create", _order(5002, now - timedelta(days=5), qty=1, phone="+91 98123 45678", customer_id=2))  # in ~26 days
        runtime.processor.drain()
    config = tmp_path / "storeloop.toml"
    config.write_text(
        f'[database]\nurl = "{db_url}"\n\n[[stores]]\nkey = "shop-a"\nplatform = "shopify"\nshop_domain = "shop-a.myshopify.com"\n'
        f'webhook_secret = "x"\ndefault_country = "IN"\ntimezone = "Asia/Kolkata"\n\n[stores.journeys.reorder]\ncycles = {{ "NEEM-100" = "30d" }}\n'
        f'lead_days = 3\n'
    )
    result = CliRunner().invoke(app, ["windows", "--config", str(config), "--store", "shop-a", "--days", "7"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Neem face wash" in result.output and "Asha" in result.output and "config" in result.output
    assert "+919876543210" not in result.output  # phones are redacted
    assert result.output.count("Neem face wash") == 1  # the second customer's window is beyond the week
    missing = CliRunner().invoke(app, ["windows", "--config", str(config), "--store", "nope"])
    assert missing.exit_code == 2 and "unknown store" in missing.output


def test_a_replenish_tag_on_the_product_sets_its_cycle_and_rescans(db_url):
    from tests.helpers import woo_headers

    raw = settings_dict(db_url)
    raw["stores"][0].update(templates=TEMPLATES, policy={"quiet_hours": ""}, journeys={"reorder": {"lead_days": 3}})
    raw["stores"][2].update(journeys={"reorder": {}})
    settings = parse_settings(raw, environ={})
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        sid = runtime.store_ids["shop-a"]
        _post(client, "orders/create", _order(6001, T0, qty=1))
        runtime.processor.drain()
        scan = refresh_windows(runtime.db, settings.stores[0], sid, clock.now)
        assert scan.mode == "full" and upcoming(runtime.db, sid, T0 + timedelta(days=365)) == []  # no cycle known yet
        product = {"id": 9001, "title": "Neem face wash", "tags": "vegan, Replenish:3w", "updated_at": T0.isoformat()}
        _post(client, "products/update", product)
        body = dumps({"id": 93, "name": "Rose water", "tags": [{"id": 1, "name": "replenish:45d", "slug": "replenish-45d"}],
                      "date_modified_gmt": "2026-09-01T06:00:00", "status": "publish"})
        assert client.post("/webhooks/woocommerce/woo", content=body, headers=woo_headers(body, SECRETS["woo"], "product.updated")).status_code == 200
        runtime.processor.drain()
        clock.now += timedelta(hours=1)
        scan = refresh_windows(runtime.db, settings.stores[0], sid, clock.now)  # the tag forced a full rescan
        [w] = upcoming(runtime.db, sid, T0 + timedelta(days=365))
        with runtime.db.engine.connect() as conn:
            cycles = {(r.store_id, r.product_key): (r.source, r.cycle_days) for r in conn.execute(select(m.ProductCycle))}
    assert scan.mode == "full" and (w.cycle_source, w.cycle_days, w.anchor) == ("tag", 21, "placed")
    assert w.opens_at == T0 + timedelta(days=4 + 21 - 3)
    assert cycles == {(sid, "p:9001"): ("tag", 21.0), (runtime.store_ids["woo"], "p:93"): ("tag", 45.0)}


def test_several_customers_reordering_in_one_tick_are_all_marked(db_url):
    settings = _settings(db_url)
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        sid = runtime.store_ids["shop-a"]
        phones = ["+91 98765 43210", "+91 98123 45678", "+91 99887 76655"]
        for i, phone in enumerate(phones):
            _post(client, "orders/create", _order(7000 + i, T0, phone=phone, customer_id=100 + i))
        runtime.processor.drain()
        run_reorder_tick(runtime.db, settings.stores[0], sid, clock.now)
        clock.now += timedelta(hours=2)
        for i, phone in enumerate(phones):  # all three reorder before the next tick
            _post(client, "orders/create", _order(7100 + i, clock.now, phone=phone, customer_id=100 + i, qty=1))
        runtime.processor.drain()
        scan, _ = run_reorder_tick(runtime.db, settings.stores[0], sid, clock.now)
        with runtime.db.engine.connect() as conn:
            status = {w.order_external_id: (w.status, w.reorder_order_id) for w in conn.execute(select(m.ReorderWindow))}
    assert scan.mode == "incremental"
    assert {k: v for k, v in status.items() if k.startswith("70")} == {f"700{i}": ("reordered", f"710{i}") for i in range(3)}


def _dispatch(runtime, settings, clock: Clock) -> None:
    """The dispatcher's round: what is due goes out (a dry run stands in for WhatsApp: status ``dry_run``)."""
    asyncio.run(Dispatcher(runtime.db, settings, runtime.store_ids, DryRunSender(), clock=clock).drain())


def _own_order(order_id: int, placed: datetime, phone: str, customer_id: int) -> dict:
    """A one-pack order of a customer of their own (the fixture's email is everyone's: one customer to the connector)."""
    o = _order(order_id, placed, phone=phone, customer_id=customer_id, qty=1)
    email = f"c{customer_id}@example.com"
    o.update(email=email, contact_email=email)
    o["customer"]["email"] = email
    return o


def test_a_reorder_is_credited_only_after_its_reminder_went_out(db_url):
    """Three customers' windows open in one tick. Asha's reminder goes out and she reorders: credited. Bina gave no
    marketing consent, so hers is skipped; Chitra reorders while hers still waits to go out (it never does). Their
    reorders earn the reminder nothing: the week's report counts one customer reminded, one reorder, and the pack Asha
    reordered as its revenue."""
    settings = _settings(db_url, follow_up_days=3, attribution_days=14)
    clock = Clock(T0)
    asha, bina, chitra = ((_phone(n), 600 + n) for n in (1, 2, 3))
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        sid, store = runtime.store_ids["shop-a"], settings.stores[0]
        for phone, customer in (asha, chitra):
            _post(client, "customers_whats_app_marketing_consent/update", _consent(customer, phone.replace(" ", "")))
        for n, (phone, customer) in enumerate((asha, bina, chitra)):
            _post(client, "orders/create", _own_order(4001 + n, T0, phone, customer))
        runtime.processor.drain()
        clock.now = T0 + timedelta(days=32)
        assert run_reorder_tick(runtime.db, store, sid, clock.now)[1].opened == 3
        opened_at = clock.now
        clock.now += timedelta(minutes=5)
        _post(client, "orders/create", _own_order(4103, clock.now, *chitra))  # before any reminder went out
        runtime.processor.drain()
        _dispatch(runtime, settings, clock)
        clock.now += timedelta(days=2)
        for n, (phone, customer) in ((1, asha), (2, bina)):
            _post(client, "orders/create", _own_order(4100 + n, clock.now, phone, customer))
        runtime.processor.drain()
        _dispatch(runtime, settings, clock)
        with runtime.db.engine.connect() as conn:
            runs = {r.contact_id: r for r in conn.execute(select(m.JourneyRun).where(m.JourneyRun.journey == "reorder"))}
        week = opened_at.astimezone(store.tz).isocalendar()
        report = build_report(runtime.db, store, sid, parse_week(f"{week.year}-W{week.week:02d}", store.tz, clock.now))
    ids = {name: _contact_id(runtime, customer) for name, (_phone_, customer) in zip(("asha", "bina", "chitra"), (asha, bina, chitra))}
    sent = {cid: [(o.step, o.status, o.skip_reason) for o in _outbox(runtime) if o.contact_id == cid] for cid in ids.values()}
    assert sent == {ids["asha"]: [("reminder", "dry_run", None)], ids["bina"]: [("reminder", "skipped", "no_marketing_consent")],
                    ids["chitra"]: [("reminder", "skipped", "journey_ended")]}
    assert {name: (runs[cid].state["outcome"], runs[cid].state["attributed"]) for name, cid in ids.items()} == {
        "asha": ("reordered", True), "bina": ("reordered", False), "chitra": ("reordered", False)}
    retention = report["stages"]["retention"]["metrics"]
    assert (retention["reminded"], retention["reordered_in_window"], retention["repeat_rate"]) == (1, 1, 1.0)
    assert retention["revenue"] == {"USD": "249.50"}  # her one pack of the product (not her order's total, shipping and taxes in it)


NEEM = {"product_id": 9001, "variant_id": 49001, "sku": "NEEM-100", "title": "Neem face wash", "price": "249.50"}
ROSE = {"product_id": 9002, "variant_id": 49002, "sku": "ROSE-200", "title": "Rose toner", "price": "180.00"}
SOAP = {"product_id": 9003, "variant_id": 49003, "sku": "SOAP-1", "title": "Sandal soap", "price": "99.00"}


def _basket(order_id: int, placed: datetime, *lines: tuple[dict, int]) -> dict:
    """Asha's paid order of these (product, quantity) lines (the fixture's totals, shipping and taxes kept)."""
    o = _order(order_id, placed)
    base = o["line_items"][0]
    o["line_items"] = [{**base, **item, "id": order_id * 10 + n, "quantity": qty, "current_quantity": qty} for n, (item, qty) in enumerate(lines)]
    return o


def test_one_order_reordering_two_reminded_products_credits_each_only_its_own_lines(db_url):
    """Asha's first order had neem face wash and rose toner: both windows open, both reminders go out. She reorders
    both in one order (two face washes, one toner) with a soap she never had before. The week's retention revenue is
    what the two reordered products brought, 2 x 249.50 + 180.00 = 679.00: not the order's total once per product
    (which counted the whole order twice, soap, shipping and taxes included)."""
    settings = _settings(db_url, follow_up_days=3, attribution_days=14, cycles={"NEEM-100": "30d", "ROSE-200": "30d"})
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        sid, store = runtime.store_ids["shop-a"], settings.stores[0]
        _post(client, "customers_whats_app_marketing_consent/update", _consent())
        _post(client, "orders/create", _basket(5001, T0, (NEEM, 1), (ROSE, 1)))
        runtime.processor.drain()
        clock.now = T0 + timedelta(days=32)
        assert run_reorder_tick(runtime.db, store, sid, clock.now)[1].opened == 2
        opened_at = clock.now
        for _ in range(2):  # two messages to one phone go out a little apart
            _dispatch(runtime, settings, clock)
            clock.now += timedelta(minutes=1)
        clock.now += timedelta(days=2)
        _post(client, "orders/create", _basket(5002, clock.now, (NEEM, 2), (ROSE, 1), (SOAP, 1)))
        runtime.processor.drain()
        week = opened_at.astimezone(store.tz).isocalendar()
        report = build_report(runtime.db, store, sid, parse_week(f"{week.year}-W{week.week:02d}", store.tz, clock.now))
    assert [(o.step, o.status) for o in _outbox(runtime)] == [("reminder", "dry_run"), ("reminder", "dry_run")]
    retention = report["stages"]["retention"]["metrics"]
    assert (retention["reminded"], retention["reordered_in_window"], retention["revenue"]) == (2, 2, {"USD": "679.00"})


def test_a_reorder_made_with_the_reminders_discount_code_is_credited_what_was_paid(db_url):
    """The reminder carried AGAIN10; she reorders two face washes with it (49.90 off the line). The week's
    retention revenue is what she paid for them, 449.10, not their list price."""
    settings = _settings(db_url, follow_up_days=3, attribution_days=14, cycles={"NEEM-100": "30d"}, discount_code="AGAIN10")
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        sid, store = runtime.store_ids["shop-a"], settings.stores[0]
        _post(client, "customers_whats_app_marketing_consent/update", _consent())
        _post(client, "orders/create", _basket(5001, T0, (NEEM, 1)))
        runtime.processor.drain()
        clock.now = T0 + timedelta(days=32)
        assert run_reorder_tick(runtime.db, store, sid, clock.now)[1].opened == 1
        opened_at = clock.now
        _dispatch(runtime, settings, clock)
        clock.now += timedelta(days=2)
        reorder = _basket(5002, clock.now, (NEEM, 2))
        reorder["line_items"][0]["discount_allocations"] = [
            {"amount": "49.90", "amount_set": {"shop_money": {"amount": "49.90", "currency_code": "INR"}}}]
        _post(client, "orders/create", reorder)
        runtime.processor.drain()
        week = opened_at.astimezone(store.tz).isocalendar()
        report = build_report(runtime.db, store, sid, parse_week(f"{week.year}-W{week.week:02d}", store.tz, clock.now))
    retention = report["stages"]["retention"]["metrics"]
    assert (retention["reordered_in_window"], retention["revenue"]) == (1, {"USD": "449.10"})


# ---- production learning: the real full scan on a synthetic history ---------------------------
def _phone(n: int) -> str:
    return f"+91 98{n:03d} 4{n:04d}"


def _windows(runtime) -> dict:
    with runtime.db.engine.connect() as conn:
        return {(w.contact_id, w.product_key): w for w in conn.execute(select(m.ReorderWindow).where(m.ReorderWindow.status == "pending"))}


def _contact_id(runtime, customer_id: int) -> int:
    with runtime.db.engine.connect() as conn:
        return conn.execute(select(m.Contact.id).where(m.Contact.external_customer_id == str(customer_id))).scalar_one()


def test_the_full_scan_plans_from_the_learned_median_and_from_a_customers_own_cadence(db_url):
    """``refresh_windows(full=True)`` (what the daily job runs) on a store whose repeat buyers of a
    product come back every 27 days per pack, with +/- 3 days of noise and 1-3 packs an order: a
    first-time buyer's window comes from the learned median (within a day of 27), a customer who
    bought it twice 20 days apart gets their own 20 days."""
    true_days = 27.0
    raw = settings_dict(db_url)
    raw["stores"][0].update(templates=TEMPLATES, policy={"quiet_hours": ""},
                            journeys={"reorder": {"lead_days": 3, "transit_days": 4, "min_repeat_buyers": 8}})
    settings = parse_settings(raw, environ={})
    rng = random.Random(27)
    orders: list[tuple[int, int, datetime, int]] = []  # (order id, customer, placed, packs)
    for buyer in range(10):  # ten repeat buyers, 3 or 4 orders each
        at = T0 + timedelta(days=rng.uniform(0, 20))
        for n in range(rng.randint(3, 4)):
            packs = rng.choice((1, 1, 2, 3))
            orders.append((10_000 + buyer * 10 + n, 200 + buyer, at, packs))
            at += timedelta(days=true_days * packs + rng.uniform(-3, 3))
    last = max(o[2] for o in orders)
    once_at, own_first = last - timedelta(days=2), last - timedelta(days=30)
    orders += [(20_001, 300, once_at, 2),  # a first-time buyer of two packs
               (20_002, 301, own_first, 1), (20_003, 301, own_first + timedelta(days=20), 1)]  # 20 days, one pack
    clock = Clock(last)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        sid = runtime.store_ids["shop-a"]
        for oid, customer, placed, packs in orders:
            _post(client, "orders/create", _order(oid, placed, phone=_phone(customer), customer_id=customer, qty=packs,
                                                  product="8001", variant="48001", sku="TEA-1"))
        runtime.processor.drain()
        now = last + timedelta(days=1)
        scan = refresh_windows(runtime.db, settings.stores[0], sid, now, full=True)
        windows = _windows(runtime)
        once, own = _contact_id(runtime, 300), _contact_id(runtime, 301)
        with runtime.db.engine.connect() as conn:
            [cycle] = conn.execute(select(m.ProductCycle).where(m.ProductCycle.store_id == sid)).all()
    assert scan.mode == "full" and scan.learned == 1
    assert (cycle.product_key, cycle.source, cycle.samples) == ("p:8001", "learned", 11)  # ten buyers and the customer with two orders
    assert abs(cycle.cycle_days - true_days) < 1.0
    first_timer = windows[(once, "p:8001")]
    assert first_timer.cycle_source == "learned" and abs(first_timer.cycle_days - true_days) < 1.0
    # placed + 4 days' transit + two packs x the learned cycle - 3 days' lead
    expected = once_at + timedelta(days=4 + 2 * cycle.cycle_days - 3)
    assert abs(first_timer.opens_at - expected) < timedelta(minutes=5)
    mine = windows[(own, "p:8001")]
    assert (mine.cycle_source, mine.cycle_days, mine.order_external_id) == ("customer", 20.0, "20003")
    assert mine.opens_at == own_first + timedelta(days=20 + 4 + 20 - 3)


def _product(pid: int, tags: str, replenish: str | None = None) -> dict:
    body = {"id": pid, "title": f"Product {pid}", "tags": tags, "updated_at": T0.isoformat()}
    if replenish is not None:
        body["metafields"] = [{"namespace": "storeloop", "key": "replenish", "value": replenish, "type": "single_line_text_field"}]
    return body


def test_config_beats_tag_beats_customer_and_a_metafield_beats_a_tag(db_url):
    """Three products the same customer bought twice, 50 days apart: the config cycle wins over
    the product's tag; a tag wins over the customer's cadence; the ``storeloop.replenish``
    metafield wins over a tag (WooCommerce: the ``_storeloop_replenish`` product meta)."""
    from tests.helpers import woo_headers

    raw = settings_dict(db_url)
    raw["stores"][0].update(templates=TEMPLATES, policy={"quiet_hours": ""},
                            journeys={"reorder": {"cycles": {"NEEM-100": "30d"}, "lead_days": 3}})
    raw["stores"][2].update(journeys={"reorder": {}})
    settings = parse_settings(raw, environ={})
    clock = Clock(T0 + timedelta(days=51))
    products = {9001: "NEEM-100", 9002: "ROSE-1", 9003: "AMLA-1", 9004: "SOAP-1"}
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        sid = runtime.store_ids["shop-a"]
        _post(client, "products/update", _product(9001, "replenish:3w"))  # and the config says 30 days
        _post(client, "products/update", _product(9002, "vegan, replenish:3w"))
        _post(client, "products/update", _product(9003, "replenish:3w", replenish="45d"))
        for n, (pid, sku) in enumerate(products.items()):
            for k, placed in enumerate((T0, T0 + timedelta(days=50))):
                _post(client, "orders/create", _order(30_000 + 10 * n + k, placed, qty=1, product=str(pid), variant=str(pid + 40000), sku=sku))
        meta = dumps({"id": 93, "name": "Rose water", "tags": [{"id": 1, "name": "replenish:45d", "slug": "replenish-45d"}],
                      "meta_data": [{"id": 5, "key": "_storeloop_replenish", "value": "6w"}], "date_modified_gmt": "2026-09-01T06:00:00"})
        assert client.post("/webhooks/woocommerce/woo", content=meta, headers=woo_headers(meta, SECRETS["woo"], "product.updated")).status_code == 200
        runtime.processor.drain()
        refresh_windows(runtime.db, settings.stores[0], sid, clock.now, full=True)
        found = {k: (w.cycle_source, w.cycle_days) for (_, k), w in _windows(runtime).items()}
        with runtime.db.engine.connect() as conn:
            woo_cycle = conn.execute(select(m.ProductCycle.cycle_days).where(m.ProductCycle.store_id == runtime.store_ids["woo"])).scalar_one()
    assert found == {"p:9001": ("config", 30.0), "p:9002": ("tag", 21.0), "p:9003": ("tag", 45.0), "p:9004": ("customer", 50.0)}
    assert woo_cycle == 42.0


def test_product_webhook_subscriptions_ask_for_the_storeloop_metafield_namespace():
    """Shopify sends a product's ``storeloop.replenish`` metafield only to subscriptions that ask for
    the namespace: install creates product subscriptions with it, adds it to one of ours made
    without it, and leaves other topics and other addresses alone; a second run changes nothing."""
    import asyncio
    import json

    import httpx
    import respx

    from adapters.shopify.client import ShopifyAdminClient
    from adapters.shopify.subscriptions import register_webhooks

    uri = "https://connector.example/webhooks/shopify"
    subs = [{"id": "gid://shopify/WebhookSubscription/1", "topic": "PRODUCTS_UPDATE", "uri": uri, "metafieldNamespaces": []},
            {"id": "gid://shopify/WebhookSubscription/2", "topic": "ORDERS_CREATE", "uri": uri, "metafieldNamespaces": []},
            {"id": "gid://shopify/WebhookSubscription/3", "topic": "PRODUCTS_CREATE", "uri": "https://old.example/hooks", "metafieldNamespaces": []}]
    calls: list[tuple[str, dict]] = []

    def shopify(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        v = body["variables"]
        if "webhookSubscriptions(" in body["query"]:
            assert "metafieldNamespaces" in body["query"]
            return httpx.Response(200, json={"data": {"webhookSubscriptions": {"nodes": subs, "pageInfo": {"hasNextPage": False}}}})
        if "webhookSubscriptionCreate(" in body["query"]:
            calls.append(("create", v))
            sub = {"id": f"gid://shopify/WebhookSubscription/{len(subs) + 1}", "topic": v["topic"], "uri": v["webhookSubscription"]["uri"],
                   "metafieldNamespaces": v["webhookSubscription"].get("metafieldNamespaces", [])}
            subs.append(sub)
            return httpx.Response(200, json={"data": {"webhookSubscriptionCreate": {"webhookSubscription": sub, "userErrors": []}}})
        if "webhookSubscriptionUpdate(" in body["query"]:
            calls.append(("update", v))
            [sub] = [s for s in subs if s["id"] == v["id"]]
            sub.update(v["webhookSubscription"])
            return httpx.Response(200, json={"data": {"webhookSubscriptionUpdate": {"webhookSubscription": sub, "userErrors": []}}})
        raise AssertionError(body["query"])

    store = parse_settings({**settings_dict("sqlite://"), "stores": [{**settings_dict("sqlite://")["stores"][0], "access_token": "shpat_x",
                                                                      "api_base_url": "https://shop-a.example"}]}, environ={}).stores[0]

    async def install():
        with respx.mock() as mock:
            mock.post("https://shop-a.example/admin/api/2026-07/graphql.json").mock(side_effect=shopify)
            async with ShopifyAdminClient(store) as client:
                return await register_webhooks(client, uri, ("PRODUCTS_CREATE", "PRODUCTS_UPDATE", "ORDERS_CREATE"))

    first = asyncio.run(install())
    assert (first.created, first.present, first.updated, first.failed) == (["PRODUCTS_CREATE"], ["PRODUCTS_UPDATE", "ORDERS_CREATE"],
                                                                           ["PRODUCTS_UPDATE"], [])
    assert calls == [("create", {"topic": "PRODUCTS_CREATE", "webhookSubscription": {"uri": uri, "format": "JSON",
                                                                                      "metafieldNamespaces": ["storeloop"]}}),
                     ("update", {"id": "gid://shopify/WebhookSubscription/1", "webhookSubscription": {"metafieldNamespaces": ["storeloop"]}})]
    assert subs[2]["metafieldNamespaces"] == []  # another address's subscription: not ours to change
    calls.clear()
    again = asyncio.run(install())
    assert calls == [] and again.created == again.updated == [] and sorted(again.present) == ["ORDERS_CREATE", "PRODUCTS_CREATE", "PRODUCTS_UPDATE"]


# ---- the reorder link, and the holdout --------------------------------------------------------
def _start(client, wa_id: str, phone_id: str, at: datetime) -> None:
    """The customer writes START on WhatsApp: marketing opt-in."""
    env = {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp", "metadata": {"display_phone_number": "1", "phone_number_id": phone_id},
        "contacts": [{"profile": {"name": "C"}, "wa_id": wa_id}],
        "messages": [{"from": wa_id, "id": f"wamid.start{wa_id}", "timestamp": str(int(at.timestamp())), "type": "text",
                      "text": {"body": "START"}}]}}]}]}
    body = dumps(env)
    assert client.post("/webhooks/whatsapp", content=body, headers={"X-Hub-Signature-256": meta_signature(body, SECRETS["wa_app"])}).status_code == 200


def _links(runtime, store_id: int) -> list[str]:
    with runtime.db.engine.connect() as conn:
        rows = conn.execute(select(m.OutboxMessage).where(m.OutboxMessage.journey == "reorder", m.OutboxMessage.step == "reminder",
                                                          m.OutboxMessage.store_id == store_id).order_by(m.OutboxMessage.id)).all()
    assert all(r.status == "pending" for r in rows), [(r.status, r.skip_reason) for r in rows]
    return sorted(r.payload["message"]["body"][2]["text"] for r in rows)


def test_the_reminder_carries_a_shopify_cart_permalink_with_the_discount_and_a_woocommerce_add_to_cart_link(db_url):
    from tests.helpers import woo_headers

    raw = settings_dict(db_url)
    raw["stores"][0].update(templates=TEMPLATES, policy={"quiet_hours": ""},
                            journeys={"reorder": {"cycles": {"NEEM-100": "30d"}, "discount_code": "AGAIN10", "follow_up_days": None}})
    raw["stores"][2].update(templates=TEMPLATES, policy={"quiet_hours": ""},
                            journeys={"reorder": {"cycles": {"93": "30d", "23": "60d"}, "follow_up_days": None}})
    settings = parse_settings(raw, environ={})
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        _post(client, "customers_whats_app_marketing_consent/update", _consent())
        _post(client, "orders/create", _order(8001, T0, qty=2))
        woo = load_json(FIXTURES / "woocommerce" / "order.created.rest-v3-docs-example.json")
        woo.update(id=8101, number="8101", status="processing", date_created_gmt=T0.strftime("%Y-%m-%dT%H:%M:%S"),
                   date_modified_gmt=T0.strftime("%Y-%m-%dT%H:%M:%S"))
        woo["billing"] = {**woo["billing"], "phone": "+1 650 253 0000"}
        body = dumps(woo)
        assert client.post("/webhooks/woocommerce/woo", content=body, headers=woo_headers(body, SECRETS["woo"], "order.created")).status_code == 200
        _start(client, "16502530000", PHONE_ID_WOO, T0)
        runtime.processor.drain()
        clock.now = T0 + timedelta(days=62)  # all three are due: 4 d transit + 2 x 30 d (1 x 60 d) - 3 d lead
        for key in ("shop-a", "woo"):
            run_reorder_tick(runtime.db, settings.stores[[s.key for s in settings.stores].index(key)], runtime.store_ids[key], clock.now)
        shop_links, woo_links = _links(runtime, runtime.store_ids["shop-a"]), _links(runtime, runtime.store_ids["woo"])
    assert shop_links == ["https://shop-a.myshopify.com/cart/49001:2?discount=AGAIN10"]
    # a simple product by its id, a variation by the variation's id; the quantity bought
    assert woo_links == ["https://bloom.example/?add-to-cart=23&quantity=1", "https://bloom.example/?add-to-cart=93&quantity=2"]


def test_a_holdout_customers_window_opens_into_the_control_group_and_sends_nothing(db_url):
    settings = _settings(db_url, holdout_percent=50, follow_up_days=3)
    clock = Clock(T0)
    phones = [f"+91 98{n}65 4321{n}" for n in range(6)]
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        sid = runtime.store_ids["shop-a"]
        for n, phone in enumerate(phones):
            _post(client, "customers_whats_app_marketing_consent/update", _consent(900 + n, phone.replace(" ", "")))
            _post(client, "orders/create", _order(8200 + n, T0, phone=phone, customer_id=900 + n, qty=1))
        runtime.processor.drain()
        clock.now = T0 + timedelta(days=32)
        opened_ = run_reorder_tick(runtime.db, settings.stores[0], sid, clock.now)[1]
        clock.now += timedelta(days=3)
        runtime.processor.process_timers()  # the follow-ups
        with runtime.db.engine.connect() as conn:
            runs = {r.contact_id: r for r in conn.execute(select(m.JourneyRun).where(m.JourneyRun.journey == "reorder"))}
            windows = {w.contact_id: w.status for w in conn.execute(select(m.ReorderWindow))}
        outbox = _outbox(runtime)
    assert opened_.opened == 6 and set(windows.values()) == {"opened"}
    control = {cid for cid, r in runs.items() if r.holdout}
    assert 0 < len(control) < 6  # some of each (half the customers, by a stable hash of the contact)
    for cid in runs:
        mine = [(o.step, o.status, o.skip_reason) for o in outbox if o.contact_id == cid]
        if cid in control:  # recorded as held out; nothing goes to WhatsApp
            assert mine == [("reminder", "skipped", "holdout"), ("follow_up", "skipped", "holdout")]
        else:
            assert mine == [("reminder", "pending", None), ("follow_up", "pending", None)]


def test_a_prepaid_order_left_unpaid_opens_no_window_until_it_is_paid(db_url):
    """An unpaid prepaid order never reaches the customer: no reminder to reorder what never came.
    A COD order (paid at the door) and the same order once paid do get their windows."""
    settings = _settings(db_url)
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        sid, store = runtime.store_ids["shop-a"], settings.stores[0]
        unpaid = {**_order(2001, T0), "financial_status": "pending"}
        cod = {**_order(2002, T0, phone=_phone(2), customer_id=7002), "financial_status": "pending",
               "payment_gateway_names": ["Cash on Delivery (COD)"]}
        _post(client, "orders/create", unpaid)
        _post(client, "orders/create", cod)
        runtime.processor.drain()
        for full in (True, False):  # the daily full scan and the incremental tick agree
            refresh_windows(runtime.db, store, sid, clock.now, full=full)
            assert {w.order_external_id for w in upcoming(runtime.db, sid, clock.now + timedelta(days=90))} == {"2002"}
        clock.now = T0 + timedelta(hours=5)
        _post(client, "orders/updated", {**unpaid, "financial_status": "paid", "updated_at": clock.now.isoformat()})
        runtime.processor.drain()
        refresh_windows(runtime.db, store, sid, clock.now)
        assert {w.order_external_id for w in upcoming(runtime.db, sid, clock.now + timedelta(days=90))} == {"2001", "2002"}
