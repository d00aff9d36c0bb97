"""Template bindings: which journey step sends which WhatsApp template, with which values.

Bindings name variables (``order.total``, ``customer.first_name``...) checked when the
config is loaded, so a typo or a wrong parameter count stops the connector at startup
instead of failing a customer's message at 2 a.m.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from connector.messages import TemplateMessage

if TYPE_CHECKING:
    from connector.config import TemplateSettings

# name -> kind; currency values are rendered as Meta currency parameters
VARIABLES: dict[str, str] = {
    "customer.first_name": "text",
    "customer.name": "text",
    "store.name": "text",
    "order.name": "text",
    "order.total": "currency",
    "order.status_url": "text",
    "order.payment_url": "text",
    "checkout.total": "currency",
    "checkout.recovery_url": "text",
    "fulfillment.tracking_company": "text",
    "fulfillment.tracking_number": "text",
    "fulfillment.tracking_url": "text",
    "reorder.link": "text",
    "reorder.product": "text",
    "discount.code": "text",
}
PLACEHOLDER = re.compile(r"\{\{(\d+)\}\}")
EXAMPLES: dict[str, str] = {
    "customer.first_name": "Asha",
    "customer.name": "Asha Rao",
    "store.name": "Acme Naturals",
    "order.name": "#1042",
    "order.total": "₹1,299.00",
    "order.status_url": "https://acme.example/orders/1042",
    "order.payment_url": "https://acme.example/pay/1042",
    "checkout.total": "₹899.00",
    "checkout.recovery_url": "https://acme.example/checkouts/abc/recover",
    "fulfillment.tracking_company": "Delhivery",
    "fulfillment.tracking_number": "DL123456",
    "fulfillment.tracking_url": "https://track.example/DL123456",
    "reorder.link": "https://acme.example/cart/4417:1",
    "reorder.product": "Neem face wash",
    "discount.code": "COMEBACK10",
}


class MissingValueError(ValueError):
    """A binding has no value for this message (e.g. no tracking URL yet)."""


def placeholders(text: str) -> list[int]:
    return sorted({int(n) for n in PLACEHOLDER.findall(text)})


def _param(variable: str, context: dict[str, Any]) -> dict[str, Any]:
    value = context.get(variable)
    # blank after trimming is missing too: a first name of only spaces (or a new line, which the
    # client folds away) reached Meta as an empty parameter, and Meta refused the whole message
    if value is None or (isinstance(value, str) and not value.strip()):
        if variable == "customer.first_name":
            return {"type": "text", "text": "there"}  # "Hi there" beats not sending an order update
        raise MissingValueError(f"no value for {variable}")
    if VARIABLES[variable] == "currency":
        amount, code = value if isinstance(value, tuple) else (value, context.get("currency", "USD"))
        try:
            dec = Decimal(str(amount))
        except InvalidOperation:
            raise MissingValueError(f"{variable} is not an amount") from None
        if not dec.is_finite():
            raise MissingValueError(f"{variable} is not an amount")
        return {"type": "currency", "code": str(code), "amount": str(dec), "fallback": f"{code} {dec:,.2f}"}
    return {"type": "text", "text": str(value)[:1024]}


def shows(tpl: "TemplateSettings | None", variables: tuple[str, ...]) -> bool:
    """Whether the template puts any of these values in its body or a button's link."""
    return tpl is not None and any(v in variables for v in (*tpl.body, *(b.suffix for b in tpl.buttons)))


def render_stored(tpl: "TemplateSettings", context: dict[str, Any], *, to: str, callback_data: str | None) -> dict[str, Any]:
    """The message for one recipient in the form the outbox stores (``TemplateMessage``'s JSON
    form, which the dispatcher validates when it sends); raises MissingValueError naming the variable.

    Why not build the model and dump it: every reminder, COD question and order update is
    rendered when it is queued, and validating the message and its parameters, then dumping
    them, cost ~35 us a message against ~7 us for the dict (bench/HISTORY.md, 2026-12-07).
    ``render`` gives the model; tests/test_templates.py holds the two to the same shape."""
    buttons: list[dict[str, Any]] = []
    for b in tpl.buttons:
        if b.type == "quick_reply":
            buttons.append({"type": "quick_reply", "payload": b.payload or ""})
        else:
            suffix = _param(b.suffix or "", context)
            buttons.append({"type": "url", "suffix": suffix["text"] if suffix["type"] == "text" else suffix["fallback"]})
    return {
        "kind": "template",
        "to": to,
        "name": tpl.name,
        "language": tpl.language,
        "header_text": [],
        "header_media": {"type": "image", "link": tpl.header_image} if tpl.header_image else None,
        "body": [_param(v, context) for v in tpl.body],
        "buttons": buttons,
        "callback_data": callback_data,
    }


def render(tpl: "TemplateSettings", context: dict[str, Any], *, to: str, callback_data: str | None) -> TemplateMessage:
    """Build the message for one recipient; raises MissingValueError naming the variable."""
    return TemplateMessage.model_validate(render_stored(tpl, context, to=to, callback_data=callback_data))


def definition(tpl: "TemplateSettings") -> dict[str, Any]:
    """The template as WhatsApp Manager / the Graph API expects it for submission."""
    components: list[dict[str, Any]] = []
    if tpl.header_image:
        components.append({"type": "HEADER", "format": "IMAGE", "example": {"header_handle": [tpl.header_image]}})
    body: dict[str, Any] = {"type": "BODY", "text": tpl.body_text}
    if tpl.body:
        body["example"] = {"body_text": [[EXAMPLES[v] for v in tpl.body]]}
    components.append(body)
    if tpl.buttons:
        buttons = []
        for b in tpl.buttons:
            if b.type == "quick_reply":
                buttons.append({"type": "QUICK_REPLY", "text": b.text})
            else:
                buttons.append({"type": "URL", "text": b.text, "url": b.url, "example": [(b.url or "").replace("{{1}}", EXAMPLES.get(b.suffix or "", "x"))]})
        components.append({"type": "BUTTONS", "buttons": buttons})
    return {"name": tpl.name, "language": tpl.language, "category": tpl.category.upper(), "components": components}
