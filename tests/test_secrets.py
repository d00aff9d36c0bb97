"""Secrets at rest: install credentials Fernet-encrypted in the database, key rotation, a clear
refusal without a key, and nothing secret in logs, API answers or check-config."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select, text
from typer.testing import CliRunner

from connector.cli import app as cli_app
from connector.config import parse_settings
from connector.install.credentials import woocommerce_store_with_credentials
from connector.secrets import (
    SECRET_KEYS_ENV,
    SHOPIFY_ACCESS_TOKEN,
    WOO_CONSUMER_KEY,
    WOO_CONSUMER_SECRET,
    SecretBox,
    SecretsUnavailable,
    generate_key,
    get_credentials,
    put_credentials,
    rotate_credentials,
    stored_kinds,
)
from connector.storage.inbox import sync_stores
from connector.storage.models import StoreCredential
from tests.conftest import SECRETS, make_settings, settings_dict
from tests.helpers import running_app

T = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)
TOKEN = "shpat_0123456789abcdef0123456789abcdef"
runner = CliRunner()


def stores(db) -> dict[str, int]:
    return sync_stores(db, [("shop-a", "shopify"), ("shop-b", "shopify"), ("woo", "woocommerce")])


def raw_values(db) -> list[str]:
    with db.engine.connect() as conn:
        return list(conn.execute(select(StoreCredential.value)).scalars())


# ---- the box -----------------------------------------------------------------------------


def test_the_box_round_trips_and_never_shows_its_keys():
    key = generate_key()
    box = SecretBox([key])
    token = box.encrypt(TOKEN)
    assert TOKEN not in token and box.decrypt(token) == TOKEN
    assert key not in repr(box) and "1 key" in repr(box)


def test_no_key_means_no_box_and_a_clear_refusal():
    assert SecretBox.from_env({}) is None
    assert SecretBox.from_env({SECRET_KEYS_ENV: " "}) is None
    with pytest.raises(SecretsUnavailable, match=f"{SECRET_KEYS_ENV} is not set.*storeloop new-secret-key.*plain text"):
        SecretBox.require({})


def test_a_malformed_key_is_named_by_position_not_shown():
    bad = "not-a-fernet-key-but-secretish"
    with pytest.raises(SecretsUnavailable) as info:
        SecretBox.from_env({SECRET_KEYS_ENV: f"{generate_key()},{bad}"})
    assert "key #2 is not a Fernet key" in str(info.value) and bad not in str(info.value)


def test_a_value_from_a_dropped_key_is_reported_not_garbled():
    old, new = generate_key(), generate_key()
    token = SecretBox([old]).encrypt(TOKEN)
    with pytest.raises(SecretsUnavailable, match="rotate-secrets"):
        SecretBox([new]).decrypt(token)


# ---- stored credentials --------------------------------------------------------------------


def test_credentials_are_encrypted_in_the_database(db):
    ids = stores(db)
    box = SecretBox([generate_key()])
    expires = T + timedelta(hours=24)
    put_credentials(db, box, ids["shop-a"], {SHOPIFY_ACCESS_TOKEN: (TOKEN, expires)}, T)
    put_credentials(db, box, ids["woo"], {WOO_CONSUMER_KEY: ("ck_abcdef123456", None), WOO_CONSUMER_SECRET: ("cs_fedcba654321", None)}, T)
    for raw in raw_values(db):
        assert TOKEN not in raw and "ck_abcdef" not in raw and "cs_fedcba" not in raw
        assert raw.startswith("gAAAAA")  # a Fernet token
    with db.engine.connect() as conn:  # nothing readable anywhere in the table's text either
        dump = " ".join(str(r) for r in conn.execute(text("SELECT * FROM store_credentials")))
    assert TOKEN not in dump
    got = get_credentials(db, box, ids["shop-a"])
    assert got[SHOPIFY_ACCESS_TOKEN].value == TOKEN and got[SHOPIFY_ACCESS_TOKEN].expires_at == expires
    assert TOKEN not in repr(got)
    assert stored_kinds(db) == {ids["shop-a"]: {SHOPIFY_ACCESS_TOKEN}, ids["woo"]: {WOO_CONSUMER_KEY, WOO_CONSUMER_SECRET}}
    # upsert: one row per (store, kind)
    put_credentials(db, box, ids["shop-a"], {SHOPIFY_ACCESS_TOKEN: ("shpat_second", None)}, T)
    assert get_credentials(db, box, ids["shop-a"])[SHOPIFY_ACCESS_TOKEN].value == "shpat_second"
    assert len(raw_values(db)) == 3


def test_rotation_re_encrypts_everything_with_the_new_key(db):
    ids = stores(db)
    old, new = generate_key(), generate_key()
    put_credentials(db, SecretBox([old]), ids["shop-a"], {SHOPIFY_ACCESS_TOKEN: (TOKEN, None)}, T)
    put_credentials(db, SecretBox([old]), ids["woo"], {WOO_CONSUMER_KEY: ("ck_1", None), WOO_CONSUMER_SECRET: ("cs_1", None)}, T)
    before = raw_values(db)
    assert rotate_credentials(db, SecretBox([new, old])) == 3
    after = raw_values(db)
    assert set(before).isdisjoint(after)
    only_new = SecretBox([new])
    assert get_credentials(db, only_new, ids["shop-a"])[SHOPIFY_ACCESS_TOKEN].value == TOKEN
    with pytest.raises(SecretsUnavailable):
        get_credentials(db, SecretBox([old]), ids["shop-a"])  # the old key alone no longer reads them


def test_rotation_is_all_or_nothing(db):
    ids = stores(db)
    a, b, c = generate_key(), generate_key(), generate_key()
    put_credentials(db, SecretBox([a]), ids["shop-a"], {SHOPIFY_ACCESS_TOKEN: (TOKEN, None)}, T)
    put_credentials(db, SecretBox([b]), ids["shop-b"], {SHOPIFY_ACCESS_TOKEN: (TOKEN, None)}, T)
    before = raw_values(db)
    with pytest.raises(SecretsUnavailable):
        rotate_credentials(db, SecretBox([c, a]))  # b's value cannot be read: nothing is changed
    assert raw_values(db) == before


def test_rotate_secrets_command(tmp_path: Path, monkeypatch):
    from connector.storage.db import Database

    url = f"sqlite:///{tmp_path / 'r.db'}"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[database]\nurl = "{url}"\n')
    monkeypatch.delenv(SECRET_KEYS_ENV, raising=False)
    refused = runner.invoke(cli_app, ["rotate-secrets", "--config", str(cfg)])
    assert refused.exit_code == 2 and SECRET_KEYS_ENV in refused.output
    old, new = generate_key(), generate_key()
    monkeypatch.setenv(SECRET_KEYS_ENV, old)
    assert runner.invoke(cli_app, ["migrate", "--config", str(cfg)]).exit_code == 0
    db = Database.from_url(url)
    sid = sync_stores(db, [("shop-a", "shopify")])["shop-a"]
    put_credentials(db, SecretBox([old]), sid, {SHOPIFY_ACCESS_TOKEN: (TOKEN, None)}, T)
    monkeypatch.setenv(SECRET_KEYS_ENV, f"{new},{old}")
    done = runner.invoke(cli_app, ["rotate-secrets", "--config", str(cfg)])
    assert done.exit_code == 0, done.output
    assert "1 stored credential(s) re-encrypted" in done.output and old not in done.output and new not in done.output
    assert get_credentials(db, SecretBox([new]), sid)[SHOPIFY_ACCESS_TOKEN].value == TOKEN
    db.dispose()


def test_new_secret_key_prints_a_usable_key():
    out = runner.invoke(cli_app, ["new-secret-key"])
    assert out.exit_code == 0
    Fernet(out.output.strip().encode())


# ---- precedence: a stored credential over (or in place of) the TOML one ---------------------------


def test_stored_woocommerce_keys_take_precedence_over_the_configured_ones(db):
    data = settings_dict("sqlite://")
    data["stores"][2] |= {"consumer_key": "ck_from_toml", "consumer_secret": "cs_from_toml"}
    woo = parse_settings(data, environ={}).store("woo")
    ids = stores(db)
    box = SecretBox([generate_key()])
    assert woocommerce_store_with_credentials(db, box, woo).consumer_key.get_secret_value() == "ck_from_toml"
    put_credentials(db, box, ids["woo"], {WOO_CONSUMER_KEY: ("ck_stored", None), WOO_CONSUMER_SECRET: ("cs_stored", None)}, T)
    effective = woocommerce_store_with_credentials(db, box, woo)
    assert effective.consumer_key.get_secret_value() == "ck_stored" and effective.consumer_secret.get_secret_value() == "cs_stored"
    assert "cs_stored" not in repr(effective)
    with pytest.raises(SecretsUnavailable):  # stored, but no key to read them: said, not ignored
        woocommerce_store_with_credentials(db, None, woo)


def test_the_runtime_writes_back_with_stored_keys(db_url, monkeypatch):
    from adapters.woocommerce.client import WooCommerceClient

    key = generate_key()
    monkeypatch.setenv(SECRET_KEYS_ENV, key)
    settings = make_settings(db_url)
    with running_app(settings) as (_client, runtime):
        sid = runtime.store_ids["woo"]
        assert not isinstance(runtime.writers[sid], WooCommerceClient)  # no keys: dry run
        put_credentials(runtime.db, SecretBox([key]), sid, {WOO_CONSUMER_KEY: ("ck_s", None), WOO_CONSUMER_SECRET: ("cs_s", None)}, T)
    with running_app(settings) as (_client, runtime):
        writer = runtime.writers[runtime.store_ids["woo"]]
        assert isinstance(writer, WooCommerceClient) and writer._ck == "ck_s"


# ---- nothing secret shown ---------------------------------------------------------------------


def test_check_config_shows_no_install_secret(tmp_path: Path, monkeypatch):
    values = {"SL_CLIENT_SECRET": "shpss_client_secret_value_123", "SL_TOKEN": "shpat_legacy_token_value_456",
              "SL_CK": "ck_consumer_key_value_789", "SL_CS": "cs_consumer_secret_value_012", "SL_WH": "webhook-secret-345",
              "SL_WOO_WH": "woo-webhook-secret-678"}
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    cfg = tmp_path / "c.toml"
    cfg.write_text("""
[server]
public_url = "https://connector.example"
[[stores]]
key = "shop-a"
platform = "shopify"
shop_domain = "shop-a.myshopify.com"
webhook_secret = "env:SL_WH"
client_id = "client-id-a"
client_secret = "env:SL_CLIENT_SECRET"
access_token = "env:SL_TOKEN"
[[stores]]
key = "woo"
platform = "woocommerce"
site_url = "https://bloom.example"
webhook_secret = "env:SL_WOO_WH"
consumer_key = "env:SL_CK"
consumer_secret = "env:SL_CS"
""")
    out = runner.invoke(cli_app, ["check-config", str(cfg)])
    assert out.exit_code == 0, out.output
    for secret in values.values():
        assert secret not in out.output
    assert "https://connector.example" in out.output  # public_url is shown: not a secret


def test_install_refuses_without_a_key(tmp_path: Path, monkeypatch):
    monkeypatch.delenv(SECRET_KEYS_ENV, raising=False)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"""
[server]
public_url = "https://connector.example"
[database]
url = "sqlite:///{tmp_path / 'k.db'}"
[[stores]]
key = "shop-a"
platform = "shopify"
shop_domain = "shop-a.myshopify.com"
webhook_secret = "w"
client_id = "cid"
client_secret = "shpss_x"
[[stores]]
key = "woo"
platform = "woocommerce"
site_url = "https://bloom.example"
webhook_secret = "woo-w"
consumer_key = "ck_x"
consumer_secret = "cs_x"
""")
    for platform, key in (("shopify", "shop-a"), ("woocommerce", "woo")):
        out = runner.invoke(cli_app, ["install", platform, "--config", str(cfg), "--store", key])
        assert out.exit_code == 2, out.output
        assert "refusing to install" in out.output and SECRET_KEYS_ENV in out.output and "plain text" in out.output


def test_admin_api_answers_carry_no_install_secret(db_url, monkeypatch):
    key = generate_key()
    monkeypatch.setenv(SECRET_KEYS_ENV, key)
    settings = make_settings(db_url)
    with running_app(settings) as (client, runtime):
        put_credentials(runtime.db, SecretBox([key]), runtime.store_ids["shop-a"], {SHOPIFY_ACCESS_TOKEN: (TOKEN, None)}, T)
        headers = {"Authorization": f"Bearer {SECRETS['admin']}"}
        for path in ("/api/stores/shop-a/inbox", "/api/stores/shop-a/handoffs", "/healthz", "/readyz"):
            answer = client.get(path, headers=headers)
            assert TOKEN not in answer.text and key not in answer.text
