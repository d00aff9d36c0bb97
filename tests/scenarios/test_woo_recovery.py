"""WooCommerce unpaid orders end to end (issue #4, items 4 and 5): who reminds her, how often, and what the report credits.

WooCommerce makes the order before the payment, so a ``pending`` / ``failed`` order is an abandoned checkout, a
payment to recover, or her first try at a purchase she then makes again. Signed WooCommerce webhooks and the Cart
Abandonment Recovery plugin's posts go in over HTTP; what reaches her phone (the fake WhatsApp) and the weekly
report are what is asserted, on the scenario's virtual clock.
"""

from __future__ import annotations

import html
from datetime import timedelta

import pytest

from tests.scenarios import payloads as p
from tests.scenarios.harness import T0, TEMPLATES
from tests.scenarios.stores import WOOCOMMERCE
from tests.scenarios.test_store_journeys import LADDER, conversion

ASHA = "+919876543210"
PAY = {"step": "payment_recovery.remind", "name": "pay_v1", "category": "utility",
       "body_text": "Complete payment for {{1}}: {{2}}", "body": ["order.name", "order.payment_url"]}
BOTH = {"payment_recovery": {}, **LADDER}


def unpaid(n: int, at, status: str = "failed") -> dict:
    """Asha's order #n, its card declined (``failed``) or left at the payment page (``pending``)."""
    return {**WOOCOMMERCE.order(n, ASHA, at, cod=False), "status": status, "date_paid": None, "date_paid_gmt": None}


def paid(order: dict, at) -> dict:
    """The same order, paid now (WooCommerce has no paid event: an update to processing with ``date_paid``)."""
    return {**order, "status": "processing", "date_paid_gmt": p.gmt(at), "date_modified_gmt": p.gmt(at)}


def store(sqlite_url, scenario, journeys: dict):
    return scenario(sqlite_url, "woocommerce", journeys=journeys, store_settings={"templates": [*TEMPLATES, PAY]})


# ---- item 5: the cart ladder takes an unpaid order only from a customer it can reach -------------------------------

def test_a_declined_card_without_marketing_consent_still_gets_the_pay_reminder_when_cart_recovery_is_on(sqlite_url, scenario, world):
    """Turning on checkout_recovery used to move every unpaid order to the marketing ladder, which the gate then skipped
    for want of consent (WooCommerce asks none): nothing reached her. Now she gets the utility pay link, once."""
    sc = store(sqlite_url, scenario, BOTH)
    sc.woo("order.created", unpaid(1, sc.now))
    sc.later(days=3)
    assert sc.templates_to(ASHA) == ["pay_v1"]
    assert sc.last_to(ASHA, "pay_v1").params[-1].startswith("https://bloom.example/checkout/order-pay/7301/")
    assert conversion(sc)["payments_reminded"] == 1


def test_a_declined_card_with_marketing_consent_gets_the_cart_ladder_and_no_pay_reminder_beside_it(sqlite_url, scenario, world):
    sc = store(sqlite_url, scenario, BOTH)
    sc.marketing_preference(ASHA, "resume")  # she opted in to marketing on WhatsApp
    sc.later(minutes=5)
    sc.woo("order.created", unpaid(1, sc.now))
    sc.later(days=3)
    assert sc.templates_to(ASHA) == ["cart_1_v1", "cart_2_v1", "cart_3_v1"]  # one ladder, the order's pay link
    assert "pay_v1" not in sc.templates_to(ASHA)


# ---- item 2: her second try replaces the first order -------------------------------------------------------------

@pytest.mark.parametrize("journeys", [{"payment_recovery": {}, "order_confirmation": {}},
                                      {"payment_recovery": {}, "order_confirmation": {}, **LADDER}], ids=["payment", "payment+cart"])
def test_no_pay_link_for_an_order_she_replaced_with_a_paid_one(sqlite_url, scenario, world, journeys):
    """Her card is declined on #7301; 20 minutes later she checks out again from another device (WooCommerce makes
    #7302) and pays. She is thanked for #7302 and never asked to pay for #7301."""
    sc = store(sqlite_url, scenario, journeys)
    sc.woo("order.created", unpaid(1, sc.now))
    sc.later(minutes=20)
    sc.woo("order.created", WOOCOMMERCE.order(2, ASHA, sc.now, cod=False))  # paid: processing
    sc.later(days=1)
    assert sc.templates_to(ASHA) == ["order_thanks_v1"]
    assert sc.last_to(ASHA, "order_thanks_v1").params[-1] != "#7301"
    c = conversion(sc)
    assert (c["payments_stalled"], c["payments_reminded"], c["payment_recovered_revenue"]) == (0, 0, {})


def test_a_cash_on_delivery_retry_also_replaces_the_declined_order(sqlite_url, scenario, world):
    sc = store(sqlite_url, scenario, {"payment_recovery": {}})
    sc.woo("order.created", unpaid(1, sc.now))
    sc.later(minutes=20)
    sc.woo("order.created", WOOCOMMERCE.order(2, ASHA, sc.now, cod=True))  # she gives up on the card: COD
    sc.later(days=1)
    assert "pay_v1" not in sc.templates_to(ASHA)


# ---- item 6: a failed order recovers no cart, and one order is credited once -------------------------------------

def _cart_then_failed_order(sc):
    WOOCOMMERCE.start_checkout(sc, "A", ASHA)
    sc.work()
    sc.at(T0 + timedelta(hours=7))  # two cart reminders went out
    order = unpaid(4, sc.now)
    sc.woo("order.created", order)
    return order


@pytest.mark.parametrize("journeys", [{"checkout_recovery": {**LADDER["checkout_recovery"], "unpaid_orders": False}},
                                      {"checkout_recovery": {**LADDER["checkout_recovery"], "unpaid_orders": False}, "payment_recovery": {}}],
                         ids=["cart", "cart+payment"])
def test_a_failed_order_after_cart_reminders_is_no_recovered_cart(sqlite_url, scenario, world, journeys):
    """The store's owner reads the weekly report: a declined card is no sale, however many reminders came before."""
    sc = store(sqlite_url, scenario, journeys)
    _cart_then_failed_order(sc)
    sc.later(days=3)
    assert sc.templates_to(ASHA)[:2] == ["cart_1_v1", "cart_2_v1"]
    assert "cart_3_v1" not in sc.templates_to(ASHA)  # she ordered: the cart's ladder is over
    c = conversion(sc)
    assert (c["checkouts_reminded"], c["checkouts_recovered"], c["recovered_revenue"]) == (1, 0, {})
    assert c["payment_recovered_revenue"] == {}


def test_an_order_paid_after_its_pay_reminder_is_counted_once(sqlite_url, scenario, world):
    """Cart reminders, a declined card, the pay reminder an hour later, and she pays: 1,299 recovered, not 2,598."""
    sc = store(sqlite_url, scenario, {"checkout_recovery": {**LADDER["checkout_recovery"], "unpaid_orders": False}, "payment_recovery": {}})
    order = _cart_then_failed_order(sc)
    sc.later(hours=2)
    assert sc.templates_to(ASHA) == ["cart_1_v1", "cart_2_v1", "pay_v1"]
    sc.woo("order.updated", paid(order, sc.now))
    sc.later(days=2)
    c = conversion(sc)
    assert (c["payments_recovered"], c["payment_recovered_revenue"]) == (1, {"INR": "1299.00"})
    assert (c["checkouts_recovered"], c["recovered_revenue"], c["lost"]) == (0, {}, 0)


def test_an_order_paid_soon_after_cart_reminders_still_credits_the_cart(sqlite_url, scenario, world):
    """With unpaid orders left to nobody, the cart's reminders still recover the order she pays minutes later."""
    sc = store(sqlite_url, scenario, {"checkout_recovery": {**LADDER["checkout_recovery"], "unpaid_orders": False}})
    order = _cart_then_failed_order(sc)
    sc.later(minutes=10)
    sc.woo("order.updated", paid(order, sc.now))
    sc.later(days=2)
    c = conversion(sc)
    assert (c["checkouts_recovered"], c["recovered_revenue"]) == (1, {"INR": "1299.00"})


# ---- item 3: one checkout, one ladder ------------------------------------------------------------------------------

def test_an_order_left_at_the_payment_step_and_its_abandoned_cart_run_one_ladder(sqlite_url, scenario, world):
    """She places the order and leaves at the card page; the plugin keeps her cart (it clears it only at processing)
    and posts it abandoned 15 minutes later. She gets each reminder once, with the order's pay link."""
    sc = scenario(sqlite_url, "woocommerce", journeys=LADDER)
    order = unpaid(1, sc.now, status="pending")
    order["billing"]["email"] = "a1a1a1@example.in"  # the email the plugin captured the cart with
    sc.woo("order.created", order)
    sc.later(minutes=15)
    sc.cart(p.woo_cart(WOOCOMMERCE.SESSIONS["A"], ASHA))
    sc.later(hours=7, step=timedelta(minutes=10))
    assert sc.templates_to(ASHA) == ["cart_1_v1", "cart_2_v1"]
    assert all("order-pay/7301" in s.params[-1] for s in sc.sent(ASHA))


def test_an_unpaid_order_the_staff_entered_gets_the_pay_reminder_not_the_cart_ladder(sqlite_url, scenario, world):
    """A pending order the merchant made in wp-admin (``created_via`` admin) was never a cart she left, so the ladder
    leaves it even for a customer with marketing consent; the pay reminder takes it instead of nobody."""
    sc = store(sqlite_url, scenario, BOTH)
    sc.say(ASHA, "START")  # marketing consent: a checkout's unpaid order would run the ladder
    sc.later(days=1)
    sc.woo("order.created", {**unpaid(1, sc.now, status="pending"), "created_via": "admin"})
    sc.later(days=3)
    assert sc.templates_to(ASHA) == ["pay_v1"]


def _reminded_order_cancelled(sc) -> None:
    """Reminded of her cart, Asha orders and leaves the card page; WooCommerce cancels the unpaid order an hour later
    (Hold stock), and another hour on she orders again."""
    WOOCOMMERCE.start_checkout(sc, "A", ASHA)
    sc.at(T0 + timedelta(minutes=30))
    assert sc.templates_to(ASHA) == ["cart_1_v1"]
    sc.at(T0 + timedelta(hours=2))
    order = unpaid(4, sc.now, status="pending")
    sc.woo("order.created", order)
    sc.later(hours=1)
    sc.woo("order.updated", {**order, "status": "cancelled", "date_modified_gmt": p.gmt(sc.now)})
    sc.later(hours=1)


def test_a_purchase_after_woocommerce_cancelled_her_unpaid_order_still_credits_the_cart_reminder(sqlite_url, scenario, world):
    """Reminded of her cart, Asha orders but leaves the card page: with stock management on, WooCommerce cancels the
    unpaid order after its hold-stock minutes. An hour later she orders again and pays. Before, the cancel ended the
    ladder's run and with it the attribution window: the purchase the reminder brought back counted nowhere, and
    the report showed a reminded cart lost. No reminder goes out after the cancel (its pay link is dead)."""
    sc = scenario(sqlite_url, "woocommerce", journeys=LADDER)
    _reminded_order_cancelled(sc)  # Hold stock: 60 minutes
    sc.woo("order.created", WOOCOMMERCE.order(5, ASHA, sc.now, cod=False))  # paid at once
    sc.later(days=9)
    assert sc.templates_to(ASHA) == ["cart_1_v1"]
    c = conversion(sc)
    assert (c["checkouts_abandoned"], c["checkouts_reminded"], c["checkouts_recovered"]) == (1, 1, 1)
    assert (c["recovered_revenue"], c["lost"]) == ({"INR": "1299.00"}, 0)


def test_a_reorder_left_pending_after_the_cancel_and_then_paid_still_credits_the_cart_reminder(sqlite_url, scenario, world):
    """Her new order arrives ``pending`` (a redirect gateway: WooCommerce makes it before she pays) and is paid minutes
    later. Before, the pending order ended the cancelled order's run uncredited and its own run carried no reminder:
    the report showed the reminded cart lost. She gets no first reminder again for it either."""
    sc = scenario(sqlite_url, "woocommerce", journeys=LADDER)
    _reminded_order_cancelled(sc)
    again = unpaid(5, sc.now, status="pending")
    sc.woo("order.created", again)
    sc.later(minutes=3)
    sc.woo("order.updated", paid(again, sc.now))
    sc.later(days=9)
    assert sc.templates_to(ASHA) == ["cart_1_v1"]
    c = conversion(sc)
    assert (c["checkouts_abandoned"], c["checkouts_reminded"], c["checkouts_recovered"]) == (1, 1, 1)
    assert (c["recovered_revenue"], c["lost"]) == ({"INR": "1299.00"}, 0)


def test_a_reorder_left_pending_after_the_cancel_gets_the_ladders_next_step_not_its_first(sqlite_url, scenario, world):
    """She leaves the new order at the card page too: it goes on with the ladder she was on (its second reminder, with
    the new order's pay link), not a fresh one from the first; never paid, it recovers nothing."""
    sc = scenario(sqlite_url, "woocommerce", journeys=LADDER)
    _reminded_order_cancelled(sc)
    sc.woo("order.created", unpaid(5, sc.now, status="pending"))
    sc.later(hours=7, step=timedelta(minutes=30))
    assert sc.templates_to(ASHA) == ["cart_1_v1", "cart_2_v1"]
    assert "order-pay/7305" in sc.last_to(ASHA, "cart_2_v1").params[-1]
    sc.later(days=9)
    c = conversion(sc)
    assert (c["checkouts_reminded"], c["checkouts_recovered"], c["recovered_revenue"], c["lost"]) == (1, 0, {}, 1)


def test_a_reorder_by_bank_transfer_after_the_cancel_credits_the_cart_reminder_when_the_money_comes(sqlite_url, scenario, world):
    """Her new order is a bank transfer (on-hold): nothing is credited until the store marks the money received a day
    later; then the cart her reminder brought back is recovered. Before, the cart showed lost."""
    sc = scenario(sqlite_url, "woocommerce", journeys=LADDER)
    _reminded_order_cancelled(sc)
    again = bank_transfer(WOOCOMMERCE.order(5, ASHA, sc.now, cod=False), sc.now)
    sc.woo("order.created", again)
    sc.later(days=1)
    assert conversion(sc)["checkouts_recovered"] == 0
    sc.woo("order.updated", paid(again, sc.now))
    sc.later(days=9)
    assert sc.templates_to(ASHA) == ["cart_1_v1"]
    c = conversion(sc)
    assert (c["checkouts_reminded"], c["checkouts_recovered"], c["recovered_revenue"], c["lost"]) == (1, 1, {"INR": "1299.00"}, 0)


# ---- an order on hold for a bank transfer is no sale until the money comes ------------------------------------------

def bank_transfer(order: dict, at) -> dict:
    """``order`` placed (or moved on the pay page) with Direct bank transfer: ``on-hold``, "awaiting payment", unpaid."""
    return {**order, "status": "on-hold", "payment_method": "bacs", "payment_method_title": "Direct bank transfer",
            "date_paid": None, "date_paid_gmt": None, "date_modified_gmt": p.gmt(at)}


def test_a_bank_transfer_after_cart_reminders_is_recovered_only_once_the_money_comes(sqlite_url, scenario, world):
    """Reminded twice of her cart, Asha checks out with a bank transfer: WooCommerce puts the order on hold. Before,
    the weekly report counted the cart recovered with 1,299 at once, though WooCommerce never cancels an on-hold
    order and the money may never come. Now the ladder stops (she checked out) and the cart is recovered, with its
    revenue, when the store marks the transfer received."""
    sc = scenario(sqlite_url, "woocommerce", journeys=LADDER)
    WOOCOMMERCE.start_checkout(sc, "A", ASHA)
    sc.at(T0 + timedelta(hours=7))  # two cart reminders went out
    order = bank_transfer(WOOCOMMERCE.order(4, ASHA, sc.now, cod=False), sc.now)
    sc.woo("order.created", order)
    sc.later(days=2)
    assert sc.templates_to(ASHA) == ["cart_1_v1", "cart_2_v1"]  # she checked out: no third reminder
    c = conversion(sc)
    assert (c["checkouts_reminded"], c["checkouts_recovered"], c["recovered_revenue"]) == (1, 0, {})
    sc.woo("order.updated", paid(order, sc.now))  # the transfer arrived: the store moves the order to processing
    sc.later(days=1)
    c = conversion(sc)
    assert (c["checkouts_abandoned"], c["checkouts_reminded"], c["checkouts_recovered"]) == (1, 1, 1)
    assert (c["recovered_revenue"], c["lost"]) == ({"INR": "1299.00"}, 0)
    assert sc.templates_to(ASHA) == ["cart_1_v1", "cart_2_v1"]


def test_a_bank_transfer_that_never_comes_recovers_nothing(sqlite_url, scenario, world):
    """The on-hold order stays on hold (WooCommerce never cancels it): past the reminders' window the report still
    shows the cart reminded and not recovered, with no revenue."""
    sc = scenario(sqlite_url, "woocommerce", journeys=LADDER)
    WOOCOMMERCE.start_checkout(sc, "A", ASHA)
    sc.at(T0 + timedelta(hours=7))
    sc.woo("order.created", bank_transfer(WOOCOMMERCE.order(4, ASHA, sc.now, cod=False), sc.now))
    sc.later(days=9)
    c = conversion(sc)
    assert (c["checkouts_reminded"], c["checkouts_recovered"], c["recovered_revenue"], c["lost"]) == (1, 0, {}, 1)


def test_an_unpaid_order_switched_to_bank_transfer_on_its_pay_page_is_reminded_no_more_and_credited_when_paid(sqlite_url, scenario, world):
    """Her card was declined and the ladder sent her the order's pay link twice; on the pay page she picks bank
    transfer (the order goes on hold). Before, that counted as recovered with its revenue, and nothing was paid."""
    sc = scenario(sqlite_url, "woocommerce", journeys=LADDER)
    sc.marketing_preference(ASHA, "resume")
    sc.later(minutes=5)
    order = unpaid(1, sc.now)
    sc.woo("order.created", order)
    sc.later(hours=7, step=timedelta(minutes=30))
    assert sc.templates_to(ASHA) == ["cart_1_v1", "cart_2_v1"]
    on_hold = bank_transfer(order, sc.now)
    sc.woo("order.updated", on_hold)
    sc.later(days=2)
    assert sc.templates_to(ASHA) == ["cart_1_v1", "cart_2_v1"]
    assert (conversion(sc)["checkouts_recovered"], conversion(sc)["recovered_revenue"]) == (0, {})
    sc.woo("order.updated", paid(on_hold, sc.now))
    sc.later(days=1)
    c = conversion(sc)
    assert (c["checkouts_recovered"], c["recovered_revenue"]) == (1, {"INR": "1299.00"})


# ---- the cart she checked out with, posted abandoned while its order waits for her money ---------------------------
# The Cart Abandonment Recovery plugin clears a cart only once its order is processing or completed, so after a bank
# transfer (on-hold) or a declined card (failed) it posts the cart she checked out with as abandoned, 15 minutes on.

CART_PRODUCTS = ("Neem face wash", "Rose toner")  # what ``p.woo_cart`` names ("Neem face wash & Rose toner")


def from_cart(order: dict) -> dict:
    """``order`` as WooCommerce makes it from the plugin's cart: the same products."""
    return {**order, "line_items": [{**li, "name": name} for li, name in zip(order["line_items"], CART_PRODUCTS)]}


def test_a_bank_transfer_checkout_gets_no_reminder_of_the_cart_it_came_from(sqlite_url, scenario, world):
    """Asha checks out with a bank transfer (on-hold) and the plugin posts her cart abandoned 15 minutes later. Before,
    that cart started a ladder: "you left something in your cart" three times while she was arranging the transfer."""
    sc = scenario(sqlite_url, "woocommerce", journeys=LADDER)
    sc.woo("order.created", from_cart(bank_transfer(WOOCOMMERCE.order(1, ASHA, sc.now, cod=False), sc.now)))
    sc.later(minutes=15)
    sc.cart(p.woo_cart(WOOCOMMERCE.SESSIONS["A"], ASHA))
    sc.later(days=2, step=timedelta(minutes=30))
    assert sc.templates_to(ASHA) == []
    c = conversion(sc)
    assert (c["checkouts_abandoned"], c["checkouts_reminded"], c["lost"]) == (0, 0, 0)


@pytest.mark.parametrize("later, products", [(timedelta(hours=1), "Aloe vera gel"), (timedelta(days=2), "Neem face wash & Rose toner")],
                         ids=["another-product", "days-later"])
def test_a_new_cart_beside_a_bank_transfer_still_gets_its_reminders(sqlite_url, scenario, world, later, products):
    """The cart she checked out with gets none; a cart of other products, or one posted days after her order, is another
    purchase (the plugin's post names no order, so her number, the time and the products are all that link them)."""
    sc = scenario(sqlite_url, "woocommerce", journeys=LADDER)
    sc.woo("order.created", from_cart(bank_transfer(WOOCOMMERCE.order(1, ASHA, sc.now, cod=False), sc.now)))
    sc.later(minutes=15)
    sc.cart(p.woo_cart(WOOCOMMERCE.SESSIONS["A"], ASHA))
    sc.later(seconds=(later - timedelta(minutes=15)).total_seconds(), step=timedelta(minutes=30))
    assert sc.templates_to(ASHA) == []
    new = {**p.woo_cart(WOOCOMMERCE.SESSIONS["R"], ASHA), "product_names": products}
    sc.cart(new)
    sc.later(hours=1, step=timedelta(minutes=10))
    assert sc.templates_to(ASHA) == ["cart_1_v1"]
    assert sc.last_to(ASHA, "cart_1_v1").params[-1] == html.unescape(new["checkout_url"])  # the new cart's link


def test_a_declined_card_left_to_the_pay_reminder_gets_no_cart_ladder_beside_it(sqlite_url, scenario, world):
    """Unpaid orders are all the pay reminder's (``unpaid_orders`` off): her card is declined and she gets the pay
    link. The plugin then posts the cart she checked out with: before, it started the cart ladder too, three more
    reminders of the one checkout on top of the pay link."""
    sc = store(sqlite_url, scenario, {"checkout_recovery": {**LADDER["checkout_recovery"], "unpaid_orders": False}, "payment_recovery": {}})
    sc.woo("order.created", from_cart(unpaid(1, sc.now)))
    sc.later(minutes=15)
    sc.cart(p.woo_cart(WOOCOMMERCE.SESSIONS["A"], ASHA))
    sc.later(days=3, step=timedelta(minutes=30))
    assert sc.templates_to(ASHA) == ["pay_v1"]


def test_a_switch_to_bank_transfer_before_the_plugin_posts_the_cart_ends_the_reminders(sqlite_url, scenario, world):
    """Her card is declined (the ladder takes the order: she opted in); ten minutes later she pays by bank transfer on
    the order's pay page (on-hold) and the order's run waits for the money. The plugin posts the cart five minutes on:
    before, it started a new ladder for the checkout she had just completed."""
    sc = scenario(sqlite_url, "woocommerce", journeys=LADDER)
    sc.marketing_preference(ASHA, "resume")
    sc.later(minutes=5)
    order = from_cart(unpaid(1, sc.now))
    sc.woo("order.created", order)
    sc.later(minutes=10)
    sc.woo("order.updated", bank_transfer(order, sc.now))
    sc.later(minutes=5)
    sc.cart(p.woo_cart(WOOCOMMERCE.SESSIONS["A"], ASHA))
    sc.later(days=2, step=timedelta(minutes=30))
    assert sc.templates_to(ASHA) == []


def test_a_second_unpaid_order_does_not_free_the_first_ones_cart_for_a_ladder(sqlite_url, scenario, world):
    """Unpaid orders are left to nobody (``unpaid_orders`` off) and she has opted in: her card is declined on #7301, and
    ten minutes later she leaves #7302 (another product) at the card page too. The plugin then posts #7301's cart: before,
    #7302 had ended #7301's silent run, and the cart she had checked out with got "you left something in your cart"."""
    sc = scenario(sqlite_url, "woocommerce", journeys={"checkout_recovery": {**LADDER["checkout_recovery"], "unpaid_orders": False}})
    sc.marketing_preference(ASHA, "resume")
    sc.later(minutes=5)
    sc.woo("order.created", from_cart(unpaid(1, sc.now)))
    sc.later(minutes=10)
    sc.woo("order.created", unpaid(2, sc.now, status="pending"))
    sc.later(minutes=5)
    sc.cart(p.woo_cart(WOOCOMMERCE.SESSIONS["A"], ASHA))
    sc.later(days=2, step=timedelta(minutes=30))
    assert sc.templates_to(ASHA) == []
