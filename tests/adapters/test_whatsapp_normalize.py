"""WhatsApp adapter: every inbound sample (pywa's real Cloud API payloads) split into
items the way the web layer does and normalised, plus username-era and malformed items."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from adapters.whatsapp.normalize import normalize
from connector.config import ShopifyStore, WooCommerceStore
from connector.errors import NormalizationError
from connector.events import (
    ButtonReplied,
    MarketingPreferenceChanged,
    MessageReceived,
    MessageStatusChanged,
    dump_events,
    load_events,
)

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "public" / "whatsapp"
OUTBOUND = {
    "template_object_request_fragment.meta-nodejs-sdk.json",
    "interactive_reply_buttons_request_fragment.meta-nodejs-sdk.json",
}
SIGNED = "signed_webhook_vector.pywa.json"
STORE = ShopifyStore.model_validate(
    {"key": "demo", "platform": "shopify", "webhook_secret": "s", "shop_domain": "demo.myshopify.com"}
)
PHONE_NUMBER_ID = "1122334455667"
CUSTOMER_WA_ID = "972987654321"

_LISTS = (("messages", "message"), ("statuses", "status"), ("user_preferences", "user_preference"), ("errors", "error"))


def split_envelope(envelope: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Meta's batch envelope -> ``(topic, item body)`` pairs, one per inbox row."""
    for entry in envelope["entry"]:
        for change in entry["changes"]:
            value = change["value"]
            base = {"field": change["field"], "metadata": value.get("metadata"), "contacts": value.get("contacts") or []}
            for list_key, topic in _LISTS:
                for item in value.get(list_key) or []:
                    yield topic, {**base, topic: item}


def load(name: str) -> dict[str, Any]:
    data = json.loads((FIXTURES / name).read_text())
    return json.loads(data["raw_body"]) if name == SIGNED else data


def item(name: str) -> tuple[str, dict[str, Any]]:
    (pair,) = split_envelope(load(name))
    return pair


def event_of(name: str) -> Any:
    topic, body = item(name)
    (event,) = normalize(topic, body, STORE)
    return event


INBOUND = {
    "inbound_text.pywa.json": MessageReceived,
    "inbound_reply_with_context.pywa.json": MessageReceived,
    "inbound_template_quick_reply_button.pywa.json": ButtonReplied,
    "inbound_interactive_button_reply.pywa.json": ButtonReplied,
    "status_sent.pywa.json": MessageStatusChanged,
    "status_delivered.pywa.json": MessageStatusChanged,
    "status_read.pywa.json": MessageStatusChanged,
    "status_failed.pywa.json": MessageStatusChanged,
    "status_sent_with_biz_opaque_callback_data.pywa.json": MessageStatusChanged,
    "user_preferences_marketing_resume.pywa.json": MarketingPreferenceChanged,
    "user_preferences_marketing_signup.pywa.json": MarketingPreferenceChanged,
    SIGNED: MessageReceived,
}


def test_every_fixture_is_covered() -> None:
    assert {p.name for p in FIXTURES.glob("*.json")} == set(INBOUND) | OUTBOUND


@pytest.mark.parametrize(("name", "event_type"), sorted(INBOUND.items()))
def test_fixture_normalizes_and_round_trips(name: str, event_type: type) -> None:
    topic, body = item(name)
    events = normalize(topic, body, STORE)
    assert [type(e) for e in events] == [event_type]
    assert load_events(json.loads(json.dumps(dump_events(events)))) == events


def test_split_envelope_shape() -> None:
    topic, body = item("status_failed.pywa.json")
    assert topic == "status"
    assert set(body) == {"field", "metadata", "contacts", "status"}
    assert body["field"] == "messages"
    assert body["metadata"]["phone_number_id"] == PHONE_NUMBER_ID
    envelope = load("inbound_text.pywa.json")
    value = envelope["entry"][0]["changes"][0]["value"]
    value["messages"].append({**value["messages"][0], "id": "wamid.second"})
    value["errors"] = [{"code": 131000, "title": "Something went wrong"}]
    assert [t for t, _ in split_envelope(envelope)] == ["message", "message", "error"]


def test_inbound_text() -> None:
    event = event_of("inbound_text.pywa.json")
    assert event.phone_number_id == PHONE_NUMBER_ID
    assert event.message_id == "wamid.xyzxyz"
    assert event.message_type == "text"
    assert event.text == "Body Text"
    assert event.wa_id == CUSTOMER_WA_ID
    assert event.phone is not None and event.phone.raw == "+972987654321"
    assert event.user_id == "US.13491208655302741918"
    assert event.profile_name == "Test Name"
    assert event.context_message_id is None
    assert event.occurred_at == datetime.fromtimestamp(1697043223, tz=timezone.utc)


def test_inbound_reply_with_context() -> None:
    event = event_of("inbound_reply_with_context.pywa.json")
    assert (event.text, event.context_message_id) == ("replied text", "wamid.xyzxyz==")


def test_template_quick_reply() -> None:
    event = event_of("inbound_template_quick_reply_button.pywa.json")
    assert isinstance(event, ButtonReplied)
    assert (event.payload, event.title) == ("callback_data", "title")
    assert event.context_message_id == "wamid.xyzxyz=="  # the wamid of our template: the match key (C9)
    assert event.message_id == "wamid.xsidjw"
    assert event.wa_id == CUSTOMER_WA_ID
    assert event.occurred_at == datetime.fromtimestamp(1698269027, tz=timezone.utc)


def test_interactive_button_reply() -> None:
    event = event_of("inbound_interactive_button_reply.pywa.json")
    assert (event.payload, event.title, event.context_message_id) == ("callback_data", "title", "wamid.xyzxyz")
    assert event.user_id == "US.13491208655302741918"


def test_interactive_list_reply() -> None:
    topic, body = item("inbound_interactive_button_reply.pywa.json")
    body["message"]["interactive"] = {"type": "list_reply", "list_reply": {"id": "row-2", "title": "Tomorrow"}}
    (event,) = normalize(topic, body, STORE)
    assert isinstance(event, ButtonReplied)
    assert (event.payload, event.title) == ("row-2", "Tomorrow")


def test_other_interactive_and_media_messages_are_plain_messages() -> None:
    topic, body = item("inbound_text.pywa.json")
    message = body["message"]
    del message["text"]
    message.update(type="image", image={"id": "media-1", "mime_type": "image/jpeg"})
    (event,) = normalize(topic, body, STORE)
    assert isinstance(event, MessageReceived)
    assert (event.message_type, event.text) == ("image", None)

    message.update(type="interactive", interactive={"type": "nfm_reply", "nfm_reply": {"response_json": "{}"}})
    (event,) = normalize(topic, body, STORE)
    assert (type(event), event.message_type) == (MessageReceived, "interactive")


def test_signed_vector_body() -> None:
    event = event_of(SIGNED)
    assert event.text == "Hey there! I am using PyWa."
    assert event.phone_number_id == "277321005464405"
    assert event.phone is not None and event.phone.e164 == "+972544401243"
    assert event.profile_name == "PyWa Tests"
    assert event.user_id is None  # a 2024 payload: no BSUID yet


def test_username_user_without_from_uses_the_contact() -> None:
    topic, body = item("inbound_text.pywa.json")
    del body["message"]["from"]
    (event,) = normalize(topic, body, STORE)
    assert (event.wa_id, event.user_id) == (CUSTOMER_WA_ID, "US.13491208655302741918")

    body["contacts"] = [{"profile": {"name": "maria"}, "user_id": "BR.1502576394655843"}]
    (event,) = normalize(topic, body, STORE)
    assert (event.wa_id, event.phone, event.user_id, event.profile_name) == (None, None, "BR.1502576394655843", "maria")

    body["contacts"] = []
    (event,) = normalize(topic, body, STORE)
    assert (event.wa_id, event.user_id, event.profile_name) == (None, None, None)


def test_contact_is_matched_by_wa_id() -> None:
    topic, body = item("inbound_text.pywa.json")
    other = {"profile": {"name": "Someone Else"}, "wa_id": "15550001111", "user_id": "US.1"}
    body["contacts"] = [other, *body["contacts"]]
    (event,) = normalize(topic, body, STORE)
    assert (event.profile_name, event.user_id) == ("Test Name", "US.13491208655302741918")


@pytest.mark.parametrize(
    ("name", "status"),
    [
        ("status_sent.pywa.json", "sent"),
        ("status_delivered.pywa.json", "delivered"),
        ("status_read.pywa.json", "read"),
    ],
)
def test_statuses(name: str, status: str) -> None:
    event = event_of(name)
    assert (event.message_id, event.status, event.recipient_id) == ("wamid.xyzxyz", status, CUSTOMER_WA_ID)
    assert (event.error_code, event.error_title, event.callback_data) == (None, None, None)
    assert event.phone_number_id == PHONE_NUMBER_ID


def test_failed_status() -> None:
    event = event_of("status_failed.pywa.json")
    assert event.status == "failed"
    assert event.error_code == 130472
    assert event.error_title == "User's number is part of an experiment"
    assert event.occurred_at == datetime.fromtimestamp(1689380458, tz=timezone.utc)


def test_status_with_callback_data() -> None:
    assert event_of("status_sent_with_biz_opaque_callback_data.pywa.json").callback_data == "some data"


@pytest.mark.parametrize(
    ("name", "value"),
    [("user_preferences_marketing_resume.pywa.json", "resume"), ("user_preferences_marketing_signup.pywa.json", "signup")],
)
def test_user_preferences(name: str, value: str) -> None:
    event = event_of(name)
    assert (event.value, event.category) == (value, "marketing_messages")
    assert event.wa_id == "16505551234"
    assert event.phone is not None and event.phone.e164 == "+16505551234"
    assert event.phone_number_id == "106540352242922"
    assert event.occurred_at == datetime.fromtimestamp(1731705721, tz=timezone.utc)


def test_user_preference_stop_with_string_timestamp() -> None:
    topic, body = item("user_preferences_marketing_resume.pywa.json")
    body["user_preference"].update(value="stop", timestamp="1731705721")
    (event,) = normalize(topic, body, STORE)
    assert event.value == "stop"
    assert event.occurred_at == datetime.fromtimestamp(1731705721, tz=timezone.utc)


def test_errors_and_unknown_topics_give_nothing() -> None:
    body = {"field": "messages", "metadata": {"phone_number_id": "1"}, "contacts": [], "error": {"code": 131000}}
    assert normalize("error", body, STORE) == []
    assert normalize("template_category_update", {"field": "x"}, STORE) == []


def test_any_store_kind_is_accepted() -> None:
    woo = WooCommerceStore.model_validate(
        {"key": "woo", "platform": "woocommerce", "webhook_secret": "s", "site_url": "https://shop.example"}
    )
    topic, body = item("inbound_text.pywa.json")
    assert normalize(topic, body, woo) == normalize(topic, body, STORE)


def mutated(name: str, mutate: Any) -> tuple[str, dict[str, Any]]:
    topic, body = item(name)
    body = copy.deepcopy(body)
    mutate(body)
    return topic, body


@pytest.mark.parametrize(
    ("pair", "field"),
    [
        (mutated("inbound_text.pywa.json", lambda b: b.pop("metadata")), "metadata"),
        (mutated("inbound_text.pywa.json", lambda b: b["metadata"].pop("phone_number_id")), "phone_number_id"),
        (mutated("inbound_text.pywa.json", lambda b: b["message"].pop("id")), "message.id"),
        (mutated("inbound_text.pywa.json", lambda b: b["message"].update(timestamp="yesterday")), "message.timestamp"),
        (mutated("inbound_text.pywa.json", lambda b: b["message"].pop("type")), "message.type"),
        (mutated("inbound_text.pywa.json", lambda b: b.update(message="hello")), "message"),
        (mutated("inbound_text.pywa.json", lambda b: b.update(contacts={"wa_id": "1"})), "contacts"),
        (mutated("inbound_text.pywa.json", lambda b: b["message"].update(text="Body Text")), "message.text"),
        (mutated("inbound_template_quick_reply_button.pywa.json", lambda b: b["message"].pop("button")), "message.button"),
        (
            mutated(
                "inbound_interactive_button_reply.pywa.json",
                lambda b: b["message"]["interactive"]["button_reply"].pop("id"),
            ),
            "button_reply.id",
        ),
        (mutated("status_failed.pywa.json", lambda b: b["status"].update(errors="boom")), "status.errors"),
        (mutated("status_failed.pywa.json", lambda b: b["status"]["errors"][0].update(code="x")), "code"),
        (mutated("status_sent.pywa.json", lambda b: b["status"].pop("status")), "status.status"),
        (mutated("user_preferences_marketing_resume.pywa.json", lambda b: b["user_preference"].pop("value")), "value"),
        (mutated("user_preferences_marketing_resume.pywa.json", lambda b: b.update(user_preference=[])), "user_preference"),
    ],
)
def test_malformed_item_raises_normalization_error(pair: tuple[str, dict[str, Any]], field: str) -> None:
    topic, body = pair
    with pytest.raises(NormalizationError, match=field):
        normalize(topic, body, STORE)


def test_item_that_is_not_an_object() -> None:
    with pytest.raises(NormalizationError, match="body"):
        normalize("message", [], STORE)  # type: ignore[arg-type]


@pytest.mark.parametrize("sender", ["972987654321\r\nX-Injected: 1", "+972 98765", "not-a-number", "9" * 40])
def test_a_sender_that_is_not_a_whatsapp_id_is_refused(sender: str) -> None:
    """Text in ``from`` (a header injection, a formatted number, garbage) never becomes a contact's wa_id."""
    topic, body = item("inbound_text.pywa.json")
    body["message"]["from"] = sender
    body["contacts"] = []
    with pytest.raises(NormalizationError, match="message.from is not a WhatsApp id"):
        normalize(topic, body, STORE)
    topic, body = item("user_preferences_marketing_signup.pywa.json")
    body["user_preference"]["wa_id"] = sender
    with pytest.raises(NormalizationError, match="user_preference.wa_id is not a WhatsApp id"):
        normalize(topic, body, STORE)


def test_a_sender_named_only_by_a_business_scoped_id_keeps_it_as_user_id() -> None:
    """A user who hides their number (C9) can be named by a BSUID in ``from``: no phone, the BSUID kept."""
    topic, body = item("inbound_text.pywa.json")
    body["message"]["from"] = "US.13491208655302741918"
    body["contacts"] = []
    (event,) = normalize(topic, body, STORE)
    assert (event.wa_id, event.phone, event.user_id) == (None, None, "US.13491208655302741918")
