"""A failed delivery's answer and case, end to end over HTTP (Shopify webhooks, the fake WhatsApp, virtual clock).

1. her tap on a failed-delivery question whose send outcome was lost (WhatsApp took it, its answer never
   came back, so its message id is unknown) used to vanish: no note, no word to the case. It is that
   question's answer when one of her orders is waiting for one; with several, nothing is written to any
   order and the cases hear what she tapped, so a person asks her which order she meant;
2. after a person closed the failed-delivery case, the run stayed "handoff" for ever (listed among her
   active journeys in every later case). It goes back to following the parcel, and ends once it arrives.
"""

from __future__ import annotations

from typing import Any

from tests.conftest import SECRETS, sqlite_template  # noqa: F401
from tests.scenarios.conftest import _world_server, scenario, sqlite_url, world  # noqa: F401
from tests.scenarios.stores import SHOPIFY
from tests.scenarios.test_delivery_stories import parcel, start

ASHA = "+919876543210"
RESCHEDULE_NOTE = "Failed delivery: the customer asked on WhatsApp to reschedule"
ADDRESS_NOTE = "Failed delivery: the customer wants to update the delivery address (asked on WhatsApp)"


def _failed(sc: Any, n: int, *, answer_lost: bool) -> Any:
    """Order #500n ships and its delivery fails; ``answer_lost``: the question reaches her, but WhatsApp's
    answer to its send is lost (no message id). Returns the question as her phone got it."""
    order = SHOPIFY.order(n, ASHA, sc.now, cod=False)
    SHOPIFY.place(sc, order)
    sc.later(hours=1)
    sc.shopify("fulfillments/create", parcel(7000 + n, order, sc.now, "in_transit", f"AAA{n}"))
    sc.later(hours=1)
    sc.world.whatsapp_answer_lost = answer_lost
    sc.shopify("fulfillments/update", parcel(7000 + n, order, sc.now, "attempted_delivery", f"AAA{n}"))
    sc.later(minutes=10)
    sc.world.whatsapp_answer_lost = False
    return sc.last_to(ASHA, "ndr_v1")


def _notes(world: Any) -> list[tuple[str, str]]:
    """The notes written to Shopify orders: (order gid, note)."""
    return [(c.variables["input"]["id"], c.variables["input"]["note"]) for c in world.shopify
            if c.operation == "orderUpdate" and "note" in (c.variables.get("input") or {})]


def _case(sc: Any, subject: str) -> dict[str, Any]:
    return next(c for c in sc.handoffs(status="open") if c["subject"] == subject)


def _updates(case: dict[str, Any]) -> list[str]:
    return [u["reason"] for u in case["context"].get("updates") or []]


def _close(sc: Any, case: dict[str, Any]) -> None:
    closed = sc.client.post(f"/api/stores/{sc.key}/handoffs/{case['id']}/close", json={"by": "Ravi", "resolution": "rang her"},
                            headers={"Authorization": f"Bearer {SECRETS['admin']}"})
    assert closed.status_code == 200, closed.text


def _delivery_runs(sc: Any) -> dict[str, str]:
    return {j["subject"]: j["status"] for j in sc.contact(ASHA)["journeys"] if j["journey"] == "delivery"}


# ---- 1. a tap on a question whose message id we never learnt ------------------------------------

def test_her_reschedule_on_a_failed_delivery_question_whose_send_answer_was_lost_is_noted_and_told(sqlite_url, scenario, world):
    sc = start(scenario, sqlite_url)
    ndr = _failed(sc, 1, answer_lost=True)
    assert [s.template for s in world.sent(ASHA)].count("ndr_v1") == 1  # the question did reach her
    sc.tap(ASHA, "ndr_reschedule", ndr)
    sc.later(minutes=10)
    assert [note for _gid, note in _notes(world)] == [RESCHEDULE_NOTE]  # before: dropped, no note
    case = _case(sc, f"order:{SHOPIFY.order_id(1)}")
    assert any("customer asked to reschedule the failed delivery of #5001" in u for u in _updates(case)), _updates(case)


def test_a_tap_that_could_be_either_of_two_failed_deliveries_writes_nothing_and_both_cases_hear_it(sqlite_url, scenario, world):
    sc = start(scenario, sqlite_url)
    first = _failed(sc, 1, answer_lost=True)
    _failed(sc, 2, answer_lost=True)
    sc.tap(ASHA, "ndr_update_address", first)
    sc.later(minutes=10)
    assert _notes(world) == []  # an address note on the wrong order sends the courier to the wrong door
    for n in (1, 2):
        case = _case(sc, f"order:{SHOPIFY.order_id(n)}")
        heard = [u for u in _updates(case) if "could not match" in u]
        assert len(heard) == 1 and "Update address" in heard[0] and "#5001, #5002" in heard[0], _updates(case)
    told = [n[1].get("text", "") for n in world.notifications]
    assert sum("ask her which order she meant" in t for t in told) == 2  # each case's owner is told
    sc.tap(ASHA, "ndr_update_address", first)  # she taps it again: the cases have it
    sc.later(minutes=10)
    assert [n[1].get("text", "") for n in world.notifications] == told


def test_a_tap_whose_question_is_unknown_is_the_answer_of_the_one_order_still_waiting_for_one(sqlite_url, scenario, world):
    """Order #5002's question was answered (its tap matched); #5001's answer is the unknown one: it is #5001's."""
    sc = start(scenario, sqlite_url)
    lost = _failed(sc, 1, answer_lost=True)
    known = _failed(sc, 2, answer_lost=False)
    sc.tap(ASHA, "ndr_reschedule", known)
    sc.later(minutes=10)
    assert [gid.rsplit("/", 1)[1] for gid, _ in _notes(world)] == [str(SHOPIFY.order_id(2))]
    sc.tap(ASHA, "ndr_update_address", lost)
    sc.later(minutes=10)
    assert [(gid.rsplit("/", 1)[1], note) for gid, note in _notes(world)][1:] == [(str(SHOPIFY.order_id(1)), ADDRESS_NOTE)]


def test_her_change_of_mind_on_a_question_whose_send_answer_was_lost_reaches_the_case_once(sqlite_url, scenario, world):
    """Before: her first tap (Reschedule) was taken, her second on the same question (Cancel: she changed
    her mind) found no order waiting for an answer and was dropped without a trace."""
    sc = start(scenario, sqlite_url)
    ndr = _failed(sc, 1, answer_lost=True)
    sc.tap(ASHA, "ndr_reschedule", ndr)
    sc.later(minutes=10)
    sc.tap(ASHA, "ndr_cancel", ndr)
    sc.later(minutes=10)
    sc.tap(ASHA, "ndr_cancel", ndr)  # her same tap again: the case has it
    sc.later(minutes=10)
    case = _case(sc, f"order:{SHOPIFY.order_id(1)}")
    asked = [u for u in _updates(case) if "customer asked to cancel #5001" in u]
    assert len(asked) == 1, _updates(case)
    assert [note for _gid, note in _notes(world)] == [RESCHEDULE_NOTE]  # a cancel writes no note: a person decides


# ---- 2. a closed case does not keep the run waiting on a person --------------------------------

def test_after_the_case_is_closed_the_run_follows_the_parcel_and_ends_when_it_arrives(sqlite_url, scenario, world):
    sc = start(scenario, sqlite_url)
    _failed(sc, 1, answer_lost=False)
    subject = f"order:{SHOPIFY.order_id(1)}"
    order = SHOPIFY.order(1, ASHA, sc.now, cod=False)
    _close(sc, _case(sc, subject))  # the desk rang her and rearranged the delivery
    assert _delivery_runs(sc) == {subject: "active"}  # before: "handoff", for ever
    sc.later(days=1)
    sc.shopify("fulfillments/update", parcel(7001, order, sc.now, "delivered", "AAA1"))
    sc.later(hours=1)
    assert sc.templates_to(ASHA)[-1] == "delivered_v1"
    assert _delivery_runs(sc) == {subject: "finished"}
    sc.say(ASHA, "Got it, thanks! Do you have it in blue?")  # a question of her own: a new case
    sc.later(minutes=10)
    [case] = sc.handoffs(status="open")
    assert [j for j in case["context"]["active_journeys"] if j["journey"] == "delivery"] == []


def test_a_case_closed_after_the_parcel_arrived_after_all_ends_the_run(sqlite_url, scenario, world):
    sc = start(scenario, sqlite_url)
    _failed(sc, 1, answer_lost=False)
    subject = f"order:{SHOPIFY.order_id(1)}"
    sc.later(days=1)
    sc.shopify("fulfillments/update", parcel(7001, SHOPIFY.order(1, ASHA, sc.now, cod=False), sc.now, "delivered", "AAA1"))
    sc.later(hours=1)
    assert _delivery_runs(sc) == {subject: "handoff"}  # the case is open: the run is the person's
    _close(sc, _case(sc, subject))
    assert _delivery_runs(sc) == {subject: "finished"}


def test_a_case_closed_with_only_a_box_no_carrier_reports_on_left_ends_the_run(sqlite_url, scenario, world):
    """Box AAA1's delivery failed and it arrived after all; box LOCAL1 went with a courier Shopify does not
    track. Before: closing the case put the run back to waiting for LOCAL1's news, for ever (her "latest"
    run). It waited its week for that news while the case was open; closed, the run ends, quietly."""
    sc = start(scenario, sqlite_url)
    _failed(sc, 1, answer_lost=False)
    order = SHOPIFY.order(1, ASHA, sc.now, cod=False)
    subject = f"order:{SHOPIFY.order_id(1)}"
    sc.shopify("fulfillments/create", parcel(7101, order, sc.now, None, "LOCAL1"))
    sc.later(days=1)
    sc.shopify("fulfillments/update", parcel(7001, order, sc.now, "delivered", "AAA1"))
    sc.later(days=10)
    assert _delivery_runs(sc) == {subject: "handoff"}  # the case is open: the run is the person's
    _close(sc, _case(sc, subject))
    sc.later(hours=1)
    assert _delivery_runs(sc) == {subject: "finished"}
    assert "delivered_v1" not in sc.templates_to(ASHA)


def test_migration_0027_releases_the_runs_whose_case_was_closed_before(db_url, tmp_path):
    """Runs stored "handoff" after their case was closed (before closing released them) follow the parcel again or end;
    a run whose case is still open stays the person's; a run that had ended before the person took it ends again."""
    from sqlalchemy import insert, select, text

    from connector.storage import models as m
    from connector.storage.db import migrate
    from tests.scenarios.harness import T0
    from tests.test_cod_late_answers import _empty_database

    runs_table, cases = m.JourneyRun.__table__, m.Handoff.__table__
    failed = {"sent": ["failed", "shipped"], "parcels": {"7001": "attempted_delivery"}}
    runs = {"order:1": ("delivery", failed, "closed"),  # the desk closed its case: follows the parcel again
            "order:2": ("delivery", {**failed, "parcels": {"7002": "delivered"}}, "closed"),  # delivered after all
            "order:3": ("delivery", failed, "open"),  # a person is still on it
            "order:4": ("cod_confirmation", {"choice": "confirmed", "changed_mind": "cancel", "outcome": "confirmed"}, "closed"),
            "order:5": ("delivery", {**failed, "cancelled": True}, "closed")}
    with _empty_database(db_url, tmp_path) as engine:
        migrate(engine, "0026")
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO stores (key, platform, created_at) VALUES ('a', 'shopify', '2026-11-01 00:00:00')"))
            sid = conn.execute(text("SELECT id FROM stores")).scalar()
            conn.execute(insert(runs_table), [
                {"store_id": sid, "journey": journey, "subject": subject, "status": "handoff", "state": state, "holdout": False,
                 "started_at": T0, "updated_at": T0, "next_due_at": None} for subject, (journey, state, _case) in runs.items()])
            conn.execute(insert(cases), [
                {"store_id": sid, "key": f"{journey}:{subject}" + ("" if case == "open" else f":closed:{i}"), "reason": "failed",
                 "stage": "post_purchase", "journey": journey, "subject": subject, "context": {}, "status": case, "opened_at": T0}
                for i, (subject, (journey, _state, case)) in enumerate(runs.items())])
        migrate(engine)
        with engine.connect() as conn:
            after = {r.subject: (r.status, (r.state or {}).get("outcome")) for r in conn.execute(select(runs_table))}
    assert after == {"order:1": ("active", None), "order:2": ("finished", "delivered"), "order:3": ("handoff", None),
                     "order:4": ("finished", "confirmed"), "order:5": ("finished", "order_cancelled")}
