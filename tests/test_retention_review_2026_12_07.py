"""Retention and weekly-report review (2026-12-07): faults a store owner would see in the reorder
reminders and in what the weekly report says about them."""

from __future__ import annotations

import json
from datetime import timedelta

from typer.testing import CliRunner

from connector.cli import app
from connector.config import parse_settings
from connector.reports import build_report
from tests.helpers import running_app
from tests.test_reports import MON, WEEK, Week, _raw_settings, _toml


# ---- 1. a lift on a handful of customers is not "significant" -----------------------------------
def test_a_lift_measured_on_a_handful_of_customers_is_not_called_significant(db_url, tmp_path):
    """Three treated customers reordered after their reminder and the one held out did not: +100 points. The normal
    approximation's interval collapsed to a point ([+100, +100]: every rate 0 or 1 has no spread), so the report called
    it significant and `storeloop report` said "yes" to the owner, on four customers. Now it says too few to tell."""
    raw = _raw_settings(db_url)
    raw["stores"][0]["journeys"] = {"reorder": {"cycles": {"NEEM-100": "30d"}, "holdout_percent": 10}}
    settings = parse_settings(raw, environ={})
    ends = (MON + timedelta(days=8)).isoformat()
    with running_app(settings) as (_client, runtime):
        sid = runtime.store_ids["shop-a"]
        with runtime.db.engine.begin() as conn:
            w = Week(conn, sid)
            for _ in range(3):
                cid = w.contact(MON - timedelta(days=40), consent="granted")
                order = w.order(cid, MON + timedelta(days=2), "249.50")
                w.run("reorder", {"sent": 1, "attribution_ends": ends, "reordered": True, "attributed": True, "order_id": order,
                                  "revenue": "249.50"})
            w.run("reorder", {"sent": 1, "attribution_ends": ends}, holdout=True)
        report = build_report(runtime.db, settings.stores[0], sid, WEEK)
    x = report["lift"]["reorder"]
    assert (x["treated_converted"], x["treated"], x["control_converted"], x["control"], x["lift"]) == (3, 3, 0, 1, 1.0)
    assert x["significant"] is False and x["too_few"] is True
    config = tmp_path / "storeloop.toml"
    config.write_text("".join(f"{key} = {_toml(value)}\n" for key, value in raw.items()))
    table = CliRunner().invoke(app, ["report", "--config", str(config), "--store", "shop-a", "--week", WEEK.label], env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    row = next(line for line in table.output.splitlines() if line.strip("│ ").startswith("reorder ") and "/" in line)
    assert "too few to tell" in row and " yes " not in row
    as_json = json.loads(CliRunner().invoke(app, ["report", "--config", str(config), "--store", "shop-a", "--week", WEEK.label,
                                                  "--json"]).stdout)
    assert as_json["lift"]["reorder"]["significant"] is False
