"""Rich tables for the weekly report (``storeloop report`` and the demo print the same)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def render_report(data: dict[str, Any], out: Console, title: str) -> None:
    out.print(f"[bold]{title}[/]: week {data['period']['week']} ({data['period']['timezone']}), against {data['period']['previous']}")
    for name, stage in data["stages"].items():
        table = Table(title=f"{name.replace('_', '-')}" + (f" (owner: {stage['owner']})" if stage["owner"] else ""), title_justify="left")
        for col in ("KPI", "this week", "last week", "change"):
            table.add_column(col, justify="left" if col == "KPI" else "right")
        for key, value in stage["metrics"].items():
            if key == "lost":
                continue
            shown = ", ".join(f"{k} {v}" for k, v in value.items()) if isinstance(value, dict) else ("-" if value is None else str(value))
            before = stage["previous"].get(key)
            before_shown = "-" if before is None or isinstance(before, dict) else str(before)
            change = stage["change"].get(key)
            style = "bold" if key == stage["headline"] else ""
            table.add_row(f"[{style}]{key}[/]" if style else key, shown, before_shown, "" if change is None else f"{change:+}"
                          if isinstance(change, (int, float)) else str(change))
        out.print(table)
    health = Table(title="message health by template", title_justify="left")
    for col in ("step", "template", "queued", "sent", "delivered", "read", "failed (by code)", "skipped (by reason)"):
        health.add_column(col, justify="left" if col in ("step", "template") else "right")
    for step, t in data["message_health"]["templates"].items():
        failed = f"{t['failed']} " + (", ".join(f"{k}: {v}" for k, v in t["failed_by_code"].items()) if t["failed"] else "")
        skipped = f"{t['skipped']} " + (", ".join(f"{k}: {v}" for k, v in t["skipped_by_reason"].items()) if t["skipped"] else "")
        health.add_row(step, t["template"], str(t["queued"]), str(t["sent"]), str(t["delivered"]), str(t["read"]), failed.strip(), skipped.strip())
    out.print(health)
    out.print(f"marketing opt-outs this week: {data['message_health']['opt_outs']}")
    if data["lift"]:
        lift = Table(title="lift against the holdout (conversion, treated minus control, 95% interval)", title_justify="left")
        for col in ("journey", "treated", "control", "lift", "95% interval", "significant"):
            lift.add_column(col, justify="left" if col == "journey" else "right")
        for journey, x in data["lift"].items():
            if x["lift"] is None:
                lift.add_row(journey, str(x["treated"]), str(x["control"]), "-", "-", "-")
                continue
            lift.add_row(journey, f"{x['treated_converted']}/{x['treated']} ({x['treated_rate']:.1%})",
                         f"{x['control_converted']}/{x['control']} ({x['control_rate']:.1%})", f"{x['lift']:+.1%}",
                         f"{x['ci95'][0]:+.1%} .. {x['ci95'][1]:+.1%}", "yes" if x["significant"] else "no")
        out.print(lift)
    leak = data["biggest_leak"]
    if leak["stage"]:
        out.print(f"[bold red]Biggest leak: {leak['stage']}[/] ({leak['lost']} customers lost this week"
                  + (f"; owner {leak['owner']})" if leak["owner"] else ")"))
    else:
        out.print("No leak this week: nothing was lost at any stage.")
    if data["open_handoffs"]:
        out.print("Open hand-offs: " + ", ".join(f"{owner} {n}" for owner, n in data["open_handoffs"].items()))
