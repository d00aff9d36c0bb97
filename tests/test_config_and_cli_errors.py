"""What a store's engineer sees for a config typo or a CLI misuse: a short message naming what is
wrong and where, the right exit code (2: configuration or usage, 3: database not ready), never a
Python traceback and never a secret."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from connector.cli import app

runner = CliRunner()

DB_PASSWORD = "pg-pass-never-shown-7"
STORES = """
[[stores]]
key = "acme"
platform = "shopify"
shop_domain = "acme.myshopify.com"
webhook_secret = "whsec-never-shown-1"
access_token = "shpat-never-shown-2"
[stores.journeys.reorder]

[[stores]]
key = "bloom"
platform = "woocommerce"
site_url = "https://bloom.example"
webhook_secret = "wc-never-shown-3"
consumer_key = "ck_never_shown_4"
consumer_secret = "cs_never_shown_5"
"""
SECRETS = ("whsec-never-shown-1", "shpat-never-shown-2", "wc-never-shown-3", "ck_never_shown_4", "cs_never_shown_5", DB_PASSWORD)


def _config(tmp_path: Path, database: str, *, extra: str = "", stores: str = STORES) -> Path:
    path = tmp_path / "storeloop.toml"
    path.write_text(f"{extra}\n[database]\n{database}\n{stores}")
    return path


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the socket is: nothing answers there


def _plain(result) -> str:
    return " ".join(result.output.split())  # rich wraps long lines at the terminal width


def _no_traceback(result) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    for secret in SECRETS:
        assert secret not in result.output


# every command that opens the database, with what it needs besides
DB_COMMANDS = {
    "migrate": ["migrate"],
    "serve": ["serve"],
    "worker": ["worker"],
    "sync": ["sync", "--store", "acme"],
    "replay": ["replay", "--store", "acme"],
    "replay --timers": ["replay", "--store", "acme", "--timers"],
    "report": ["report", "--store", "acme"],
    "windows": ["windows", "--store", "acme"],
    "install shopify": ["install", "shopify", "--store", "acme"],
    "install woocommerce": ["install", "woocommerce", "--store", "bloom"],
    "rotate-secrets": ["rotate-secrets"],
    "customer export": ["customer", "export", "--store", "acme", "--phone", "+919812345678"],
    "customer redact": ["customer", "redact", "--store", "acme", "--phone", "+919812345678", "--yes"],
}


@pytest.mark.parametrize("command", DB_COMMANDS, ids=list(DB_COMMANDS))
def test_a_database_that_does_not_answer_is_named_without_its_password_and_exits_3(tmp_path, monkeypatch, command):
    """PostgreSQL down (or a wrong port): one line naming the URL, password hidden, and what the server
    said; not the driver's 400-line traceback."""
    from connector.secrets import generate_key

    monkeypatch.setenv("STORELOOP_SECRET_KEYS", generate_key())
    port = _closed_port()
    config = _config(tmp_path, f'url = "postgresql+psycopg://storeloop:{DB_PASSWORD}@127.0.0.1:{port}/storeloop"',
                     extra='[server]\npublic_url = "https://connector.example"')
    result = runner.invoke(app, [*DB_COMMANDS[command], "--config", str(config)])
    _no_traceback(result)
    assert result.exit_code == 3, result.output
    out = _plain(result)
    assert f"cannot open the database postgresql+psycopg://storeloop:***@127.0.0.1:{port}/storeloop" in out
    assert "Connection refused" in out


def test_a_sqlite_file_in_a_folder_that_does_not_exist_says_which_folder(tmp_path):
    missing = tmp_path / "no-such-folder"
    config = _config(tmp_path, f'url = "sqlite:///{missing}/storeloop.db"')
    result = runner.invoke(app, ["report", "--store", "acme", "--config", str(config)])
    _no_traceback(result)
    assert result.exit_code == 3
    assert f"unable to open database file (the folder {missing} does not exist)" in _plain(result)


def test_sync_of_a_store_without_credentials_blames_the_database_not_the_credentials(tmp_path):
    """Whether install stored a token is read from the database: when that cannot be reached, saying
    "no API credentials: set access_token" sends the engineer the wrong way."""
    stores = '[[stores]]\nkey = "acme"\nplatform = "shopify"\nshop_domain = "acme.myshopify.com"\nwebhook_secret = "s"\n'
    config = _config(tmp_path, f'url = "postgresql+psycopg://u:{DB_PASSWORD}@127.0.0.1:{_closed_port()}/x"', stores=stores)
    result = runner.invoke(app, ["sync", "--store", "acme", "--config", str(config)])
    _no_traceback(result)
    assert result.exit_code == 3
    assert "cannot open the database" in _plain(result) and "no API credentials" not in result.output


@pytest.mark.parametrize(("url", "says"), [
    ("sqlite//storeloop.db", "is not a database URL"),
    ("sqlite://storeloop.db", "three slashes"),
    ("sqlite+aiosqlite:///storeloop.db", "write sqlite:///"),
    (f"postgresql+pyscopg://u:{DB_PASSWORD}@127.0.0.1:5432/storeloop", "write postgresql+psycopg://"),
    (f"postgresql+psycopg2://u:{DB_PASSWORD}@127.0.0.1:5432/storeloop", "write postgresql+psycopg://"),
    (f"postgres://u:{DB_PASSWORD}@127.0.0.1:5432/storeloop", "postgresql+psycopg://"),
    (f"postgresql+psycopg://u:{DB_PASSWORD}@127.0.0.1:54320000/storeloop", "port"),
    (f"postgresql+psycopg://u:{DB_PASSWORD}@127.0.0.1:pg/storeloop", "is not a database URL"),
])
def test_check_config_catches_a_misspelt_database_url_without_echoing_it(tmp_path, url, says):
    """A URL SQLAlchemy cannot use passed check-config, then every command died in a traceback
    (NoSuchModuleError, "Could not parse SQLAlchemy URL"); `sqlite://file.db` would be refused too late."""
    config = _config(tmp_path, f'url = "{url}"')
    result = runner.invoke(app, ["check-config", str(config)])
    _no_traceback(result)
    assert result.exit_code == 2, result.output
    out = _plain(result)
    assert "database.url:" in out and says in out
    assert url not in out  # the URL can hold a password: never quoted


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///storeloop.db", "sqlite:////var/lib/storeloop/x.db", "sqlite+pysqlite:///x.db",
                                 "postgresql+psycopg://u:p@db.internal:5432/storeloop?sslmode=require",
                                 "postgresql://u:p@127.0.0.1/storeloop", "postgresql+psycopg:///storeloop"])
def test_database_urls_that_work_still_load(url):
    from connector.config import parse_settings

    assert parse_settings({"database": {"url": url}}, environ={}).database.url.split("://")[0] in (
        "sqlite", "sqlite+pysqlite", "postgresql+psycopg")


@pytest.mark.parametrize("args", [
    ["serve", "--port", "70000"], ["serve", "--port", "0"], ["serve", "--workers", "0"],
    ["windows", "--store", "acme", "--days", "1e300"], ["windows", "--store", "acme", "--days", "-1"],
    ["windows", "--store", "acme", "--limit", "-5"],
    ["sync", "--store", "acme", "--since", "99999999999d"], ["replay", "--store", "acme", "--since", "99999999999h"],
    ["demo", "--days", "0"], ["demo", "--scale", "0"], ["demo", "--scale", "-1"], ["demo", "--port", "70000"],
], ids=" ".join)
def test_an_option_out_of_range_is_a_usage_error_naming_it(tmp_path, args):
    """Exit 2 naming the option, before anything starts: `serve --port 70000` used to start on
    port 4464 (70000 wrapped by the kernel) while saying 70000; others died in a traceback.

    Run as the engineer runs it, in a process of its own: a command that started anyway (a server,
    a demo) would not end, and the timeout says so."""
    import subprocess
    import sys

    config = _config(tmp_path, f'url = "sqlite:///{tmp_path / "s.db"}"')
    command = [sys.executable, "-m", "connector", *args, *([] if args[0] == "demo" else ["--config", str(config)])]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path,
                            env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"})
    said = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 2, said
    assert "Traceback" not in said and not any(secret in said for secret in SECRETS)
    assert args[-2] in said


def test_a_demo_too_short_for_any_order_says_so_instead_of_a_traceback():
    """`demo --days 1 --scale 0.001` places no order; the end of the run asked for its first buyer (StopIteration)."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "connector", "demo", "--days", "1", "--scale", "0.001"],
                            capture_output=True, text=True, timeout=300, env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    assert "no order was placed in 1 simulated day(s) at --scale 0.001" in result.stdout


def _migrated(tmp_path: Path) -> Path:
    config = _config(tmp_path, f'url = "sqlite:///{tmp_path / "s.db"}"')
    assert runner.invoke(app, ["migrate", "--config", str(config)]).exit_code == 0
    return config


@pytest.mark.parametrize(("args", "shown"), [
    (["report", "--store", "[/bold]"], "unknown store '[/bold]' (stores: acme, bloom)"),
    (["sync", "--store", "[red]acme"], "unknown store '[red]acme'"),
    (["install", "shopify", "--store", "[/x]"], "no shopify store '[/x]'"),
    (["report", "--store", "acme", "--week", "[/x]"], "'[/x]' is not an ISO week"),
    (["templates", "export", "--store", "nope"], "unknown store 'nope' (stores: acme, bloom)"),
    (["windows", "--store", "bloom"], "add [stores.journeys.reorder] to the configuration"),
])
def test_what_the_engineer_typed_is_shown_as_typed(tmp_path, args, shown):
    """Rich read a typed `[/x]` as markup and died (MarkupError), or ate `[red]`; `templates export`
    of a store that is not configured printed `[]` and exit 0; the windows hint lost its `[stores...]`."""
    config = _migrated(tmp_path)
    result = runner.invoke(app, [*args, "--config", str(config)])
    _no_traceback(result)
    assert result.exit_code == 2, result.output
    assert shown in _plain(result)


def test_check_config_of_a_path_with_brackets_names_it(tmp_path):
    result = runner.invoke(app, ["check-config", str(tmp_path / "[x]" / "missing.toml")])
    _no_traceback(result)
    assert result.exit_code == 2
    assert f"{tmp_path / '[x]' / 'missing.toml'}: invalid configuration" in _plain(result)


def test_customer_export_to_a_folder_that_does_not_exist_is_a_usage_error(tmp_path):
    config = _migrated(tmp_path)
    target = tmp_path / "no-such-folder" / "export.json"
    result = runner.invoke(app, ["customer", "export", "--store", "acme", "--phone", "+919812345678", "--out", str(target),
                                 "--config", str(config)])
    _no_traceback(result)
    assert result.exit_code == 2, result.output
    assert f"cannot write {target}: No such file or directory" in _plain(result)


@pytest.mark.parametrize(("option", "value", "shown"), [
    ("--phone", "not a phone", "'not a phone' is not a phone number"),
    ("--email", "someone-at-example.com", "'someone-at-example.com' is not an email address"),
    ("--customer-id", "#1001", "'#1001' is not a customer id"),
])
def test_customer_export_of_an_unreadable_identifier_says_so_not_nothing_stored(tmp_path, option, value, shown):
    """A privacy request answered "no contact or order matched" for a phone that is no phone at all
    tells the store owner the customer has no data; `customer redact` already refused it."""
    config = _migrated(tmp_path)
    result = runner.invoke(app, ["customer", "export", "--store", "acme", option, value, "--config", str(config)])
    _no_traceback(result)
    assert result.exit_code == 2, result.output
    assert shown in _plain(result) and "no contact or order matched" not in result.output


EXAMPLE = Path(__file__).resolve().parents[1] / "config.example.toml"
EXAMPLE_ENV = {"STORELOOP_ADMIN_TOKEN": "adm-tok-1", "WHATSAPP_APP_SECRET": "meta-app-secret-1", "WHATSAPP_VERIFY_TOKEN": "verify-tok-1",
               "ACME_SHOPIFY_SECRET": "shpss_acme_1", "BLOOM_WC_SECRET": "wc_bloom_1"}


def _example_with(tmp_path: Path, monkeypatch, old: str, new: str) -> list[str]:
    """check-config of config.example.toml with one edit: the problem lines it prints."""
    for k, v in EXAMPLE_ENV.items():
        monkeypatch.setenv(k, v)
    text = EXAMPLE.read_text()
    assert old in text, old
    path = tmp_path / "storeloop.toml"
    path.write_text(text.replace(old, new, 1))
    result = runner.invoke(app, ["check-config", str(path)], terminal_width=400)
    _no_traceback(result)
    assert result.exit_code == 2, result.output
    for secret in EXAMPLE_ENV.values():
        assert secret not in result.output
    return [line.strip().removeprefix("- ") for line in result.output.splitlines()[1:] if line.strip()]


@pytest.mark.parametrize(("old", "new", "expected"), [
    # the key path of the very setting, the value quoted where it is no secret, no "Value error, "
    ('quiet_hours = "21:00-09:00"', 'quiet_hours = "25:00-07:00"',
     "stores[0].policy.quiet_hours: '25:00-07:00' is not 'HH:MM-HH:MM' (24 h clock) or ''"),
    ('timezone = "Asia/Kolkata"', 'timezone = "India"',
     "stores[0].timezone: unknown time zone 'India' (use an IANA name like 'Asia/Kolkata')"),
    ("delay_minutes = 0 ", "delay_minute = 0 ", "stores[0].journeys.cod_confirmation.delay_minute: unknown key (typo?)"),
    ('no_answer_action = "tag"', 'no_answer_action = "delete"',
     "stores[0].journeys.cod_confirmation.no_answer_action: Input should be 'tag', 'cancel' or 'none'"),
    ("[stores.journeys.delivery]", "[stores.journeys.deliveries]",
     "stores[0].journeys.deliveries: unknown journey (known: checkout_recovery, cod_confirmation, delivery, "
     "order_confirmation, payment_recovery, reorder)"),
    ("[stores.journeys.order_confirmation]       #", "[stores.journeys.order_confirmation]\nafter_payment = true\n#",
     "stores[0].journeys.order_confirmation.after_payment: a WooCommerce setting (a Shopify order exists once its checkout "
     "is complete, and is confirmed as placed)"),
    ('key = "bloom"', 'key = "acme"', "stores[1].key: 'acme' is used by more than one store (also stores[0])"),
    ('whatsapp_phone_number_id = "106540352242922"', 'whatsapp_phone_number_id = "277321005464405"',
     "stores[1].whatsapp_phone_number_id: '277321005464405' is used by more than one store (also stores[0])"),
    ('# admin_token = "env:ACME_TEAM_TOKEN"', 'admin_token = "env:STORELOOP_ADMIN_TOKEN"',
     "stores[0].admin_token: the admin_token of store 'acme' is also server.admin_token (one token, one scope: give the "
     "store a token of its own)"),
    ('platform = "shopify"', 'platform = "shopfy"', "stores[0].platform: 'shopfy' is not shopify or woocommerce"),
    ('platform = "shopify"\n', '', "stores[0].platform: missing (shopify or woocommerce)"),
    ("[stores.stages.post_purchase]", "[stores.stages.postpurchase]",
     "stores[0].stages.postpurchase: not a stage: Input should be 'entry', 'qualification', 'conversion', 'post_purchase' "
     "or 'retention'"),
    ('app_secret = "env:WHATSAPP_APP_SECRET"', 'app_secret = "env:"',
     "whatsapp.app_secret: 'env:' names no environment variable (write env:NAME)"),
])
def test_each_problem_names_the_setting_itself(tmp_path, monkeypatch, old, new, expected):
    problems = _example_with(tmp_path, monkeypatch, old, new)
    assert expected in problems, problems


def test_a_misspelt_delivery_step_is_refused_not_silently_never_sent(tmp_path, monkeypatch):
    """`steps = ["shiped", ...]` loaded, and no order ever got its "shipped" message."""
    problems = _example_with(tmp_path, monkeypatch, 'steps = ["shipped", "out_for_delivery", "delivered", "failed"]',
                             'steps = ["shiped", "out_for_delivery", "delivered", "failed"]')
    assert ("stores[0].journeys.delivery.steps: 'shiped' is not a delivery step (shipped, out_for_delivery, "
            "ready_for_pickup, delivered, failed)") in problems, problems


@pytest.mark.parametrize(("step", "why"), [
    ("delivery.shiped", "'delivery.shiped' is not a step delivery sends (shipped, out_for_delivery, ready_for_pickup, "
                        "delivered, failed, ndr_reschedule, ndr_update_address, ndr_cancel): this template is never sent"),
    ("cod_confirmaton.ask", "no journey named 'cod_confirmaton' is installed: this template is never sent"),
])
def test_a_template_for_a_step_no_journey_sends_is_a_warning(tmp_path, monkeypatch, step, why):
    """A template bound to a misspelt step loaded without a word, and the step it was meant for went
    out as 'no_template_configured'. A warning (the config still loads, as it did yesterday)."""
    for k, v in EXAMPLE_ENV.items():
        monkeypatch.setenv(k, v)
    path = tmp_path / "storeloop.toml"
    path.write_text(EXAMPLE.read_text().replace('step = "delivery.shipped"', f'step = "{step}"', 1))
    result = runner.invoke(app, ["check-config", str(path)])
    _no_traceback(result)
    assert result.exit_code == 0, result.output
    assert f"warning: stores[acme].templates[1].step: {why}" in _plain(result)


def test_every_step_the_built_in_journeys_send_is_known():
    """The steps a template may name are the ones each journey's decide() sends (see its Send(...) calls)."""
    from connector.config import parse_settings

    steps = ["order_confirmation.sent", "cod_confirmation.ask", "cod_confirmation.reminder_1", "cod_confirmation.reminder_4",
             "cod_confirmation.confirmed", "cod_confirmation.prepaid_offer", "cod_confirmation.cancelled",
             "cod_confirmation.cancel_reason", "delivery.shipped", "delivery.out_for_delivery", "delivery.ready_for_pickup",
             "delivery.delivered", "delivery.failed", "delivery.ndr_reschedule", "delivery.ndr_update_address",
             "delivery.ndr_cancel", "checkout_recovery.first", "checkout_recovery.second", "checkout_recovery.third",
             "payment_recovery.remind", "reorder.reminder", "reorder.follow_up"]
    templates = [{"step": s, "name": "t", "category": "utility", "body_text": "hi"} for s in steps]
    store = {"key": "a", "platform": "shopify", "shop_domain": "a.myshopify.com", "webhook_secret": "s", "templates": templates}
    assert parse_settings({"stores": [store]}, environ={}).warnings() == []


def test_a_webhook_secret_set_to_nothing_is_refused(tmp_path, monkeypatch):
    """`ACME_SHOPIFY_SECRET=` (set, empty) loaded, and an HMAC keyed with nothing is one anyone can
    compute: every forged webhook for the store would have been accepted."""
    monkeypatch.setenv("ACME_EMPTY_SECRET", "")
    problems = _example_with(tmp_path, monkeypatch, 'webhook_secret = "env:ACME_SHOPIFY_SECRET"',
                             'webhook_secret = "env:ACME_EMPTY_SECRET"\nprevious_webhook_secret = "  "')
    assert ("stores[0].webhook_secret: is empty (an environment variable set to nothing?): anyone could sign "
            "this store's webhooks") in problems, problems
    assert ("stores[0].previous_webhook_secret: is empty (an environment variable set to nothing?): anyone could "
            "sign this store's webhooks") in problems, problems


@pytest.mark.parametrize(("bloom", "expected"), [
    ('webhook_secret = "env:ACME_SHOPIFY_SECRET"',
     "stores[1].webhook_secret: is also a webhook secret of store 'acme': whoever runs one store could sign "
     "webhooks as the other (give each WooCommerce store a secret of its own)"),
    ('webhook_secret = "env:BLOOM_WC_SECRET"\nprevious_webhook_secret = "env:ACME_SHOPIFY_SECRET"',
     "stores[1].previous_webhook_secret: is also a webhook secret of store 'acme': whoever runs one store could sign "
     "webhooks as the other (give each WooCommerce store a secret of its own)"),
    ('webhook_secret = "env:BLOOM_WC_SECRET"', None),  # the example as it is: nothing shared
])
def test_a_webhook_secret_a_woocommerce_store_shares_is_refused(tmp_path, monkeypatch, bloom, expected):
    """A WooCommerce store's owner types its webhook secret into WooCommerce: the same secret on another
    store lets them post signed webhooks (orders, refunds, consent) into that store's data."""
    for k, v in EXAMPLE_ENV.items():
        monkeypatch.setenv(k, v)
    path = tmp_path / "storeloop.toml"
    path.write_text(EXAMPLE.read_text().replace('webhook_secret = "env:BLOOM_WC_SECRET"', bloom, 1))
    result = runner.invoke(app, ["check-config", str(path)])
    _no_traceback(result)
    if expected is None:
        assert result.exit_code == 0, result.output
        return
    assert result.exit_code == 2, result.output
    assert expected in _plain(result)


def test_shopify_stores_of_one_app_may_share_its_secret():
    """One Shopify app signs every shop's webhooks with its client secret, and no shop owner knows it."""
    from connector.config import parse_settings

    stores = [{"key": k, "platform": "shopify", "shop_domain": f"{k}.myshopify.com", "webhook_secret": "app-secret"} for k in "ab"]
    assert len(parse_settings({"stores": stores}, environ={}).stores) == 2



def _line_of(text: str, needle: str, *, last: bool = False) -> int:
    return text.count("\n", 0, text.rindex(needle) if last else text.index(needle)) + 1


def test_check_config_names_the_line_each_problem_is_written_at(tmp_path, monkeypatch):
    """With ten stores, `stores[7].timezone` is found by counting tables: each problem also says where it is
    written (a missing key: its table's header), in the second store and in a store's second template too."""
    for k, v in EXAMPLE_ENV.items():
        monkeypatch.setenv(k, v)
    text = EXAMPLE.read_text()
    text = text.replace('timezone = "Europe/Rome"', 'timezone = "Europe/Roma"', 1)  # the second store's
    text = text.replace("abandon_after_minutes = 30", "abandon_after_minute = 30", 1)
    text = text.replace('name = "order_shipped_v1"', 'name = "order shipped"', 1)  # the first store's second template
    text += '\n[[stores]]\nkey = "third"\nplatform = "woocommerce"\nsite_url = "https://third.example"\n'  # no webhook_secret
    path = tmp_path / "storeloop.toml"
    path.write_text(text)
    result = runner.invoke(app, ["check-config", str(path)], terminal_width=400)
    _no_traceback(result)
    assert result.exit_code == 2, result.output
    out = result.output.splitlines()
    for problem, line in (
        ("stores[1].timezone: unknown time zone 'Europe/Roma'", _line_of(text, 'timezone = "Europe/Roma"')),
        ("stores[0].journeys.checkout_recovery.abandon_after_minute: unknown key", _line_of(text, "abandon_after_minute = 30")),
        ("stores[0].templates[1].name:", _line_of(text, 'name = "order shipped"')),
        ("stores[2].webhook_secret: Field required", _line_of(text, "[[stores]]", last=True)),
    ):
        at = next(i for i, shown in enumerate(out) if problem in shown)
        assert out[at + 1].strip() == f"at storeloop.toml line {line}", (problem, out[at:at + 2])


def test_a_line_inside_a_multi_line_string_is_no_key(tmp_path):
    """A template text written over several lines may hold `key = ...` words: the line named is the setting's."""
    path = _config(tmp_path, 'url = "sqlite://"', stores="")
    path.write_text(path.read_text() + '[whatsapp]\nverify_token = """\nbackoff_cap_seconds = 1\n"""\n'
                    'backoff_base_seconds = 30\nbackoff_cap_seconds = 1\n')
    result = runner.invoke(app, ["check-config", str(path)], terminal_width=400)
    assert result.exit_code == 2, result.output
    out = result.output.splitlines()
    at = next(i for i, shown in enumerate(out) if "whatsapp.backoff_cap_seconds" in shown)
    assert out[at + 1].strip() == f"at storeloop.toml line {_line_of(path.read_text(), 'backoff_cap_seconds', last=True)}"


def test_a_windows_file_with_a_next_line_in_a_comment_names_the_right_line(tmp_path):
    """Saved by a Windows editor (CRLF), with a NEL (U+0085) pasted into a comment and a paragraph separator (U+2029)
    in a name: TOML ends a line only at LF, so the problem is at the line the owner sees in her editor."""
    text = ('# shop settings\u0085from the old server\n[database]\nurl = "sqlite://"\n\n[[stores]]\nkey = "acme"\n'
            'platform = "shopify"\nshop_domain = "acme.myshopify.com"\nwebhook_secret = "whsec-1"\n'
            'name = "Acme\u2029Naturals"\ntimezone = "Asia/Kolkatta"\ndefault_country = "IN"\n')
    path = tmp_path / "storeloop.toml"
    path.write_bytes(text.replace("\n", "\r\n").encode("utf-8"))
    result = runner.invoke(app, ["check-config", str(path)], terminal_width=400)
    _no_traceback(result)
    assert result.exit_code == 2, result.output
    out = result.output.splitlines()
    at = next(i for i, shown in enumerate(out) if "stores[0].timezone" in shown)
    assert out[at + 1].strip() == f"at storeloop.toml line {_line_of(text, 'timezone = ')}", out[at:at + 2]


@pytest.mark.parametrize(("old", "new", "expected"), [
    # WhatsApp Manager shows the ids as digits: pasted without quotes, TOML reads a number
    ('whatsapp_phone_number_id = "106540352242922"', "whatsapp_phone_number_id = 106540352242922",
     "stores[0].whatsapp_phone_number_id: is written as a number, but it is text: write it in quotes"),
    ('# business_account_id = "102290129340398"', "business_account_id = 102290129340398",
     "whatsapp.business_account_id: is written as a number, but it is text: write it in quotes"),
    ('api_version = "2026-07"', "api_version = 2026.07",
     "stores[0].api_version: is written as a number, but it is text: write it in quotes"),
    ("[stores.journeys.checkout_recovery]", '[stores.journeys.checkout_recovery]\ndiscount_code = 10',
     "stores[0].journeys.checkout_recovery.discount_code: is written as a number, but it is text: write it in quotes"),
    ('webhook_secret = "env:ACME_SHOPIFY_SECRET"', "webhook_secret = 31415926535",  # a secret: its value never shown
     "stores[0].webhook_secret: is written as a number, but it is text: write it in quotes"),
    ('name = "Acme Naturals"', "name = true", "stores[0].name: is written as true or false, but it is text: write it in quotes"),
])
def test_text_written_as_a_number_says_to_quote_it(tmp_path, monkeypatch, old, new, expected):
    """"Input should be a valid string" left the engineer wondering what was wrong with the id."""
    problems = _example_with(tmp_path, monkeypatch, old, new)
    assert expected in problems, problems
    assert "31415926535" not in "\n".join(problems)
