"""The outbox review of 2026-12-07: what a store owner or customer saw go wrong in sending.

1. Meta answers a send with an error about the business number itself (133010 not registered,
   131005 access denied, 131037 display name not approved, 131045 registration certificate): every
   queued message failed for good, as if each were at fault; now they wait and the number pauses,
   as for an expired token;
2. 131047 (the 24 h window closed) answered to the send itself, not in a failed status webhook:
   the step's template fallback was never sent, the customer got nothing;
3. a template parameter with a line break, a tab or more than four spaces in a row (a name typed
   on two lines, a product title pasted with a tab): Meta refuses the whole message, so the
   parameter goes out on one line.

Real dispatcher and client, a virtual clock, and a fake Graph API on 127.0.0.1.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from connector.messages import TextMessage
from connector.outbox.queue import queue_free_form
from connector.sandbox.whatsapp import ScriptedResponse
from connector.storage import models as m
from connector.storage.inbox import sync_stores
from tests.test_outbox import CONTEXT, NOON_IST, PHONE, Clock, dispatch, outbox_rows, queue, sandbox, seed_contact, settings_for  # noqa: F401

RAVI, MEERA = "+919812345678", "+919900112233"


def graph_error(status: int, code: int, message: str) -> ScriptedResponse:
    return ScriptedResponse(status, {"error": {"message": f"(#{code}) {message}", "type": "OAuthException", "code": code,
                                               "error_data": {"messaging_product": "whatsapp", "details": message},
                                               "fbtrace_id": f"T{code}"}})


# ---- 1. an error about the business number fails no message ------------------------------------

@pytest.mark.parametrize("status, code, message", [
    (400, 133010, "Account not registered"),
    (403, 131005, "Access denied"),
    (400, 131037, "WhatsApp provided number needs display name approval before message can be sent."),
    (500, 131045, "Incorrect certificate"),
])
def test_a_refusal_about_the_business_number_fails_no_message_and_they_go_once_it_is_fixed(db, db_url, sandbox, status, code, message):
    fake, url = sandbox
    settings = settings_for(db_url, url)
    ids = sync_stores(db, [(s.key, s.platform) for s in settings.stores])
    sid = ids["shop-a"]
    queued = [queue(db, settings, sid, seed_contact(db, sid, phone=p), subject=f"order:{n}") for n, p in enumerate((PHONE, RAVI, MEERA))]
    fake.script.extend([graph_error(status, code, message)] * 50)  # the number was deregistered, its permission removed...
    clock = Clock(NOON_IST)

    dispatch(db, settings, ids, clock, url)
    refused = len(fake.calls)
    assert fake.accepted() == [] and 1 <= refused <= 3
    rows = outbox_rows(db)
    assert [(r.status, r.attempts) for r in rows] == [("pending", 0)] * 3  # waiting, none failed, no try spent

    fake.script.clear()  # the owner registers the number again in WhatsApp Manager
    clock.now = NOON_IST + timedelta(minutes=2)  # past the pause: one probes, then the rest go
    for _ in range(3):
        dispatch(db, settings, ids, clock, url)
    assert sorted(c.callback_data for c in fake.accepted()) == sorted(f"outbox:{q.outbox_id}" for q in queued)  # each once
    assert [r.status for r in outbox_rows(db)] == ["sent"] * 3


# ---- 2. 131047 answered to the send -----------------------------------------------------------

def test_the_window_closing_answered_to_the_send_still_sends_the_steps_template(db, db_url, sandbox):
    """Meta says 131047 in the answer to the send (its error page: errors come synchronously, by webhook,
    or both): the same step goes out as its template, as it does after a failed status webhook; once."""
    fake, url = sandbox
    settings = settings_for(db_url, url)
    ids = sync_stores(db, [(s.key, s.platform) for s in settings.stores])
    sid = ids["shop-a"]
    cid = seed_contact(db, sid)
    with db.engine.begin() as conn:
        conn.execute(m.Contact.__table__.update().where(m.Contact.id == cid).values(last_inbound_at=NOON_IST - timedelta(hours=23)))
        q = queue_free_form(conn, store=settings.stores[0], store_id=sid, contact_id=cid, journey="cod_confirmation", step="ask",
                            subject="order:1042", message=TextMessage(to=PHONE, body="Confirm order #1042?"), category="utility",
                            now=NOON_IST, fallback_context=CONTEXT)
    fake.script.append(graph_error(400, 131047, "Re-engagement message"))
    clock = Clock(NOON_IST)

    dispatch(db, settings, ids, clock, url)
    dispatch(db, settings, ids, clock, url)
    rows = outbox_rows(db)
    assert [(r.step, r.status) for r in rows] == [("ask", "failed"), ("ask", "sent")]
    assert rows[0].id == q.outbox_id and rows[1].idempotency_key == f"{rows[0].idempotency_key}:template"
    assert [(c.type, c.template, c.status) for c in fake.calls] == [("text", None, 400), ("template", "cod_confirm_v1", 200)]


# ---- 3. a parameter Meta would refuse for its white space ---------------------------------------

def test_a_parameter_with_a_line_break_or_a_tab_goes_out_on_one_line(db, db_url, sandbox):
    """Meta refuses a template whose parameter text holds a new line, a tab or more than four spaces in a row
    ("Param text cannot have new-line/tab characters or more than 4 consecutive spaces"): the whole message
    fails. The COD question for a name typed on two lines and a product pasted with a tab goes out all the same."""
    fake, url = sandbox
    settings = settings_for(db_url, url)
    ids = sync_stores(db, [(s.key, s.platform) for s in settings.stores])
    sid = ids["shop-a"]
    cid = seed_contact(db, sid)
    context = {**CONTEXT, "customer.first_name": "Asha\nRao", "reorder.product": "Neem\tface wash      (100 ml)"}
    queue(db, settings, sid, cid, context=context)
    queue(db, settings, sid, cid, step="reorder.remind", subject="reorder:1", context=context,
          now=NOON_IST + timedelta(minutes=1))

    dispatch(db, settings, ids, Clock(NOON_IST + timedelta(minutes=1)), url)
    dispatch(db, settings, ids, Clock(NOON_IST + timedelta(minutes=2)), url)
    params = [c.params for c in fake.accepted()]
    assert params[0][0] == "Asha Rao"
    assert params[1][0] == "Neem face wash (100 ml)"
    for text in (p for ps in params for p in ps):
        assert "\n" not in text and "\t" not in text and "     " not in text
