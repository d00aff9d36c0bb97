"""WhatsApp Cloud API webhooks over HTTP into a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import copy
import json

from sqlalchemy import select

from connector.storage import models as m
from tests.conftest import FIXTURES, PHONE_ID_A, PHONE_ID_B, PHONE_ID_WOO, SECRETS, make_settings
from tests.helpers import load_json, meta_signature, running_app

ADMIN = {"Authorization": f"Bearer {SECRETS['admin']}"}
WA = FIXTURES / "whatsapp"


def post(client, envelope, *, secret=SECRETS["wa_app"], raw: bytes | None = None):
    body = raw if raw is not None else json.dumps(envelope).encode()
    return client.post("/webhooks/whatsapp", content=body, headers={"Content-Type": "application/json", "X-Hub-Signature-256": meta_signature(body, secret)})


def rows(runtime) -> list:
    with runtime.db.engine.connect() as conn:
        return list(conn.execute(select(m.InboxEvent).order_by(m.InboxEvent.id)))


def routed(name: str, phone_number_id: str) -> dict:
    envelope = load_json(WA / f"{name}.pywa.json")
    for entry in envelope["entry"]:
        for change in entry["changes"]:
            change["value"]["metadata"]["phone_number_id"] = phone_number_id
    return envelope


def test_subscription_challenge(db_url):
    with running_app(make_settings(db_url)) as (client, _):
        ok = client.get("/webhooks/whatsapp", params={"hub.mode": "subscribe", "hub.verify_token": SECRETS["verify"], "hub.challenge": "1158201444"})
        wrong = client.get("/webhooks/whatsapp", params={"hub.mode": "subscribe", "hub.verify_token": "guess", "hub.challenge": "1"})
        missing = client.get("/webhooks/whatsapp")
    assert ok.status_code == 200 and ok.text == "1158201444"
    assert wrong.status_code == 403 and missing.status_code == 403


def test_pywa_signed_vector_verifies_byte_exact(db_url):
    vector = load_json(WA / "signed_webhook_vector.pywa.json")
    raw = vector["raw_body"].encode()
    settings = make_settings(db_url, whatsapp={"app_secret": vector["app_secret"]})
    with running_app(settings) as (client, runtime):
        resp = client.post("/webhooks/whatsapp", content=raw, headers={"X-Hub-Signature-256": vector["x_hub_signature_256"]})
        altered = client.post("/webhooks/whatsapp", content=raw.replace(b"Hey", b"Hi!"), headers={"X-Hub-Signature-256": vector["x_hub_signature_256"]})
        runtime.processor.drain()
        stored = rows(runtime)
        view = client.get("/api/stores/shop-b/contacts/+972544401243", headers=ADMIN).json()
    assert resp.status_code == 200 and altered.status_code == 401
    assert [(r.topic, r.status, r.store_id) for r in stored] == [("message", "done", runtime.store_ids["shop-b"])]
    assert view["contact"]["wa_id"] == "972544401243"
    messages = [t for t in view["timeline"] if t["kind"] == "message"]
    assert [(t["direction"], t["text"]) for t in messages] == [("in", "Hey there! I am using PyWa.")]
    assert view["contact"]["last_inbound_at"] == "2024-10-29T19:58:23+00:00"  # the message's own timestamp


def test_missing_or_wrong_signature_is_401(db_url):
    envelope = routed("inbound_text", PHONE_ID_A)
    body = json.dumps(envelope).encode()
    with running_app(make_settings(db_url)) as (client, runtime):
        missing = client.post("/webhooks/whatsapp", content=body)
        wrong = post(client, envelope, secret="another-app")
        stored = rows(runtime)
    assert missing.status_code == 401 and wrong.status_code == 401
    assert stored == []


def test_every_inbound_fixture_is_stored_and_normalised(db_url):
    names = [
        "inbound_text", "inbound_reply_with_context", "inbound_interactive_button_reply",
        "inbound_template_quick_reply_button", "status_sent", "status_delivered", "status_read", "status_failed",
        "status_sent_with_biz_opaque_callback_data", "user_preferences_marketing_resume", "user_preferences_marketing_signup",
    ]
    with running_app(make_settings(db_url)) as (client, runtime):
        for n, name in enumerate(names):
            envelope = routed(name, PHONE_ID_A)
            value = envelope["entry"][0]["changes"][0]["value"]
            for item in value.get("messages", []) + value.get("statuses", []):
                item["id"] = f"{item['id']}.{n}"  # the pywa samples reuse one wamid; here each is its own message
            assert post(client, envelope).status_code == 200, name
        runtime.processor.drain()
        stored = rows(runtime)
    types = [r.event[0]["type"] for r in stored if r.event]
    assert all(r.status == "done" for r in stored), [(r.topic, r.status, r.last_error) for r in stored]
    assert types.count("whatsapp.button_replied") == 2
    assert types.count("whatsapp.status_changed") == 5
    assert types.count("whatsapp.message_received") == 2
    assert types.count("whatsapp.preference_changed") == 2
    quick = next(r for r in stored if r.event and r.event[0]["type"] == "whatsapp.button_replied" and r.event[0]["context_message_id"])
    assert quick.subject == f"wamid:{quick.event[0]['context_message_id']}"
    tracked = [r.event[0] for r in stored if r.event and r.event[0].get("callback_data")]
    assert tracked and tracked[0]["callback_data"]
    failed = [r.event[0] for r in stored if r.event and r.event[0].get("status") == "failed"]
    assert failed[0]["error_code"] == 130472


def test_a_batch_is_split_per_item_and_routed_per_phone_number(db_url):
    text = load_json(WA / "inbound_text.pywa.json")
    status = load_json(WA / "status_read.pywa.json")
    change_a = copy.deepcopy(text["entry"][0]["changes"][0])
    change_a["value"]["metadata"]["phone_number_id"] = PHONE_ID_A
    second = copy.deepcopy(change_a["value"]["messages"][0])
    second["id"] = "wamid.second"
    change_a["value"]["messages"].append(second)
    change_b = copy.deepcopy(status["entry"][0]["changes"][0])
    change_b["value"]["metadata"]["phone_number_id"] = PHONE_ID_WOO
    stranger = copy.deepcopy(change_b)
    stranger["value"]["metadata"]["phone_number_id"] = "999"  # a number this deployment does not serve
    envelope = {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [change_a, change_b, stranger]}]}
    with running_app(make_settings(db_url)) as (client, runtime):
        first = post(client, envelope)
        again = post(client, envelope)  # Meta retries the whole batch
        stored = rows(runtime)
    assert first.status_code == 200 and again.status_code == 200
    assert sorted((r.topic, r.store_id) for r in stored) == sorted(
        [("message", runtime.store_ids["shop-a"])] * 2 + [("status", runtime.store_ids["woo"])]
    )


def test_statuses_only_move_forward_and_failures_are_kept(db_url):
    def status(name: str, value: str) -> dict:
        env = routed(name, PHONE_ID_A)
        env["entry"][0]["changes"][0]["value"]["statuses"][0]["id"] = value
        return env

    with running_app(make_settings(db_url)) as (client, runtime):
        for name in ("status_read", "status_delivered", "status_sent"):  # arrive in reverse order
            post(client, status(name, "wamid.A"))
        for name in ("status_failed", "status_delivered"):  # a late delivered after a failure
            post(client, status(name, "wamid.B"))
        runtime.processor.drain()
        with runtime.db.engine.connect() as conn:
            msgs = {r.wamid: (r.status, r.error_code) for r in conn.execute(select(m.Message))}
    assert msgs == {"wamid.A": ("read", None), "wamid.B": ("failed", 130472)}


def test_marketing_preference_stop_and_resume_are_recorded(db_url):
    env = routed("user_preferences_marketing_resume", PHONE_ID_A)
    pref = env["entry"][0]["changes"][0]["value"]["user_preferences"][0]
    pref.update(wa_id="919876543210", value="stop", timestamp=1763000000)
    resume = copy.deepcopy(env)
    resume["entry"][0]["changes"][0]["value"]["user_preferences"][0].update(value="resume", timestamp=1763000100)
    with running_app(make_settings(db_url)) as (client, runtime):
        post(client, env)
        runtime.processor.drain()
        after_stop = client.get("/api/stores/shop-a/contacts/+919876543210", headers=ADMIN).json()["consent"]["marketing"]
        post(client, resume)
        runtime.processor.drain()
        after_resume = client.get("/api/stores/shop-a/contacts/+919876543210", headers=ADMIN).json()["consent"]["marketing"]
    assert (after_stop["state"], after_stop["source"]) == ("revoked", "whatsapp_preference_stop")
    assert (after_resume["state"], after_resume["source"]) == ("granted", "whatsapp_preference_resume")


def test_malformed_envelopes(db_url):
    with running_app(make_settings(db_url)) as (client, runtime):
        not_json = post(client, None, raw=b"{oops")
        wrong_shape = post(client, {"object": "page"})
        bad_change = post(client, {"entry": [{"changes": [{"field": "messages", "value": "x"}]}]})
        stored = rows(runtime)
    assert [r.status_code for r in (not_json, wrong_shape, bad_change)] == [400, 400, 400]
    assert stored == []


def test_a_malformed_part_is_kept_as_ignored_and_the_good_parts_beside_it_are_stored(db_url):
    """Meta retries a refused POST whole for days: a 400 for one bad element would lose every
    reply beside it, on every retry. The bad part is stored as ignored with its reason."""
    good = routed("inbound_text", PHONE_ID_A)
    value = good["entry"][0]["changes"][0]["value"]
    value["messages"].append("not an object")  # one element of the batch is broken
    stray = {"field": "messages", "value": "x"}  # and so is a whole change of another entry
    good["entry"].append({"id": "1", "changes": [stray]})
    with running_app(make_settings(db_url)) as (client, runtime):
        first = post(client, good)
        again = post(client, good)  # the retry of the same POST stores nothing twice
        stored = rows(runtime)
    assert first.status_code == 200 and again.status_code == 200
    assert sorted((r.topic, r.status) for r in stored) == [("malformed", "ignored"), ("message", "pending")]
    ignored = next(r for r in stored if r.status == "ignored")
    assert ignored.last_error == "malformed: messages element is not an object"


def test_a_whatsapp_batch_over_one_mebibyte_is_accepted(db_url):
    """Meta batches up to ~3 MB in one POST; the old 1 MiB cap refused such a batch on every retry."""
    envelope = routed("inbound_text", PHONE_ID_A)
    value = envelope["entry"][0]["changes"][0]["value"]
    first = value["messages"][0]
    value["messages"] = [{**first, "id": f"wamid.big{i}", "text": {"body": "x" * 900}} for i in range(2_000)]
    body = json.dumps(envelope).encode()
    assert len(body) > 2**20
    # an operator's old setting: WhatsApp's route still takes Meta's largest POST
    settings = make_settings(db_url, server={"max_body_bytes": 1_048_576})
    with running_app(settings) as (client, runtime):
        answer = post(client, None, raw=body)
        stored = rows(runtime)
    assert answer.status_code == 200
    assert len(stored) == 2_000


def test_an_inbound_text_with_a_lone_surrogate_is_stored_with_the_replacement_character(db_url):
    """A customer's message whose text holds a lone UTF-16 surrogate (the JSON escape ``\\udc00``,
    a low one with no high before it) beside an emoji written as a surrogate pair. The body used
    to be refused with 400 (orjson refuses it), Meta retried and dropped it: her words were lost.
    Now it is stored and processed (her profile name, with a lone high one, too), and the message
    reads "hi 😀 ok \ufffd"."""
    envelope = routed("inbound_text", PHONE_ID_A)
    value = envelope["entry"][0]["changes"][0]["value"]
    value["messages"][0]["text"]["body"] = "hi \U0001F600 ok \udc00"
    value["contacts"][0]["profile"]["name"] = "Te\ud800st"
    body = json.dumps(envelope).encode()
    assert b"hi \\ud83d\\ude00 ok \\udc00" in body and b"Te\\ud800st" in body  # JSON escapes, as Meta writes them
    with running_app(make_settings(db_url)) as (client, runtime):
        response = post(client, envelope, raw=body)
        runtime.processor.drain()
        stored = rows(runtime)
        view = client.get("/api/stores/shop-a/contacts/+972987654321", headers=ADMIN).json()
    assert response.status_code == 200
    assert [(r.topic, r.status) for r in stored] == [("message", "done")]
    assert [(t["direction"], t["text"]) for t in view["timeline"] if t["kind"] == "message"] == [("in", "hi \U0001F600 ok \ufffd")]
