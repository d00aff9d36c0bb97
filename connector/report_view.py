"""Rich tables for the weekly report (``storeloop report`` and the demo print the same)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from connector import money


def _shown(value: Any, key: str = "") -> str:
    if money.is_money(value, key):
        return money.shown(value)  # one amount per currency, never their sum
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items()) or "-"
    return "-" if value is None else str(value)


def _change(change: Any) -> str:
    if change is None:
        return ""
    if money.is_money(change):
        return money.shown_change(change)
    if isinstance(change, dict):
        return ", ".join(f"{k} {v:+}" for k, v in change.items())
    if isinstance(change, (int, float)):
        return f"{change:+}"
    return change if change.startswith("-") else f"+{change}"


def _significance(lift: dict[str, Any]) -> str:
    """The lift table's "significant" column: never "yes" on too few customers to tell."""
    if lift.get("too_few"):
        return "too few to tell"
    return "yes" if lift["significant"] else "no"


def render_report(data: dict[str, Any], out: Console, title: str) -> None:
    out.print(f"[bold]{title}[/]: week {data['period']['week']} ({data['period']['timezone']}), against {data['period']['previous']}")
    for name, stage in data["stages"].items():
        table = Table(title=f"{name.replace('_', '-')}" + (f" (owner: {stage['owner']})" if stage["owner"] else ""), title_justify="left")
        for col in ("KPI", "this week", "last week", "change"):
            table.add_column(col, justify="left" if col == "KPI" else "right")
        for key, value in stage["metrics"].items():
            if key == "lost":
                continue
            style = "bold" if key == stage["headline"] else ""
            table.add_row(f"[{style}]{key}[/]" if style else key, _shown(value, key), _shown(stage["previous"].get(key), key),
                          _change(stage["change"].get(key)))
        out.print(table)
    health = Table(title="message health by template", title_justify="left")
    for col in ("step", "template", "queued", "sent", "delivered", "read", "failed (by code)", "skipped (by reason)", "opt-outs"):
        health.add_column(col, justify="left" if col in ("step", "template") else "right")
    for step, t in data["message_health"]["templates"].items():
        failed = f"{t['failed']} " + (", ".join(f"{k}: {v}" for k, v in t["failed_by_code"].items()) if t["failed"] else "")
        skipped = f"{t['skipped']} " + (", ".join(f"{k}: {v}" for k, v in t["skipped_by_reason"].items()) if t["skipped"] else "")
        health.add_row(step, t["template"], str(t["queued"]), str(t["sent"]), str(t["delivered"]), str(t["read"]), failed.strip(), skipped.strip(),
                       str(t["opt_outs"]))
    out.print(health)
    mh = data["message_health"]
    out.print(f"marketing opt-outs this week: {mh['opt_outs']} ({mh['opt_outs_without_message']} with no message in the "
              f"{mh['opt_out_hours']} h before)")
    if data["lift"]:
        lift = Table(title="lift against the holdout (conversion, treated minus control, 95% interval)", title_justify="left")
        for col in ("journey", "treated", "control", "lift", "95% interval", "significant", "reached", "per customer reached"):
            lift.add_column(col, justify="left" if col == "journey" else "right")
        for journey, x in data["lift"].items():
            if x["lift"] is None:
                lift.add_row(journey, str(x["treated"]), str(x["control"]), "-", "-", "-", "-", "-")
                continue
            per = (f"{x['lift_per_reached']:+.1%} ({x['ci95_per_reached'][0]:+.1%} .. {x['ci95_per_reached'][1]:+.1%})"
                   if x.get("lift_per_reached") is not None else "-")
            lift.add_row(journey, f"{x['treated_converted']}/{x['treated']} ({x['treated_rate']:.1%})",
                         f"{x['control_converted']}/{x['control']} ({x['control_rate']:.1%})", f"{x['lift']:+.1%}",
                         f"{x['ci95'][0]:+.1%} .. {x['ci95'][1]:+.1%}", _significance(x),
                         f"{x['treated_reached']}/{x['treated']}" if "treated_reached" in x else "-", per)
        out.print(lift)
        out.print("lift is over every treated customer, reached or not; per customer reached divides it by the share a reminder reached")
    leak = data["biggest_leak"]
    if leak["stage"]:
        out.print(f"[bold red]Biggest leak: {leak['stage']}[/] ({leak['lost']} customers lost this week"
                  + (f"; owner {leak['owner']})" if leak["owner"] else ")"))
    else:
        out.print("No leak this week: nothing was lost at any stage.")
    if data["open_handoffs"]:
        out.print("Open hand-offs: " + ", ".join(f"{owner} {n}" for owner, n in data["open_handoffs"].items()))
    render_health(data.get("connector_health") or {}, out, data["store"], tz=(data.get("period") or {}).get("timezone"))


def render_health(health: dict[str, Any], out: Console, store_key: str, tz: str | None = None) -> None:
    """Paused WhatsApp sends, sends held for the messaging limit, deliveries refused as another site, failed
    inbox rows and failing scheduled jobs, said only when there are some; ``tz``: the store's time zone."""
    pause = health.get("whatsapp_pause")
    if pause:
        what = ("waiting out Meta's API call rate limit (nothing to fix)" if pause["rate_limit"]
                else "paused: Meta refuses the account (fix the access token or the account in Meta's Business Manager)")
        out.print(f"[bold red]WhatsApp sends {what}[/] since {pause['since'] or 'unknown'}, until {pause['until']} "
                  f"(code {pause['code']}: " + escape(str(pause["reason"])) + f"); {pause['waiting']} message(s) wait",
                  highlight=False, soft_wrap=True)
    held = health.get("messaging_limit_hold")
    if held:
        zone = ZoneInfo(tz) if tz else timezone.utc
        until = datetime.fromisoformat(held["until"]).astimezone(zone)
        out.print(f"[bold red]WhatsApp's messaging limit reached[/]: held for the messaging limit: {held['sends']} "
                  f"send{'' if held['sends'] == 1 else 's'}, until {until:%H:%M} ({until:%Y-%m-%d} {tz or 'UTC'}); they "
                  "start conversations with customers not messaged in the last 24 h and go out as earlier ones leave "
                  "that moving window, none spending a try (one held past its send_within limit is skipped as too_late)",
                  highlight=False, soft_wrap=True)
    for refused in health.get("refused_sites") or []:
        out.print(f"[bold red]Deliveries from another site refused[/]: {escape(refused['site'])} ({refused['count']} since "
                  f"{refused['first_at']}, last {refused['last_at']}); a staging copy of the shop is refused on purpose "
                  f"(turn off its webhooks and cart plugin, or give it its own secrets); if it is this shop's own address "
                  f"(a language directory), add it to the store's webhook_sources", highlight=False, soft_wrap=True)
    failed = health.get("inbox_failed") or 0
    if failed:
        out.print(f"[bold red]{failed} inbox row(s) failed[/] and wait for a replay: after the fix, "
                  f"`storeloop replay --store {store_key}`", highlight=False, soft_wrap=True)
    parked = health.get("timers_failing") or {}
    if parked.get("count"):
        latest = parked["runs"][0]
        out.print(f"[bold red]{parked['count']} journey run(s) whose timer raised[/] wait, tried again by themselves "
                  f"(latest: {latest['journey']} run {latest['id']}: " + escape(str(latest["error"])) + "); after the fix, "
                  f"`storeloop replay --store {store_key} --timers`", highlight=False, soft_wrap=True)
    for job in health.get("jobs") or []:
        if job["status"] == "failing":
            why = str(job["last_error"]) + (f"; {job['hint']}" if job["hint"] else "")
            out.print(f"[bold red]{job['job']} failing[/] ({job['failures_in_a_row']} in a row, last ok {job['last_ok_at'] or 'never'}): "
                      + escape(why), highlight=False, soft_wrap=True)
