"""Privacy requests (Shopify's mandatory topics): export what we hold about a customer, or erase it.

``customers/data_request`` -> :func:`export_customer`, stored as a ``compliance_requests``
row the merchant fetches (``GET /api/stores/{key}/compliance/{id}``, ``storeloop customer
export``). ``customers/redact`` -> :func:`redact_customer`; ``shop/redact`` ->
:func:`redact_shop`. They run in the processor's transaction when the webhook is
processed (never in the HTTP request), so an erasure is all-or-nothing. A store owner's
erasure request (WooCommerce has no privacy webhook: ``connector/erasure.py``) is an inbox
row of ours that takes the same path.

Who is "the customer": contacts matched by the platform customer id, the phone (E.164,
also as a WhatsApp id) or an email, plus the contacts of the orders the request names
unless such a contact belongs to another platform customer.

What an erasure does (README "Privacy and compliance"):

- erased: phones, names, emails, WhatsApp ids and user ids, the platform customer id,
  message texts, rendered message parameters (outbox payloads), order status/payment
  URLs, checkout recovery URLs, tracking numbers and URLs, hand-off reasons, context and
  resolutions, raw webhook bodies, normalised events and the WhatsApp dedupe keys of every
  inbox row about the customer, inbox subjects and dedupe keys that carry the platform
  customer id, stored data-request exports for them, and WhatsApp message ids (``wamid.``
  ids encode the phone number). Any remaining text (tags, line titles and the keys made
  from a title, journey state, errors, job-health error texts) is scrubbed of the
  customer's phone, name and email; a shop erasure keeps only the kind of its job errors.
- kept, so reports still add up: counts, order totals, currencies, statuses, COD flags,
  timestamps, line items (product, quantity, price), consent states and their history
  (a redaction is not an opt-out: the weekly report counts those), journey outcomes and
  revenue, message statuses and template names, the contact row itself (id, stage).
- the contact can never be messaged again: no phone, ``reachable`` false,
  ``opted_out_at`` set; its pending sends are skipped (reason ``redacted``), its active
  journey runs finished (outcome ``redacted``), its pending reorder windows closed.
- ``phone_key`` becomes ``redacted:<contact id>``: unique per store (the
  ``uq_contacts_store_phone`` constraint), derived from nothing personal, the same on a
  repeated request. ``wa_id`` becomes ``redacted`` so an in-flight send cannot write the
  number back (the dispatcher only fills an empty ``wa_id``).
- A later order or message from the same phone finds no contact (the key is gone) and
  starts a new one: a new relationship the customer started, under the normal consent
  rules. Nothing links it to the erased contact.
- The store keeps her orders and checkouts: their ids and tokens, her checkouts' recovery
  links and her platform customer id as keyed hashes, are recorded (``connector/erased.py``),
  and a later event about them is ignored instead of bringing her back (a guest's too, who has
  no customer id). A new order (a new id) or checkout (a new token) is the new relationship above.

Logs carry ids and counts, never a phone, name or email.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import phonenumbers
from sqlalchemy import Connection, String, Table, Text, and_, bindparam, cast, delete, false, func, literal, null, or_, select, true, update

from adapters.whatsapp import privacy as whatsapp_privacy
from connector import events as ev
from connector import erased, job_health
from connector.checkout_poll import link_identity_of
from connector.contacts import normalize_phone
from connector.storage import jsoncodec
from connector.storage import models as m
from connector.storage.db import Database
from connector.storage.inbox import with_body
from connector.storage.sql import (
    ATTEMPTS, BODIES, CHECKOUTS, CONSENT, CONTACTS, FULFILLMENTS, HANDOFFS, INBOX, LINES, MESSAGES, ORDERS, OUTBOX, RUNS, STORES,
)

log = logging.getLogger("storeloop.compliance")

REQUESTS: Table = m.ComplianceRequest.__table__  # type: ignore[assignment]


def holds_export() -> Any:
    """The requests whose export is still stored. The JSON column keeps a None as JSON ``null``, not SQL NULL
    (the JSON type's ``none_as_null`` is off): a redaction, which never had an export, and an export emptied
    before are ``null``, and ``export IS NOT NULL`` took them too (a redaction listed as an expired export,
    an expired one expired again every hour)."""
    return and_(REQUESTS.c.export.is_not(None), cast(REQUESTS.c.export, Text) != "null")
WINDOWS: Table = m.ReorderWindow.__table__  # type: ignore[assignment]
PREVIOUS: Table = m.PreviousNumber.__table__  # type: ignore[assignment]

EXPORT_FORMAT = "storeloop.customer-export/1"
REDACTED = "redacted"
_CHUNK = 500
_UNSETTLED = ("pending", "failed", "held")
# what an outbox payload keeps: enough for reports (the template name) and the write-back audit
PAYLOAD_KEEP = ("subject", "action", "order_id", "args", "handoff_id", "stage", "fallback_category")
MESSAGE_KEEP = ("kind", "name", "language")
HANDOFF_CONTEXT_KEEP = ("stage", "order", "last_order", "active_journeys", "told_at", "told_update")
_STATE_DROP = ("recovery_url",)  # a checkout recovery URL opens the customer's checkout (address, email)
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_LONG_NUMBER = re.compile(r"(?<!\d)\+?\d(?:[\s\-.()/]*\d){8,}(?!\d)")  # 9+ digits: a phone, not a date


# -- who the request is about -------------------------------------------------------------------------
@dataclass(frozen=True)
class Identity:
    """What a request says about the customer (any of it may be missing)."""

    customer_external_id: str | None = None
    phone: ev.Phone | None = None
    emails: tuple[str, ...] = ()
    order_ids: tuple[str, ...] = ()

    @classmethod
    def build(cls, *, customer_external_id: str | int | None = None, phone: str | ev.Phone | None = None,
              emails: Iterable[str] | str | None = (), order_ids: Iterable[str | int] = (),
              default_country: str | None = None) -> "Identity":
        parsed = phone if isinstance(phone, ev.Phone) or phone is None else normalize_phone(phone, default_country)
        if isinstance(emails, str):
            emails = (emails,)
        return cls(
            customer_external_id=(str(customer_external_id).strip() or None) if customer_external_id is not None else None,
            phone=parsed,
            emails=tuple(sorted({e.strip() for e in emails or () if e and e.strip()})),
            order_ids=tuple(dict.fromkeys(str(o).strip() for o in order_ids if str(o).strip())),
        )

    def empty(self) -> bool:
        return not (self.customer_external_id or self.phone or self.emails or self.order_ids)


def _digits(text: str | None) -> str:
    return re.sub(r"\D", "", text or "")


_SEP = r"[\s\-.()/]*"  # what people and forms put between a number's digits
_COUNTRY_FIELD = re.compile(r'"(?:country_code|countryCode|country|country_iso)"\s*:\s*"([A-Za-z]{2})"')
_PHONE_LIKE = re.compile(r"(?:\+|(?<!\d)00)?\d(?:[\s\-.()/]*\d){6,}")


def _spelled(digits: str) -> str:
    return _SEP.join(digits)


@dataclass
class Number:
    """One valid number of hers, and how stored bodies write it: internationally (``+39 312 345 6789``,
    ``0039...``, a WhatsApp id ``393123456789``), or nationally (``312 345 6789``, ``098765 43210`` with
    the trunk prefix). A national form names her only where it is read in her number's country: the
    same national digits are another person's number in another country (``+1 312 345 6789``)."""

    e164: str
    code: str  # the country calling code
    national: str  # the national significant number
    trunk: str  # the national (trunk) prefix, "0" in India; "" where there is none
    regions: frozenset[str]  # the regions that share the code (+1: the US, Canada...)
    region: str  # the region her number is of: where its national form is read
    international: re.Pattern[str]

    @classmethod
    def of(cls, e164: str | None) -> "Number | None":
        if not e164:
            return None
        try:
            parsed = phonenumbers.parse(e164 if e164.startswith("+") else f"+{e164}", None)
        except phonenumbers.NumberParseException:
            return None
        if not phonenumbers.is_valid_number(parsed):
            return None
        code, national = str(parsed.country_code), phonenumbers.national_significant_number(parsed)
        region = phonenumbers.region_code_for_number(parsed)
        meta = phonenumbers.PhoneMetadata.metadata_for_region(region) if region else None
        trunk = (meta.national_prefix or "") if meta is not None else ""
        trunk_after = rf"|\(?{_spelled(trunk)}\)?" if trunk else ""
        return cls(e164=f"+{code}{national}", code=code, national=national, trunk=trunk,
                   regions=frozenset(phonenumbers.region_codes_for_country_code(parsed.country_code)), region=region or "ZZ",
                   # after the code, "(0)" or the trunk prefix as national forms write it: +44 (0)20..., +91 098765 43210
                   international=re.compile(r"(?<!\d)(?:\+|00)?" + _SEP + _spelled(code) + _SEP + r"(?:(?:\(0\)" + trunk_after + ")" + _SEP + ")?"
                                            + _spelled(national) + r"(?!\d)"))

    def written(self) -> set[str]:
        """Her number as stores and people write it: what the database looks for first (``Needles.probes``)."""
        parsed = phonenumbers.parse(self.e164, None)
        international = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
        groups = re.split(r"[\s\-]+", international.split(" ", 1)[1]) if " " in international else [self.national]
        out = {international, phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.NATIONAL)}
        out |= {sep.join(groups) for sep in (" ", "-", ".")}
        return {x for x in out if len(x) >= 7}

    def in_text(self, text: str, regions: frozenset[str] | None) -> bool:
        """Whether ``text`` writes this number: internationally anywhere, nationally only when the text is of
        her number's country (``regions``; None: unknown). The national forms are found as libphonenumber's
        matcher reads numbers in text (its ``PhoneNumberMatcher``): with a trunk prefix or without, one of
        several numbers listed in a field ("044 2345 6789 / 98765 43210"), and not the national digits of
        another country's number ("+1 312 345 6789")."""
        if self.international.search(text):
            return True
        if regions is not None and not regions & self.regions:
            return False
        return any(match.number.country_code == int(self.code) and phonenumbers.national_significant_number(match.number) == self.national
                   for match in phonenumbers.PhoneNumberMatcher(text, self.region, leniency=phonenumbers.Leniency.VALID))


def _whole_number(text: str, regions: frozenset[str] | None) -> bool:
    international = text.startswith(("+", "00"))
    for region in [None] if international else sorted(regions or ()):
        try:
            parsed = phonenumbers.parse("+" + text[2:] if text.startswith("00") else text, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(parsed):
            return True
    return False


def row_regions(text: str, default_country: str | None) -> frozenset[str] | None:
    """The countries a stored row is of, to read a national number in: those its country fields name (an
    address's ``country_code``), else the store's default country (as the adapters read its phones)."""
    named = frozenset(c.upper() for c in _COUNTRY_FIELD.findall(text)) & phonenumbers.SUPPORTED_REGIONS
    if named:
        return named
    return frozenset({default_country.upper()}) if default_country else None


@dataclass
class Needles:
    """The customer's identifiers as text: a regex to scrub free text, literals and her numbers to find inbox rows."""

    digits: set[str] = field(default_factory=set)  # phones as digits (E.164 without '+', national number, with its trunk prefix)
    literals: set[str] = field(default_factory=set)  # emails, WhatsApp user ids, phone texts that are no valid number
    names: set[str] = field(default_factory=set)
    numbers: dict[str, Number] = field(default_factory=dict)  # her valid numbers, by E.164: how a stored row is judged hers
    written: set[str] = field(default_factory=set)  # her numbers as written (as she gave them, as formats write them)
    loose: set[str] = field(default_factory=set)  # the digits of a phone text that is no valid number: matched as digits
    default_country: str | None = None  # the store's: how a national number with no country beside it is read
    _strong: re.Pattern[str] | None = None

    def add_phone(self, e164: str | None, raw: str | None = None, wa_id: str | None = None) -> None:
        found = [n for n in (Number.of(e164), Number.of(_digits(wa_id)) if wa_id else None) if n is not None]
        for number in found:
            self.numbers[number.e164] = number
            self.digits.update(d for d in (number.code + number.national, number.national, number.trunk + number.national) if len(d) >= 6)
            self.written |= number.written()
        if found:
            if raw and len(raw.strip()) >= 6:
                self.written.add(raw.strip())
            return
        for d in (_digits(e164), _digits(raw), _digits(wa_id)):  # no valid number: its text, as it is
            if d and len(d) >= 6:
                self.digits.add(d)
                self.loose.add(d)
        if raw and len(raw.strip()) >= 6:
            self.literals.add(raw.strip())

    def add_contact(self, c: Any) -> None:
        self.add_phone(c.phone_e164, c.phone_raw, c.wa_id if c.wa_id != REDACTED else None)
        for text in (c.email, c.wa_user_id):
            if text and len(text) >= 3:
                self.literals.add(text)
        for name in (c.first_name, c.last_name):
            if name and len(name.strip()) >= 2:
                self.names.add(name.strip())

    def add_identity(self, ident: Identity) -> None:
        if ident.phone is not None:
            self.add_phone(ident.phone.e164, ident.phone.raw)
        self.literals.update(e for e in ident.emails if len(e) >= 3)

    def probes(self) -> list[str]:
        """Exact substrings to look for in stored bodies (the database does the first pass, ``names_her`` the second)."""
        out = {d for d in self.digits if len(d) >= 7} | self.written | set(self.literals) | {x.lower() for x in self.literals if "@" in x}
        return sorted(out)

    def names_her(self, text: str, regions: frozenset[str] | None | bool = True) -> bool:
        """Whether stored text names her: an email, id or unparsed phone text of hers as a whole token, or one of
        her numbers as written (``Number.in_text``). ``regions``: the countries the text is of (True: read from it)."""
        if self._strong is None:
            parts = [r"(?<!\d)\+?" + _spelled(d) + r"(?!\d)" for d in sorted(self.loose, key=len, reverse=True)]
            parts += [_literal(x) for x in sorted(self.literals, key=len, reverse=True)]
            self._strong = re.compile("|".join(parts), re.IGNORECASE) if parts else re.compile(r"(?!)")
        if self._strong.search(text):
            return True
        if not self.numbers:
            return False
        where = row_regions(text, self.default_country) if regions is True else regions
        return any(n.in_text(text, where) for n in self.numbers.values())  # type: ignore[arg-type]

    def regex(self, *, names: bool = True) -> re.Pattern[str] | None:
        """For scrubbing text already hers (her rows' tags, titles, errors): every form of her digits."""
        parts = [r"(?<!\d)\+?" + _spelled(d) + r"(?!\d)" for d in sorted(self.digits, key=len, reverse=True)]
        # a literal as a whole token: ann@example.org is not inside joann@example.org or ann@example.org.in
        # (a sentence's full stop after it still ends it)
        parts += [_literal(x) for x in sorted(self.literals, key=len, reverse=True)]
        if names:
            parts += [r"(?<!\w)" + re.escape(n) + r"(?!\w)" for n in sorted(self.names, key=len, reverse=True)]
        return re.compile("|".join(parts), re.IGNORECASE) if parts else None


def _literal(x: str) -> str:
    return r"(?<![\w.+-])" + re.escape(x) + r"(?![\w-]|\.\w)"


def _scrub(value: Any, pattern: re.Pattern[str] | None) -> Any:
    """Replace the customer's identifiers in any text, list or dict (keys too)."""
    if pattern is None:
        return value
    if isinstance(value, str):
        return pattern.sub("[redacted]", value)
    if isinstance(value, list):
        return [_scrub(v, pattern) for v in value]
    if isinstance(value, dict):
        return {_scrub(k, pattern): _scrub(v, pattern) for k, v in value.items()}
    return value


def generic_scrub(value: Any) -> Any:
    """For text not tied to one contact (shop erasure): any email and any long number."""
    if isinstance(value, str):
        return _LONG_NUMBER.sub("[number]", _EMAIL.sub("[email]", value))
    if isinstance(value, list):
        return [generic_scrub(v) for v in value]
    if isinstance(value, dict):
        return {k: generic_scrub(v) for k, v in value.items()}
    return value


def _chunks(values: Iterable[Any], size: int = _CHUNK) -> Iterator[list[Any]]:
    items = list(values)
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _in(column: Any, values: Iterable[Any]) -> Any:
    items = sorted(set(values))
    return column.in_(items) if items else false()


@dataclass
class Scope:
    """Everything one request reaches: built before anything is changed (the identifiers are needed to find rows)."""

    store_id: int
    shop: bool = False
    contact_ids: set[int] = field(default_factory=set)
    order_ids: set[str] = field(default_factory=set)  # platform order ids
    order_pks: set[int] = field(default_factory=set)
    checkout_tokens: set[str] = field(default_factory=set)
    wamids: set[str] = field(default_factory=set)
    customer_ids: set[str] = field(default_factory=set)
    needles: Needles = field(default_factory=Needles)
    per_contact: dict[int, Needles] = field(default_factory=dict)  # shop erasure: each contact's own identifiers
    _patterns: dict[int | None, re.Pattern[str] | None] = field(default_factory=dict)

    @property
    def subjects(self) -> set[str]:
        """Inbox / run / hand-off subjects about this customer's orders, checkouts and profile."""
        return ({f"order:{o}" for o in self.order_ids} | {f"checkout:{t}" for t in self.checkout_tokens}
                | {f"customer:{c}" for c in self.customer_ids})

    def pattern(self, contact_id: int | None = None) -> re.Pattern[str] | None:
        if not self.shop:
            if None not in self._patterns:
                self._patterns[None] = self.needles.regex()
            return self._patterns[None]
        if contact_id not in self._patterns:
            found = self.per_contact.get(contact_id) if contact_id is not None else None
            self._patterns[contact_id] = found.regex() if found else None
        return self._patterns[contact_id]

    def scrub(self, value: Any, contact_id: int | None = None, *, generic: bool = False) -> Any:
        """The customer's identifiers out of ``value``; in a shop erasure, those of the row's contact.

        ``generic``: text that may name anyone (errors, headers) loses every email and long
        number too when the row has no contact to go by.
        """
        if self.shop and (contact_id is None or contact_id not in self.per_contact):
            return generic_scrub(value) if generic else value
        return _scrub(value, self.pattern(contact_id))

    # where-clauses: the whole store, or what concerns the customer
    def by_contact(self, table: Table, *extra: Any) -> Any:
        if self.shop:
            return table.c.store_id == self.store_id
        return (table.c.store_id == self.store_id) & or_(_in(table.c.contact_id, self.contact_ids), *extra)


def find_contacts(conn: Connection, store_id: int, ident: Identity, at: datetime | None = None) -> list[Any]:
    conds: list[Any] = []
    if ident.customer_external_id:
        conds.append(CONTACTS.c.external_customer_id == ident.customer_external_id)
    if ident.phone is not None:
        key = ident.phone.e164 or f"raw:{ident.phone.raw}"[:80]
        conds.append(CONTACTS.c.phone_key == key)
        if ident.phone.e164:
            conds += [CONTACTS.c.phone_e164 == ident.phone.e164, CONTACTS.c.wa_id == ident.phone.e164.lstrip("+")]
    if ident.emails:
        conds.append(func.lower(CONTACTS.c.email).in_(sorted({e.lower() for e in ident.emails})))
    if ident.order_ids:
        # the contacts of the orders named, unless such a contact is another platform customer
        owners = select(ORDERS.c.contact_id).where(ORDERS.c.store_id == store_id, ORDERS.c.external_id.in_(ident.order_ids),
                                                   ORDERS.c.contact_id.is_not(None))
        same_customer = CONTACTS.c.external_customer_id.is_(None)
        if ident.customer_external_id:
            same_customer = same_customer | (CONTACTS.c.external_customer_id == ident.customer_external_id)
        conds.append(CONTACTS.c.id.in_(owners) & same_customer)
    if ident.phone is not None:
        # a number she changed from on WhatsApp lately (``number_change.WINDOW`` before the request, ``at``): the
        # contact it moved to. Past it the number may be someone else's: a request naming it alone finds none of hers
        from connector.number_change import previous_owners

        conds.append(CONTACTS.c.id.in_(previous_owners(store_id, key, at or m.utcnow())))
    if not conds:
        return []
    found = list(conn.execute(select(CONTACTS).where(CONTACTS.c.store_id == store_id, or_(*conds)).order_by(CONTACTS.c.id)))
    # and the contacts joined to them when her new number was already one of them (each keeps part of her history)
    ids = {c.id for c in found}
    linked = set(conn.execute(select(PREVIOUS.c.contact_id, PREVIOUS.c.from_contact_id).where(
        PREVIOUS.c.store_id == store_id, or_(_in(PREVIOUS.c.contact_id, ids), _in(PREVIOUS.c.from_contact_id, ids)))).all())
    more = {i for pair in linked for i in pair} - ids
    if more:
        found += list(conn.execute(select(CONTACTS).where(CONTACTS.c.store_id == store_id, _in(CONTACTS.c.id, more))))
        found.sort(key=lambda c: c.id)
    return found


def _customer_scope(conn: Connection, store_id: int, ident: Identity, default_country: str | None = None,
                    at: datetime | None = None) -> tuple[Scope, list[Any]]:
    scope = Scope(store_id)
    scope.needles.default_country = default_country
    contacts = find_contacts(conn, store_id, ident, at)
    scope.contact_ids = {c.id for c in contacts}
    for c in contacts:
        scope.needles.add_contact(c)
        if c.external_customer_id:
            scope.customer_ids.add(c.external_customer_id)
    scope.needles.add_identity(ident)
    if ident.customer_external_id:
        scope.customer_ids.add(ident.customer_external_id)
    orders = conn.execute(
        select(ORDERS.c.id, ORDERS.c.external_id, ORDERS.c.checkout_token)
        .where(ORDERS.c.store_id == store_id, or_(_in(ORDERS.c.contact_id, scope.contact_ids), _in(ORDERS.c.external_id, ident.order_ids)))
    ).all()
    scope.order_pks = {o.id for o in orders}
    scope.order_ids = {o.external_id for o in orders} | set(ident.order_ids)
    scope.checkout_tokens = {o.checkout_token for o in orders if o.checkout_token}
    scope.checkout_tokens |= set(conn.execute(
        select(CHECKOUTS.c.token).where(CHECKOUTS.c.store_id == store_id, _in(CHECKOUTS.c.contact_id, scope.contact_ids))).scalars())
    for table in (MESSAGES, OUTBOX):
        scope.wamids |= {w for w in conn.execute(
            select(table.c.wamid).where(table.c.store_id == store_id, _in(table.c.contact_id, scope.contact_ids),
                                        table.c.wamid.is_not(None))).scalars() if not w.startswith(f"{REDACTED}:")}
    return scope, contacts


# -- finding inbox rows ---------------------------------------------------------------------------------
def _bytes_contains(conn: Connection, column: Any, needle: str) -> Any:
    if conn.dialect.name == "postgresql":
        # bytea as text: printable ASCII stays as it is, so an ASCII needle is found as written
        return func.strpos(func.encode(column, "escape"), needle.replace("\\", "\\\\")) > 0
    return func.instr(column, needle.encode("utf-8")) > 0


def _text_contains(conn: Connection, expr: Any, needle: str) -> Any:
    return (func.strpos(expr, needle) if conn.dialect.name == "postgresql" else func.instr(expr, needle)) > 0


def _inbox_rows(conn: Connection, scope: Scope, request_inbox_id: int | None, *, others: bool = True,
                mentions: set[int] | None = None) -> set[int]:
    """Inbox rows about the customer: by contact and subject, then any earlier row whose body names them.

    ``others`` False (the export) leaves out a row found by its body that the processor tied to
    another contact: her name or number in someone else's order (a gift sent to her) is
    erased with her, but that order is not hers to be handed. ``mentions``, given, gets the rows
    found by their body alone (``_without_her`` decides whether an unprocessed one is someone else's).
    """
    sid = scope.store_id
    subjects = scope.subjects | {f"wamid:{w}" for w in scope.wamids}
    found: set[int] = set(conn.execute(
        select(INBOX.c.id).where(INBOX.c.store_id == sid, _in(INBOX.c.contact_id, scope.contact_ids))).scalars())
    for chunk in _chunks(sorted(subjects)):
        found |= set(conn.execute(select(INBOX.c.id).where(INBOX.c.store_id == sid, INBOX.c.subject.in_(chunk))).scalars())
    probes = scope.needles.probes()
    if probes:
        # deliveries the processor never tied to the contact (failed, held, earlier privacy requests):
        # the database finds candidates by substring, then the boundary-aware pattern confirms each
        cond = or_(*[_bytes_contains(conn, BODIES.c.raw_body, p) for p in probes],
                   *[_text_contains(conn, cast(INBOX.c.event, Text), p) for p in probes])
        query = with_body(INBOX.c.id, INBOX.c.event, INBOX.c.contact_id).where(INBOX.c.store_id == sid, cond)
        if request_inbox_id is not None:
            query = query.where(INBOX.c.id < request_inbox_id)  # later deliveries are a new relationship
        for row in conn.execute(query):
            if row.id in found or (not others and row.contact_id is not None and row.contact_id not in scope.contact_ids):
                continue
            text = (row.raw_body or b"").decode("utf-8", "replace") + "\n" + json.dumps(row.event or [])
            if scope.needles.names_her(text):  # her numbers exactly: not another country's with her national digits
                found.add(row.id)
                if mentions is not None:
                    mentions.add(row.id)
    found.discard(request_inbox_id)  # the processor settles the request's own row
    return found


# -- export -----------------------------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _rows(conn: Connection, query: Any, drop: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    return [{k: _plain(v) for k, v in row._mapping.items() if k not in drop} for row in conn.execute(query)]


def _body_for(row: Any, wa_ids: set[str]) -> Any:
    """The stored delivery as JSON; a WhatsApp item keeps only this customer's entry of its contacts list."""
    if row.raw_body is None:
        return None
    try:
        body = jsoncodec.loads_body(row.raw_body)  # as the processor read it: no NUL, no lone surrogate
    except (ValueError, UnicodeDecodeError):
        return None  # a form post or a broken body: the normalised event says what it carried
    return whatsapp_privacy.contacts_of(body, wa_ids) if row.source == "whatsapp" else body


def export_customer(
    conn: Connection,
    store_id: int,
    *,
    customer_external_id: str | int | None = None,
    phone: str | ev.Phone | None = None,
    emails: Iterable[str] | str | None = (),
    order_ids: Iterable[str | int] = (),
    default_country: str | None = None,
    store_key: str | None = None,
    now: datetime | None = None,
    request_inbox_id: int | None = None,
) -> dict[str, Any]:
    """Everything stored about one customer, as JSON-ready data (read only).

    Its inbox rows are the ones an erasure would erase (``_inbox_rows``), less other
    customers' rows that merely name her: a delivery the adapter could not read (never tied to
    her contact) is hers to see as much as it is hers to have erased, unless it still names
    someone else once she is out of it (his failed gift to her: ``_someone_elses``).
    """
    ident = Identity.build(customer_external_id=customer_external_id, phone=phone, emails=emails, order_ids=order_ids,
                           default_country=default_country)
    scope, contacts = _customer_scope(conn, store_id, ident, default_country, now)
    cids = scope.contact_ids
    sid = store_id
    consent = _rows(conn, select(CONSENT).where(CONSENT.c.store_id == sid, _in(CONSENT.c.contact_id, cids)).order_by(CONSENT.c.id))
    out_contacts = []
    for c in contacts:
        row = {k: _plain(v) for k, v in c._mapping.items()}
        row["consent_history"] = [h for h in consent if h["contact_id"] == c.id]
        out_contacts.append(row)
    lines = _rows(conn, select(LINES).where(LINES.c.store_id == sid, _in(LINES.c.order_id, scope.order_pks)).order_by(LINES.c.id))
    fulfillments = _rows(conn, select(FULFILLMENTS).where(FULFILLMENTS.c.store_id == sid, _in(FULFILLMENTS.c.order_external_id, scope.order_ids))
                         .order_by(FULFILLMENTS.c.id))
    orders = _rows(conn, select(ORDERS).where(ORDERS.c.store_id == sid, _in(ORDERS.c.id, scope.order_pks)).order_by(ORDERS.c.placed_at))
    for o in orders:
        o["line_items"] = [li for li in lines if li["order_id"] == o["id"]]
        o["fulfillments"] = [f for f in fulfillments if f["order_external_id"] == o["external_id"]]
    subjects = scope.subjects
    checkouts = _rows(conn, select(CHECKOUTS).where(CHECKOUTS.c.store_id == sid, or_(_in(CHECKOUTS.c.contact_id, cids),
                                                                                    _in(CHECKOUTS.c.token, scope.checkout_tokens)))
                      .order_by(CHECKOUTS.c.id))
    messages = _rows(conn, select(MESSAGES).where(MESSAGES.c.store_id == sid, _in(MESSAGES.c.contact_id, cids)).order_by(MESSAGES.c.occurred_at))
    outbox = _rows(conn, select(OUTBOX).where(OUTBOX.c.store_id == sid, _in(OUTBOX.c.contact_id, cids)).order_by(OUTBOX.c.id),
                   drop=("lease_until", "leased_by"))
    runs = _rows(conn, select(RUNS).where(scope.by_contact(RUNS, _in(RUNS.c.subject, subjects))).order_by(RUNS.c.id))
    handoffs = _rows(conn, select(HANDOFFS).where(scope.by_contact(HANDOFFS, _in(HANDOFFS.c.subject, subjects))).order_by(HANDOFFS.c.id))
    windows = _rows(conn, select(WINDOWS).where(scope.by_contact(WINDOWS)).order_by(WINDOWS.c.id))
    # the numbers she changed from on WhatsApp (``number_change``): kept to find her by them, so hers to see
    previous = [{"phone": r.phone_key.removeprefix("raw:"), "changed_at": _plain(r.changed_at), "contact_id": r.contact_id,
                 "from_contact_id": r.from_contact_id}
                for r in conn.execute(select(PREVIOUS).where(PREVIOUS.c.store_id == sid, or_(_in(PREVIOUS.c.contact_id, cids),
                                                                                           _in(PREVIOUS.c.from_contact_id, cids)))
                                      .order_by(PREVIOUS.c.changed_at, PREVIOUS.c.id))]
    wa_ids = {c.wa_id for c in contacts if c.wa_id} | {d for d in scope.needles.digits}
    mentions: set[int] = set()
    inbox_ids = _inbox_rows(conn, scope, request_inbox_id, others=False, mentions=mentions)
    inbox: list[dict[str, Any]] = []
    for chunk in _chunks(sorted(inbox_ids)):
        for row in conn.execute(with_body().where(INBOX.c.id.in_(chunk)).order_by(INBOX.c.id)):
            if row.id in mentions and _someone_elses(scope, row):
                continue  # an unprocessed delivery of someone else's that names her (his gift to her): not hers to be handed
            inbox.append({"id": row.id, "source": row.source, "topic": row.topic, "received_at": _plain(row.received_at),
                          "status": row.status, "subject": row.subject, "event": row.event, "body": _body_for(row, wa_ids)})
    counts = {"contacts": len(out_contacts), "consent_changes": len(consent), "orders": len(orders), "checkouts": len(checkouts),
              "fulfillments": len(fulfillments), "messages": len(messages), "outbox": len(outbox), "journey_runs": len(runs),
              "handoffs": len(handoffs), "reorder_windows": len(windows), "previous_numbers": len(previous), "inbox_events": len(inbox)}
    return {
        "format": EXPORT_FORMAT,
        "store": store_key,
        "generated_at": _plain(now or m.utcnow()),
        "request": {"customer_id": ident.customer_external_id, "phone": ident.phone.e164 or ident.phone.raw if ident.phone else None,
                    "emails": list(ident.emails), "order_ids": list(ident.order_ids)},
        "counts": counts,
        "contacts": out_contacts,
        "orders": orders,
        "checkouts": checkouts,
        "messages": messages,
        "outbox": outbox,
        "journey_runs": runs,
        "handoffs": handoffs,
        "reorder_windows": windows,
        "previous_numbers": previous,
        "inbox_events": inbox,
    }


# -- erasure ----------------------------------------------------------------------------------------------
def _placeholder(column: Any) -> Any:
    """``redacted:<row id>``: unique (the id is), stable, and derived from nothing personal."""
    return literal(f"{REDACTED}:", String) + cast(column, String)


def _write_rows(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """Per-row values (``_id`` names the row), one executemany per shape."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(sorted(k for k in row if k != "_id")), []).append(row)
    for fields, params in groups.items():
        stmt = update(table).where(table.c.id == bindparam("_id")).values({f: bindparam(f) for f in fields})
        for chunk in _chunks(params, 1000):
            conn.execute(stmt, chunk)


class _Keys:
    """Key columns (unique per store) that can spell a title of hers: a personalised item's reorder
    window is keyed ``t:<title>``, and its run, sends and hand-off by that key. Scrubbed as the
    title is, so the daily scan, reading the scrubbed title, finds the same window again; a key
    that would then clash with another (or outgrow its column) gets ``#<row id>``. ``within``
    names what else the uniqueness spans (a run's journey, a window's order)."""

    def __init__(self, scope: Scope, limit: int, taken: Iterable[tuple[str, str]] = ()):
        self.scope, self.limit, self.taken = scope, limit, set(taken)

    def scrub(self, row_id: int, value: str | None, contact_id: int | None, within: str = "") -> str | None:
        if not value:
            return value
        cleaned = self.scope.scrub(value, contact_id)
        if cleaned == value:
            return value
        if len(cleaned) > self.limit or (within, cleaned) in self.taken:
            suffix = f"#{row_id}"
            cleaned = cleaned[:self.limit - len(suffix)] + suffix
        self.taken.add((within, cleaned))
        return cleaned


def _erase(conn: Connection, scope: Scope, now: datetime, request_inbox_id: int | None) -> dict[str, int]:
    sid = scope.store_id
    counts: dict[str, int] = {}
    subjects = scope.subjects
    # inbox rows first: finding them needs the identifiers this erases elsewhere
    if scope.shop:
        inbox_where = (INBOX.c.store_id == sid) & (INBOX.c.id != (request_inbox_id or -1))
        inbox_ids: list[int] | None = None
    else:
        mentions: set[int] = set()
        inbox_ids = sorted(_inbox_rows(conn, scope, request_inbox_id, mentions=mentions))
        kept = _leave_to_others(conn, scope, mentions)
        inbox_ids = [i for i in inbox_ids if i not in kept]
        counts["inbox_events_kept_without_her"] = len(kept)

    # contacts: nothing left that identifies or reaches the person
    cw = scope.by_contact(CONTACTS) if scope.shop else (CONTACTS.c.store_id == sid) & _in(CONTACTS.c.id, scope.contact_ids)
    counts["contacts"] = conn.execute(update(CONTACTS).where(cw).values(
        phone_key=_placeholder(CONTACTS.c.id), phone_e164=None, phone_raw=None, wa_id=REDACTED, wa_user_id=None,
        external_customer_id=None, first_name=None, last_name=None, email=None, reachable=False, unreachable_at=None,
        updated_at=now,
    )).rowcount
    conn.execute(update(CONTACTS).where(cw, CONTACTS.c.opted_out_at.is_(None)).values(opted_out_at=now))
    # the numbers she had before: gone, so a later message from one finds no contact (a new relationship)
    pw = (PREVIOUS.c.store_id == sid) & (true() if scope.shop else or_(_in(PREVIOUS.c.contact_id, scope.contact_ids),
                                                                         _in(PREVIOUS.c.from_contact_id, scope.contact_ids)))
    counts["previous_numbers"] = conn.execute(delete(PREVIOUS).where(pw)).rowcount

    # orders and what hangs off them: totals, states and times stay; links and tracking go
    ow = (ORDERS.c.store_id == sid) & (true() if scope.shop else _in(ORDERS.c.id, scope.order_pks))
    counts["orders"] = conn.execute(update(ORDERS).where(ow).values(status_url=None, payment_url=None)).rowcount
    _write_rows(conn, ORDERS, [
        {"_id": r.id, "tags": cleaned} for r in conn.execute(select(ORDERS.c.id, ORDERS.c.tags, ORDERS.c.contact_id).where(ow))
        if (cleaned := scope.scrub(list(r.tags or []), r.contact_id)) != list(r.tags or [])
    ])
    lw = (LINES.c.store_id == sid) & (true() if scope.shop else _in(LINES.c.order_id, scope.order_pks))
    _write_rows(conn, LINES, [
        {"_id": r.id, "title": cleaned} for r in conn.execute(
            select(LINES.c.id, LINES.c.title, ORDERS.c.contact_id).join(ORDERS, ORDERS.c.id == LINES.c.order_id).where(lw))
        if (cleaned := scope.scrub(r.title, r.contact_id)) != r.title
    ])
    fw = (FULFILLMENTS.c.store_id == sid) & (true() if scope.shop else _in(FULFILLMENTS.c.order_external_id, scope.order_ids))
    counts["fulfillments"] = conn.execute(update(FULFILLMENTS).where(fw).values(tracking_number=None, tracking_url=None)).rowcount
    chw = scope.by_contact(CHECKOUTS, _in(CHECKOUTS.c.token, scope.checkout_tokens))
    counts["checkouts"] = conn.execute(update(CHECKOUTS).where(chw).values(recovery_url=None)).rowcount
    _write_rows(conn, CHECKOUTS, [
        {"_id": r.id, "line_items": cleaned} for r in conn.execute(select(CHECKOUTS.c.id, CHECKOUTS.c.line_items, CHECKOUTS.c.contact_id).where(chw))
        if (cleaned := scope.scrub(r.line_items or [], r.contact_id)) != (r.line_items or [])
    ])

    # messages: statuses and times stay; texts and WhatsApp ids go
    mw = scope.by_contact(MESSAGES)
    counts["messages"] = conn.execute(update(MESSAGES).where(mw).values(body=None)).rowcount
    conn.execute(update(MESSAGES).where(mw, MESSAGES.c.wamid.is_not(None), ~MESSAGES.c.wamid.startswith(f"{REDACTED}:"))
                 .values(wamid=_placeholder(MESSAGES.c.id)))

    # outbox: journey, step, category, status and times stay; the rendered message goes, pending sends stop
    obw = scope.by_contact(OUTBOX, *[OUTBOX.c.idempotency_key.endswith(f":{s}", autoescape=True) for s in sorted(subjects)])
    rows, cancelled, outbox_contacts = [], 0, {}
    found = conn.execute(select(OUTBOX.c.id, OUTBOX.c.payload, OUTBOX.c.status, OUTBOX.c.last_error, OUTBOX.c.wamid,
                                OUTBOX.c.contact_id, OUTBOX.c.idempotency_key).where(obw)).all()
    keys = _Keys(scope, 255, (("", r.idempotency_key) for r in found))
    for r in found:
        outbox_contacts[r.id] = r.contact_id
        payload = r.payload or {}
        kept: dict[str, Any] = {k: scope.scrub(payload[k], r.contact_id) for k in PAYLOAD_KEEP if k in payload}
        message = payload.get("message")
        if isinstance(message, dict):
            kept["message"] = {k: message[k] for k in MESSAGE_KEEP if k in message}
        kept[REDACTED] = True
        values: dict[str, Any] = {"_id": r.id, "payload": kept}
        if (key := keys.scrub(r.id, r.idempotency_key, r.contact_id)) != r.idempotency_key:
            values["idempotency_key"] = key
        if r.last_error:
            values["last_error"] = scope.scrub(r.last_error, r.contact_id, generic=True)
        if r.wamid and not r.wamid.startswith(f"{REDACTED}:"):
            values["wamid"] = f"{REDACTED}:{r.id}"
        if r.status == "pending":
            values.update(status="skipped", skip_reason=REDACTED, updated_at=now)
            cancelled += 1
        rows.append(values)
    _write_rows(conn, OUTBOX, rows)
    counts["outbox"], counts["outbox_cancelled"] = len(rows), cancelled
    aw = (ATTEMPTS.c.store_id == sid) & (true() if scope.shop else _in(ATTEMPTS.c.outbox_id, outbox_contacts))
    _write_rows(conn, ATTEMPTS, [
        {"_id": r.id, "error_detail": cleaned} for r in conn.execute(
            select(ATTEMPTS.c.id, ATTEMPTS.c.outbox_id, ATTEMPTS.c.error_detail).where(aw, ATTEMPTS.c.error_detail.is_not(None)))
        if (cleaned := scope.scrub(r.error_detail, outbox_contacts.get(r.outbox_id), generic=True)) != r.error_detail
    ])

    # journey runs: outcomes and revenue stay; recovery links and personal text go; active runs end
    rows, stopped = [], 0
    found = conn.execute(select(RUNS.c.id, RUNS.c.status, RUNS.c.state, RUNS.c.contact_id, RUNS.c.journey, RUNS.c.subject)
                         .where(scope.by_contact(RUNS, _in(RUNS.c.subject, subjects)))).all()
    keys = _Keys(scope, 160, ((r.journey, r.subject) for r in found))  # unique per journey
    for r in found:
        state = scope.scrub({k: v for k, v in (r.state or {}).items() if k not in _STATE_DROP}, r.contact_id)
        values: dict[str, Any] = {"_id": r.id}
        if (subject := keys.scrub(r.id, r.subject, r.contact_id, r.journey)) != r.subject:
            values["subject"] = subject
        if r.status != "finished":
            state["outcome"] = REDACTED
            values.update(status="finished", next_due_at=None, updated_at=now)
            stopped += 1
        if state != (r.state or {}) or len(values) > 1:
            values["state"] = state
            rows.append(values)
    _write_rows(conn, RUNS, rows)
    counts["journey_runs_stopped"] = stopped

    # hand-offs: who, when, which journey and the outcome stay; what the customer wrote goes
    rows = []
    found = conn.execute(select(HANDOFFS.c.id, HANDOFFS.c.context, HANDOFFS.c.resolution, HANDOFFS.c.contact_id, HANDOFFS.c.key,
                                HANDOFFS.c.subject).where(scope.by_contact(HANDOFFS, _in(HANDOFFS.c.subject, subjects)))).all()
    keys = _Keys(scope, 255, (("", r.key) for r in found))
    for r in found:
        context = {k: v for k, v in (r.context or {}).items() if k in HANDOFF_CONTEXT_KEEP}
        rows.append({"_id": r.id, "reason": "redacted: the customer's personal data was erased",
                     "context": {**scope.scrub(context, r.contact_id), REDACTED: True},
                     "resolution": None if r.resolution is None else REDACTED,
                     "key": keys.scrub(r.id, r.key, r.contact_id),
                     "subject": _Keys(scope, 160).scrub(r.id, r.subject, r.contact_id)})
    _write_rows(conn, HANDOFFS, rows)
    counts["handoffs"] = len(rows)

    # reorder windows: no reminder for someone erased; what was bought and when stays
    ww = scope.by_contact(WINDOWS, _in(WINDOWS.c.order_external_id, scope.order_ids))
    counts["reorder_windows_closed"] = conn.execute(
        update(WINDOWS).where(ww, WINDOWS.c.status == "pending").values(status=REDACTED, updated_at=now)).rowcount
    found = conn.execute(select(WINDOWS.c.id, WINDOWS.c.title, WINDOWS.c.contact_id, WINDOWS.c.order_external_id,
                                WINDOWS.c.product_key).where(ww)).all()
    keys = _Keys(scope, 140, ((r.order_external_id, r.product_key) for r in found))  # unique per order
    rows = []
    for r in found:
        key = keys.scrub(r.id, r.product_key, r.contact_id, r.order_external_id)
        title = scope.scrub(r.title, r.contact_id)
        if title != r.title or key != r.product_key:
            rows.append({"_id": r.id, "title": title, "product_key": key})
    _write_rows(conn, WINDOWS, rows)

    # inbox rows: no body, no event; WhatsApp dedupe keys and subjects carry message ids
    counts["inbox_events"] = _erase_inbox(conn, scope, now, inbox_where if scope.shop else None, inbox_ids)

    # job health: a failed tick's error text may quote her (shop: any customer's) value; the job's status stays
    if scope.shop:
        counts["job_errors"] = job_health.scrub_errors(conn, sid, _shop_job_error)
    else:
        pattern = scope.pattern()
        counts["job_errors"] = job_health.scrub_errors(conn, sid, lambda text: _scrub(text, pattern))

    # data-request exports: the customer's data, so erased with it
    rows = []
    for r in conn.execute(select(REQUESTS.c.id, REQUESTS.c.contact_ids, REQUESTS.c.export)
                          .where(REQUESTS.c.store_id == sid, holds_export())):
        if scope.shop or set(r.contact_ids or []) & scope.contact_ids or scope.needles.names_her(json.dumps(r.export)):
            rows.append({"_id": r.id, "export": None, "status": "erased", "erased_at": now})
    _write_rows(conn, REQUESTS, rows)
    counts["exports_erased"] = len(rows)
    return counts


def _shop_job_error(text: str) -> str:
    """A job error of an erased shop: its kind stays, the text (which may quote any of its customers) goes."""
    kind = text.split(":", 1)[0] if ":" in text else ""
    return f"{kind}: {REDACTED} with the shop's data" if kind and " " not in kind else f"{REDACTED} with the shop's data"


# -- another customer's unprocessed delivery that names her -------------------------------------------------
_REPLAYABLE = ("failed", "held")
def _her_part_out(value: Any, scope: Scope, regions: frozenset[str] | None) -> Any:
    """``value`` (a stored body or event) without her: her numbers, emails and ids out of every text, and her
    name too out of an object that names her (the address a gift is shipped to, her entry of a list).

    The body itself (his order) is hers only by a field that is her number or email (a guest's ``phone``),
    not by a note that mentions her ("call my sister on ..."): her surname is his too when he is her
    brother, and scrubbing it out of his own billing address and customer record made his replay record
    him under another name. In an object of hers, a field naming her goes whole: a second number in her
    phone field (``044 2345 6789 / 98765 43210``) is hers as well, not someone else's left behind."""
    strong, named = scope.needles.regex(names=False), scope.needles.regex(names=True)

    def field_of_hers(v: str) -> bool:  # nothing but her identifiers, other numbers and separators
        return scope.needles.names_her(v, regions) and not re.search(r"[^\W\d_]", _scrub(v, strong).replace("[redacted]", ""))

    def walk(v: Any, hers: bool, root: bool = False) -> Any:
        if isinstance(v, str):
            if hers:
                return "[redacted]" if field_of_hers(v) else _scrub(v, named)
            return _scrub(v, strong) if scope.needles.names_her(v, regions) else v
        if isinstance(v, list):
            return [walk(x, hers) for x in v]
        if isinstance(v, dict):
            names = field_of_hers if root else (lambda x: scope.needles.names_her(x, regions))
            hers = hers or any(isinstance(x, str) and names(x) for x in v.values())
            return {k: walk(x, hers) for k, x in v.items()}
        return v

    return walk(value, False, root=True)


def _someone_else(value: Any, regions: frozenset[str] | None) -> bool:
    """Whether a body still names a person (an email, a valid phone number) once she is out of it."""
    if isinstance(value, list):
        return any(_someone_else(v, regions) for v in value)
    if isinstance(value, dict):
        return any(_someone_else(v, regions) for v in value.values())
    if not isinstance(value, str):
        return False
    if _EMAIL.search(value):
        return True
    return any(_whole_number(match.group(), regions) for match in _PHONE_LIKE.finditer(value))


def _without_her(scope: Scope, source: str, raw: bytes, regions: frozenset[str] | None) -> Any | None:
    """The body of an unprocessed row found by its text alone, without her, when the row is someone else's
    too: a WhatsApp item from or to another number (Meta lists every contact of a batch in each of its
    items), or a store's delivery still naming a person once she is out (his order shipped to her). None:
    the row is hers alone (or cannot be told apart: not JSON), and is erased whole."""
    try:
        body = jsoncodec.loads_body(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(body, dict):
        return None
    if source == "whatsapp":
        others = whatsapp_privacy.without(body, lambda entry: scope.needles.names_her(entry, regions),
                                          lambda party: scope.needles.names_her(party, None))
        return None if others is None else _her_part_out(others, scope, regions)
    cleaned = _her_part_out(body, scope, regions)
    return cleaned if _someone_else(cleaned, regions) else None


def _someone_elses(scope: Scope, row: Any) -> bool:
    """Whether an unprocessed row found by its text alone is someone else's too (``_without_her``)."""
    if row.status not in _REPLAYABLE or row.raw_body is None:
        return False
    return _without_her(scope, row.source, row.raw_body, _regions_of(scope, row)) is not None


def _regions_of(scope: Scope, row: Any) -> frozenset[str] | None:
    return row_regions(row.raw_body.decode("utf-8", "replace") + "\n" + json.dumps(row.event or []), scope.needles.default_country)


def _leave_to_others(conn: Connection, scope: Scope, ids: Iterable[int]) -> set[int]:
    """Failed or held rows found by their text alone that are someone else's too: her part comes out of
    the body and the event, and the row stays as it was (failed or held, its dedupe key), so its replay
    still processes his order or message. Setting it ``ignored``, as a row of hers is, lost his event.
    Returns their ids; the others are erased whole (``_erase_inbox``)."""
    kept: set[int] = set()
    for chunk in _chunks(sorted(ids)):
        rows = conn.execute(with_body(INBOX.c.id, INBOX.c.source, INBOX.c.status, INBOX.c.event, INBOX.c.last_error)
                            .where(INBOX.c.id.in_(chunk), INBOX.c.status.in_(_REPLAYABLE))).all()
        for r in rows:
            if r.raw_body is None:
                continue
            regions = _regions_of(scope, r)
            body = _without_her(scope, r.source, r.raw_body, regions)
            if body is None:
                continue
            conn.execute(update(BODIES).where(BODIES.c.id == r.id).values(raw_body=json.dumps(body).encode()))
            values: dict[str, Any] = {"event": _her_part_out(r.event, scope, regions)} if r.event is not None else {}
            if r.last_error and scope.needles.names_her(r.last_error, regions):
                values["last_error"] = scope.scrub(r.last_error, generic=True)
            if values:
                conn.execute(update(INBOX).where(INBOX.c.id == r.id).values(**values))
            kept.add(r.id)
    return kept


_CUSTOMER_KEYS = ("shopify:sync-customer:", "woocommerce:customer.")  # dedupe keys that spell a customer id


def _names_customer(scope: Scope, key: str) -> bool:
    """A dedupe key with her platform customer id in it (the reconcile's customers pass keys by it);
    in a shop erasure, any customer's."""
    if scope.shop:
        return key.startswith(_CUSTOMER_KEYS)
    return bool(scope.customer_ids & set(re.findall(r"\d+", key)))


def _erase_inbox(conn: Connection, scope: Scope, now: datetime, where: Any | None, ids: list[int] | None) -> int:
    conds = [where] if where is not None else [INBOX.c.id.in_(chunk) for chunk in _chunks(ids or [])]
    total = 0
    for cond in conds:
        conn.execute(delete(BODIES).where(BODIES.c.id.in_(select(INBOX.c.id).where(cond).scalar_subquery())))
        total += conn.execute(update(INBOX).where(cond).values(event=null())).rowcount
        conn.execute(update(INBOX).where(cond, INBOX.c.status.in_(_UNSETTLED))
                     .values(status="ignored", available_at=None, last_error=f"{REDACTED}: privacy request"))
        conn.execute(update(INBOX).where(cond, INBOX.c.source == "whatsapp", ~INBOX.c.dedupe_key.startswith(f"{REDACTED}:"))
                     .values(dedupe_key=_placeholder(INBOX.c.id)))
        conn.execute(update(INBOX).where(cond, INBOX.c.subject.startswith("wamid:")).values(subject=f"wamid:{REDACTED}"))
        # a customer webhook's subject is her platform customer id (erased from her contact too)
        customers = INBOX.c.subject.startswith("customer:") if scope.shop else _in(INBOX.c.subject, {f"customer:{c}" for c in scope.customer_ids})
        conn.execute(update(INBOX).where(cond, customers, INBOX.c.subject != f"customer:{REDACTED}").values(subject=f"customer:{REDACTED}"))
        rows = []
        for r in conn.execute(select(INBOX.c.id, INBOX.c.headers, INBOX.c.last_error, INBOX.c.dedupe_key, INBOX.c.contact_id).where(cond)):
            values: dict[str, Any] = {"_id": r.id}
            headers = {k: v for k, v in (r.headers or {}).items() if k.lower() != "user-agent"}
            headers = scope.scrub(headers, r.contact_id)
            if headers != (r.headers or {}):
                values["headers"] = headers
            if r.last_error and (cleaned := scope.scrub(r.last_error, r.contact_id, generic=True)) != r.last_error:
                values["last_error"] = cleaned
            if not r.dedupe_key.startswith(f"{REDACTED}:") and (
                    scope.scrub(r.dedupe_key, r.contact_id) != r.dedupe_key or _names_customer(scope, r.dedupe_key)):
                values["dedupe_key"] = f"{REDACTED}:{r.id}"
            if len(values) > 1:
                rows.append(values)
        _write_rows(conn, INBOX, rows)
    return total


def redact_customer(
    conn: Connection,
    store_id: int,
    *,
    customer_external_id: str | int | None = None,
    phone: str | ev.Phone | None = None,
    emails: Iterable[str] | str | None = (),
    order_ids: Iterable[str | int] = (),
    default_country: str | None = None,
    now: datetime | None = None,
    request_inbox_id: int | None = None,
    link_identity: Callable[[str | None], str | None] | None = None,
) -> tuple[dict[str, int], list[int]]:
    """Erase one customer's personal data (see the module docstring); returns (counts, contact ids).

    ``link_identity``: how the store's platform identifies a checkout's recovery link (the poll
    matches checkouts by it); given, the links of her checkouts are marked before they are erased."""
    ident = Identity.build(customer_external_id=customer_external_id, phone=phone, emails=emails, order_ids=order_ids,
                           default_country=default_country)
    if ident.empty():
        return {}, []
    now = now or m.utcnow()
    scope, _ = _customer_scope(conn, store_id, ident, default_country, now)
    links: set[str] = set()
    if link_identity is not None:
        chw = scope.by_contact(CHECKOUTS, _in(CHECKOUTS.c.token, scope.checkout_tokens))
        links = {x for url in conn.execute(select(CHECKOUTS.c.recovery_url).where(chw, CHECKOUTS.c.recovery_url.is_not(None))).scalars()
                 if (x := link_identity(url))}
    counts = _erase(conn, scope, now, request_inbox_id)
    # the store keeps her orders and checkouts: a later event about them, or her account, must not bring her back
    counts["ids_marked"] = erased.remember(conn, store_id, scope.order_ids, scope.customer_ids, now,
                                           checkouts=scope.checkout_tokens, links=links)
    return counts, sorted(scope.contact_ids)


def erasure_preview(
    conn: Connection,
    store_id: int,
    *,
    customer_external_id: str | int | None = None,
    phone: str | ev.Phone | None = None,
    emails: Iterable[str] | str | None = (),
    default_country: str | None = None,
) -> dict[str, int]:
    """What ``redact_customer`` would reach for this customer, as counts (read only, nothing personal):
    shown to a store owner before an erasure they ask for (``connector/erasure.py``). All zero: nothing
    is stored about them."""
    ident = Identity.build(customer_external_id=customer_external_id, phone=phone, emails=emails, default_country=default_country)
    if ident.empty():
        return {}
    scope, _ = _customer_scope(conn, store_id, ident, default_country)
    subjects = scope.subjects

    def count(table: Table, where: Any) -> int:
        return int(conn.execute(select(func.count()).select_from(table).where(where)).scalar_one())

    # the same where-clauses as ``_erase``
    sends = scope.by_contact(OUTBOX, *[OUTBOX.c.idempotency_key.endswith(f":{s}", autoescape=True) for s in sorted(subjects)])
    return {
        "contacts": len(scope.contact_ids),
        "orders": len(scope.order_pks),
        "checkouts": count(CHECKOUTS, scope.by_contact(CHECKOUTS, _in(CHECKOUTS.c.token, scope.checkout_tokens))),
        "messages": count(MESSAGES, scope.by_contact(MESSAGES)),
        "outbox": count(OUTBOX, sends),
        "journey_runs": count(RUNS, scope.by_contact(RUNS, _in(RUNS.c.subject, subjects))),
        "handoffs": count(HANDOFFS, scope.by_contact(HANDOFFS, _in(HANDOFFS.c.subject, subjects))),
        "reorder_windows": count(WINDOWS, scope.by_contact(WINDOWS, _in(WINDOWS.c.order_external_id, scope.order_ids))),
        "inbox_events": len(_inbox_rows(conn, scope, None)),
    }


# An erased contact's ``phone_key`` is ``redacted:<id>``: a range on it is a search of the store's
# (store_id, phone_key) unique index, not a read of every contact.
_ERASED_FROM, _ERASED_UNTIL = f"{REDACTED}:", f"{REDACTED};"  # ';' follows ':'


def erased_contact(table: Table = CONTACTS) -> Any:
    """The contacts an erasure left (no phone, nothing to message): the where-clause other modules use."""
    return (table.c.phone_key >= _ERASED_FROM) & (table.c.phone_key < _ERASED_UNTIL)


ERASED_CONTACTS = select(CONTACTS.c.id).where(CONTACTS.c.store_id == bindparam("sid"), erased_contact())


def erased_contacts(conn: Connection, store_id: int, among: Iterable[int] | None = None) -> set[int]:
    """The ids of the store's erased contacts (of ``among`` only, when given)."""
    if among is None:
        return set(conn.execute(ERASED_CONTACTS, {"sid": store_id}).scalars())
    found: set[int] = set()
    for chunk in _chunks(sorted(set(among))):
        found.update(conn.execute(ERASED_CONTACTS.where(CONTACTS.c.id.in_(chunk)), {"sid": store_id}).scalars())
    return found


def redact_shop(conn: Connection, store_id: int, *, now: datetime | None = None, request_inbox_id: int | None = None) -> dict[str, int]:
    """Erase every customer of one store, and stop all its sends (the store counts as uninstalled); its
    erased customers' marks (``connector/erased.py``) go too: nothing of the shop's customers is kept."""
    now = now or m.utcnow()
    scope = Scope(store_id, shop=True)
    for c in conn.execute(select(CONTACTS).where(CONTACTS.c.store_id == store_id)):
        needles = Needles()
        needles.add_contact(c)
        scope.per_contact[c.id] = needles
    counts = _erase(conn, scope, now, request_inbox_id)
    counts["ids_forgotten"] = erased.forget_store(conn, store_id)  # its erased customers' marks, and its key
    conn.execute(update(STORES).where(STORES.c.id == store_id, STORES.c.uninstalled_at.is_(None)).values(uninstalled_at=now))
    return counts


# -- the webhook, processed ---------------------------------------------------------------------------------
PRIVACY_TOPICS = frozenset({("shopify", "customers/data_request"), ("shopify", "customers/redact"), ("shopify", "shop/redact")})
PRIVACY_WAIT = timedelta(seconds=30)


def waiting_for_earlier(conn: Connection, store_id: int, inbox_id: int) -> bool:
    """True while a delivery received before this request is still unprocessed (or held by another worker).

    Answering only after them means an order or message that arrived just before an
    erasure is erased with the rest instead of being written back after it.
    """
    return conn.execute(
        select(INBOX.c.id).where(INBOX.c.store_id == store_id, INBOX.c.status == "pending", INBOX.c.id < inbox_id).limit(1)
    ).first() is not None


@dataclass(frozen=True)
class Handled:
    request_id: int
    summary: dict[str, Any]  # what the inbox row keeps instead of the request (no personal data)


def handle(conn: Connection, store: Any, store_id: int, event: ev.ComplianceRequested, inbox_id: int | None, now: datetime) -> Handled:
    """Answer one privacy request inside the processor's transaction."""
    c = event.customer
    ident = dict(customer_external_id=c.external_id if c else None, phone=c.phone if c else None,
                 emails=(c.email,) if c and c.email else (), order_ids=event.order_external_ids)
    export: dict[str, Any] | None = None
    contact_ids: list[int] = []
    if event.kind == "customer_data_request":
        export = export_customer(conn, store_id, **ident, default_country=store.default_country, store_key=store.key, now=now,
                                 request_inbox_id=inbox_id)
        counts = dict(export["counts"])
        contact_ids = [row["id"] for row in export["contacts"]]
    elif event.kind == "customer_redact":
        counts, contact_ids = redact_customer(conn, store_id, **ident, default_country=store.default_country, now=now,
                                              request_inbox_id=inbox_id, link_identity=link_identity_of(store))
    else:
        counts = redact_shop(conn, store_id, now=now, request_inbox_id=inbox_id)
    counts["orders_named"] = len(event.order_external_ids)
    request_id = conn.execute(REQUESTS.insert().returning(REQUESTS.c.id), dict(
        store_id=store_id, kind=event.kind, status="done", inbox_event_id=inbox_id, contact_ids=contact_ids, counts=counts,
        export=export, created_at=now, erased_at=None)).scalar_one()
    log.info("privacy request %s answered: %s", event.kind, " ".join(f"{k}={v}" for k, v in sorted(counts.items())),
             extra={"store": store.key, "request_id": request_id, "inbox_id": inbox_id})
    summary = {"type": event.type, "kind": event.kind, "request_id": request_id, "counts": counts}
    return Handled(request_id, summary)


# -- read side (admin API and CLI) ----------------------------------------------------------------------------
def _request_view(row: Any, *, with_export: bool) -> dict[str, Any]:
    out = {"id": row.id, "kind": row.kind, "status": row.status, "inbox_event_id": row.inbox_event_id,
           "created_at": _plain(row.created_at), "erased_at": _plain(row.erased_at), "counts": row.counts or {},
           "has_export": row.export is not None}
    if with_export:
        out["export"] = row.export
    return out


def list_requests(db: Database, store_id: int, limit: int = 100) -> list[dict[str, Any]]:
    with db.engine.connect() as conn:
        rows = conn.execute(select(REQUESTS).where(REQUESTS.c.store_id == store_id).order_by(REQUESTS.c.id.desc()).limit(limit)).all()
    return [_request_view(r, with_export=False) for r in rows]


def get_request(db: Database, store_id: int, request_id: int) -> dict[str, Any] | None:
    with db.engine.connect() as conn:
        row = conn.execute(select(REQUESTS).where(REQUESTS.c.store_id == store_id, REQUESTS.c.id == request_id)).first()
    return _request_view(row, with_export=True) if row is not None else None
