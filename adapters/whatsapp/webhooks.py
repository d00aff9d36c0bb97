"""WhatsApp Cloud API webhooks: subscription challenge, signature, and splitting a batch.

One POST can carry many messages, statuses and preference changes for several phone
numbers. Each becomes its own inbox item, routed by ``metadata.phone_number_id``, so a
failure to process one never holds back the others and each is deduplicated alone. A change
about the business account itself (a template paused, recategorised or rated; the account
restricted; a number's quality, which names the number only as displayed) carries the account's
id (``entry[].id``) and is routed by that. A
malformed part of an otherwise good POST becomes an item of its own marked ``ignored_reason``
(stored as ``ignored`` where it names a phone number we serve): Meta retries a refused POST
whole, for days, so a 400 for one bad element would lose every good one beside it.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pywa.utils import webhook_updates_validator

from adapters.envelope import body_digest, is_ascii
from connector.errors import BadPayloadError, VerificationError

_LISTS = {"messages": "message", "statuses": "status", "user_preferences": "user_preference", "errors": "error"}
# account-level fields the core reads (Meta's webhook references of the same names); any other
# field is kept as ``field:<name>``
_ACCOUNT_TOPICS = {"message_template_status_update": "template_status", "template_category_update": "template_category",
                   "message_template_quality_update": "template_quality", "phone_number_quality_update": "number_quality",
                   "account_update": "account_update", "business_capability_update": "business_capability"}


@dataclass(frozen=True, slots=True)
class WhatsAppItem:
    phone_number_id: str | None
    topic: str
    dedupe_key: str
    body: dict[str, Any]
    ignored_reason: str | None = None  # a malformed part, kept for the record and never processed
    business_account_id: str | None = None  # a change naming no number: the account it is about (``entry[].id``)
    # ``phone_number_quality_update`` names its number only as shown (``display_phone_number``), no id
    display_phone_number: str | None = None

    def raw(self) -> bytes:
        return json.dumps(self.body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def challenge(params: Mapping[str, str], verify_token: str | None) -> str | None:
    """The GET handshake: echo ``hub.challenge`` only for our verify token."""
    if not verify_token or params.get("hub.mode") != "subscribe":
        return None
    given = params.get("hub.verify_token") or ""
    if not is_ascii(given) or not hmac.compare_digest(given, verify_token):
        return None
    return params.get("hub.challenge", "")


def verify(app_secret: str | None, headers: Mapping[str, str], body: bytes) -> None:
    if not app_secret:
        raise VerificationError("whatsapp.app_secret is not configured; refusing unsigned updates")
    signature = headers.get("x-hub-signature-256")
    if not signature:
        raise VerificationError("missing X-Hub-Signature-256")
    if not is_ascii(signature) or not webhook_updates_validator(app_secret, body, signature):
        raise VerificationError("X-Hub-Signature-256 does not match")


def _item_key(topic: str, item: dict[str, Any], body: bytes, contacts: list[Any] | None = None) -> str:
    if topic == "message" and item.get("id"):
        return f"whatsapp:message:{item['id']}"
    if topic == "status" and item.get("id"):
        return f"whatsapp:status:{item['id']}:{item.get('status')}"
    if topic == "user_preference":
        who = item.get("wa_id")
        if not who:  # a user who hides her number (platform-facts C9): her business-scoped id names her, not "None"
            ids = [c.get("user_id") for c in contacts or [] if isinstance(c, dict)]
            who = f"user:{item.get('user_id') or (ids[0] if len(ids) == 1 else None)}"
        return f"whatsapp:preference:{who}:{item.get('category')}:{item.get('value')}:{item.get('timestamp')}"
    canonical = json.dumps(item, sort_keys=True, separators=(",", ":")).encode()
    return f"whatsapp:{topic}:sha256:{body_digest(canonical)}"


def _malformed(reason: str, phone_number_id: Any, body: dict[str, Any], account: str | None = None) -> WhatsAppItem:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()
    return WhatsAppItem(
        phone_number_id=str(phone_number_id) if phone_number_id is not None else None,
        topic="malformed",
        dedupe_key=f"whatsapp:malformed:sha256:{body_digest(canonical)}",
        body=body,
        ignored_reason=reason,
        business_account_id=account,
    )


def _account_id(entry: dict[str, Any]) -> str | None:
    """The business account an entry is about (``entry[].id``, a string in Meta's payloads)."""
    value = entry.get("id")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    return str(value).strip() or None


def split(payload: Any, raw: bytes) -> list[WhatsAppItem]:
    """Meta's envelope -> one item per message, status, preference change or error.

    Raises BadPayloadError only when nothing in the POST is usable (not an envelope at all,
    or every part malformed): then the sender hears a 400 and nothing valid is refused. A malformed
    change about the account (an ``_ACCOUNT_TOPICS`` field in an entry that names it) is kept instead,
    ignored with its reason, on the account's stores: it is Meta's, and a 400 would only bring it back.
    """
    if not isinstance(payload, dict) or not isinstance(payload.get("entry"), list):
        raise BadPayloadError("not a WhatsApp Business Account update (no entry list)")
    items: list[WhatsAppItem] = []
    for entry in payload["entry"]:
        changes = entry.get("changes") if isinstance(entry, dict) else None
        if not isinstance(changes, list):
            items.append(_malformed("entry without a changes list", None, {"entry": entry}))
            continue
        for change in changes:
            if not isinstance(change, dict) or not isinstance(change.get("value"), dict):
                # news about the account (its number's health, its templates) names the account by the entry: kept
                # against its stores, as ignored with the reason, not refused whole (Meta would retry it for days)
                field = change.get("field") if isinstance(change, dict) else None
                account = _account_id(entry) if isinstance(field, str) and field in _ACCOUNT_TOPICS else None
                reason = f"{field} change without a value object" if account is not None else "change without a value object"
                items.append(_malformed(reason, None, {"change": change, "business_account_id": account, "time": entry.get("time")}
                                        if account is not None else {"change": change}, account))
                continue
            field, value = change.get("field"), change["value"]
            metadata = value.get("metadata") if isinstance(value.get("metadata"), dict) else {}
            phone_number_id = metadata.get("phone_number_id")
            contacts = value.get("contacts") if isinstance(value.get("contacts"), list) else []
            found = malformed = False
            for list_name, topic in _LISTS.items():
                entries = value.get(list_name)
                if not isinstance(entries, list):
                    continue
                for element in entries:
                    if not isinstance(element, dict):
                        items.append(_malformed(f"{list_name} element is not an object", phone_number_id,
                                                {"field": field, "metadata": metadata, list_name: element}))
                        malformed = True
                        continue
                    found = True
                    body = {"field": field, "metadata": metadata, "contacts": contacts, topic: element}
                    items.append(
                        WhatsAppItem(
                            phone_number_id=str(phone_number_id) if phone_number_id is not None else None,
                            topic=topic,
                            dedupe_key=_item_key(topic, element, raw, contacts)[:255],
                            body=body,
                        )
                    )
            if not found and not malformed:
                body = {"field": field, "metadata": metadata, "value": value}
                account = _account_id(entry) if phone_number_id is None else None
                topic = f"field:{field}"
                if account is not None:
                    # the entry's time too: the same news twice (paused again after a reinstatement)
                    # is two updates, while Meta's retry of one POST repeats it
                    body.update(business_account_id=account, time=entry.get("time"))
                    topic = _ACCOUNT_TOPICS.get(str(field), topic)
                canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
                shown = value.get("display_phone_number") if topic == "number_quality" else None
                items.append(
                    WhatsAppItem(
                        phone_number_id=str(phone_number_id) if phone_number_id is not None else None,
                        topic=topic,
                        dedupe_key=f"whatsapp:{topic}:sha256:{body_digest(canonical)}"[:255],
                        body=body,
                        business_account_id=account,
                        display_phone_number=str(shown) if isinstance(shown, (str, int)) and not isinstance(shown, bool) else None,
                    )
                )
    if items and all(i.ignored_reason and i.business_account_id is None for i in items):
        raise BadPayloadError(items[0].ignored_reason or "malformed update")
    return items
