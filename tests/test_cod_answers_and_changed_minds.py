"""COD confirmation when the customer does not simply tap once: she writes back, changes her mind,
opts out, or taps a button we cannot tie to one of her orders.

Told end to end with the journey scenarios' harness (tests/scenarios): signed store and WhatsApp
webhooks in over HTTP, the real worker rounds on a virtual clock, and assertions on what reached
her phone, the store's API and the hand-off webhook (fake peers on 127.0.0.1).
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.scenarios.conftest import _world_server, scenario, sqlite_url, store, world  # noqa: F401  (the scenarios' fixtures)
from tests.scenarios.stores import SHOPIFY, Store
from tests.test_cod_shipped_and_late import cancelled, tagged

ASHA = "+919876543210"
COD = {"reminder_hours": [6], "answer_window_hours": 24}


def told(world, stage: str = "qualification") -> list[str]:
    """The texts of the hand-off notifications a stage's owner got."""
    return [body["text"] for s, body in world.notifications if s == stage]


def qualification(sc) -> dict:
    return sc.report()["stages"]["qualification"]["metrics"]


# ---- she answers the question in words ----------------------------------------------------------

@pytest.mark.parametrize("quotes", [True, False], ids=["quoting the ask", "quoting nothing"])
def test_words_in_answer_to_the_question_go_to_a_person_and_stop_the_reminders_and_the_no_answer_cancel(
        sqlite_url, scenario, world, store: Store, quotes):
    """"Yes I confirm, please deliver after 6 pm" is an answer only a person can read: one case for the COD
    team, and no "please confirm" reminder and no cancel for "no answer" of an order whose customer wrote back."""
    sc = scenario(sqlite_url, store.platform, journeys={"cod_confirmation": {**COD, "no_answer_action": "cancel"}})
    store.place(sc, store.order(21, ASHA, sc.now))
    sc.work()
    ask = sc.last_to(ASHA, "cod_confirm_v1")
    sc.later(minutes=30)
    sc.say(ASHA, "Yes I confirm, please deliver after 6 pm", quoting=ask if quotes else None)
    sc.later(days=2)  # the reminder's time and the deadline go by

    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]  # no reminder after she answered
    assert not cancelled(world, store) and tagged(world, store) == []  # no no-answer action at all
    [case] = sc.handoffs(status="open")
    assert case["journey"] == "cod_confirmation" and case["stage"] == "qualification"
    assert "please deliver after 6 pm" in case["reason"]
    assert len(told(world)) == 1  # the COD team heard once
    q = qualification(sc)
    assert (q["asked"], q["with_person"], q["no_answer"], q["lost"], q["median_minutes_to_answer"]) == (1, 1, 0, 0, 30.0)


def test_a_tap_after_her_words_still_confirms(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "shopify", journeys={"cod_confirmation": {**COD, "no_answer_action": "cancel"}})
    SHOPIFY.place(sc, SHOPIFY.order(22, ASHA, sc.now))
    sc.work()
    ask = sc.last_to(ASHA, "cod_confirm_v1")
    sc.later(minutes=10)
    sc.say(ASHA, "Is it the blue one?", quoting=ask)
    sc.later(hours=1)
    sc.tap(ASHA, "cod_confirm", ask)
    sc.later(days=2)
    assert tagged(world, SHOPIFY) == ["cod-confirmed"] and not cancelled(world, SHOPIFY)
    q = qualification(sc)
    assert (q["confirmed"], q["with_person"], q["lost"]) == (1, 0, 0)
