"""What Meta says about a store's WhatsApp number and account, and what the connector does about it.

Meta sends, besides messages, webhooks about the sender itself (routed to the stores by the
business account, ``entry[].id``; a number's news by its ``display_phone_number``):

- ``phone_number_quality_update``: the number was FLAGGED (its quality rating is Low, RED: customers
  block or report its messages) or UNFLAGGED, its messaging limit was lowered (DOWNGRADE) or raised
  (UPGRADE). Meta's payload carries the event and the limit, no rating: FLAGGED is read as RED and
  UNFLAGGED as GREEN (as other integrations read it), so a YELLOW (medium) number is never heard of
  that way;
- ``account_update``: the account was restricted (``restriction_info``: business-initiated or
  customer-initiated messaging, each until its ``expiration``), disabled or scheduled to be
  (``ban_info.waba_ban_state`` DISABLE / SCHEDULE_FOR_DISABLE, REINSTATE when lifted), or broke a
  policy (``violation_info``);
- ``message_template_quality_update``: a template's rating (``template_check.template_quality_news``);
- ``business_capability_update``: the business portfolio's messaging limit (Meta sends it when the account
  is created and when the limit changes), kept as the limit part. It says no old limit: one lower than the
  limit kept is told as a DOWNGRADE is; a first one tells nobody.

A lowered limit is told once, whichever of Meta's two words on it comes first (``record``): the kept limit
part notes ``told`` when its lowering was told (a number's DOWNGRADE, a capability update or a reading
below the limit kept), and a DOWNGRADE to the limit kept that nobody was told of is told even when a
capability update stamped later came first (else it would be dropped as stale, and the owner never told).

The worker also asks Meta for the number's rating and limit every few hours (``NumberReading``,
``record_reading``; the job is ``jobs/scheduler.number_quality_store``): YELLOW, the early warning,
is only known so. A reading is news by the same rules as a webhook, at the time it was read.

The store row keeps what was said (``stores.whatsapp_health``), each part with the time Meta sent
it: an older update arriving after a newer one is stale and changes nothing, and one that says
what is already known (Meta's retry, the same news again) tells nobody twice (``record``). What is
news opens, or adds to, one case per number for the store's owner (``number_news``; a template's
rating goes to the template's case). While the account may not message, the store's WhatsApp
sends wait (``stores.whatsapp_held_until``, read by the outbox claim): no attempt is spent, and
they go when the restriction ends or Meta lifts it, except those held past their latest useful send
time (``policy.send_by``), skipped as ``too_late``: what the owner is told says so. Either way its end is noted (``ended_at``) and
added to the number's open case: Meta says nothing when one simply runs out, so the worker's round
after its end does that (``end_passed_holds``), saying how many messages it held too long. While the number is RED the policy gate holds
marketing messages (``policy.check``); order, COD and delivery messages still go.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Connection, select, update

from connector import events as ev
from connector.policy import PolicyRules
from connector.storage.sql import STORES
from connector.template_check import template_subject, templates_named

log = logging.getLogger("storeloop.number_health")

# the account may not message: every WhatsApp send of its stores waits (receiving still works)
MESSAGING = frozenset({"RESTRICTED_BIZ_INITIATED_MESSAGING", "RESTRICTED_CUSTOMER_INITIATED_MESSAGING"})
# ... of which those that hold the store's sends: nearly all it sends starts a conversation (templates);
# a restriction of replies only leaves COD questions and order updates going (a free-form reply is refused)
HOLDS = frozenset({"RESTRICTED_BIZ_INITIATED_MESSAGING"})
RESTRICTION_WORDS = {
    "RESTRICTED_BIZ_INITIATED_MESSAGING": "no message may start a conversation (templates: COD questions, updates, reminders)",
    "RESTRICTED_CUSTOMER_INITIATED_MESSAGING": "no reply to customers who write in",
    "RESTRICTED_ADD_PHONE_NUMBER_ACTION": "no phone number may be added",
}
# a held_until that means "until Meta says otherwise" (a disabled account, a restriction with no end given)
UNTIL_LIFTED = datetime(9999, 12, 31, tzinfo=timezone.utc)
# the ratings a reading keeps (Meta's UNKNOWN, a number not rated yet, says nothing: the last one heard stands)
RATINGS = frozenset({"GREEN", "YELLOW", "RED"})
# messaging limit tiers, lowest first: which way a limit a reading gives moved
TIERS = ("TIER_50", "TIER_250", "TIER_1K", "TIER_2K", "TIER_10K", "TIER_100K", "TIER_UNLIMITED")
# what Meta's limit fields may say that is no limit: "the business phone number has not been used to send a message
# yet" (its ``phone_number_quality_update`` reference; an ONBOARDING number): the limit last heard stands
NOT_A_LIMIT = frozenset({"TIER_NOT_SET"})
STAGE_ORDER = ("entry", "qualification", "conversion", "post_purchase", "retention")
WHERE = "Meta Business Suite > Business Support Home"


def number_subject(store: Any) -> str:
    """A number's case key (and the inbox rows' subject): one case per sending number."""
    return f"number:{store.whatsapp_phone_number_id or store.key}"


def health_stage(store: Any) -> str:
    """Whose case a number's news is: it concerns every journey, so the store's first stage (in the
    customer's order) whose owner gets alerts (a ``notify_url``), else the first with an owner."""
    for stage in STAGE_ORDER:
        cfg = store.stages.get(stage)
        if cfg is not None and cfg.notify_url is not None:
            return stage
    return next((s for s in STAGE_ORDER if s in store.stages), "entry")


# ---- what the news changes (pure) ----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Part:
    """One part of the health state an update sets: its name and value (the time is added by ``merge``)."""

    name: str
    value: dict[str, Any]


def parts(event: Any, store: Any) -> list[Part]:
    """The parts an update sets, the one that decides whether it is news first; none: nothing kept."""
    if isinstance(event, ev.NumberQualityChanged):
        out: list[Part] = []
        if event.event in ("FLAGGED", "UNFLAGGED"):
            out.append(Part("quality", {"rating": "RED" if event.event == "FLAGGED" else "GREEN", "event": event.event}))
        if event.limit is not None and tier(event.limit) not in NOT_A_LIMIT:
            # a DOWNGRADE or UPGRADE is told (``number_news``): a late one to the same limit tells nobody again
            out.append(Part("limit", {"value": event.limit, "old": event.old_limit, "event": event.event,
                                      "told": event.event in ("DOWNGRADE", "UPGRADE")}))
        return out
    if isinstance(event, ev.BusinessCapabilityChanged):
        # the portfolio's limit as Meta now sets it (shared by its numbers since October 2025): the same part a
        # number's DOWNGRADE / UPGRADE and the worker's reading keep, so the dashboard shows whichever is newest
        return [Part("limit", {"value": event.limit, "old": None, "event": "CAPABILITY"})] if event.limit is not None else []
    if isinstance(event, ev.AccountUpdated):
        if event.event == "ACCOUNT_RESTRICTION":
            return [Part("restriction", {"restrictions": [{"kind": r.kind, "until": _iso(r.until)} for r in event.restrictions]})]
        if event.event == "DISABLED_UPDATE" and event.ban_state:
            return [Part("ban", {"state": event.ban_state, "date": event.ban_date})]
        if event.event == "ACCOUNT_VIOLATION":
            return [Part("violation", {"type": event.violation})]
        return []
    if isinstance(event, ev.TemplateQualityChanged) and templates_named(store.templates, event.name, event.language):
        return [Part(template_subject(event.name, event.language), {"score": event.score})]
    return []


# what makes two values the same news (a restriction: its list; ``ended_at``, set here, is not Meta's news)
SAME_IF = {"quality": ("rating",), "limit": ("value",), "ban": ("state",), "restriction": ("restrictions",)}


def _same(name: str, old: dict[str, Any], new: dict[str, Any]) -> bool:
    if name == "limit":  # "250" (a capability update) and "TIER_250" (a number's update) are one limit
        return tier(old.get("value")) == tier(new.get("value"))
    keys = SAME_IF.get(name)
    if keys is None:
        return {k: v for k, v in old.items() if k not in ("at", "since")} == new
    return all(old.get(k) == new.get(k) for k in keys)


def merge(health: dict[str, Any], event_parts: list[Part], at: datetime) -> tuple[dict[str, Any], str]:
    """The state after an update sent at ``at``, and what it was: ``news`` (its first part changed),
    ``same`` (it says what is known: only its time moves on) or ``stale`` (a newer update of its
    first part is kept: nothing changes). A later part is kept when it is not older than the stored one."""
    verdict = "same"
    out = dict(health)
    for i, part in enumerate(event_parts):
        stored = health.get(part.name)
        if not isinstance(stored, dict):
            stored = None  # kept in a shape nothing reads (a hand edit, an older version): the news replaces it
        kept_at = _kept_at(stored)
        older = kept_at is not None and kept_at > at
        if i == 0:
            verdict = "stale" if older else "same" if stored is not None and _same(part.name, stored, part.value) else "news"
            if verdict == "stale":
                return health, verdict
        if not older:
            same = stored is not None and _same(part.name, stored, part.value)
            value = {**(stored if same else {}), **part.value, "at": at.isoformat()}  # the same news keeps what was noted
            # since when it has said so: a reading every few hours, or Meta's retry, moves ``at`` on, not this
            value["since"] = ((stored.get("since") or stored.get("at") or at.isoformat()) if same and stored is not None
                              else at.isoformat())
            if part.name == "restriction" and not same and _holding(stored) and not _holding(value):
                value["ended_at"] = at.isoformat()  # Meta lifted it
            out[part.name] = value
    return out, verdict


def _kept_at(stored: dict[str, Any] | None) -> datetime | None:
    """When the update that set a kept part was sent; None: not said, or not a date (a hand edit): any update is newer."""
    try:
        at = datetime.fromisoformat(stored["at"]) if stored is not None and stored.get("at") else None
    except (TypeError, ValueError):
        return None
    return at.replace(tzinfo=timezone.utc) if at is not None and at.tzinfo is None else at


def _holding(restriction: Any) -> list[dict[str, Any]]:
    """The restrictions of a stored restriction part that hold the store's sends."""
    return [r for r in _entries(restriction) if r.get("kind") in HOLDS]


def _entries(restriction: Any) -> list[dict[str, Any]]:
    """A kept restriction part's restrictions that can be read: objects in a list (``_unreadable``)."""
    items = restriction.get("restrictions") if isinstance(restriction, dict) else None
    return [r for r in items if isinstance(r, dict)] if isinstance(items, list) else []


def _unreadable(restriction: Any) -> str | None:
    """What of a kept restriction part is not an object (the part itself, its list or an entry of it: a row
    written by hand, or by an older version), named by its JSON type; None: all of it can be read. Such a
    thing never holds the sends again: once the row's own hold time passed, it is taken as ended."""
    if restriction is None:
        return None
    if not isinstance(restriction, dict):
        return f"the restriction is {_json_type(restriction)}"
    items = restriction.get("restrictions")
    if items is None:
        return None
    if not isinstance(items, list):
        return f"its list is {_json_type(items)}"
    odd = sorted({_json_type(r) for r in items if not isinstance(r, dict)})
    return f"an entry is {' / '.join(odd)}" if odd else None


def _json_type(value: Any) -> str:
    """A stored value's JSON type, for a log line that must not copy what a hand wrote there."""
    names = {str: "a string", list: "a list", bool: "a boolean", int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), "not an object")


# the parts read as objects by name (a restriction's shapes are ``_unreadable``'s; a template's rating part
# is read by ``merge`` alone, which replaces any shape)
PARTS = ("quality", "limit", "ban", "violation")


def _object(health: Any) -> dict[str, Any]:
    """The kept health as an object; kept as anything else (a row written by hand, or by an older version)
    it is read as empty: nothing is known, and Meta's next news replaces it."""
    return health if isinstance(health, dict) else {}


def _part(health: Any, name: str) -> dict[str, Any]:
    """One kept part as an object; one kept as a string, a number or a list says nothing (read as unknown)."""
    value = _object(health).get(name)
    return value if isinstance(value, dict) else {}


def _unreadable_health(health: Any) -> str | None:
    """What of a store's kept health cannot be read (the whole of it, or a part by name), by its JSON type,
    for a log line that must not copy what a hand wrote there; None: all of it can be read. A restriction's
    shapes are ``_unreadable``'s, read by ``end_passed_holds``."""
    if health is None:
        return None
    if not isinstance(health, dict):
        return f"the whole of it is {_json_type(health)}"
    odd = [f"{name} is {_json_type(health[name])}" for name in PARTS if health.get(name) is not None and not isinstance(health[name], dict)]
    return ", ".join(odd) or None


def _warn_unreadable(health: Any, store_id: int, what: str) -> None:
    """A clear warning when the kept health has a part that cannot be read: read as unknown, the rest kept."""
    odd = _unreadable_health(health)
    if odd:
        log.warning("the store's WhatsApp number health is kept with what is not an object (%s): read as unknown, "
                    "the rest of the row kept; %s", odd, what, extra={"store_id": store_id})


def held_until(health: dict[str, Any], now: datetime) -> datetime | None:
    """Until when the account may not message: its latest messaging restriction's end (none given:
    until lifted), or, disabled, until Meta reinstates it. None: it may."""
    ends: list[datetime] = []
    health = _object(health)
    for r in _holding(health.get("restriction")):
        if not _malformed(r):
            ends.append(_until(r) or UNTIL_LIFTED)
    if _part(health, "ban").get("state") == "DISABLE":
        ends.append(UNTIL_LIFTED)
    end = max(ends, default=None)
    return end if end is not None and end > now else None


def _until(restriction: dict[str, Any]) -> datetime | None:
    """A kept restriction's end; None: none given, or not a date (``_malformed``)."""
    try:
        return datetime.fromisoformat(restriction["until"]) if restriction.get("until") else None
    except (TypeError, ValueError):
        return None


def _malformed(restriction: dict[str, Any]) -> bool:
    """An end kept that is not a date (a row written by hand, or by an older version): the hold it
    set is over once the row's own hold time passed; it never holds the sends again."""
    return bool(restriction.get("until")) and _until(restriction) is None


# ---- the store row ---------------------------------------------------------------------------

def record(conn: Connection, store: Any, store_id: int, event: Any, now: datetime) -> tuple[str, NumberNews | None]:
    """Keep what an update says on the store row; returns ``news``, ``same``, ``stale`` or ``none``
    (nothing the connector keeps: another account event), and what the number's case is told that the
    hand-off rules cannot say (a capability update that lowered the limit: ``_lowered_limit``). The row is read locked on PostgreSQL, so
    two workers applying two updates of one store compare with each other's writes."""
    event_parts = parts(event, store)
    if not event_parts:
        return "none", None
    query = select(STORES.c.whatsapp_health).where(STORES.c.id == store_id)
    if conn.dialect.name != "sqlite":
        query = query.with_for_update()
    kept = conn.execute(query).scalar()
    _warn_unreadable(kept, store_id, "Meta's news replaces what it is about")
    health = _object(kept)
    new, verdict = merge(health, event_parts, event.occurred_at or now)
    new, verdict, news = _lowered_limit(store, event, health, new, verdict)
    if new is not health:
        conn.execute(update(STORES).where(STORES.c.id == store_id).values(whatsapp_health=new, whatsapp_held_until=held_until(new, now)))
        _limit_raised(conn, health, new, now)
    return verdict, news


def _limit_raised(conn: Connection, before: dict[str, Any], after: dict[str, Any], now: datetime) -> None:
    """Meta raised the portfolio's limit (shared by the deployment's stores): the messages held for the old one are
    due now, and the next claims meter them at the new one (those still without room are held again, until when
    the new limit has room)."""
    was, limit = _part(before, "limit").get("value"), _part(after, "limit").get("value")
    if limit is None or tier(limit) == tier(was) or lowered(was, limit):
        return
    from connector.outbox.store import release_held

    release_held(conn, now)


def _lowered_limit(store: Any, event: Any, before: dict[str, Any], after: dict[str, Any],
                   verdict: str) -> tuple[dict[str, Any], str, NumberNews | None]:
    """A lowered messaging limit told once, whichever of Meta's words on it comes first; returns the health,
    the verdict and what a capability update tells (a DOWNGRADE is told by the hand-off rules, as news).

    - A number's DOWNGRADE to the limit kept, whose lowering nobody was told of (a capability update, which
      names no old limit, came first: the DOWNGRADE is then ``same``, or ``stale`` when stamped earlier), is
      news; one whose lowering was told (the capability update said it, or Meta's retry) is not.
    - A capability update below the limit kept is a lowered limit told now (``limit_news``)."""
    kept = _part(after, "limit")
    if isinstance(event, ev.NumberQualityChanged) and event.event == "DOWNGRADE" and event.limit is not None:
        if kept and tier(kept.get("value")) == tier(event.limit) and (verdict == "news" or not _part(before, "limit").get("told")):
            told = {**kept, "told": True, **({"old": event.old_limit} if not kept.get("old") else {})}
            return {**after, "limit": told}, "news", None
        return after, verdict, None
    if isinstance(event, ev.BusinessCapabilityChanged) and verdict == "news" and event.limit is not None:
        was = _part(before, "limit").get("value")
        news = limit_news(store, was, event.limit) if lowered(was, event.limit) else None
        if news is not None:
            return {**after, "limit": {**kept, "old": was, "told": True}}, verdict, news
    return after, verdict, None


def lowered(was: str | None, limit: str | None) -> bool:
    """Whether ``limit`` is a lower tier than ``was`` (both tiers whose order is known)."""
    was, limit = tier(was), tier(limit)
    return was in TIERS and limit in TIERS and TIERS.index(limit) < TIERS.index(was)


@dataclass(frozen=True, slots=True)
class NumberReading:
    """The number's quality rating (GREEN, YELLOW, RED, UNKNOWN) and messaging limit tier as Meta
    answers when asked (the adapter's ``WhatsAppClient.number_quality``); None: not given."""

    rating: str | None
    limit: str | None


def record_reading(conn: Connection, store: Any, store_id: int, reading: NumberReading, now: datetime) -> list[NumberNews]:
    """Keep what a reading made at ``now`` says, by the webhooks' rules (``merge``): a part a newer
    update already set is left alone, the same value again tells nobody, and only a change is
    news. Returns what the number's case is told: the rating's news, then the limit's."""
    query = select(STORES.c.whatsapp_health).where(STORES.c.id == store_id)
    if conn.dialect.name != "sqlite":
        query = query.with_for_update()
    kept = conn.execute(query).scalar()
    _warn_unreadable(kept, store_id, "the rating and limit read from Meta replace what they are about")
    health = _object(kept)
    new, told = health, []
    # a reading that says what is kept changes nothing, not even the part's time: moved on, it would make a
    # webhook Meta sent just before (a FLAGGED on its way) look older than the news and be dropped as stale
    if reading.rating in RATINGS and reading.rating != quality_of(new):
        was = quality_of(new)
        new, verdict = merge(new, [Part("quality", {"rating": reading.rating, "event": "READ"})], now)
        if verdict == "news" and (news := rating_news(store, was, reading.rating)) is not None:
            told.append(news)
    was_limit = _part(new, "limit").get("value")
    if reading.limit and tier(reading.limit) not in NOT_A_LIMIT and tier(reading.limit) != tier(was_limit):
        down = lowered(was_limit, reading.limit)  # told below: a DOWNGRADE of it arriving later tells nobody again
        new, verdict = merge(new, [Part("limit", {"value": reading.limit, "old": was_limit, "event": "READ", "told": down})], now)
        if verdict == "news" and (news := limit_news(store, was_limit, reading.limit)) is not None:
            told.append(news)
    if new is not health:
        # only the rating and the limit: a reading says nothing of restrictions or bans, so the sends' hold
        # (``whatsapp_held_until``) is left to the webhooks and to ``end_passed_holds``, which tells its end
        conn.execute(update(STORES).where(STORES.c.id == store_id).values(whatsapp_health=new))
        _limit_raised(conn, health, new, now)
    return told


# Meta's limit as its webhooks give it now (``max_daily_conversations_per_business``: a count) and as the
# phone number node and the older webhooks do (a tier): one form, so the two agree on what changed
_COUNTS = {"50": "TIER_50", "250": "TIER_250", "1000": "TIER_1K", "2000": "TIER_2K", "10000": "TIER_10K",
           "100000": "TIER_100K", "UNLIMITED": "TIER_UNLIMITED"}


def tier(limit: str | None) -> str | None:
    """A messaging limit as a tier name (``TIER_2K`` for a count of 2000); other values as they are."""
    if limit is None:
        return None
    text = str(limit).strip().upper().replace(",", "")
    return _COUNTS.get(text, text)


def note_reading(db: Any, store: Any, store_id: int, reading: NumberReading, now: datetime) -> int:
    """``record_reading`` in one write transaction, its news opened in (or added to) the number's
    case as a webhook's is; returns how many things the case was told."""
    from connector.handoffs import number_request, open_handoff

    with db.write_lock(), db.engine.begin() as conn:
        told = record_reading(conn, store, store_id, reading, now)
        for news in told:
            open_handoff(conn, store, store_id, None, number_request(store, news), now)
    return len(told)


def end_passed_holds(conn: Connection, store_ids: list[int], now: datetime,
                     rules: Mapping[int, PolicyRules]) -> list[tuple[int, NumberNews]]:
    """Record that a restriction Meta gave an end has ended, once its time passed: Meta sends no
    webhook then (only when it lifts one early), yet the sends resume (the outbox claim reads
    ``whatsapp_held_until``). The restriction is noted ended and ``whatsapp_held_until`` cleared
    (each hold once: of two workers, the one whose update matches the row still held writes it);
    returns, per store, what the number's open case is told: with how many messages the hold cost
    (``held_too_late``, by each store's ``rules``), noted on the row too for the dashboard."""
    from connector.outbox.store import held_too_late

    rows = conn.execute(select(STORES.c.id, STORES.c.whatsapp_health, STORES.c.whatsapp_held_until).where(
        STORES.c.id.in_(store_ids), STORES.c.whatsapp_held_until <= now)).all()
    out: list[tuple[int, NumberNews]] = []
    for row in rows:
        health = dict(_object(row.whatsapp_health))
        part = health.get("restriction")
        holding = _holding(part)
        malformed = [r for r in holding if _malformed(r)]
        unreadable = _unreadable(part)
        # once each: the hold is cleared below, so no later round comes back to it
        if malformed:
            log.warning("a WhatsApp restriction kept with an end that is not a date (%s): taken as ended when the store's hold "
                        "did, %s", ", ".join(sorted({str(r.get("kind")) for r in malformed})), row.whatsapp_held_until.isoformat(),
                        extra={"store_id": row.id})
        if unreadable:
            log.warning("a WhatsApp restriction kept in a shape that cannot be read (%s): taken as ended when the store's hold "
                        "did, %s", unreadable, row.whatsapp_held_until.isoformat(), extra={"store_id": row.id})
        ended = [r for r in holding if r in malformed or ((until := _until(r)) is not None and until <= now)]
        late = None
        if ended or unreadable:
            late = held_too_late(conn, row.id, rules[row.id], row.whatsapp_held_until, now)
            kept = {"at": row.whatsapp_held_until.isoformat(), **(part if isinstance(part, dict) else {})}
            # what cannot be read is dropped: it holds nothing, and ``merge`` compares the next news with a list of objects
            health["restriction"] = {**kept, "restrictions": _entries(part), "ended_at": row.whatsapp_held_until.isoformat(),
                                     "too_late": late}
        done = conn.execute(update(STORES).where(STORES.c.id == row.id, STORES.c.whatsapp_held_until == row.whatsapp_held_until)
                            .values(whatsapp_health=health, whatsapp_held_until=held_until(health, now)))
        if done.rowcount and late is not None:
            kinds = ", ".join(sorted({r["kind"] for r in ended}))
            out.append((row.id, NumberNews(
                f"The restriction Meta put on the WhatsApp Business Account{f' ({kinds})' if kinds else ''} ended "
                f"{row.whatsapp_held_until:%Y-%m-%d %H:%M} UTC: {resumed(late)}", only_open=True)))
    return out


def view(health: dict[str, Any] | None, until: datetime | None, now: datetime) -> dict[str, Any]:
    """The number's state for the dashboard and the admin API: its quality rating and messaging
    limit as Meta last said, whether its sends wait (why, until when), whether marketing is held."""
    health = _object(health)
    quality, limit = _part(health, "quality"), _part(health, "limit")
    waiting = until is not None and until > now
    restriction = health.get("restriction") if isinstance(health.get("restriction"), dict) else {}
    restrictions = _holding(restriction)
    why = ("Meta disabled the WhatsApp Business Account" if _part(health, "ban").get("state") == "DISABLE"
           else "Meta restricted the WhatsApp Business Account" + "".join(
               f"{'; ' if i else ': '}{RESTRICTION_WORDS.get(r['kind'], r['kind'])}" for i, r in enumerate(restrictions)))
    return {
        "quality_rating": quality.get("rating"),
        "quality_since": quality.get("since", quality.get("at")),
        "messaging_limit": limit.get("value"),
        "messaging_limit_since": limit.get("since", limit.get("at")),
        "sends_held": {"reason": why, "until": None if until == UNTIL_LIFTED else _iso(until)} if waiting else None,
        "marketing_held": quality.get("rating") == "RED",
        "violation": _part(health, "violation").get("type"),
        # when the last restriction that held the sends ended (its time passed, or Meta lifted it)
        "restriction_ended_at": None if waiting else restriction.get("ended_at"),
        # how many messages it held past their send_within limit (skipped as too_late); None: not counted (Meta lifted it)
        "restriction_too_late": None if waiting else restriction.get("too_late"),
    }


def quality_of(health: dict[str, Any] | None) -> str | None:
    """The number's quality rating as last heard (the policy gate holds marketing while it is RED)."""
    return _part(health, "quality").get("rating")


def limit_of(health: Any) -> tuple[str | None, datetime | None]:
    """The messaging limit as Meta last said it (``TIER_250``, ``2000``, ``UNLIMITED``...) and when it said it;
    (None, None): none heard yet (the dispatcher's meter, ``outbox.meter``, reads it)."""
    part = _part(health, "limit")
    value = part.get("value")
    return (str(value) if value is not None else None), _kept_at(part)


# ---- what the owner is told (pure) ------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class NumberNews:
    reason: str
    only_open: bool = False  # good news: added to the number's open case, if one is; else nobody is told


# when sends resume: the messages held past their latest useful send time (``policy.send_by``) do not go
RESUMED = ("waiting messages still in time go out now; those held past their send_within limit are skipped as too_late "
           "(the dashboard counts them)")


def resumed(late: int) -> str:
    """``RESUMED`` when what the hold cost is known: ``late`` messages held past their send_within limit."""
    if not late:
        return "waiting messages go out now; none was held past its send_within limit"
    return (f"waiting messages still in time go out now; {late} held past {'its' if late == 1 else 'their'} send_within limit "
            f"{'is' if late == 1 else 'are'} dropped, skipped as too_late (the dashboard counts them)")


def _limits(store: Any) -> str:
    """The store's send_within limits, as the owner set them (``[stores.policy]``)."""
    policy = store.policy
    steps = "".join(f", {hours:g} h for {key}" for key, hours in policy.send_within_hours)  # over their category's
    return (f"its send_within limit ({policy.marketing_send_within_hours:g} h for cart and reorder reminders, "
            f"{policy.utility_send_within_hours:g} h for order, COD and delivery messages{steps})")


def _utc(at: datetime | None) -> str:
    return "until Meta lifts it" if at is None or at == UNTIL_LIFTED else f"until {at:%Y-%m-%d %H:%M} UTC"


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


def _number(store: Any, event: ev.NumberQualityChanged) -> str:
    shown = f"+{event.display_phone_number} " if event.display_phone_number else ""
    return f"WhatsApp number {shown}(id {store.whatsapp_phone_number_id})"


# Since October 7, 2025 Meta sets messaging limits per business portfolio and "if your business phone number quality
# rating drops, its messaging limit will not be downgraded" (Meta, "Upcoming changes to messaging limits"): the owner is
# not told that a low rating costs the limit
def _flagged(number: str, limit: str) -> str:
    return (f"{number} was flagged by Meta: its quality rating is RED (low): customers block or report its messages.{limit} "
            "Cart and reorder reminders (marketing) are held while it is RED; "
            "order, COD and delivery messages still go. Check which templates are rated low (WhatsApp Manager > Insights), "
            "send fewer marketing messages, and only to customers who opted in")


def _unflagged(number: str) -> str:
    return (f"{number} is no longer flagged: its quality rating is back up. Held marketing messages go out "
            "again, each cart or reorder run's latest one only, unless held past its send_within limit "
            "(skipped as too_late)")


def _read_number(store: Any) -> str:
    digits = store.display_digits
    return f"WhatsApp number {f'+{digits} ' if digits else ''}(id {store.whatsapp_phone_number_id})"


def rating_news(store: Any, was: str | None, rating: str) -> NumberNews | None:
    """What a changed rating read from Meta tells the owner: RED as a flag does; YELLOW, the warning
    before it (Meta's webhooks never say YELLOW); GREEN only to an open case. A first reading of
    GREEN tells nobody (nothing changed that anyone heard of)."""
    number = _read_number(store)
    if rating == "RED":
        return NumberNews(_flagged(number, ""))
    if rating == "YELLOW":
        back = (" It was RED: held marketing messages go out again, each cart or reorder run's latest one only, unless held "
                "past its send_within limit (skipped as too_late).") if was == "RED" else ""
        return NumberNews(
            f"{number} is rated YELLOW (medium) by Meta: customers have begun to block or report its messages.{back} "
            "If it turns RED, cart and reorder reminders (marketing) are held until it recovers. Check which templates are rated low (WhatsApp Manager > Insights), send fewer marketing "
            "messages, and only to customers who opted in")
    if rating == "GREEN" and was == "RED":
        return NumberNews(_unflagged(number), only_open=True)
    if rating == "GREEN" and was is not None:
        return NumberNews(f"{number} is rated GREEN (high) by Meta again", only_open=True)
    return None


def limit_news(store: Any, was: str | None, limit: str) -> NumberNews | None:
    """A messaging limit read from Meta that moved from one it had said: told as Meta's own
    DOWNGRADE or UPGRADE is. A first reading, or a tier we do not know the order of, tells nobody."""
    was, limit = tier(was), tier(limit)  # type: ignore[assignment]
    if was not in TIERS or limit not in TIERS or was == limit:
        return None
    change = ev.NumberQualityChanged(business_account_id="", display_phone_number=store.display_digits,
                                     event="DOWNGRADE" if TIERS.index(limit) < TIERS.index(was) else "UPGRADE",
                                     limit=limit, old_limit=was)
    return number_news(change, store)


def _a_limit(limit: str | None) -> str | None:
    """A messaging limit as Meta said it, to tell the owner; None for one that is none (``NOT_A_LIMIT``:
    TIER_NOT_SET, a number that has not sent yet), which no sentence names as a limit."""
    return limit if limit and tier(limit) not in NOT_A_LIMIT else None


def number_news(event: Any, store: Any) -> NumberNews | None:
    """What a number or account update that is news tells the store's owner, with what to do; None:
    nothing to tell (a limit raised, an account event that changes no send...)."""
    if isinstance(event, ev.NumberQualityChanged):
        number = _number(store, event)
        current, old = _a_limit(event.limit), _a_limit(event.old_limit)
        limit = f" Its messaging limit is {current}." if current else ""
        was = f" from {old}" if old else ""
        if event.event == "FLAGGED":
            return NumberNews(_flagged(number, limit))
        if event.event == "UNFLAGGED":
            return NumberNews(_unflagged(number), only_open=True)
        if event.event == "DOWNGRADE":
            return NumberNews(
                f"Meta lowered the messaging limit of {number}{was} to {current or 'a lower tier'} (customers it may start "
                "conversations with in 24 hours): beyond it, messages fail. See why in WhatsApp Manager > Account tools > "
                "Messaging limits")
        if event.event == "UPGRADE":
            return NumberNews(f"Meta raised the messaging limit of {number}{was} to {current or 'a higher tier'}", only_open=True)
        return None
    if not isinstance(event, ev.AccountUpdated):
        return None
    account = "WhatsApp Business Account"
    if event.event == "ACCOUNT_RESTRICTION":
        messaging = [r for r in event.restrictions if r.kind in MESSAGING]
        listed = "; ".join(f"{RESTRICTION_WORDS.get(r.kind, r.kind)} ({r.kind}) {_utc(r.until)}" for r in event.restrictions)
        if not messaging:
            now_says = f": {listed}" if listed else ""
            return NumberNews(f"Meta no longer restricts the {account}'s messaging{now_says}. {RESUMED.capitalize()}",
                              only_open=True)
        holding = [r for r in messaging if r.kind in HOLDS]
        if not holding:
            return NumberNews(
                f"Meta restricted the {account}: {listed}. COD questions, order updates and reminders (templates) still go; "
                f"free-form replies to customers who write in are refused until it ends. See why, and appeal if it is wrong, in {WHERE}")
        end = max(r.until or UNTIL_LIFTED for r in holding)
        when = "once Meta lifts it" if end == UNTIL_LIFTED else f"when it ends, {end:%Y-%m-%d %H:%M} UTC"
        return NumberNews(
            f"Meta restricted the {account}: {listed}. Every WhatsApp message of this store waits unsent and goes out "
            f"{when}, unless held longer than {_limits(store)} after it was meant to go: then it is skipped as too_late. "
            f"See why, and appeal if it is wrong, in {WHERE}")
    if event.event == "DISABLED_UPDATE":
        date = f" ({event.ban_date})" if event.ban_date else ""
        if event.ban_state == "DISABLE":
            return NumberNews(f"Meta disabled the {account}{date}: every WhatsApp message of this store waits until Meta "
                              f"reinstates it, unless held longer than {_limits(store)} after it was meant to go: then it "
                              f"is skipped as too_late. Request a review in {WHERE}")
        if event.ban_state == "SCHEDULE_FOR_DISABLE":
            return NumberNews(f"Meta will disable the {account}{date} for policy violations: fix them or appeal in {WHERE} "
                              "before then; after it, no message of this store can be sent")
        if event.ban_state == "REINSTATE":
            return NumberNews(f"Meta reinstated the {account}{date}: {RESUMED}", only_open=True)
        return None
    if event.event == "ACCOUNT_VIOLATION":
        what = f" ({event.violation})" if event.violation else ""
        return NumberNews(f"Meta recorded a policy violation{what} on the {account}: more of them restrict or disable it. "
                          f"Details in {WHERE}")
    return None
