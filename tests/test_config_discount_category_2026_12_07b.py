"""A message that carries a discount is marketing (platform facts C6: "any promotional content makes it
marketing"; Meta re-categorises such a template). The COD pay-now offer with ``prepaid_discount_code``, bound
to a template written as "utility", was gated as utility: a customer who had tapped "Stop promotions" still got
"pay now and get PAY5 off". ``check-config`` (and every start) now refuses a utility template that binds
``discount.code``, or whose step the journey gives a discount code, naming the template's category."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from connector.cli import app
from tests.scenarios import conftest as _fixtures
from tests.scenarios.harness import TEMPLATES
from tests.scenarios.stores import SHOPIFY
from tests.test_config_and_cli_errors import EXAMPLE, EXAMPLE_ENV, _no_traceback

runner = CliRunner()
ASHA = "+919876543210"
SHIPPED_TEMPLATE_END = '# header_image = "https://cdn.example/shipped.png"'

# the scenarios' fixtures (tests/scenarios/conftest.py), for a test file outside that folder
_world_server, world, sqlite_url, scenario = _fixtures._world_server, _fixtures.world, _fixtures.sqlite_url, _fixtures.scenario


def _template(step: str, category: str, body: tuple[str, ...]) -> str:
    bound = ", ".join(f'"{b}"' for b in body)
    text = " ".join(f"{{{{{i}}}}}" for i in range(1, len(body) + 1)) or "Pay now"
    return (f'{SHIPPED_TEMPLATE_END}\n\n[[stores.templates]]\nstep = "{step}"\nname = "offer_v1"\ncategory = "{category}"\n'
            f'body_text = "Offer: {text}"\nbody = [{bound}]\n')


def _refusal(step: str, why: str) -> str:
    return (f"stores[0].templates[2].category: 'utility', but {step} {why}: a message that offers a discount is marketing "
            "(Meta re-categorises such a template), and gated as utility it would reach customers who opted out of "
            'promotions; use category "marketing"')


def _edited(tmp_path, monkeypatch, edits: list[tuple[str, str]]):
    for k, v in EXAMPLE_ENV.items():
        monkeypatch.setenv(k, v)
    text = EXAMPLE.read_text()
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new, 1)
    path = tmp_path / "storeloop.toml"
    path.write_text(text)
    result = runner.invoke(app, ["check-config", str(path)], terminal_width=400)
    _no_traceback(result)
    return result


def _problems(tmp_path, monkeypatch, edits: list[tuple[str, str]]) -> list[str]:
    """check-config of config.example.toml with these edits: the problem lines it prints (as ``_example_with``)."""
    result = _edited(tmp_path, monkeypatch, edits)
    assert result.exit_code == 2, result.output
    return [line.strip().removeprefix("- ") for line in result.output.splitlines()[1:] if line.strip()]


CODE = ('# prepaid_discount_code = "PAYNOW5"', 'prepaid_discount_code = "PAYNOW5"')
CART_CODE = ('# discount_code = "COMEBACK10"', 'discount_code = "COMEBACK10"')


@pytest.mark.parametrize(("edits", "expected"), [
    # the COD pay-now offer that binds the code it is given
    ([(SHIPPED_TEMPLATE_END, _template("cod_confirmation.prepaid_offer", "utility", ("order.name", "discount.code", "order.payment_url"))),
      CODE],
     _refusal("cod_confirmation.prepaid_offer", "binds discount.code")),
    # the code set for the step, its template saying "5% off" in its own words
    ([(SHIPPED_TEMPLATE_END, _template("cod_confirmation.prepaid_offer", "utility", ("order.payment_url",))), CODE],
     _refusal("cod_confirmation.prepaid_offer", "is given a discount code by journey cod_confirmation (prepaid_discount_code)")),
    # a template that binds the code with no code given yet: refused all the same (setting the code later must not
    # turn it into a promotion gated as utility)
    ([(SHIPPED_TEMPLATE_END, _template("cod_confirmation.prepaid_offer", "utility", ("discount.code",)))],
     _refusal("cod_confirmation.prepaid_offer", "binds discount.code")),
    # a cart reminder's discount step: gated as marketing already, but submitted to Meta as utility it is re-categorised
    ([(SHIPPED_TEMPLATE_END, _template("checkout_recovery.third", "utility", ("checkout.recovery_url",))), CART_CODE],
     _refusal("checkout_recovery.third", "is given a discount code by journey checkout_recovery (discount_code)")),
])
def test_a_utility_template_that_offers_a_discount_is_refused(tmp_path, monkeypatch, edits, expected):
    problems = _problems(tmp_path, monkeypatch, edits)
    assert expected in problems, problems


def test_the_refusal_points_at_the_templates_line(tmp_path, monkeypatch):
    result = _edited(tmp_path, monkeypatch, [
        (SHIPPED_TEMPLATE_END, _template("cod_confirmation.prepaid_offer", "utility", ("order.name", "discount.code"))), CODE])
    assert result.exit_code == 2, result.output
    lines = (tmp_path / "storeloop.toml").read_text().splitlines()
    at = [line for line in result.output.splitlines() if "line" in line and "storeloop.toml" in line]
    assert at, result.output
    number = int(at[0].rsplit("line", 1)[1].split()[0])
    assert lines[number - 1] == 'category = "utility"', (number, lines[number - 1])


@pytest.mark.parametrize("edits", [
    # the same offer as a marketing template
    [(SHIPPED_TEMPLATE_END, _template("cod_confirmation.prepaid_offer", "marketing", ("order.name", "discount.code"))), CODE],
    # a pay-now offer with no code: her own order's payment link, no promotion in it
    [(SHIPPED_TEMPLATE_END, _template("cod_confirmation.prepaid_offer", "utility", ("order.name", "order.payment_url")))],
    # a cart reminder before the discount step (discount_from_step = 3)
    [(SHIPPED_TEMPLATE_END, _template("checkout_recovery.first", "utility", ("checkout.recovery_url",))), CART_CODE],
])
def test_a_template_with_no_discount_or_written_as_marketing_still_loads(tmp_path, monkeypatch, edits):
    result = _edited(tmp_path, monkeypatch, edits)
    assert result.exit_code == 0, result.output
    assert "use category" not in result.output


def test_the_example_as_shipped_still_loads(tmp_path, monkeypatch):
    result = _edited(tmp_path, monkeypatch, [])
    assert result.exit_code == 0, result.output


# ---- what the customer who stopped promotions gets, with the template the refusal asks for ----------

OFFER = {"step": "cod_confirmation.prepaid_offer", "name": "prepaid_v1", "body_text": "Pay now for {{1}} and get {{2}} off: {{3}}",
         "body": ["order.name", "discount.code", "order.payment_url"]}
JOURNEYS = {"cod_confirmation": {"reminder_hours": [6], "answer_window_hours": 24, "prepaid_offer": True, "prepaid_discount_code": "PAY5"}}


def test_a_customer_who_stopped_promotions_is_asked_about_her_cod_order_but_not_offered_the_discount(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "shopify", journeys=JOURNEYS, store_settings={"templates": [*TEMPLATES, {**OFFER, "category": "marketing"}]})
    sc.marketing_preference(ASHA, "stop")  # "Stop promotions" in WhatsApp
    SHOPIFY.place(sc, SHOPIFY.order(1, ASHA, sc.now))
    sc.work()
    sc.tap(ASHA, "cod_confirm", sc.last_to(ASHA, "cod_confirm_v1"))
    sc.later(minutes=30)
    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]


def test_the_utility_offer_no_longer_starts(sqlite_url, scenario, world):
    """Before: this store started, and the customer above got "pay now and get PAY5 off" after "Stop promotions"."""
    from connector.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        scenario(sqlite_url, "shopify", journeys=JOURNEYS, store_settings={"templates": [*TEMPLATES, {**OFFER, "category": "utility"}]})
    assert any("use category \"marketing\"" in p and f"templates[{len(TEMPLATES)}].category" in p for p in err.value.problems), err.value.problems
