"""Review of the 2026-12-07 merges to sending and to what comes back from WhatsApp (reviewer rev2).

Each test here shows a fault a store owner or customer would notice, still in main: marked
``xfail(strict=True)`` until it is fixed (then the mark goes). Real dispatchers and clients, a
virtual clock, the sandbox Graph API on 127.0.0.1 as Meta.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from connector.storage.inbox import sync_stores
from tests.test_outbox import NOON_IST, PHONE, Clock, dispatch, outbox_rows, queue, sandbox, seed_contact, settings_for  # noqa: F401
from tests.test_outbox_review_2026_12_07 import RAVI, graph_error


# ---- the rate-limit pause: a customer's messages keep their order ------------------------------

def test_a_message_waiting_out_a_rate_limit_is_not_overtaken_by_her_next_one(db, db_url, sandbox):
    """Meta answers one send with its WABA's call rate limit (80007) and takes calls again 10 s later.
    Ravi's message is refused; Asha's, next in the batch, waits untried until the pause's end (a minute).
    Meanwhile her second order's COD question is queued and the worker restarts (a deploy), or a second
    worker polls: it sends her second question at once, her first only a minute later. She is asked to
    confirm order #1043 before #1042 (before the merge each refused message kept its place in line:
    ``_waits_its_turn`` counts a row with an error kept; a 'deferred' one keeps none)."""
    fake, url = sandbox
    settings = settings_for(db_url, url, send_concurrency=1)
    ids = sync_stores(db, [(s.key, s.platform) for s in settings.stores])
    sid = ids["shop-a"]
    ravi = queue(db, settings, sid, seed_contact(db, sid, phone=RAVI), subject="order:1041")
    asha = seed_contact(db, sid, phone=PHONE)
    first = queue(db, settings, sid, asha, subject="order:1042")
    fake.script.append(graph_error(400, 80007, "Rate limit issues"))  # one refusal: Meta's window closes soon after
    clock = Clock(NOON_IST)

    dispatch(db, settings, ids, clock, url)
    assert [c.callback_data for c in fake.calls] == [f"outbox:{ravi.outbox_id}"]  # Ravi's refused, Asha's waits untried

    clock.now = NOON_IST + timedelta(seconds=10)
    second = queue(db, settings, sid, asha, subject="order:1043", now=clock.now)
    dispatch(db, settings, ids, clock, url)  # a restarted worker (or a second one) polls
    clock.now = NOON_IST + timedelta(minutes=2)
    dispatch(db, settings, ids, clock, url)

    hers = [c.callback_data for c in fake.accepted() if c.callback_data != f"outbox:{ravi.outbox_id}"]
    assert hers == [f"outbox:{first.outbox_id}", f"outbox:{second.outbox_id}"]  # asked about #1042 first, as queued


# ---- one-line template parameters: a link button's suffix ----------------------------------------

def test_a_discount_code_with_a_trailing_new_line_goes_on_one_line_in_the_link_button_too():
    """The owner's discount code written as a YAML block (``discount_code: |`` keeps a final new line) is shown in the
    body and appended to the cart link by a URL button. The body's parameter goes out on one line (Meta refuses a
    parameter with a new line: "Param text cannot have new-line/tab characters", the whole reminder fails); the
    button's suffix, a text parameter too, goes out with the new line in it."""
    from adapters.whatsapp.client import build_payload
    from connector.config import TemplateSettings
    from connector.templates import render

    tpl = TemplateSettings.model_validate({
        "step": "checkout_recovery.first", "name": "cart_code_v1", "category": "marketing", "language": "en",
        "body_text": "Your cart waits: use {{1}} for 10% off", "body": ["discount.code"],
        "buttons": [{"type": "url", "text": "Shop now", "url": "https://shop-a.example/discount/{{1}}", "suffix": "discount.code"}],
    })
    message = render(tpl, {"discount.code": "COMEBACK10\n"}, to=PHONE, callback_data=None)
    components = build_payload(message)["template"]["components"]
    [body] = [c for c in components if c["type"] == "body"]
    [button] = [c for c in components if c["type"] == "button"]
    assert body["parameters"][0]["text"] == "COMEBACK10"
    assert button["parameters"][0]["text"] == "COMEBACK10"  # the link the customer taps, and what Meta is asked to take
