"""Template bindings: checked at startup, rendered per message, exported and checked against the account."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from typer.testing import CliRunner

from connector.cli import app
from connector.config import load_settings, parse_settings
from connector.errors import ConfigError
from connector.messages import CurrencyParam, QuickReplyButton, TemplateMessage, TextParam, UrlButton
from connector.sandbox.whatsapp import SandboxServer, SandboxWhatsApp
from connector.templates import MissingValueError, definition, render, render_stored
from tests.test_config import EXAMPLE, EXAMPLE_ENV

runner = CliRunner()


def store_with(template: dict) -> dict:
    return {"stores": [{"key": "a", "platform": "shopify", "shop_domain": "a.myshopify.com", "webhook_secret": "s", "templates": [template]}]}


def test_unknown_variable_and_wrong_count_are_config_errors():
    bad = {"step": "cod_confirmation.ask", "name": "cod_v1", "category": "utility",
           "body_text": "Hi {{1}}, order {{2}} of {{3}}", "body": ["customer.firstname", "order.name"],
           "buttons": [{"type": "quick_reply", "text": "Yes"}, {"type": "url", "text": "Track", "url": "https://t.example/", "suffix": "order.name"}]}
    with pytest.raises(ConfigError) as err:
        parse_settings(store_with(bad), environ={})
    text = "\n".join(err.value.problems)
    assert "unknown variable 'customer.firstname'" in text
    assert "body_text has 3 placeholder(s) but body binds 2 variable(s)" in text
    assert "stores[0].templates[0].buttons[0]" in text and "needs a payload" in text
    assert "stores[0].templates[0].buttons[1]" in text and "{{1}}" in text


def test_render_binds_values_in_order():
    settings = load_settings(EXAMPLE, environ=EXAMPLE_ENV)
    cod = settings.stores[0].template_for("cod_confirmation.ask")
    msg = render(cod, {"customer.first_name": "Asha", "order.name": "#1042", "order.total": ("1299.5", "INR")}, to="+919876543210", callback_data="outbox:7")
    assert msg.body == (TextParam(text="Asha"), TextParam(text="#1042"), CurrencyParam(code="INR", amount=Decimal("1299.5"), fallback="INR 1,299.50"))
    assert msg.buttons == (QuickReplyButton(payload="cod_confirm"), QuickReplyButton(payload="cod_cancel"))
    shipped = settings.stores[0].template_for("delivery.shipped")
    ctx = {"customer.first_name": None, "order.name": "#1", "fulfillment.tracking_company": "Delhivery", "fulfillment.tracking_number": "DL1"}
    msg = render(shipped, ctx, to="+919876543210", callback_data=None)
    assert msg.body[0] == TextParam(text="there")  # no first name: a friendly default, not a failed update
    assert msg.buttons == (UrlButton(suffix="DL1"),)
    with pytest.raises(MissingValueError, match="fulfillment.tracking_number"):
        render(shipped, {**ctx, "fulfillment.tracking_number": None}, to="+919876543210", callback_data=None)


@pytest.mark.parametrize("amount", ["1299.5", "1E+3", "0.10", 899])
def test_the_stored_message_is_the_one_the_dispatcher_sends(amount):
    """What the outbox stores (``render_stored``, built without the model for speed) reads back as
    the same message and dumps to the same JSON: a header image, text and currency values, a
    friendly default for a missing first name, quick replies and a URL button, a callback."""
    settings = parse_settings(store_with({
        "step": "checkout_recovery.first", "name": "cart_v1", "category": "marketing", "header_image": "https://cdn.example/c.png",
        "body_text": "Hi {{1}}, your {{2}} of {{3}} is waiting", "body": ["customer.first_name", "reorder.product", "checkout.total"],
        "buttons": [{"type": "quick_reply", "text": "Stop", "payload": "stop"},
                    {"type": "url", "text": "Open", "url": "https://shop.example/c/{{1}}", "suffix": "checkout.recovery_url"}]}), environ={})
    tpl = settings.stores[0].template_for("checkout_recovery.first")
    ctx = {"customer.first_name": "", "reorder.product": "Neem face wash", "checkout.total": (amount, "INR"), "checkout.recovery_url": "abc/recover"}
    stored = render_stored(tpl, ctx, to="+919876543210", callback_data="outbox:9")
    message = TemplateMessage.model_validate(json.loads(json.dumps(stored)))  # as the dispatcher reads the row
    assert message.model_dump(mode="json") == stored
    assert message.header_media.link == "https://cdn.example/c.png" and message.callback_data == "outbox:9"
    assert message.body[0] == TextParam(text="there") and message.body[2].amount == Decimal(str(amount))
    assert message.buttons == (QuickReplyButton(payload="stop"), UrlButton(suffix="abc/recover"))


def test_an_amount_that_is_not_a_number_is_a_missing_value_not_a_crash():
    settings = load_settings(EXAMPLE, environ=EXAMPLE_ENV)
    cod = settings.stores[0].template_for("cod_confirmation.ask")
    for bad in ("NaN", "Infinity", "twelve"):
        with pytest.raises(MissingValueError, match="order.total is not an amount"):
            render_stored(cod, {"customer.first_name": "Asha", "order.name": "#1042", "order.total": (bad, "INR")}, to="+919876543210", callback_data=None)


def test_templates_export_prints_definitions_ready_for_whatsapp_manager(monkeypatch):
    for k, v in EXAMPLE_ENV.items():
        monkeypatch.setenv(k, v)
    result = runner.invoke(app, ["templates", "export", "--config", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    defs = {d["name"]: d for d in json.loads(result.output)}
    cod = defs["cod_confirm_v1"]
    assert cod["category"] == "UTILITY" and cod["language"] == "en"
    body = next(c for c in cod["components"] if c["type"] == "BODY")
    assert body["example"]["body_text"] == [["Asha", "#1042", "₹1,299.00"]]
    buttons = next(c for c in cod["components"] if c["type"] == "BUTTONS")["buttons"]
    assert buttons == [{"type": "QUICK_REPLY", "text": "Confirm order"}, {"type": "QUICK_REPLY", "text": "Cancel order"}]
    url_button = next(c for c in defs["order_shipped_v1"]["components"] if c["type"] == "BUTTONS")["buttons"][0]
    assert url_button["url"] == "https://track.example/{{1}}" and url_button["example"] == ["https://track.example/DL123456"]


def test_templates_check_reports_missing_unapproved_and_mismatched(tmp_path, monkeypatch):
    for k, v in EXAMPLE_ENV.items():
        monkeypatch.setenv(k, v)
    settings = load_settings(EXAMPLE, environ=EXAMPLE_ENV)
    cod = definition(settings.stores[0].template_for("cod_confirmation.ask"))
    shipped = definition(settings.stores[0].template_for("delivery.shipped"))
    shipped["components"][0]["text"] = "Order {{1}} shipped"  # one parameter where the config binds three
    remote = [{**cod, "status": "APPROVED"}, {**shipped, "status": "APPROVED"}]
    fake = SandboxWhatsApp(templates=remote)
    with SandboxServer(fake.app) as server:
        config = tmp_path / "c.toml"
        text = EXAMPLE.read_text().replace('graph_base_url = "https://graph.facebook.com"', f'graph_base_url = "{server.url}"')
        text = text.replace('# access_token = "env:WHATSAPP_ACCESS_TOKEN"', 'access_token = "sandbox-token"')
        text = text.replace('# business_account_id = "102290129340398"', 'business_account_id = "102290129340398"')
        config.write_text(text)
        result = runner.invoke(app, ["templates", "check", "--config", str(config)], env={"COLUMNS": "250"})
        fake.templates[0]["status"] = "PAUSED"
        paused = runner.invoke(app, ["templates", "check", "--config", str(config)], env={"COLUMNS": "250"})
        fake.templates[:] = []
        missing = runner.invoke(app, ["templates", "check", "--config", str(config)], env={"COLUMNS": "250"})
    assert result.exit_code == 1
    assert "cod_confirm_v1" in result.output and "ok" in result.output
    assert "mismatch" in result.output and "body has 1 parameter(s), config binds 3" in result.output
    assert "not approved" in paused.output and "PAUSED" in paused.output
    assert missing.output.count("missing") == 2 and "sandbox-token" not in result.output + missing.output


def _approved(tpl, **changes) -> dict:
    """The template as Meta lists it once approved (``definition`` is what we submit)."""
    return {**definition(tpl), "status": "APPROVED", **changes}


@pytest.mark.parametrize("remote_header, config_image, says", [
    # Meta wants the image with every send; the config sends none: each message is refused
    ({"type": "HEADER", "format": "IMAGE", "example": {"header_handle": ["h"]}}, None, "image header"),
    ({"type": "HEADER", "format": "VIDEO", "example": {"header_handle": ["h"]}}, "https://cdn.example/x.png", "VIDEO header"),
    # a header with a variable of its own: the connector binds header parameters to nothing
    ({"type": "HEADER", "format": "TEXT", "text": "Order {{1}}", "example": {"header_text": ["#1042"]}}, None,
     "header has 1 parameter"),
    # the config sends an image; the approved header is text
    ({"type": "HEADER", "format": "TEXT", "text": "Your order"}, "https://cdn.example/x.png", "header is text"),
])
def test_templates_check_names_a_header_every_send_would_be_refused_for(remote_header, config_image, says):
    from connector.template_check import check_templates

    settings = load_settings(EXAMPLE, environ=EXAMPLE_ENV)
    store = settings.stores[0]
    tpl = store.template_for("delivery.shipped").model_copy(update={"header_image": config_image})
    remote = _approved(tpl)
    remote["components"] = [remote_header, *(c for c in remote["components"] if c["type"] != "HEADER")]
    settings = settings.model_copy(update={"stores": (store.model_copy(update={"templates": (tpl,)}),)})
    [finding] = check_templates(settings, [remote])
    assert finding.result == "mismatch" and says in finding.detail, finding


def test_templates_check_names_a_link_button_whose_approved_link_takes_no_suffix():
    """The config appends the tracking number to the link; Meta refuses a parameter for a fixed link."""
    from connector.template_check import check_templates

    settings = load_settings(EXAMPLE, environ=EXAMPLE_ENV)
    tpl = settings.stores[0].template_for("delivery.shipped")
    remote = _approved(tpl)
    buttons = next(c for c in remote["components"] if c["type"] == "BUTTONS")
    buttons["buttons"][0] = {"type": "URL", "text": "Track order", "url": "https://track.example/all-orders"}
    findings = {f.step: f for f in check_templates(settings, [remote]) if f.store == "acme"}
    assert findings["delivery.shipped"].result == "mismatch"
    assert "button 1" in findings["delivery.shipped"].detail and "fixed link" in findings["delivery.shipped"].detail


def test_templates_check_passes_what_we_submitted_once_approved():
    from connector.template_check import check_templates

    settings = load_settings(EXAMPLE, environ=EXAMPLE_ENV)
    remote = [_approved(t) for s in settings.stores for t in s.templates]
    image = settings.stores[0].template_for("delivery.shipped").model_copy(update={"header_image": "https://cdn.example/x.png"})
    text_header = _approved(settings.stores[0].template_for("cod_confirmation.ask"))
    text_header["components"].insert(0, {"type": "HEADER", "format": "TEXT", "text": "Your order"})  # no variable: nothing to bind
    settings = settings.model_copy(update={"stores": (settings.stores[0].model_copy(update={
        "templates": (settings.stores[0].template_for("cod_confirmation.ask"), image)}),)})
    findings = check_templates(settings, [text_header, _approved(image)])
    assert [f.result for f in findings] == ["ok", "ok"], findings
