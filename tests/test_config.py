"""Configuration: the example file loads, every problem is reported at once, secrets stay secret."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from connector.config import ShopifyStore, WooCommerceStore, load_settings, parse_settings
from connector.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[1] / "config.example.toml"
EXAMPLE_ENV = {
    "STORELOOP_ADMIN_TOKEN": "adm-tok-1",
    "WHATSAPP_APP_SECRET": "meta-app-secret-1",
    "WHATSAPP_VERIFY_TOKEN": "verify-tok-1",
    "ACME_SHOPIFY_SECRET": "shpss_acme_1",
    "BLOOM_WC_SECRET": "wc_bloom_1",
}


def base(**stores_0) -> dict:
    return {"stores": [{"key": "a", "platform": "shopify", "shop_domain": "a.myshopify.com", "webhook_secret": "s", **stores_0}]}


def test_example_config_loads_with_its_env_vars():
    settings = load_settings(EXAMPLE, environ=EXAMPLE_ENV)
    acme, bloom = settings.stores
    assert isinstance(acme, ShopifyStore) and isinstance(bloom, WooCommerceStore)
    assert acme.webhook_secret.get_secret_value() == "shpss_acme_1"
    assert acme.admin_base_url == "https://acme-naturals.myshopify.com"
    assert bloom.rest_base_url == "https://bloom.example/wp-json/wc/v3"
    assert acme.tz.key == "Asia/Kolkata" and bloom.default_country == "IT"
    assert "cash on delivery (cod)" in acme.cod_gateway_names() and bloom.cod_gateway_names() == ("cod",)
    assert settings.whatsapp.dry_run is True
    assert settings.database.is_sqlite


def test_example_config_names_its_missing_env_vars():
    with pytest.raises(ConfigError) as err:
        load_settings(EXAMPLE, environ={})
    assert "stores[0].webhook_secret: environment variable ACME_SHOPIFY_SECRET is not set" in err.value.problems
    assert len(err.value.problems) == len(EXAMPLE_ENV)


def test_every_problem_is_listed_at_once_with_its_key_path():
    data = base(timezone="Asia/Kolkatta", default_country="XX", webhok_secret="typo")
    data["server"] = {"port": 0, "colour": "blue"}
    data["stores"].append({"key": "Bad Key!", "platform": "woocommerce", "site_url": "not a url", "webhook_secret": "s"})
    with pytest.raises(ConfigError) as err:
        parse_settings(data, environ={})
    problems = "\n".join(err.value.problems)
    for expected in (
        "stores[0].timezone: unknown time zone 'Asia/Kolkatta'",
        "stores[0].default_country: unknown country code 'XX'",
        "stores[0].webhok_secret: unknown key (typo?)",
        "server.port:",
        "server.colour: unknown key (typo?)",
        "stores[1].key:",
        "stores[1].site_url:",
    ):
        assert expected in problems, problems


def test_unknown_platform_and_duplicates_are_errors():
    data = base()
    data["stores"].append({"key": "a", "platform": "shopify", "shop_domain": "a.myshopify.com", "webhook_secret": "t"})
    with pytest.raises(ConfigError) as err:
        parse_settings(data, environ={})
    assert err.value.problems == ["stores[1].key: 'a' is used by more than one store (also stores[0])",
                                  "stores[1].shop_domain: 'a.myshopify.com' is used by more than one store (also stores[0])"]
    with pytest.raises(ConfigError) as err:
        parse_settings({"stores": [{"key": "m", "platform": "magento", "webhook_secret": "s"}]}, environ={})
    assert "stores[0]" in err.value.problems[0]


def test_not_a_shopify_domain_is_refused():
    with pytest.raises(ConfigError) as err:
        parse_settings(base(shop_domain="evil.com"), environ={})
    assert err.value.problems == ["stores[0].shop_domain: must be the shop's *.myshopify.com domain"]


def test_a_woocommerce_store_s_other_home_addresses_are_checked_at_load():
    """``webhook_sources`` (a multilingual shop's language directories) are site addresses: a typo or a page with a
    query is said at load, with its key path, not found later as orders refused."""
    woo = {"key": "w", "platform": "woocommerce", "site_url": "https://w.example", "webhook_secret": "woo-s"}
    ok = parse_settings({"stores": [{**woo, "webhook_sources": ["https://w.example/en/", "https://w.example/fr"]}]}, environ={})
    assert [str(u) for u in ok.stores[0].webhook_sources] == ["https://w.example/en/", "https://w.example/fr"]
    with pytest.raises(ConfigError) as err:
        parse_settings({"stores": [{**woo, "webhook_sources": ["w.example/en", "https://w.example/?lang=en"]}]}, environ={})
    assert [p.split(":", 1)[0] for p in err.value.problems] == ["stores[0].webhook_sources[0]", "stores[0].webhook_sources[1]"]
    assert "query" in err.value.problems[1]


def test_secrets_never_appear_in_reprs_summaries_or_logs(caplog):
    settings = load_settings(EXAMPLE, environ={**EXAMPLE_ENV, "STORELOOP_ADMIN_TOKEN": "adm-tok-1"})
    logging.getLogger("storeloop.test").info("settings %s %r", settings, settings.stores[0])
    text = repr(settings) + str(settings.summary()) + caplog.text
    for secret in EXAMPLE_ENV.values():
        assert secret not in text
    assert settings.summary()["stores"][0]["webhook_secret"] == "<set>"


def test_database_password_is_hidden_in_the_summary():
    settings = parse_settings({"database": {"url": "postgresql://app:hunter2@db:5432/x"}}, environ={})
    assert settings.database.url.startswith("postgresql+psycopg://")
    assert "hunter2" not in str(settings.summary())


def test_unreadable_and_invalid_toml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\nport = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad)


def test_settings_are_frozen():
    settings = parse_settings(base(), environ={})
    with pytest.raises(Exception):
        settings.stores[0].key = "b"  # type: ignore[misc]


def test_waiting_for_a_woocommerce_payment_before_the_order_confirmation_is_a_woocommerce_setting():
    woo = {"key": "w", "platform": "woocommerce", "site_url": "https://w.example", "webhook_secret": "woo-s",
           "journeys": {"order_confirmation": {}}}
    shop, wc = parse_settings({"stores": [{**base()["stores"][0], "journeys": {"order_confirmation": {}}}, woo]}, environ={}).stores
    # a Shopify order exists once its checkout is complete: confirmed as placed, pending payment or not
    assert shop.journeys["order_confirmation"].after_payment is False
    assert wc.journeys["order_confirmation"].after_payment is True
    shop, wc = parse_settings({"stores": [{**base()["stores"][0], "journeys": {"checkout_recovery": {}}},
                                          {**woo, "journeys": {"checkout_recovery": {}}}]}, environ={}).stores
    # a Shopify order names its checkout, so a completed checkout's run ends at once; a WooCommerce cart waits for its order
    assert (shop.journeys["checkout_recovery"].completed_wait_minutes, wc.journeys["checkout_recovery"].completed_wait_minutes) == (0, 120)
    with pytest.raises(ConfigError) as err:
        parse_settings(base(journeys={"order_confirmation": {"after_payment": True},
                                      "checkout_recovery": {"completed_wait_minutes": 30}}), environ={})
    assert any(p.startswith("stores[0]") and "order_confirmation.after_payment: a WooCommerce setting" in p for p in err.value.problems), \
        err.value.problems
    assert any("checkout_recovery.completed_wait_minutes: a WooCommerce setting" in p for p in err.value.problems), err.value.problems


def test_a_cod_confirm_status_on_a_shopify_store_is_refused_at_load():
    """A Shopify order has no status to set (its financial and fulfilment statuses are the platform's): loaded, every
    Confirm queued a status write-back Shopify cannot take, and each became a failed write-back and a hand-off for the
    COD desk, "do it by hand", for an order that was fine. Said at load, where the store's key is."""
    with pytest.raises(ConfigError) as err:
        parse_settings(base(journeys={"cod_confirmation": {"confirm_status": "processing"}}), environ={})
    assert any(p.startswith("stores[0]") and "cod_confirmation.confirm_status: a WooCommerce setting" in p for p in err.value.problems), \
        err.value.problems


@pytest.mark.parametrize("status", ["on-hold", "wc-on-hold", "pending"])
def test_a_cod_confirm_status_before_processing_loads_with_a_warning(status):
    """WooCommerce's COD gateway leaves its orders in processing (on-hold only with a downloadable item), and the
    status write-back never moves an order back (adapters/woocommerce/client.py ``refusal``): with ``confirm_status =
    "on-hold"`` every Confirm of an order in processing was a failed write-back and a hand-off for the COD desk ("not
    moved to on-hold: that would move it back from processing; do it by hand"). But a store whose COD orders arrive
    pending or in a plugin's own status moves them forward to on-hold, which works: refused at load (7a3e527), its
    setup stopped starting after an upgrade. Now it loads, and check-config (and the log at start) says when it fails,
    naming what works instead."""
    woo = {"key": "w", "platform": "woocommerce", "site_url": "https://w.example", "webhook_secret": "woo-s",
           "consumer_key": "ck", "consumer_secret": "cs"}
    loaded = parse_settings({"stores": [{**woo, "journeys": {"cod_confirmation": {"confirm_status": status}}}]}, environ={})
    assert loaded.stores[0].journeys["cod_confirmation"].confirm_status == status.removeprefix("wc-")
    [warning] = loaded.warnings()
    assert warning.startswith("stores[w].journeys.cod_confirmation.confirm_status"), warning
    assert "a COD order that arrives in processing" in warning and "cannot be moved back" in warning, warning
    assert "use 'processing'" in warning, warning
    ok = parse_settings({"stores": [{**woo, "journeys": {"cod_confirmation": {"confirm_status": "processing"}}}]}, environ={})
    assert ok.stores[0].journeys["cod_confirmation"].confirm_status == "processing"
    assert ok.warnings() == []
    off = {"cod_confirmation": {"confirm_status": "on-hold", "enabled": False}}
    assert parse_settings({"stores": [{**woo, "journeys": off}]}, environ={}).warnings() == []


def test_check_config_says_a_cod_confirm_status_before_processing_and_exits_0(tmp_path):
    """The store whose COD orders sit in a plugin's status and are confirmed to on-hold starts as before; check-config
    prints the warning and does not fail."""
    from typer.testing import CliRunner

    from connector.cli import app

    path = tmp_path / "storeloop.toml"
    path.write_text('''[[stores]]
key = "w"
platform = "woocommerce"
site_url = "https://w.example"
webhook_secret = "woo-s"
consumer_key = "ck"
consumer_secret = "cs"
[stores.journeys.cod_confirmation]
confirm_status = "on-hold"
''')
    result = CliRunner().invoke(app, ["check-config", str(path)])
    assert result.exit_code == 0, result.output
    assert "warning:" in result.output and "confirm_status 'on-hold' comes before processing" in " ".join(result.output.split())


def test_journey_timings_that_contradict_each_other_are_config_errors():
    data = base(journeys={
        "checkout_recovery": {"ladder_minutes": [0, 1440, 360], "discount_code": "BACK10"},  # the third due before the second
        "cod_confirmation": {"reminder_hours": [6, 48], "answer_window_hours": 24},  # a reminder after the deadline
    })
    with pytest.raises(ConfigError) as err:
        parse_settings(data, environ={})
    problems = "\n".join(err.value.problems)
    assert "checkout_recovery: ladder_minutes must be zero or more and increasing, got [0.0, 1440.0, 360.0]" in problems, problems
    assert "cod_confirmation: reminder_hours: the last reminder (48 h) must come before answer_window_hours (24 h)" in problems
    with pytest.raises(ConfigError) as err:
        parse_settings(base(journeys={"checkout_recovery": {"ladder_minutes": [0, 360], "discount_code": "BACK10"}}), environ={})
    assert "discount_from_step 3: the ladder has 2 reminder(s), so discount_code 'BACK10' would never be offered" in "\n".join(err.value.problems)
    ok = parse_settings(base(journeys={"checkout_recovery": {"ladder_minutes": [0, 360], "discount_code": "BACK10", "discount_from_step": 2},
                                       "cod_confirmation": {"reminder_hours": [6], "answer_window_hours": 24}}), environ={})
    assert ok.stores[0].journeys["checkout_recovery"].discount_from_step == 2


def test_a_cart_ladder_the_marketing_cap_would_cut_short_is_said_at_load(tmp_path, caplog):
    """Three reminders in a day against two marketing messages a week: the third (the discount) would
    be skipped as frequency_cap every time, silently. It is said by check-config and logged at start,
    but the connector still starts (a config that ran before an upgrade keeps running)."""
    from typer.testing import CliRunner

    from connector.cli import app

    tight = parse_settings(base(journeys={"checkout_recovery": {"ladder_minutes": [0, 360, 1440], "discount_code": "BACK10"}},
                                policy={"marketing_cap": 2}), environ={})
    [warning] = tight.warnings()
    assert ("ladder_minutes sends 3 reminders within 7 day(s) but [stores.policy] marketing_cap allows 2 marketing message(s) "
            "per contact in that time") in warning
    # the window may start at any step: [0, 25 h, 26 h] against 1 a day holds 2 in one day
    [late] = parse_settings(base(journeys={"checkout_recovery": {"ladder_minutes": [0, 1500, 1560]}},
                                 policy={"marketing_cap": 1, "marketing_cap_days": 1}), environ={}).warnings()
    assert "sends 2 reminders within 1 day(s)" in late
    # the defaults fit; a ladder spread past the cap's window fits; a disabled journey is not checked
    assert parse_settings(base(journeys={"checkout_recovery": {}}), environ={}).warnings() == []
    assert parse_settings(base(journeys={"checkout_recovery": {"ladder_minutes": [0, 1440, 11520]}}, policy={"marketing_cap": 2}),
                          environ={}).warnings() == []
    assert parse_settings(base(journeys={"checkout_recovery": {"enabled": False}}, policy={"marketing_cap": 1}), environ={}).warnings() == []
    path = tmp_path / "tight.toml"
    path.write_text(
        '[[stores]]\nkey = "a"\nplatform = "shopify"\nshop_domain = "a.myshopify.com"\nwebhook_secret = "s"\n'
        '[stores.policy]\nmarketing_cap = 2\n[stores.journeys.checkout_recovery]\nladder_minutes = [0, 360, 1440]\n')
    with caplog.at_level(logging.WARNING, logger="storeloop.config"):
        result = CliRunner().invoke(app, ["check-config", str(path)])
    assert result.exit_code == 0, result.output
    assert "marketing_cap allows 2" in result.output and "valid" in result.output
    assert any("marketing_cap allows 2" in r.getMessage() for r in caplog.records)


def test_the_example_lists_every_key_outside_the_journeys():
    """config.example.toml says "Every key is listed here": an engineer learns the settings from it (the journeys'
    full settings are their config models, as the README says)."""
    import re

    from connector.config import HandoffSettings, PolicySettings, Settings, StageSettings, TemplateButton, TemplateSettings

    text = EXAMPLE.read_text()
    models = [Settings.model_fields[s].annotation for s in ("server", "database", "worker", "whatsapp")]
    models += [ShopifyStore, WooCommerceStore, PolicySettings, HandoffSettings, StageSettings, TemplateSettings, TemplateButton]
    missing = sorted({key for model in models for key in model.model_fields  # type: ignore[union-attr]
                      if not re.search(rf"(^|[\s#\[{{,]){key} =|\.{key}[\].]", text, re.MULTILINE)})
    assert missing == [], missing
