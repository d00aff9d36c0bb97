"""The policy gate: may this contact receive this message now? Pure, no I/O, no clock.

Applied when a message is queued and again just before it is sent (consent can change
in between). A blocked message is recorded as skipped with the reason, so a report can
always say why someone was not messaged. Rules, in order:

1. opted out (STOP keyword) or unreachable number -> skip (a number WhatsApp refused, 131026, is
   worth one more try once ``unreachable_retry_after`` has passed: ``worth_trying``);
2. consent for the category (utility: WhatsApp contact consent; marketing: opt-in);
3. the 24-hour customer-service window for free-form and interactive messages;
4. no cart reminder within N hours of an order confirmation;
5. one marketing frequency cap across all journeys;
6. marketing while Meta rates the store's number RED (flagged) -> held, looked at again hourly:
   more reminders would lower the rating further (its messaging limit next); order, COD and
   delivery messages (utility) still go (once it recovers, a run's latest held step goes, the
   earlier ones are skipped as superseded: ``outbox.store.claim``);
7. quiet hours in the store's time zone -> defer to the next allowed time.

Before the gate, the dispatcher drops a message held so long that it no longer makes sense
(``send_by``: a cart reminder a day late, "out for delivery" after the parcel arrived): skipped
as ``too_late``, also when quiet hours would push it past that time. The RED hold, whose end is
unknown, looks last shortly before that time (``dispatcher.LAST_LOOK_BEFORE``: the number may
recover before it) and drops it then.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from connector.contacts import in_service_window

DEFAULT_STOP_WORDS = (
    "stop", "stop all", "unsubscribe", "opt out", "optout", "end", "quit",  # English
    "band karo", "band", "बंद", "बंद करो", "रोको",  # Hindi
    "baja", "alto", "detener", "cancelar suscripcion",  # Spanish
    "parar", "sair", "descadastrar",  # Portuguese
    "annulla iscrizione", "basta", "disiscrivi",  # Italian
    "arret", "arreter", "desabonner", "desinscrire",  # French
    "abmelden", "abbestellen",  # German
    "توقف", "الغاء الاشتراك",  # Arabic
)
DEFAULT_START_WORDS = ("start", "unstop", "resume", "subscribe", "shuru", "शुरू", "alta", "iniciar", "avvia", "demarrer")


@dataclass(frozen=True, slots=True)
class ContactFacts:
    consent_utility: str = "unknown"
    consent_marketing: str = "unknown"
    opted_out_at: datetime | None = None
    last_inbound_at: datetime | None = None
    reachable: bool = True
    unreachable_at: datetime | None = None  # when her number was last refused or tried again; None: for good


@dataclass(frozen=True, slots=True)
class SendHistory:
    """What was already sent to this contact (from the outbox)."""

    marketing_sent_at: tuple[datetime, ...] = ()
    last_order_confirmation_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class PolicyRules:
    quiet_start: time | None = time(21, 0)
    quiet_end: time | None = time(9, 0)
    utility_in_quiet_hours: bool = True
    marketing_cap: int = 2
    marketing_cap_window: timedelta = timedelta(days=7)
    cart_quiet_after_order: timedelta = timedelta(hours=24)
    utility_needs_consent: bool = True
    unreachable_retry_after: timedelta | None = timedelta(days=7)  # None: never tried again by time
    stop_words: frozenset[str] = field(default_factory=lambda: frozenset(DEFAULT_STOP_WORDS))
    start_words: frozenset[str] = field(default_factory=lambda: frozenset(DEFAULT_START_WORDS))
    marketing_send_within: timedelta = timedelta(hours=6)
    utility_send_within: timedelta = timedelta(hours=24)
    # by journey or journey.step, over the category's (config: ``send_within_hours``)
    send_within: Mapping[str, timedelta] = field(default_factory=dict, hash=False)


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str | None = None
    defer_until: datetime | None = None
    # a hold whose end nobody knows (the number rated RED), looked at again at ``defer_until``: until the
    # message's last useful minute it is worth another look, where a known end (quiet hours) past it is not
    looks_again: bool = False

    @property
    def deferred(self) -> bool:
        return self.defer_until is not None


ALLOW = Decision(True)
CART_JOURNEYS = frozenset({"checkout_recovery"})
QUALITY_RECHECK = timedelta(hours=1)  # a marketing message held while the number is RED is looked at again after this


def _in_quiet_hours(local: time, start: time, end: time) -> bool:
    if start == end:
        return False
    if start < end:
        return start <= local < end
    return local >= start or local < end  # spans midnight, e.g. 21:00-09:00


def next_allowed(now: datetime, tz: ZoneInfo, start: time, end: time) -> datetime:
    """The first instant at or after ``now`` outside quiet hours, in UTC."""
    local = now.astimezone(tz)
    if not _in_quiet_hours(local.time(), start, end):
        return now
    day = local.date() if local.time() < end else local.date() + timedelta(days=1)
    # build the wall-clock end time in the zone; fold handles DST overlaps deterministically
    candidate = datetime.combine(day, end, tzinfo=tz)
    return candidate.astimezone(now.tzinfo)


TOO_LATE = "too_late"


def send_by(planned_at: datetime, *, category: str | None, journey: str | None, step: str | None, rules: PolicyRules) -> datetime:
    """The latest useful send time of a WhatsApp message meant to go at ``planned_at``: its step's
    limit, else its journey's, else its category's. Held past it (a restricted account, the number
    rated RED, the connector down, quiet hours after that), it would arrive when it no longer makes
    sense, so the dispatcher skips it as ``too_late``. Computed from the row and today's config,
    so a store that raises a limit after an outage lets its waiting messages go."""
    within = rules.send_within.get(f"{journey}.{step}") or rules.send_within.get(journey or "")
    if within is None:
        within = rules.marketing_send_within if category == "marketing" else rules.utility_send_within
    return planned_at + within


def worth_trying(reachable: bool, unreachable_at: datetime | None, rules: PolicyRules, now: datetime) -> bool:
    """Whether a message may go to this number: it is reachable, or WhatsApp refused it (131026:
    not on WhatsApp, terms not accepted, an old app, passing causes) long enough ago that she may have
    put it right. That try restarts the clock (``outbox.store.record``), so it is one message per period."""
    if reachable:
        return True
    retry = rules.unreachable_retry_after
    return unreachable_at is not None and retry is not None and now - unreachable_at >= retry


def check(
    *,
    category: str,
    kind: str,
    journey: str | None,
    contact: ContactFacts,
    history: SendHistory,
    rules: PolicyRules,
    tz: ZoneInfo,
    now: datetime,
    number_quality: str | None = None,
) -> Decision:
    """Decide for one message. ``kind`` is template, interactive or text; ``number_quality`` the
    sending number's rating as Meta last said it (``number_health``; None: not heard)."""
    if contact.opted_out_at is not None:
        return Decision(False, "opted_out")
    if not worth_trying(contact.reachable, contact.unreachable_at, rules, now):
        return Decision(False, "unreachable")
    if category == "marketing" and contact.consent_marketing != "granted":
        return Decision(False, "no_marketing_consent")
    if category == "utility" and rules.utility_needs_consent and contact.consent_utility != "granted":
        return Decision(False, "no_utility_consent")
    if kind in ("interactive", "text") and not in_service_window(contact.last_inbound_at, now):
        return Decision(False, "outside_service_window")
    if journey in CART_JOURNEYS and history.last_order_confirmation_at is not None:
        if now - history.last_order_confirmation_at < rules.cart_quiet_after_order:
            return Decision(False, "recent_order_confirmation")
    if category == "marketing":
        recent = [t for t in history.marketing_sent_at if now - t < rules.marketing_cap_window]
        if len(recent) >= rules.marketing_cap:
            return Decision(False, "frequency_cap")
        if number_quality == "RED":
            return Decision(False, "number_quality_red", defer_until=now + QUALITY_RECHECK, looks_again=True)
    if rules.quiet_start is not None and rules.quiet_end is not None:
        if category == "marketing" or not rules.utility_in_quiet_hours:
            when = next_allowed(now, tz, rules.quiet_start, rules.quiet_end)
            if when > now:
                return Decision(False, "quiet_hours", defer_until=when)
    return ALLOW


# Scripts whose combining marks are accents or optional vowel points: "arrêt" is "arret",
# "إلغاء" is "الغاء". In the others (Devanagari and the other Indic abugidas) a mark is the vowel
# itself: रुको (wait) is not रोको (stop), बाद (later) is not बंद (stop).
_MARKS_OPTIONAL = frozenset({"LATIN", "GREEK", "CYRILLIC", "ARABIC", "HEBREW"})
_INVISIBLE = "\u0640"  # Arabic tatweel: stretches a word, spells nothing


@functools.lru_cache(maxsize=4096)
def _marks_optional(letter: str) -> bool:
    return unicodedata.name(letter, "").split(" ", 1)[0] in _MARKS_OPTIONAL


def _fold(text: str) -> str:
    """A message as the keyword lists see it: case, width, punctuation, symbols (an emoji) and
    optional accents do not count; the letters and the vowel signs that spell the word do."""
    out: list[str] = []
    optional = True  # whether the marks on the last letter may go
    for c in unicodedata.normalize("NFKD", text.casefold()):
        kind = unicodedata.category(c)
        if kind[0] == "M":
            if not optional:  # kept on a Devanagari letter; gone on a Latin one or a dropped emoji (its VS16)
                out.append(c)
        elif c == _INVISIBLE or kind == "Cf":  # tatweel, a zero-width joiner, a direction mark
            continue
        elif kind[0] in "LN":
            optional = kind[0] == "N" or _marks_optional(c)
            out.append(c)
        else:
            out.append(" ")
            optional = True
    return " ".join(unicodedata.normalize("NFC", "".join(out)).split())


def keyword_form(word: str) -> str:
    """A keyword as a message is compared with it (``keyword_intent``): two words of one form are one keyword."""
    return _fold(word)


@functools.lru_cache(maxsize=32)
def _folded(words: frozenset[str]) -> frozenset[str]:
    return frozenset(_fold(w) for w in words)


# what asks for no more promotions, and only that: the label of Meta's marketing opt-out quick reply
# on marketing templates (third-party docs: Engati, Kapso). Her order's COD question and its
# delivery updates still come; a store that lists one of these in its stop_words makes it a STOP.
MARKETING_STOP_WORDS = frozenset({"stop promotions", "stop promotion", "no promotions"})


def keyword_intent(text: str | None, rules: PolicyRules) -> str | None:
    """'stop', 'start' or 'stop_marketing' when the whole message is an opt-out/opt-in keyword, else None.

    Only a message that is the keyword (ignoring case, accents and punctuation) counts, so
    "please stop calling, I confirmed" in a conversation is left to a person.
    """
    if not text:
        return None
    folded = _fold(text)
    if not folded or len(folded) > 40:
        return None
    if folded in _folded(rules.stop_words):
        return "stop"
    if folded in _folded(rules.start_words):
        return "start"
    if folded in _folded(MARKETING_STOP_WORDS):
        return "stop_marketing"
    return None
