"""Outbound WhatsApp messages, as the core decides them (no Graph API JSON here).

The WhatsApp adapter turns these into Cloud API requests. ``callback_data`` travels as
``biz_opaque_callback_data`` and comes back on every status webhook: it carries the
outbox id, so a send whose answer was lost in a crash can still be settled.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Literal, Protocol, Union

from pydantic import BaseModel, ConfigDict, Field


class _Msg(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TextParam(_Msg):
    type: Literal["text"] = "text"
    text: str


class CurrencyParam(_Msg):
    type: Literal["currency"] = "currency"
    code: str  # ISO 4217
    amount: Decimal
    fallback: str  # what WhatsApp shows where it cannot format, e.g. "₹1,299.00"


class DateTimeParam(_Msg):
    type: Literal["date_time"] = "date_time"
    fallback: str


Param = Union[TextParam, CurrencyParam, DateTimeParam]


class HeaderMedia(_Msg):
    type: Literal["image", "video", "document"]
    link: str


class QuickReplyButton(_Msg):
    type: Literal["quick_reply"] = "quick_reply"
    payload: str  # comes back as button.payload when tapped


class UrlButton(_Msg):
    type: Literal["url"] = "url"
    suffix: str  # the dynamic part appended to the template's URL


class TemplateMessage(_Msg):
    kind: Literal["template"] = "template"
    to: str  # E.164
    name: str
    language: str
    header_text: tuple[Param, ...] = ()
    header_media: HeaderMedia | None = None
    body: tuple[Param, ...] = ()
    buttons: tuple[QuickReplyButton | UrlButton, ...] = ()
    callback_data: str | None = None


class ReplyButton(_Msg):
    id: str = Field(max_length=256)
    title: str = Field(max_length=20)


class InteractiveButtons(_Msg):
    """Free-form reply buttons: only inside the 24-hour customer-service window."""

    kind: Literal["interactive"] = "interactive"
    to: str
    body: str = Field(max_length=1024)
    buttons: tuple[ReplyButton, ...] = Field(min_length=1, max_length=3)
    header: str | None = None
    footer: str | None = None
    callback_data: str | None = None


class TextMessage(_Msg):
    """Free-form text: only inside the 24-hour customer-service window."""

    kind: Literal["text"] = "text"
    to: str
    body: str = Field(max_length=4096)
    preview_url: bool = False
    callback_data: str | None = None


OutboundMessage = Union[TemplateMessage, InteractiveButtons, TextMessage]


@dataclass(frozen=True, slots=True)
class SendResult:
    """What Meta accepted: the message id status webhooks will name, and the recipient's wa_id."""

    wamid: str
    wa_id: str | None = None
    dry_run: bool = False


class MessageSender(Protocol):
    async def send(self, phone_number_id: str, message: OutboundMessage) -> SendResult: ...
