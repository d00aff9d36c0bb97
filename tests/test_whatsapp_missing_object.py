"""Graph's code 100 / subcode 33 answered to a send: the sending number's problem, or one message's.

Graph answers ``{"code": 100, "error_subcode": 33, "type": "GraphMethodException", "message":
"Unsupported post request. Object with ID '<id>' does not exist, cannot be loaded due to missing
permissions, or does not support this operation..."}`` when an object a request names cannot be loaded.
A send is ``POST /<phone number id>/messages``: when the object is the store's number (its id mistyped
in the config, the number deleted, the token no longer given access to it), no message can go. Before,
code 100 was unknown, so each message failed for good, one after the other, until the queue was empty.
Now the number pauses and the messages wait, as for the other account-level codes; a 100/33 naming
another object (one this message refers to) still fails that message alone.

Real dispatcher and client, a virtual clock, the sandbox Graph API on 127.0.0.1.
"""

from __future__ import annotations

from datetime import timedelta

from connector.sandbox.whatsapp import ScriptedResponse
from connector.storage.inbox import sync_stores
from tests.conftest import PHONE_ID_A
from tests.test_outbox import NOON_IST, PHONE, Clock, dispatch, outbox_rows, queue, sandbox, seed_contact, settings_for  # noqa: F401
from tests.test_outbox_review_2026_12_07 import MEERA, RAVI


def missing_object(object_id: str) -> ScriptedResponse:
    return ScriptedResponse(400, {"error": {
        "message": f"Unsupported post request. Object with ID '{object_id}' does not exist, cannot be loaded due to missing "
                   "permissions, or does not support this operation. Please read the Graph API documentation at "
                   "https://developers.facebook.com/docs/graph-api",
        "type": "GraphMethodException", "code": 100, "error_subcode": 33, "fbtrace_id": "AXfu0NKfYelIG2VlOmIfK3C"}})


def _three_queued(db, settings, sid) -> list:
    return [queue(db, settings, sid, seed_contact(db, sid, phone=p), subject=f"order:{n}") for n, p in enumerate((PHONE, RAVI, MEERA))]


def test_a_sending_number_graph_cannot_load_fails_no_message_and_they_go_once_it_is_fixed(db, db_url, sandbox):
    fake, url = sandbox
    settings = settings_for(db_url, url)
    ids = sync_stores(db, [(s.key, s.platform) for s in settings.stores])
    queued = _three_queued(db, settings, ids["shop-a"])
    fake.script.extend([missing_object(PHONE_ID_A)] * 50)
    clock = Clock(NOON_IST)

    dispatch(db, settings, ids, clock, url)
    assert fake.accepted() == [] and 1 <= len(fake.calls) <= 3
    assert [(r.status, r.attempts) for r in outbox_rows(db)] == [("pending", 0)] * 3  # waiting, none failed, no try spent

    fake.script.clear()  # the owner puts the right phone number id back (or gives the token access again)
    clock.now = NOON_IST + timedelta(minutes=2)
    for _ in range(3):
        dispatch(db, settings, ids, clock, url)
    assert sorted(c.callback_data for c in fake.accepted()) == sorted(f"outbox:{q.outbox_id}" for q in queued)
    assert [r.status for r in outbox_rows(db)] == ["sent"] * 3


def test_an_object_of_one_message_graph_cannot_load_fails_that_message_alone(db, db_url, sandbox):
    fake, url = sandbox
    settings = settings_for(db_url, url)
    ids = sync_stores(db, [(s.key, s.platform) for s in settings.stores])
    queued = _three_queued(db, settings, ids["shop-a"])
    fake.script.append(missing_object("998877665544332"))  # say, a media id the message refers to
    clock = Clock(NOON_IST)

    dispatch(db, settings, ids, clock, url)
    rows = outbox_rows(db)
    assert sorted(r.status for r in rows) == ["failed", "sent", "sent"]
    [failed] = [r for r in rows if r.status == "failed"]
    assert "100/33" in failed.last_error and "an object this message names" in failed.last_error
    assert sorted(c.callback_data for c in fake.accepted()) == sorted(f"outbox:{q.outbox_id}" for q in queued if q.outbox_id != failed.id)
