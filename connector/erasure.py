"""A store owner erases a customer on request (``storeloop customer redact``, ``POST /api/stores/{key}/customers/redact``).

Shopify sends ``customers/redact``; WooCommerce sends no privacy webhook (WordPress's own "Erase
Personal Data" tool never reaches us), and a customer may ask on WhatsApp to be forgotten. So the
owner asks, and the request takes the webhook's path: an inbox row of our own (source
``storeloop``, topic ``customers/redact``) carrying what the owner gave (customer id, phone,
email), which the processor answers after every earlier delivery of the store
(``processor.AFTER_EARLIER``) with the same erasure (``compliance.redact_customer``, through
``compliance.handle``), recorded as a ``compliance_requests`` row. Its dedupe key is random (it
says nothing about the customer), and its body is deleted once answered, as the webhook's is.

The owner sees what will be erased first (``preview``: counts only). Nothing stored about the
customer: no row is written, and a second request for someone already erased is such a case.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, not_, select
from sqlalchemy.engine import Connection

from connector import events as ev
from connector.compliance import REQUESTS, Identity, erasure_preview, find_contacts
from connector.contacts import normalize_phone
from connector.errors import NormalizationError
from connector.reinstall import SOURCE
from connector.storage.db import Database
from connector.storage.inbox import InboxItem, InboxWriter, write_items
from connector.storage.journal import unimported
from connector.storage.sql import INBOX

log = logging.getLogger("storeloop.compliance")

TOPIC = "customers/redact"  # the topic Shopify's erasure has: retention and the migrations treat both alike
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_MAX_ID = 64


class BadRequest(ValueError):
    """What the owner gave cannot name a customer (the message says why; it names no one else)."""


@dataclass(frozen=True)
class ErasureRequest:
    """Who to erase, as the owner gave it, checked."""

    customer_id: str | None = None
    phone: str | None = None  # as typed: the store's country is the default when it has no +
    email: str | None = None

    def identity(self, store: Any) -> dict[str, Any]:
        """``compliance.redact_customer`` / ``erasure_preview`` keywords."""
        return dict(customer_external_id=self.customer_id, phone=self.phone, emails=(self.email,) if self.email else (),
                    default_country=store.default_country)

    def described(self) -> str:
        """What the owner typed, to say back to them (nothing the store holds)."""
        parts = [f"customer id {self.customer_id}" if self.customer_id else "", f"phone {self.phone}" if self.phone else "",
                 f"email {self.email}" if self.email else ""]
        return ", ".join(p for p in parts if p)


def parse_request(store: Any, *, phone: str | None = None, email: str | None = None, customer_id: Any = None) -> ErasureRequest:
    """At least one of the three, each one that can name a customer of ``store``, or ``BadRequest``."""
    phone = phone.strip() if isinstance(phone, str) else phone
    email = email.strip() if isinstance(email, str) else email
    if isinstance(customer_id, int) and not isinstance(customer_id, bool):
        customer_id = str(customer_id)
    customer_id = customer_id.strip() if isinstance(customer_id, str) else customer_id
    for name, value in (("phone", phone), ("email", email), ("customer id", customer_id)):
        if value is not None and not isinstance(value, str):
            raise BadRequest(f"{name} must be text")
    if not (phone or email or customer_id):
        raise BadRequest("give the customer's phone, email or customer id")
    if phone:
        parsed = normalize_phone(phone, store.default_country)
        if parsed is None or parsed.e164 is None:
            raise BadRequest(f"{phone!r} is not a phone number (numbers without + are read as {store.default_country} numbers)")
    if email and not _EMAIL.fullmatch(email):
        raise BadRequest(f"{email!r} is not an email address")
    if customer_id:
        if customer_id.startswith("gid://"):  # Shopify's GraphQL id: the number is what the store's contacts keep
            customer_id = customer_id.rsplit("/", 1)[-1]
        if not customer_id.isdigit() or len(customer_id) > _MAX_ID:
            raise BadRequest(f"{customer_id!r} is not a customer id (the number the store shows for the customer)")
        if int(customer_id) == 0:
            raise BadRequest("customer id 0 is WooCommerce's guest checkout, not a customer: give the phone or email")
    return ErasureRequest(customer_id=customer_id or None, phone=phone or None, email=email or None)


def preview(db: Database, store: Any, store_id: int, request: ErasureRequest) -> dict[str, int]:
    """How many contacts, orders, messages... the erasure would reach (all zero: nothing stored)."""
    with db.engine.connect() as conn:
        return erasure_preview(conn, store_id, **request.identity(store))


def one_customer(db: Database, store: Any, store_id: int, request: ErasureRequest) -> list[str]:
    """Several identifiers given must name the same contacts: the erasure reaches everyone any of
    them matches, so a typo in one would silently erase a second person. ``BadRequest`` (counts
    only) when one matches a contact another does not; else the identifiers that match nothing."""
    given = [(name, Identity.build(**{key: value}, default_country=store.default_country))
             for name, key, value in (("customer id", "customer_external_id", request.customer_id), ("phone", "phone", request.phone),
                                      ("email", "emails", request.email)) if value]
    if len(given) < 2:
        return []
    with db.engine.connect() as conn:
        matched = {name: {c.id for c in find_contacts(conn, store_id, ident)} for name, ident in given}
    found = {name: ids for name, ids in matched.items() if ids}
    if len({frozenset(ids) for ids in found.values()}) > 1:
        said = ", ".join(f"the {name} {len(ids)}" for name, ids in found.items())
        log.warning("privacy erasure refused: the identifiers given name different contacts (%s)", said, extra={"store": store.key})
        raise BadRequest(f"the identifiers given name different contacts ({said}, {len(set().union(*found.values()))} in all): "
                         "nothing erased; give one of them, or check them")
    return [name for name, ids in matched.items() if not ids] if found else []


def found_anything(counts: Mapping[str, int]) -> bool:
    return any(counts.values())


def item(store_id: int, request: ErasureRequest, via: str) -> InboxItem:
    """The inbox row of the request: its body is what the owner gave (deleted once answered)."""
    customer = {k: v for k, v in (("id", request.customer_id), ("phone", request.phone), ("email", request.email)) if v}
    body = {"customer": customer, "via": via}
    return InboxItem(store_id=store_id, source=SOURCE, topic=TOPIC, dedupe_key=f"{SOURCE}:{TOPIC}:{uuid.uuid4().hex}",
                     raw_body=json.dumps(body).encode(), headers={"x-storeloop-request": via})


def submit(db: Database, store_key: str, store_id: int, request: ErasureRequest, via: str, counts: Mapping[str, int]) -> int:
    """Write the request's inbox row; its id (the worker, or ``answer_now``, answers it).

    Deliveries a killed server acknowledged from its ingest journal are imported first (a running
    server's journal is its own: ``behind_the_journal`` makes the request wait for it)."""
    row = item(store_id, request, via)
    if db.sqlite_file is not None:
        InboxWriter(db).recover()
    write_items(db, [row])
    with db.engine.connect() as conn:
        inbox_id = conn.execute(select(INBOX.c.id).where(INBOX.c.store_id == store_id, INBOX.c.dedupe_key == row.dedupe_key)).scalar_one()
    log.info("privacy erasure requested by the store (%s): %s", via, " ".join(f"{k}={v}" for k, v in sorted(counts.items())),
             extra={"store": store_key, "inbox_id": inbox_id})
    return inbox_id


def behind_the_journal(conn: Connection, db: Database, row: Any, ordered: Iterable[tuple[str, str]]) -> bool:
    """The request's row waits for deliveries acknowledged before it that it cannot see by id.

    It is written beside the inbox writer (by the admin API's thread, or by the command in another
    process), not through it: on SQLite a burst's deliveries are answered from the ingest journal
    (storage/journal.py) and get their inbox rows, with larger ids, only when imported. So the row
    waits while any journal of the database holds frames, then for the store's pending rows received
    at or before it (their acknowledgement time, kept through the journal) whatever their id. Rows
    that wait themselves (``ordered``: privacy requests, a reinstall's caught-up row) are left out:
    they wait for it by id, and two rows waiting for each other would wait for ever."""
    if db.sqlite_file is not None and unimported(db.sqlite_file):
        return True
    return conn.execute(select(INBOX.c.id).where(
        INBOX.c.store_id == row.store_id, INBOX.c.status == "pending", INBOX.c.id > row.id, INBOX.c.received_at <= row.received_at,
        *(not_(and_(INBOX.c.source == source, INBOX.c.topic == topic)) for source, topic in sorted(ordered)),
    ).limit(1)).first() is not None


def normalize(topic: str, body: dict[str, Any], store: Any) -> list[ev.Event]:
    """The request's row -> the event Shopify's ``customers/redact`` becomes."""
    customer = body.get("customer")
    if topic != TOPIC or not isinstance(customer, dict):
        raise NormalizationError(f"not an erasure request: {topic!r}")
    try:
        request = parse_request(store, phone=customer.get("phone"), email=customer.get("email"), customer_id=customer.get("id"))
    except BadRequest as exc:
        raise NormalizationError(f"erasure request: {exc}") from None
    return [ev.ComplianceRequested(kind="customer_redact", customer=ev.Customer(
        external_id=request.customer_id, email=request.email, phone=normalize_phone(request.phone, store.default_country)))]


# -- the answer ---------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    """Where the request's row stands: ``done`` (``request_id``, ``counts``), ``waiting`` (earlier
    deliveries of the store still pending), or ``failing`` (it raised; the worker retries it)."""

    status: str
    inbox_id: int
    request_id: int | None = None
    counts: dict[str, int] = field(default_factory=dict)
    error: str | None = None


def outcome(db: Database, store_id: int, inbox_id: int) -> Outcome:
    with db.engine.connect() as conn:
        row = conn.execute(select(INBOX.c.status, INBOX.c.last_error).where(INBOX.c.store_id == store_id, INBOX.c.id == inbox_id)).one()
        answer = conn.execute(select(REQUESTS.c.id, REQUESTS.c.counts).where(REQUESTS.c.store_id == store_id,
                                                                             REQUESTS.c.inbox_event_id == inbox_id)).first()
    if row.status == "done" and answer is not None:
        return Outcome("done", inbox_id, answer.id, dict(answer.counts or {}))
    if row.status == "pending" and not row.last_error:
        return Outcome("waiting", inbox_id)
    return Outcome("failing", inbox_id, error=row.last_error or row.status)


def answer_now(db: Database, settings: Any, store: Any, store_id: int, inbox_id: int, *, max_batches: int = 1000) -> Outcome:
    """Process the request here, as a worker would, with the store's rows received before it (ids up
    to ``inbox_id``: deliveries after it are the worker's, with its configuration), until it is
    answered or can only wait: a delivery received before it is still pending (retried after an
    error, held by a running worker, not yet in the inbox): it is then put back for
    ``compliance.PRIVACY_WAIT``, and the worker answers it after that delivery."""
    from adapters.registry import normalizers
    from connector.processor import InboxProcessor

    processor = InboxProcessor(db, settings, {store.key: store_id}, normalizers())
    for _ in range(max_batches):
        handled = processor.process_batch(up_to_id=inbox_id)
        found = outcome(db, store_id, inbox_id)
        if found.status != "waiting" or handled == 0 or _put_back(db, inbox_id):
            return found
    return outcome(db, store_id, inbox_id)


def _put_back(db: Database, inbox_id: int) -> bool:
    """The request's row was found waiting and is due again only later: nothing more to do here."""
    with db.engine.connect() as conn:
        return conn.execute(select(INBOX.c.available_at).where(INBOX.c.id == inbox_id)).scalar_one() is not None
