"""Settings that loaded without a word but could not be right: ``storeloop check-config`` (and
every command that loads the config) now refuses each, naming the setting.

- a quoted number or boolean (``port = "8080"``, ``enabled = "false"``): pydantic converted it
  silently ("false" and "no" read as False, ``1`` as True); TOML has numbers and booleans of its
  own, so a quoted one is a typo. A value read from the environment (``"env:PORT"``) is text by
  nature and still converts;
- pairs that contradict each other: a retry backoff capped below its base, a reorder cycle's
  lower bound above its upper one, quiet hours that start and end at once (which the gate reads
  as none), a word both a STOP and a START keyword, a button payload that both confirms and
  cancels a COD order, a delivery answer in two lists.

Each edit is made to config.example.toml and checked by the real CLI, as its user runs it.
"""

from __future__ import annotations

import tomllib
from datetime import timedelta

import pytest

from connector.cli import app
from connector.config import parse_settings
from tests.test_config_and_cli_errors import EXAMPLE, EXAMPLE_ENV, _example_with, _no_traceback, _plain, runner

REORDER = "# [stores.journeys.reorder]"


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("port = 8080", 'port = "8080"', "server.port: is the text '8080': write the number without quotes"),
    ("auto_migrate = true ", 'auto_migrate = "false" ',
     "database.auto_migrate: is the text 'false': write true or false, without quotes"),
    ("utility_in_quiet_hours = true", "utility_in_quiet_hours = 1",
     "stores[0].policy.utility_in_quiet_hours: must be true or false, not 1"),
    ("marketing_cap = 3 ", "marketing_cap = true ", "stores[0].policy.marketing_cap: must be a number, not true"),
    ("ladder_minutes = [0, 360, 1440]", 'ladder_minutes = [0, "360", 1440]',
     "stores[0].journeys.checkout_recovery.ladder_minutes: item 2 is the text '360': write the number without quotes"),
    ("[stores.journeys.delivery] ", "[stores.journeys.delivery]\nenabled = \"no\"\n#",
     "stores[0].journeys.delivery.enabled: is the text 'no': write true or false, without quotes"),
    ("# order_value_over = 10000", 'order_value_over = { INR = "20000", USD = 250 }',
     "stores[0].handoff.order_value_over: entry INR is the text '20000': write the number without quotes"),
])
def test_a_quoted_number_or_boolean_is_named_not_converted(tmp_path, monkeypatch, old, new, expected):
    problems = _example_with(tmp_path, monkeypatch, old, new)
    assert expected in problems, problems


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("backoff_base_seconds = 2\nbackoff_cap_seconds = 3600", "backoff_base_seconds = 30\nbackoff_cap_seconds = 1",
     "whatsapp.backoff_cap_seconds: 1 is below backoff_base_seconds (30): every retry would wait 1 s and the wait "
     "would never grow; the cap must be at least the base"),
    (REORDER, "[stores.journeys.reorder]\nmin_cycle_days = 90\nmax_cycle_days = 30\n#",
     "stores[0].journeys.reorder.min_cycle_days: 90 is above max_cycle_days (30): every learned cycle would be "
     "max_cycle_days"),
    ('quiet_hours = "21:00-09:00"', 'quiet_hours = "22:00-22:00"',
     "stores[0].policy.quiet_hours: '22:00-22:00' starts and ends at the same time, which is no quiet hours at all: "
     "write '' for none, or the hours messages must wait"),
    ('# stop_words = ["stop", "unsubscribe", "बंद करो"]', 'stop_words = ["stop", "Resume!"]',
     "stores[0].policy.stop_words: 'resume' is in both stop_words and start_words (with the defaults of the one not "
     "set): such a message always opts the customer out"),
    ('cancel_payloads = ["cod_cancel"]', 'cancel_payloads = ["cod_cancel", "cod_confirm"]',
     "stores[0].journeys.cod_confirmation.cancel_payloads: 'cod_confirm' is also in confirm_payloads: a tap on it "
     "would confirm the order"),
    ('cancel_payloads = ["ndr_cancel"]', 'cancel_payloads = ["ndr_cancel", "ndr_reschedule"]',
     "stores[0].journeys.delivery.cancel_payloads: 'ndr_reschedule' is also in reschedule_payloads: a tap on it "
     "would be read as that"),
])
def test_settings_that_contradict_each_other_are_named(tmp_path, monkeypatch, old, new, expected):
    problems = _example_with(tmp_path, monkeypatch, old, new)
    assert expected in problems, problems


def _check(tmp_path, monkeypatch, text: str, env: dict[str, str]):
    for k, v in {**EXAMPLE_ENV, **env}.items():
        monkeypatch.setenv(k, v)
    path = tmp_path / "storeloop.toml"
    path.write_text(text)
    result = runner.invoke(app, ["check-config", str(path)], terminal_width=400)
    _no_traceback(result)
    return result


def test_numbers_read_from_the_environment_and_sound_pairs_still_load(tmp_path, monkeypatch):
    """``"env:NAME"`` is text whatever it holds: a port or a switch read so converts as before, and
    bounds, backoff and keywords that agree pass."""
    text = (EXAMPLE.read_text()
            .replace("port = 8080", 'port = "env:STORELOOP_PORT"', 1)
            .replace("auto_migrate = true ", 'auto_migrate = "env:STORELOOP_AUTO_MIGRATE" ', 1)
            .replace("backoff_cap_seconds = 3600", "backoff_cap_seconds = 2", 1)  # equal to the base: a flat wait
            .replace(REORDER, "[stores.journeys.reorder]\nmin_cycle_days = 30\nmax_cycle_days = 30\n#", 1)
            .replace('# stop_words = ["stop", "unsubscribe", "बंद करो"]', 'stop_words = ["stop"]\nstart_words = ["start"]', 1))
    result = _check(tmp_path, monkeypatch, text, {"STORELOOP_PORT": "9090", "STORELOOP_AUTO_MIGRATE": "false"})
    assert result.exit_code == 0, result.output
    out = _plain(result)
    assert "'port': 9090" in out or '"port": 9090' in out, out
    result = _check(tmp_path, monkeypatch, text, {"STORELOOP_PORT": "eighty", "STORELOOP_AUTO_MIGRATE": "false"})
    assert result.exit_code == 2 and "server.port:" in _plain(result), result.output


def test_a_marketing_journey_with_no_marketing_allowed_is_a_warning(tmp_path, monkeypatch):
    """``marketing_cap = 0`` with reorder on: every reminder skipped as frequency_cap, silently.
    Said (a warning: the config ran before and still loads)."""
    text = (EXAMPLE.read_text().replace("marketing_cap = 3 ", "marketing_cap = 0 ", 1)
            .replace(REORDER, "[stores.journeys.reorder]\n#", 1))
    result = _check(tmp_path, monkeypatch, text, {})
    assert result.exit_code == 0, result.output
    assert ("warning: stores[acme].policy.marketing_cap is 0 but journey reorder sends marketing messages: each is "
            "skipped as frequency_cap; raise marketing_cap or turn the journey off") in _plain(result)


SEND_WITHIN = 'send_within_hours = { "delivery.out_for_delivery" = 6 }'


def test_a_send_within_limit_read_from_the_environment_converts_like_any_number(tmp_path, monkeypatch):
    """``send_within_hours = { reorder = "env:REORDER_HOURS" }``: text by nature, as a port read so; it
    converts (12.5 hours), and text that is no number is named with the table entry it stands for."""
    text = EXAMPLE.read_text()
    assert SEND_WITHIN in text
    text = text.replace(SEND_WITHIN, 'send_within_hours = { reorder = "env:REORDER_HOURS" }', 1)
    result = _check(tmp_path, monkeypatch, text, {"REORDER_HOURS": "12.5"})
    assert result.exit_code == 0, result.output
    policy = parse_settings(tomllib.loads(text), environ={**EXAMPLE_ENV, "REORDER_HOURS": "12.5"}).stores[0].policy
    assert policy.rules().send_within["reorder"] == timedelta(hours=12.5)
    result = _check(tmp_path, monkeypatch, text, {"REORDER_HOURS": "half a day"})
    assert result.exit_code == 2, result.output
    assert ("stores[0].policy.send_within_hours.reorder: the environment gives 'half a day', not a number of hours, "
            "e.g. 6 or 0.5") in _plain(result), result.output
    result = _check(tmp_path, monkeypatch, text, {"REORDER_HOURS": "0"})
    assert result.exit_code == 2 and ("stores[0].policy.send_within_hours.reorder: must be greater than 0 and at most 8760 "
                                      "hours (a year)") in _plain(result), result.output


def test_the_number_reading_cannot_be_set_to_every_few_seconds(tmp_path, monkeypatch):
    """Each read of the number's rating is a Graph API call the sends' allowance pays for too (80007)."""
    problems = _example_with(tmp_path, monkeypatch, "number_quality_hours = 4 ", "number_quality_hours = 0.001 ")
    assert ("worker.number_quality_hours: 0.001 would read the number every 0.06 minutes: 0 turns it off, else at least "
            "0.25 (15 minutes)") in problems, problems


LAST_CALL = """[[stores.templates]]
step = "checkout_recovery.{step}"
name = "cart_last_call_v1"
category = "marketing"
body_text = "Still thinking it over? {{{{1}}}} off with code {{{{2}}}}: {{{{3}}}}"
body = ["checkout.total", "discount.code", "checkout.recovery_url"]

[[stores.templates]]
step = "delivery.shipped\""""


@pytest.mark.parametrize(("step", "code", "warned"), [
    ("third", "# discount_code", "stores[acme].templates[1] (checkout_recovery.third) binds discount.code but journey "
     "checkout_recovery gives none to that step (it has no discount_code): each of its messages is skipped as missing_value; "
     "set the code or take discount.code out of the template"),
    ("second", "discount_code", "stores[acme].templates[1] (checkout_recovery.second) binds discount.code but journey "
     "checkout_recovery gives none to that step (its discount_from_step is 3): each of its messages is skipped as "
     "missing_value; set the code or take discount.code out of the template"),
])
def test_a_cart_template_that_binds_a_discount_the_ladder_never_gives_is_a_warning(tmp_path, monkeypatch, step, code, warned):
    """The example's cart ladder leaves ``discount_code`` commented out; a "last call" template written with
    the code in it was never sent: each reminder of its step was skipped as missing_value, and check-config
    said nothing. The same template on the step the code is given to loads without a word."""
    text = EXAMPLE.read_text()
    assert '[[stores.templates]]\nstep = "delivery.shipped"' in text and '# discount_code = "COMEBACK10"\ndiscount_from_step' in text

    def check(step: str, code: str) -> str:
        edited = (text.replace('[[stores.templates]]\nstep = "delivery.shipped"', LAST_CALL.format(step=step), 1)
                  .replace('# discount_code = "COMEBACK10"\ndiscount_from_step', f'{code} = "COMEBACK10"\ndiscount_from_step', 1))
        result = _check(tmp_path, monkeypatch, edited, {})
        assert result.exit_code == 0, result.output
        return _plain(result)

    assert f"warning: {warned}" in check(step, code)
    assert "binds discount.code" not in check("third", "discount_code")  # the code given, to the third reminder


WITH_DISCOUNT = """[[stores.templates]]
step = "{step}"
name = "with_code_v1"
category = "marketing"
body_text = "{{{{1}}}} off with code {{{{2}}}}"
body = ["{bound}", "discount.code"]

[[stores.templates]]
step = "delivery.shipped\""""


def _never_given(step: str, journey: str, setting: str) -> str:
    return (f"warning: stores[acme].templates[1] ({step}) binds discount.code but journey {journey} gives none to that "
            f"step (it has no {setting}): each of its messages is skipped as missing_value; set the code or take "
            "discount.code out of the template")


@pytest.mark.parametrize(("step", "bound", "block", "settings", "warned"), [
    ("reorder.reminder", "reorder.link", REORDER, "[stores.journeys.reorder]\n{code}#",
     _never_given("reorder.reminder", "reorder", "discount_code")),
    ("reorder.follow_up", "reorder.product", REORDER, "[stores.journeys.reorder]\n{code}#",
     _never_given("reorder.follow_up", "reorder", "discount_code")),
    ("cod_confirmation.prepaid_offer", "order.payment_url", "prepaid_offer = false ", "prepaid_offer = true\n{code}",
     _never_given("cod_confirmation.prepaid_offer", "cod_confirmation", "prepaid_discount_code")),
], ids=["reorder-reminder", "reorder-follow_up", "cod-prepaid_offer"])
def test_a_template_that_binds_a_discount_its_journey_never_gives_is_a_warning(tmp_path, monkeypatch, step, bound, block,
                                                                              settings, warned):
    """Not only the cart ladder: a reorder reminder (or its follow-up) written with the code in it, with no
    ``discount_code`` on the reorder journey, and a COD prepaid offer with the code but no
    ``prepaid_discount_code``, were each skipped as missing_value every time, and check-config said
    nothing. With the code set, the same template loads without a word."""
    text = EXAMPLE.read_text()
    assert '[[stores.templates]]\nstep = "delivery.shipped"' in text and block in text

    def check(code: str) -> str:
        edited = (text.replace('[[stores.templates]]\nstep = "delivery.shipped"', WITH_DISCOUNT.format(step=step, bound=bound), 1)
                  .replace(block, settings.format(code=code), 1))
        result = _check(tmp_path, monkeypatch, edited, {})
        assert result.exit_code == 0, result.output
        return _plain(result)

    setting = "prepaid_discount_code" if step.startswith("cod_") else "discount_code"
    assert warned in check("")
    assert "binds discount.code" not in check(f'{setting} = "SAVE5"\n')


@pytest.mark.parametrize(("old", "new", "expected"), [
    # the connector decides these from the store's other settings: written in the file, they were overwritten without a word
    ("# [stores.journeys.checkout_recovery]\n# unpaid_orders = true ", "[stores.journeys.checkout_recovery]\nunpaid_orders_by_consent = false\n# ",
     "stores[1].journeys.checkout_recovery.unpaid_orders_by_consent: set by the connector from the store's other "
     "settings (both journeys taking unpaid orders), not in the configuration: remove it"),
    ("# [stores.journeys.checkout_recovery]\n# unpaid_orders = true ", "[stores.journeys.checkout_recovery]\norder_before_payment = false\n# ",
     "stores[1].journeys.checkout_recovery.order_before_payment: set by the connector from the store's other "
     "settings (the store's platform), not in the configuration: remove it"),
    ("after_minutes = 60", "after_minutes = 60\nunpaid_orders_by_consent = true",
     "stores[0].journeys.payment_recovery.unpaid_orders_by_consent: set by the connector from the store's other "
     "settings (both journeys taking unpaid orders), not in the configuration: remove it"),
])
def test_a_setting_the_connector_decides_is_refused_not_silently_overwritten(tmp_path, monkeypatch, old, new, expected):
    problems = _example_with(tmp_path, monkeypatch, old, new)
    assert expected in problems, problems
