"""One WhatsApp Cloud API webhook item -> store-neutral events.

The web layer splits Meta's batch envelope (``entry[].changes[].value``) into one inbox
row per message / status / preference, so a failure in one never blocks its siblings.
Each row's body is::

    {"field": <change.field>, "metadata": <value.metadata>, "contacts": <value.contacts or []>,
     "<topic>": <the single item>}

with ``topic`` one of ``message``, ``status``, ``user_preference``, ``error``. A change about
the business account itself is kept whole: ``{"field", "metadata": {}, "business_account_id":
<entry.id>, "time": <entry.time>, "value": <change.value>}``, topic ``template_status``
(``message_template_status_update``), ``template_category`` (``template_category_update``),
``template_quality`` (``message_template_quality_update``), ``number_quality``
(``phone_number_quality_update``), ``account_update`` or ``business_capability``
(``business_capability_update``), read as Meta's webhook references of
those names give them; where they show only placeholders, the values are pywa's test data
(``tests/data/updates/account_update.json``, ``template_quality_update.json``).
Field notes: platform-facts.md C2 (statuses), C6 (categories), C7 (opt-out), C8/C9 (ids, usernames).
"""

from __future__ import annotations

import logging
import re
from datetime import datetime
from typing import Any

from adapters._parse import (
    as_object,
    first_str,
    get_id,
    get_int,
    get_obj,
    get_objects,
    get_str,
    get_unix_time,
    get_datetime,
    guard,
    req_id,
    req_obj,
    req_str,
    req_unix_time,
)
from connector.config import ShopifyStore, WooCommerceStore
from connector.contacts import wa_id_to_e164
from connector.errors import NormalizationError
from connector.events import (
    ButtonReplied,
    Event,
    MarketingPreferenceChanged,
    MessageReceived,
    MessageStatusChanged,
    NumberChanged,
    AccountUpdated,
    BusinessCapabilityChanged,
    NumberQualityChanged,
    Restriction,
    TemplateCategoryChanged,
    TemplateQualityChanged,
    TemplateStatusChanged,
    UserIdChanged,
)

Body = dict[str, Any]
log = logging.getLogger("storeloop.whatsapp")


@guard("whatsapp")
def normalize(topic: str, body: dict, store: ShopifyStore | WooCommerceStore) -> list[Event]:
    """Translate one split webhook item into events; ``error`` and unknown topics give ``[]``.

    ``store`` is unused: a ``wa_id`` is always an international number, so parsing it
    with a store's default country could only produce a wrong number.
    """
    data = as_object(body, "body")
    if topic == "message":
        return [_message(data)]
    if topic == "status":
        return [_status(data)]
    if topic == "user_preference":
        return [_preference(data)]
    if topic == "template_status":
        return [_template_status(data)]
    if topic == "template_category":
        return [_template_category(data)]
    if topic == "template_quality":
        return [_template_quality(data)]
    if topic == "number_quality":
        return [_number_quality(data)]
    if topic == "account_update":
        return [_account_update(data)]
    if topic == "business_capability":
        return _business_capability(data)
    return []


def _phone_number_id(b: Body) -> str:
    metadata = req_obj(b, "metadata")
    return req_id(metadata, "phone_number_id", "metadata")


def _message(b: Body) -> Event:
    phone_number_id = _phone_number_id(b)
    m = req_obj(b, "message")
    if get_str(m, "type", "message") == "system":
        system = get_obj(m, "system", "message") or {}
        if get_str(system, "type", "message.system") in _NUMBER_CHANGES:
            return _number_changed(phone_number_id, m, system)
        if get_str(system, "type", "message.system") == _USER_ID_CHANGE:
            return _user_id_changed(phone_number_id, m, system)
    contacts = [c for _, c in get_objects(b, "contacts")]
    # Users with a username may have no phone in the webhook (C9): wa_id can be absent.
    sender = get_id(m, "from", "message") or (get_id(contacts[0], "wa_id", "contacts[0]") if contacts else None)
    wa_id, sender_bsuid = _sender(sender, "message.from")
    contact = _contact_for(wa_id, contacts)
    profile = get_obj(contact, "profile", "contact") or {}
    context = get_obj(m, "context", "message") or {}
    message_type = req_str(m, "type", "message")
    common: dict[str, Any] = {
        "phone_number_id": phone_number_id,
        "message_id": req_str(m, "id", "message"),
        "wa_id": wa_id,
        "phone": wa_id_to_e164(wa_id),
        "user_id": first_str(get_str(contact, "user_id", "contact"), get_str(m, "from_user_id", "message"), sender_bsuid),
        "profile_name": get_str(profile, "name", "contact.profile"),
        "context_message_id": get_str(context, "id", "message.context"),
        "occurred_at": req_unix_time(m, "timestamp", "message"),
    }
    reply = _reply(m, message_type)
    if reply is not None:
        payload, title = reply
        return ButtonReplied(payload=payload, title=title, **common)
    text = None
    if message_type == "text":
        text = get_str(get_obj(m, "text", "message") or {}, "body", "message.text")
    elif message_type in _CAPTIONED:  # a photo, video or document may carry the customer's words
        text = get_str(get_obj(m, message_type, "message") or {}, "caption", f"message.{message_type}")
    elif message_type == "audio" and (get_obj(m, "audio", "message") or {}).get("voice") is True:
        message_type = "voice"  # a voice note (recorded in the chat), not an audio file
    # A reaction (or taking one back), a sticker and WhatsApp's own other notices (``system``: her identity
    # changed; a new number is ``_number_changed``, a new business-scoped id ``_user_id_changed``) keep their type and no text: the journeys do not take them as an answer
    # (checkout_recovery.NOT_A_REPLY) and no hand-off opens; the contact's timeline still shows them.
    return MessageReceived(message_type=message_type, text=text, **common)


_CAPTIONED = ("image", "video", "document")
# Meta's system message types for a customer's new number (``customer_changed_number`` in webhooks of v11.0 and older)
_NUMBER_CHANGES = ("user_changed_number", "customer_changed_number")


def _number_changed(phone_number_id: str, m: Body, system: Body) -> Event:
    """Meta's system message: the sender (``from``) changed her number to ``system.wa_id``
    (``system.new_wa_id`` in webhooks of v11.0 and older, where ``wa_id`` may name the old one).
    Shapes: Meta's "System messages webhook reference"; pywa ``tests/data/updates/system.json``.
    One without a readable old and new number is refused (the row fails with the reason): moving
    a customer on a guess could send her messages to a stranger."""
    old, _ = _sender(get_id(m, "from", "message"), "message.from")
    new, _ = _sender(get_id(system, "new_wa_id", "message.system") or get_id(system, "wa_id", "message.system"), "message.system.wa_id")
    if old is None or new is None:
        raise NormalizationError("message.system: a number change without the old and the new number")
    new_phone = wa_id_to_e164(new)
    if new_phone is None or new_phone.e164 is None:
        raise NormalizationError("message.system.wa_id is not a valid phone number")
    user_id = get_str(system, "user_id", "message.system")
    return NumberChanged(
        phone_number_id=phone_number_id,
        message_id=req_str(m, "id", "message"),
        old_wa_id=old,
        old_phone=wa_id_to_e164(old),
        new_wa_id=new,
        new_phone=new_phone,
        user_id=user_id if user_id and _BSUID.fullmatch(user_id) else None,
        occurred_at=req_unix_time(m, "timestamp", "message"),
    )


# Meta's system message for a new business-scoped user id when no phone number can be shared (changelog, 11 August 2026)
_USER_ID_CHANGE = "user_changed_user_id"


def _user_id_changed(phone_number_id: str, m: Body, system: Body) -> Event:
    """Meta's system message: the user's business-scoped id changed from ``system.previous_user_id`` to
    ``system.user_id`` (their parent ids, ``parent_user_id`` and ``previous_parent_user_id``, are not kept: a
    contact is named by the business-scoped one). Like every system message it has no contacts array; ``from``,
    when Meta gives it, is her number. One whose new id, or whose previous id and number both, cannot be read is
    refused (the row fails with the reason): her words must not be given to another contact on a guess."""
    new = get_str(system, "user_id", "message.system")
    if new is None or not _BSUID.fullmatch(new):
        raise NormalizationError("message.system.user_id: a user id change without a valid new business-scoped id")
    old = get_str(system, "previous_user_id", "message.system")
    if old is not None and not _BSUID.fullmatch(old):
        raise NormalizationError("message.system.previous_user_id is not a business-scoped user id")
    wa_id, _ = _sender(get_id(m, "from", "message"), "message.from")
    if old is None and wa_id is None:
        raise NormalizationError("message.system: a user id change that names neither the previous id nor the number")
    return UserIdChanged(
        phone_number_id=phone_number_id,
        message_id=req_str(m, "id", "message"),
        old_user_id=old,
        new_user_id=new,
        wa_id=wa_id,
        phone=wa_id_to_e164(wa_id),
        occurred_at=req_unix_time(m, "timestamp", "message"),
    )


_WA_ID = re.compile(r"[0-9]{5,20}")
_BSUID = re.compile(r"[A-Z]{2}\.[A-Za-z0-9.]{1,77}")  # contacts.wa_user_id holds 80


def _sender(value: str | None, where: str) -> tuple[str | None, str | None]:
    """(wa_id, BSUID) of a sender: a WhatsApp id is the number's digits; a user who hides
    their number (C9) may be named by a business-scoped id instead. Anything else (a CRLF,
    a header, text) is refused here, before it can reach a contact row or a log line."""
    if value is None:
        return None, None
    if _WA_ID.fullmatch(value):
        return value, None
    if _BSUID.fullmatch(value):
        return None, value
    raise NormalizationError(f"{where} is not a WhatsApp id")


def _contact_for(wa_id: str | None, contacts: list[Body]) -> Body:
    """The contact whose ``wa_id`` matches the sender, else the only contact."""
    for contact in contacts:
        if wa_id is not None and get_id(contact, "wa_id", "contact") == wa_id:
            return contact
    return contacts[0] if len(contacts) == 1 else {}


def _reply(m: Body, message_type: str) -> tuple[str, str | None] | None:
    """``(payload, title)`` for a template quick reply or an interactive button/list reply."""
    if message_type == "button":
        button = req_obj(m, "button", "message")
        payload = first_str(get_str(button, "payload", "message.button"), get_str(button, "text", "message.button"))
        if payload is None:
            raise NormalizationError("message.button.payload: missing")
        return payload, get_str(button, "text", "message.button")
    if message_type == "interactive":
        interactive = req_obj(m, "interactive", "message")
        kind = get_str(interactive, "type", "message.interactive")
        if kind in ("button_reply", "list_reply"):
            where = f"message.interactive.{kind}"
            reply = req_obj(interactive, kind, "message.interactive")
            return req_str(reply, "id", where), get_str(reply, "title", where)
    return None


def _status(b: Body) -> Event:
    phone_number_id = _phone_number_id(b)
    s = req_obj(b, "status")
    errors = [e for _, e in get_objects(s, "errors", "status")]
    first_error = errors[0] if errors else {}
    return MessageStatusChanged(
        phone_number_id=phone_number_id,
        message_id=req_str(s, "id", "status"),
        status=req_str(s, "status", "status"),
        recipient_id=get_id(s, "recipient_id", "status"),
        callback_data=get_str(s, "biz_opaque_callback_data", "status"),
        error_code=get_int(first_error, "code", "status.errors[0]"),
        error_title=get_str(first_error, "title", "status.errors[0]"),
        occurred_at=req_unix_time(s, "timestamp", "status"),
    )


def _preference(b: Body) -> Event:
    phone_number_id = _phone_number_id(b)
    p = req_obj(b, "user_preference")
    wa_id, bsuid = _sender(get_id(p, "wa_id", "user_preference"), "user_preference.wa_id")
    contacts = [c for _, c in get_objects(b, "contacts")]
    if wa_id is not None:  # only the contact named by the same number: a stranger's id must not be learnt on it
        contact = next((c for c in contacts if get_id(c, "wa_id", "contact") == wa_id), {})
    else:
        contact = contacts[0] if len(contacts) == 1 else {}
    # a user with a username may show no number (C9): their business-scoped id still names them,
    # and state.upsert_contact finds the contact it was learnt on
    user_id = first_str(get_str(p, "user_id", "user_preference"), get_str(contact, "user_id", "contact"), bsuid)
    if user_id is not None and not _BSUID.fullmatch(user_id):
        user_id = None  # not a business-scoped id: never written to a contact row
    return MarketingPreferenceChanged(
        phone_number_id=phone_number_id,
        wa_id=wa_id,
        phone=wa_id_to_e164(wa_id),
        user_id=user_id,
        value=req_str(p, "value", "user_preference"),
        category=req_str(p, "category", "user_preference"),
        occurred_at=req_unix_time(p, "timestamp", "user_preference"),
    )


def _template(b: Body) -> tuple[dict[str, Any], dict[str, Any]]:
    """The fields every template update names: the account, the template, when."""
    v = req_obj(b, "value")
    return v, {
        "business_account_id": req_id(b, "business_account_id"),
        "template_id": get_id(v, "message_template_id", "value"),
        "name": req_str(v, "message_template_name", "value"),
        "language": req_str(v, "message_template_language", "value"),
        "occurred_at": get_unix_time(b, "time"),
    }


def _optional_time(d: Body, key: str, where: str) -> datetime | None:
    """A date shown to a person only: one we cannot read is left out, not the whole update."""
    try:
        return get_unix_time(d, key, where)
    except NormalizationError:
        return None


def _template_status(b: Body) -> Event:
    v, common = _template(b)
    other = get_obj(v, "other_info", "value") or {}  # a pause or unpause (Meta: "locked or unlocked")
    rejection = get_obj(v, "rejection_info", "value") or {}  # a rejection for INVALID_FORMAT
    disabled = get_obj(v, "disable_info", "value") or {}
    return TemplateStatusChanged(
        status=req_str(v, "event", "value").upper(),
        reason=get_str(v, "reason", "value"),
        title=get_str(other, "title", "value.other_info"),
        description=get_str(other, "description", "value.other_info"),
        rejection=get_str(rejection, "reason", "value.rejection_info"),
        recommendation=get_str(rejection, "recommendation", "value.rejection_info"),
        disable_date=_optional_time(disabled, "disable_date", "value.disable_info"),
        category=get_str(v, "message_template_category", "value"),
        **common,
    )


def _template_category(b: Body) -> Event:
    v, common = _template(b)
    return TemplateCategoryChanged(
        new_category=req_str(v, "new_category", "value").upper(),
        previous_category=(get_str(v, "previous_category", "value") or "").upper() or None,
        correct_category=(get_str(v, "correct_category", "value") or "").upper() or None,
        effective_at=_optional_time(v, "category_update_timestamp", "value"),
        **common,
    )


def _upper(d: Body, key: str, where: str) -> str | None:
    value = get_str(d, key, where)
    return value.strip().upper() if value else None


def _limit(d: Body, key: str) -> str | None:
    """A messaging limit: a tier name (``TIER_2K``; ``TIER_NOT_SET``, no limit yet, is kept as said and changes no limit,
    ``number_health.NOT_A_LIMIT``) or, as Meta's messaging-limits change notes give the newer field, a count (``2000``, ``UNLIMITED``)."""
    value = d.get(key)
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return str(value)
    return _upper(d, key, "value")


def _template_quality(b: Body) -> Event:
    v, common = _template(b)
    return TemplateQualityChanged(
        score=_upper(v, "new_quality_score", "value") or "UNKNOWN",
        previous_score=_upper(v, "previous_quality_score", "value"),
        **common,
    )


def _number_quality(b: Body) -> Event:
    """Meta's ``phone_number_quality_update``: ``display_phone_number``, ``event``, ``current_limit``
    (removed in 2026 for ``max_daily_conversations_per_business``) and, for a limit change, ``old_limit``."""
    v = req_obj(b, "value")
    shown = get_id(v, "display_phone_number", "value")
    return NumberQualityChanged(
        business_account_id=req_id(b, "business_account_id"),
        display_phone_number=(re.sub(r"[^0-9]", "", shown) or None) if shown else None,
        event=req_str(v, "event", "value").strip().upper(),
        limit=_limit(v, "max_daily_conversations_per_business") or _limit(v, "current_limit"),
        old_limit=_limit(v, "old_limit"),
        occurred_at=get_unix_time(b, "time"),
    )


def _expiration(r: Body, where: str) -> datetime | None:
    """When a restriction ends: Unix seconds (pywa's sample of Meta's payload) or an ISO time (as a
    partner relays it); one we cannot read is an open end: the restriction holds until Meta lifts it."""
    value = r.get("expiration")
    try:
        if isinstance(value, str) and not value.strip().isdigit():
            return get_datetime(r, "expiration", where)
        return get_unix_time(r, "expiration", where)
    except NormalizationError:
        return None


def _left_out_unless_object(v: Body, key: str, event: str) -> Body:
    """An account update's ``ban_info`` / ``violation_info``: one that is not an object (a plain string) is
    left out with a warning naming its type, not its words: the update changes nothing it cannot read
    (a ban's state holds every send), and its row is not failed for a shape no replay can mend."""
    value = v.get(key)
    if value is None or isinstance(value, dict):
        return value or {}
    kind = {str: "a string", list: "a list", bool: "a boolean", int: "a number", float: "a number"}.get(type(value), "not an object")
    log.warning("whatsapp account_update %s: value.%s is %s, not an object: left out, the account's state kept as it was",
                re.sub(r"[^A-Z_]", "", event)[:40], key, kind)
    return {}


def _account_update(b: Body) -> Event:
    v = req_obj(b, "value")
    restrictions = tuple(
        Restriction(kind=kind, until=_expiration(r, where))
        for where, r in get_objects(v, "restriction_info", "value")
        if (kind := _upper(r, "restriction_type", where))
    )
    event = req_str(v, "event", "value").strip().upper()
    ban = _left_out_unless_object(v, "ban_info", event)
    return AccountUpdated(
        business_account_id=req_id(b, "business_account_id"),
        event=event,
        restrictions=restrictions,
        violation=_upper(_left_out_unless_object(v, "violation_info", event), "violation_type", "value.violation_info"),
        ban_state=_upper(ban, "waba_ban_state", "value.ban_info"),
        ban_date=get_str(ban, "waba_ban_date", "value.ban_info"),
        occurred_at=get_unix_time(b, "time"),
    )


# the fields of ``business_capability_update`` that carry the messaging limit, Meta's current one first
# (``max_daily_conversation_per_phone`` "will be removed": Meta's reference); -1 is "unlimited"
_CAPABILITY_LIMITS = ("max_daily_conversations_per_business", "max_daily_conversation_per_phone")


def _count(v: Body, key: str) -> str | None:
    """A limit as Meta counts it: a whole number (or its digits as a string), -1 for unlimited; anything else None."""
    value = v.get(key)
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]{1,12}", value.strip()):
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    if value == -1:
        return "UNLIMITED"
    return str(value) if value > 0 else None


def _business_capability(b: Body) -> list[Event]:
    """Meta's ``business_capability_update`` (its webhook reference): the portfolio's messaging limit
    (``max_daily_conversations_per_business``; the older ``max_daily_conversation_per_phone``) and its
    numbers' cap. A value of another shape is left out with a warning naming the field, never its value;
    an update with nothing readable changes nothing (``[]``: the row is kept as ignored)."""
    v = req_obj(b, "value")
    limit = None
    for key in _CAPABILITY_LIMITS:
        if v.get(key) is None:
            continue
        limit = _count(v, key)
        if limit is not None:
            break
        log.warning("whatsapp business_capability_update: value.%s is not a count: left out", key)
    numbers = next((int(n) for k in ("max_phone_numbers_per_waba", "max_phone_numbers_per_business")
                    if (n := _count(v, k)) is not None and n.isdigit()), None)
    if limit is None and numbers is None:
        log.warning("whatsapp business_capability_update carries no messaging limit we can read: ignored")
        return []
    return [BusinessCapabilityChanged(business_account_id=req_id(b, "business_account_id"), limit=limit,
                                      max_phone_numbers=numbers, occurred_at=_optional_time(b, "time", "time"))]
