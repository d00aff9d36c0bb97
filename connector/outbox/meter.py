"""WhatsApp's messaging limit, metered before a send that starts a conversation.

Meta limits how many unique customers a business portfolio may message outside their 24 h customer
service window in a moving 24 h: 250, then 2,000, 10,000, 100,000 and unlimited, shared by all the
portfolio's numbers. It answers no error when a send goes over it: the message is refused or never
delivered. The connector keeps the limit Meta last said (``number_health``: the worker's reading of the
number, ``business_capability_update``); a deployment has one WhatsApp Business Account
(``runtime.stores_of_account``), so its stores share one limit: the one heard last.

The dispatcher's claim (``outbox.store.claim``, its ``hold``: ``Meter.hold``), before a batch counts as
sending, meters each template to a customer outside her service window that the policy gate lets go
now: one to a customer already messaged so in the last 24 h goes (she is counted already), and so does
one while fewer customers than its kind's stop are counted; any other is held. Marketing stops at the
store's ``messaging_limit_marketing_percent`` of the limit (80% by default), so order, COD and delivery
messages (utility) keep the rest; they stop at the limit. A held message stays pending, no try spent,
due again when enough counted customers have left the moving window for its kind to have room (at the
limit: when the oldest leaves), or at once (``store.release_held``) when that no longer holds: she writes to
the store (her window opens: ``state.record_inbound``), a message to her (of any of the stores) is counted by a
claim, or Meta raises the limit (``number_health``); the claim then meters it again. As after any hold,
one held past its send_within limit is skipped as too_late then. Messages inside her service window (free-form, or a template to a customer who wrote in
the last 24 h) are never held: they start no conversation.

Counted: the unique customers (by the number messaged: a customer of two stores is one) the stored rows say were sent a template (sending, sent, delivered, read,
uncertain, dry run) in the last 24 h, except one who had written to the store in the 24 h before it (her
window was open). The contact keeps her latest message's time only: one who wrote both before and after
our template is counted, which holds a send too many rather than loses one. Read in the claim's
transaction, under SQLite's write lock or a PostgreSQL advisory lock, so that dispatchers claiming at
once, and a restarted one, count each other's sends; held messages never count, as they never become
``sending``.

No limit heard yet (a number that has not sent, a deployment without the worker's reading): nothing is
held, and the log says so once. Guessing the lowest tier would hold an established store's reminders
for a limit it left long ago, on no word from Meta; the reading comes within ``worker.number_quality_hours``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, func, select

from connector.contacts import in_service_window
from connector.number_health import limit_of, tier
from connector.outbox.store import SENT_AT, SENT_STATES, Claimed, release_held
from connector.policy import ContactFacts, PolicyRules, check
from connector.storage.sql import CONTACTS, OUTBOX, STORES

log = logging.getLogger("storeloop.dispatcher")

WINDOW = timedelta(hours=24)  # Meta's moving window of the limit
USERS = {"TIER_50": 50, "TIER_250": 250, "TIER_1K": 1_000, "TIER_2K": 2_000, "TIER_10K": 10_000, "TIER_100K": 100_000}
UNLIMITED = "TIER_UNLIMITED"
# PostgreSQL's transaction-level advisory lock the claims that read the count take, so two claims
# never both count the window before either's batch is ``sending``: "sl-limit" as a number
LOCK = int.from_bytes(b"sl-limit", "big") & 0x7FFF_FFFF_FFFF_FFFF

# The templates the stored rows say went out since ``since``, each with when and her last message to the
# store. By the (status, due_at) index: a message sent at ``t`` was due at most its longest send_within limit
# before (``policy.send_by``: held longer, the claim skips it as too_late), so ``floor`` (``since`` less that
# limit) bounds the rows read to a day and a little of sends, not the whole send history.
_SENT_TEMPLATES = (
    select(OUTBOX.c.contact_id, OUTBOX.c.payload[("message", "to")].as_string().label("to"), SENT_AT.label("sent_at"),
           CONTACTS.c.last_inbound_at)
    .join_from(OUTBOX, CONTACTS, CONTACTS.c.id == OUTBOX.c.contact_id)
    .where(
        OUTBOX.c.status.in_(SENT_STATES),
        OUTBOX.c.due_at >= bindparam("floor"),
        OUTBOX.c.updated_at >= bindparam("since"),
        OUTBOX.c.store_id.in_(bindparam("sids", expanding=True)),
        OUTBOX.c.channel == "whatsapp",
        OUTBOX.c.payload[("message", "kind")].as_string() == "template",
    )
)


def users(said: str | None) -> int | None:
    """How many customers a limit as Meta said it lets the portfolio message outside their window in 24 h;
    None: no number (unlimited, not said, or a value we do not know)."""
    name = tier(said)
    if name is None or name == UNLIMITED:
        return None
    if name in USERS:
        return USERS[name]
    return int(name) if name.isdigit() and int(name) > 0 else None


def stop_for(category: str | None, limit: int, marketing_percent: float) -> int:
    """How many customers may be counted before a message of this category is held: marketing stops at its
    share of the limit (at least one), the rest at the limit."""
    if category == "marketing":
        return max(1, math.floor(limit * marketing_percent / 100 + 1e-9))
    return limit


def recipient(to: Any, contact_id: int | None) -> str:
    """Whom Meta counts: the number a message goes to, one customer whichever store's contact she is; a row
    without one (never sent so) by its contact."""
    return to if isinstance(to, str) and to else f"contact:{contact_id}"


def window_use(conn: Connection, store_ids: list[int], now: datetime, longest_hold: timedelta) -> dict[str, datetime]:
    """The customers counted against the limit at ``now`` (``recipient``: one per number, across the stores),
    each with her latest counted template's time (one query)."""
    since = now - WINDOW
    counted: dict[str, datetime] = {}
    for r in conn.execute(_SENT_TEMPLATES, {"sids": store_ids, "since": since, "floor": since - longest_hold}):
        if r.sent_at <= since:
            continue  # left the window: counted while it was less than 24 h old, so a held send is due after now
        if r.last_inbound_at is not None and r.last_inbound_at <= r.sent_at and in_service_window(r.last_inbound_at, r.sent_at):
            continue  # she had written within the 24 h before: inside her window, no conversation started
        who = recipient(r.to, r.contact_id)
        if who not in counted or counted[who] < r.sent_at:
            counted[who] = r.sent_at
    return counted


def admit(wanted: list[tuple[int, str, int]], counted: Mapping[str, datetime], now: datetime) -> tuple[dict[int, datetime], int]:
    """Which of ``wanted`` (row id, recipient, the count at which its kind stops; in claim order) are held,
    each with when its kind has room again, and the count once the others go. ``counted``: recipient -> her
    latest counted send. Pure."""
    seen = dict(counted)
    held: dict[int, int] = {}
    to: dict[int, str] = {}
    for row_id, who, stop in wanted:
        if who in seen:
            continue  # counted already: another message to her starts nothing new
        if len(seen) < stop:
            seen[who] = now
            continue
        held[row_id], to[row_id] = stop, who
    # one held before a message of a kind with room counted her in this batch (her reminder, then her order's): it goes
    held = {row_id: stop for row_id, stop in held.items() if to[row_id] not in seen}
    if not held:
        return {}, len(seen)
    # a contact leaves the window 24 h after her latest counted send; a kind has room once all but stop - 1 have
    leaves = sorted(t + WINDOW for t in seen.values())
    return {row_id: leaves[len(seen) - stop] for row_id, stop in held.items()}, len(seen)


class Meter:
    """The dispatcher's meter: ``hold`` runs in each claim (``outbox.store.claim``) and keeps what the log
    has said (an episode of holding starts and ends once; an unknown limit is said once)."""

    def __init__(self, stores: Mapping[int, Any], rules: Mapping[int, PolicyRules], *, messages_per_second: float, slack: int,
                 monotonic: Callable[[], float] = time.monotonic):
        self.stores = stores
        self.rules = rules
        self.store_ids = sorted(sid for sid, s in stores.items() if s.whatsapp_phone_number_id)
        # the most sends every dispatcher together can make per second (each number's rate is shared by them), twice
        # over for a dispatcher joining before the others have made room, and a batch or two in flight meanwhile
        self.rate = 2 * messages_per_second * len({s.whatsapp_phone_number_id for s in stores.values() if s.whatsapp_phone_number_id})
        self.slack = slack
        self.monotonic = monotonic
        self._read: tuple[float, int] | None = None  # when the count was last read (monotonic) and what it was then
        self.keys = ", ".join(sorted(stores[sid].key for sid in self.store_ids))
        # the longest a message may wait and still go (``policy.send_by``): the count's rows are read back that far
        self.longest_hold = max([max(r.marketing_send_within, r.utility_send_within, *r.send_within.values())
                                 for r in rules.values()], default=WINDOW)
        self.held = 0  # messages held since the dispatcher last took the number (``take_held``)
        self._holding = False  # an episode of holding is on (its start was logged)
        self._said: str | None | bool = False  # the limit last logged as not metered (False: none logged)

    def take_held(self) -> int:
        held, self.held = self.held, 0
        return held

    def hold(self, conn: Connection, rows: list[Claimed], now: datetime) -> dict[int, datetime]:
        """The claimed rows held for the messaging limit, each with its new due time (see the module)."""
        said = self._limit(conn)
        limit = users(said)
        if limit is None:
            self._not_metered(said)
            return {}
        self._said = False
        templates = [r for r in rows if self._template_outside_window(r, now)]
        if not templates:
            return {}
        stops = {sid: stop_for("marketing", limit, s.policy.messaging_limit_marketing_percent) for sid, s in self.stores.items()}
        if self._far_from(min(stops[r.store_id] if r.category == "marketing" else limit for r in templates), len(templates)):
            return {}
        kinds = [(r.id, recipient(r.payload["message"].get("to"), r.contact_id), stops[r.store_id] if r.category == "marketing" else limit)
                 for r in templates if self._gate_lets_go(r, now)]
        if not kinds:
            return {}
        if conn.dialect.name == "postgresql":
            conn.execute(select(func.pg_advisory_xact_lock(LOCK)))
        counted = window_use(conn, self.store_ids, now, self.longest_hold)
        held, count = admit(kinds, counted, now)
        # customers this batch counts: a message to her held before (in any store) starts nothing new now, due at once
        new = sorted({who for row_id, who, _ in kinds if row_id not in held and who not in counted and not who.startswith("contact:")})
        if new:
            release_held(conn, now, store_ids=self.store_ids, recipients=new)
        self._read = (self.monotonic(), count)
        self._tell(held, count, limit, min(stops.values(), default=limit))
        self.held += len(held)
        return held

    def _far_from(self, stop: int, wanted: int) -> bool:
        """Whether the count cannot have come near ``stop`` since it was last read, even if every send made since
        (by any dispatcher, at most ``rate`` a second) and every one wanted now counted a new customer: then the
        claim admits them all without reading the window again (a store far below its limit reads it every minute
        or so, not every batch). The count only falls as customers leave the window."""
        if self._read is None:
            return False
        at, count = self._read
        bound = count + self.rate * max(0.0, self.monotonic() - at) + self.slack + wanted
        if bound > stop:
            return False
        self._read = (at, count + wanted)
        return True

    def _template_outside_window(self, row: Claimed, now: datetime) -> bool:
        """A template to a contact outside her service window: it would start a conversation."""
        message = row.payload.get("message") if isinstance(row.payload, dict) else None
        if row.store_id not in self.stores or row.contact_id is None or not isinstance(message, dict) or message.get("kind") != "template":
            return False
        return not in_service_window((row.facts or ContactFacts()).last_inbound_at, now)

    def _gate_lets_go(self, row: Claimed, now: datetime) -> bool:
        """The policy gate lets it go now (``_one`` asks again): one it skips or defers is no send to count."""
        try:
            return check(category=row.category or "utility", kind="template", journey=row.journey, contact=row.facts or ContactFacts(),
                         history=row.history, rules=self.rules[row.store_id], tz=self.stores[row.store_id].tz, now=now,
                         number_quality=row.number_quality).allowed
        except Exception:  # the dispatcher says why when it prepares the message; not counted here
            return False

    def _limit(self, conn: Connection) -> str | None:
        """The portfolio's limit: the one Meta said last, of any of its stores' numbers."""
        said: tuple[datetime | None, str] | None = None
        for health in conn.execute(select(STORES.c.whatsapp_health).where(STORES.c.id.in_(self.store_ids))).scalars():
            value, at = limit_of(health)
            if value is not None and (said is None or (at is not None and (said[0] is None or at > said[0]))):
                said = (at, value)
        return said[1] if said is not None else None

    def _not_metered(self, said: str | None) -> None:
        if said == self._said:
            return
        self._said = said
        if said is None:
            log.info("WhatsApp's messaging limit is not known yet (no reading from Meta for stores %s): no send is held for "
                     "it until one comes (the worker reads it every worker.number_quality_hours)", self.keys,
                     extra={"stores": self.keys})
        elif tier(said) != UNLIMITED:
            log.warning("WhatsApp's messaging limit for stores %s is %r, not a limit the connector knows: no send is held "
                        "for it", self.keys, said[:32], extra={"stores": self.keys})

    def _tell(self, held: Mapping[int, datetime], counted: int, limit: int, lowest_stop: int) -> None:
        """One line when the meter starts holding sends, one when it has room for every kind again."""
        if held and not self._holding:
            self._holding = True
            until = min(held.values())
            log.warning(
                "WhatsApp's messaging limit reached for stores %s: %d of %d customers messaged outside their 24 h window in "
                "the last 24 h (marketing stops at %d, order messages at %d). Sends that would start a conversation with "
                "another customer are held for the messaging limit (%d so far, the first until %s UTC): they wait, none "
                "spends a try, and go out as earlier customers leave the moving 24 h window",
                self.keys, counted, limit, lowest_stop, limit, len(held), f"{until:%Y-%m-%d %H:%M}",
                extra={"stores": self.keys, "counted": counted, "limit": limit, "held": len(held)})
        elif not held and self._holding and counted < lowest_stop:
            self._holding = False
            log.info("WhatsApp's messaging limit has room again for stores %s (%d of %d customers in the last 24 h): "
                     "held sends go out", self.keys, counted, limit, extra={"stores": self.keys})
