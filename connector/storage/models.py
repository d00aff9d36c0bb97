"""SQLAlchemy 2 models. Every row carries its store; uniqueness lives in the database.

The schema is owned by Alembic (``connector/storage/migrations``); a test checks that the
migrations and these models agree.
"""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, on SQLite (which stores naive text) and PostgreSQL alike."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use aware UTC datetimes")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)

    # On SQLite both directions are one C call instead of SQLAlchemy's generic text codec
    # (a %-format of a dict per value written, a regex per value read): every processed
    # event writes and reads a dozen timestamps (bench/pipeline.py). The text is the same
    # ("YYYY-MM-DD HH:MM:SS.ffffff", naive UTC), so old and new rows compare and sort alike.

    def bind_processor(self, dialect: Any) -> Any:
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)
        utc = timezone.utc
        last: list[tuple[datetime | None, str | None]] = [(None, None)]

        def process(value: datetime | None) -> str | None:
            if value is None:
                return None
            seen, text = last[0]  # one tuple, swapped whole: safe to read from any thread
            if value is seen:  # a batch binds its ``now`` many times (created, updated, due, processed)
                return text
            if value.tzinfo is None:
                raise ValueError("naive datetime given to the database; use aware UTC datetimes")
            text = value.astimezone(utc).replace(tzinfo=None).isoformat(" ", "microseconds")
            last[0] = (value, text)
            return text
        return process

    def result_processor(self, dialect: Any, coltype: Any) -> Any:
        if dialect.name != "sqlite":
            return super().result_processor(dialect, coltype)
        utc = timezone.utc
        parse = datetime.fromisoformat
        seen = _READ_TIMESTAMPS

        def process(value: str | None) -> datetime | None:
            if value is None:
                return None
            found = seen.get(value)
            if found is None:
                if len(seen) >= _READ_TIMESTAMPS_MAX:
                    seen.clear()
                found = seen[value] = parse(value).replace(tzinfo=utc)
            return found
        return process


# Timestamps read from SQLite, by their text, shared by every column and statement (at most
# ~1.5 MB): rows read together share timestamps (a batch's ``now``), and the processor reads
# the same runs, contacts and messages again batch after batch. Immutable, so safe to share.
_READ_TIMESTAMPS: dict[str, datetime] = {}
_READ_TIMESTAMPS_MAX = 8192


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# BIGINT on PostgreSQL, INTEGER (the rowid alias) on SQLite.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Store(Base):
    __tablename__ = "stores"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    platform: Mapped[str] = mapped_column(String(20))
    uninstalled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # an install ended an uninstall: timers and sends wait until the orders are read back (connector/reinstall.py)
    reinstalled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Meta's news of the store's WhatsApp number and account, each part with the time Meta sent it
    # (quality, messaging limit, restriction, ban, templates' quality: connector/number_health.py)
    whatsapp_health: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Meta restricted or disabled the account: the store's WhatsApp sends wait until then (the outbox claim)
    whatsapp_held_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class InboxEvent(Base):
    """One verified delivery (or one item of a WhatsApp batch), stored before anything else happens."""

    __tablename__ = "inbox_events"
    __table_args__ = (
        UniqueConstraint("store_id", "dedupe_key", name="uq_inbox_events_store_dedupe"),
        Index("ix_inbox_events_status_id", "status", "id"),
        Index("ix_inbox_events_store_subject", "store_id", "subject"),
        Index("ix_inbox_events_store_contact", "store_id", "contact_id"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    store_id: Mapped[int] = mapped_column(ForeignKey("stores.id"))
    source: Mapped[str] = mapped_column(String(20))  # shopify | woocommerce | whatsapp | sync
    topic: Mapped[str] = mapped_column(String(80))
    dedupe_key: Mapped[str] = mapped_column(String(255))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    triggered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    headers: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # the body itself is in inbox_bodies (InboxBody): this row is rewritten as it is processed
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending|done|ignored|failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    available_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # retry backoff after a crash
    last_error: Mapped[str | None] = mapped_column(Text)
    event: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    subject: Mapped[str | None] = mapped_column(String(160))
    contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id"))
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class InboxBody(Base):
    """The raw bytes of an inbox row, written once with it, deleted by retention or erasure
    (no row: no body kept).

    A table of its own because an inbox row is rewritten as it is processed (status, event,
    subject, processed_at) and SQLite rewrites a changed record whole, overflow pages and
    all: with the 7-12 KB body inside, marking a row done wrote the body again, to the WAL and
    again at the checkpoint. For the issue's day (bench/pipeline.py, 150,000 webhooks) the
    processing phase wrote a fifth less and took 6% less CPU, run side by side with the
    old code (bench/HISTORY.md). PostgreSQL keeps a large value out of line anyway (TOAST); the
    schema is the same on both.
    """

    __tablename__ = "inbox_bodies"
    id: Mapped[int] = mapped_column(BigId, ForeignKey("inbox_events.id", ondelete="CASCADE"), primary_key=True, autoincrement=False)
    raw_body: Mapped[bytes] = mapped_column(LargeBinary)


class Contact(Base):
    __tablename__ = "contacts"
    __table_args__ = (
        UniqueConstraint("store_id", "phone_key", name="uq_contacts_store_phone"),
        Index("ix_contacts_store_wa_id", "store_id", "wa_id"),
        Index("ix_contacts_store_customer", "store_id", "external_customer_id"),
        # a sender known only by their BSUID (C9); partial: most contacts have none, and a new
        # contact then costs no index entry (``wa_user_id = ?`` implies the condition, so it is used)
        Index("ix_contacts_store_wa_user_id", "store_id", "wa_user_id", sqlite_where=text("wa_user_id IS NOT NULL"),
              postgresql_where=text("wa_user_id IS NOT NULL")),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    store_id: Mapped[int] = mapped_column(ForeignKey("stores.id"))
    # E.164 when the phone parses, else "raw:<text>" so an unreachable phone is still one contact.
    phone_key: Mapped[str] = mapped_column(String(80))
    phone_e164: Mapped[str | None] = mapped_column(String(20))
    phone_raw: Mapped[str | None] = mapped_column(String(80))
    reachable: Mapped[bool] = mapped_column(Boolean, default=True)
    # when WhatsApp last refused her number (131026) or we last tried it again: with ``reachable``
    # false, None means for good (no number, erased); a time, worth one more try some days on (policy)
    unreachable_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    wa_id: Mapped[str | None] = mapped_column(String(32))
    wa_user_id: Mapped[str | None] = mapped_column(String(80))
    external_customer_id: Mapped[str | None] = mapped_column(String(64))
    first_name: Mapped[str | None] = mapped_column(String(120))
    last_name: Mapped[str | None] = mapped_column(String(120))
    email: Mapped[str | None] = mapped_column(String(255))
    consent_utility: Mapped[str] = mapped_column(String(16), default="unknown")
    consent_utility_source: Mapped[str | None] = mapped_column(String(64))
    consent_utility_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    consent_marketing: Mapped[str] = mapped_column(String(16), default="unknown")
    consent_marketing_source: Mapped[str | None] = mapped_column(String(64))
    consent_marketing_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    opted_out_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_inbound_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    stage: Mapped[str] = mapped_column(String(20), default="entry")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


# contacts are matched by email as typed anywhere (trimmed, any case): an order with the checkout's
# email ends its recovery run however the phone was written (migration 0008)
Index("ix_contacts_store_email", Contact.store_id, func.lower(func.trim(Contact.email)))


class PreviousNumber(Base):
    """A number one of the store's contacts had before she changed it on WhatsApp (Meta's
    ``user_changed_number``: ``connector/number_change.py``), so a late status or reply on the old
    number still finds her, for ``number_change.WINDOW`` after ``changed_at`` (numbers are recycled:
    never an order's owner). ``from_contact_id``: the contact that had it (another one than
    ``contact_id`` when the new number was already a contact's and the two were joined)."""

    __tablename__ = "previous_numbers"
    __table_args__ = (
        UniqueConstraint("store_id", "phone_key", name="uq_previous_numbers_store_phone"),
        Index("ix_previous_numbers_store_contact", "store_id", "contact_id"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    store_id: Mapped[int] = mapped_column(ForeignKey("stores.id"))
    phone_key: Mapped[str] = mapped_column(String(80))
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"))
    from_contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"))
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ConsentChange(Base):
    """Every consent change with its source and time, so 'why was this person messaged' has an answer."""

    __tablename__ = "consent_changes"
    __table_args__ = (Index("ix_consent_changes_store_state_time", "store_id", "category", "state", "occurred_at"),)  # a week's opt-outs
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    store_id: Mapped[int] = mapped_column(ForeignKey("stores.id"))
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"), index=True)
    category: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(64))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    inbox_event_id: Mapped[int | None] = mapped_column(BigId)


class Order(Base):
    __tablename__ = "orders"
    __table_args__ = (
        UniqueConstraint("store_id", "external_id", name="uq_orders_store_external"),
        Index("ix_orders_store_contact", "store_id", "contact_id"),
        Index("ix_orders_store_checkout", "store_id", "checkout_token"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    store_id: Mapped[int] = mapped_column(ForeignKey("stores.id"))
    external_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(64))
    contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id"))
    payment_state: Mapped[str] = mapped_column(String(24))
    fulfillment_state: Mapped[str] = mapped_column(String(24))
    platform_status: Mapped[str | None] = mapped_column(String(40))
    is_cod: Mapped[bool] = mapped_column(Boolean, default=False)
    total: Mapped[Decimal] = mapped_column(Numeric(14, 2))  # the shop's money (revenue)
    currency: Mapped[str] = mapped_column(String(8))
    # the customer's own currency when it is not the shop's (events.Order.customer_total): what messages show
    customer_total: Mapped[Decimal | None] = mapped_column(Numeric(14, 2))
    customer_currency: Mapped[str | None] = mapped_column(String(8))
    checkout_token: Mapped[str | None] = mapped_column(String(128))
    status_url: Mapped[str | None] = mapped_column(Text)
    payment_url: Mapped[str | None] = mapped_column(Text)
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    test: Mapped[bool] = mapped_column(Boolean, default=False)
    # events.SalesChannel / events.Delivery: a till sale or a pickup gets no order-placed or shipping messages
    channel: Mapped[str] = mapped_column(String(16), default="online", server_default="online")
    delivery: Mapped[str] = mapped_column(String(16), default="shipping", server_default="shipping")
    # events.Order.payment_terms / payment_due_at, as the last event that carried terms gave them: the
    # reconcile's GraphQL read carries none, and must not make an order on terms look owed at once
    payment_terms: Mapped[str | None] = mapped_column(String(32))
    payment_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    placed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    source_updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # ours, indexed: the reorder-window tick finds what changed since its cursor (30 ms instead of
    # a 0.3 s table scan at 1,000,000 orders)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class OrderLine(Base):
    __tablename__ = "order_lines"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    store_id: Mapped[int] = mapped_column(ForeignKey("stores.id"))
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"), index=True)
    external_id: Mapped[str | None] = mapped_column(String(64))
    product_id: Mapped[str | None] = mapped_column(String(64))
    variant_id: Mapped[str | None] = mapped_column(String(64))
    sku: Mapped[str | None] = mapped_column(String(128))
    title: Mapped[str] = mapped_column(String(255))
    quantity: Mapped[int] = mapped_column(Integer)
    price: Mapped[Decimal] = mapped_column(Numeric(14, 2))


class Checkout(Base):
    __tablename__ = "checkouts"
    __table_args__ = (UniqueConstraint("store_id", "token", name="uq_checkouts_store_token"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    store_id: Mapped[int] = mapped_column(ForeignKey("stores.id"))
    token: Mapped[str] = mapped_column(String(128))
    contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id"))
    recovery_url: Mapped[str | None] = mapped_column(Text)
    total: Mapped[Decimal] = mapped_column(Numeric(14, 2))
    currency: Mapped[str] = mapped_column(String(8))
    accepts_marketing: Mapped[bool] = mapped_column(Boolean, default=False)
    line_items: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    source_updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Fulfillment(Base):
    __tablename__ = "fulfillments"
    __table_args__ = (UniqueConstraint("store_id", "external_id", name="uq_fulfillments_store_external"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    store_id: Mapped[int] = mapped_column(ForeignKey("stores.id"))
    external_id: Mapped[str] = mapped_column(String(64))
    order_external_id: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(24))
    shipment_status: Mapped[str] = mapped_column(String(32))
    tracking_company: Mapped[str | None] = mapped_column(String(120))
    tracking_number: Mapped[str | None] = mapped_column(String(120))
    tracking_url: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    source_updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # first time the carrier said delivered
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)  # ours: the window scan's cursor


class Message(Base):
    """WhatsApp messages in and out: the customer timeline, and the record a status webhook settles."""

    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("store_id", "wamid", name="uq_messages_store_wamid"),
        Index("ix_messages_store_contact", "store_id", "contact_id"),
        Index("ix_messages_store_outbox", "store_id", "outbox_id"),  # the weekly report: why each failed send failed
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    store_id: Mapped[int] = mapped_column(ForeignKey("stores.id"))
    contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id"))
    direction: Mapped[str] = mapped_column(String(8))  # in | out
    wamid: Mapped[str | None] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(32))  # text, button, template, ...
    body: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="received")
    error_code: Mapped[int | None] = mapped_column(Integer)
    outbox_id: Mapped[int | None] = mapped_column(BigId)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # when the conversation retention emptied ``body`` (connector/retention.py); None: never
    content_removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class OutboxMessage(Base):
    """A send (WhatsApp or store write-back) decided and committed; the dispatcher claims it."""

    __tablename__ = "outbox"
    __table_args__ = (
        UniqueConstraint("store_id", "idempotency_key", name="uq_outbox_store_key"),
        Index("ix_outbox_status_due", "status", "due_at"),
        Index("ix_outbox_store_wamid", "store_id", "wamid"),  # status webhooks and replies find their message
        Index("ix_outbox_contact_updated", "contact_id", "updated_at"),  # the policy gate's send history
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    store_id: Mapped[int] = mapped_column(ForeignKey("stores.id"))
    idempotency_key: Mapped[str] = mapped_column(String(255))
    channel: Mapped[str] = mapped_column(String(16))  # whatsapp | store
    contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id"))
    journey: Mapped[str | None] = mapped_column(String(40))
    step: Mapped[str | None] = mapped_column(String(40))
    category: Mapped[str | None] = mapped_column(String(16))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # when it was meant to go (its due time as queued, after quiet hours; a 131049 retry plans it again): a WhatsApp
    # message held far past it is dropped as ``too_late`` (policy.send_by). Not ``due_at``: every deferral moves that
    planned_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    leased_by: Mapped[str | None] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    skip_reason: Mapped[str | None] = mapped_column(String(64))
    wamid: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # when the conversation retention reduced ``payload`` to what reports read (connector/retention.py)
    content_removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class OutboxAttempt(Base):
    __tablename__ = "outbox_attempts"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    store_id: Mapped[int] = mapped_column(ForeignKey("stores.id"))
    outbox_id: Mapped[int] = mapped_column(ForeignKey("outbox.id", ondelete="CASCADE"), index=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(16))  # sent | retryable | permanent | uncertain
    error_code: Mapped[int | None] = mapped_column(Integer)
    error_detail: Mapped[str | None] = mapped_column(String(255))


class JourneyRun(Base):
    __tablename__ = "journey_runs"
    __table_args__ = (
        UniqueConstraint("store_id", "journey", "subject", name="uq_journey_runs_store_subject"),
        Index("ix_journey_runs_due", "store_id", "status", "next_due_at"),  # timers
        Index("ix_journey_runs_contact", "store_id", "contact_id"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    store_id: Mapped[int] = mapped_column(ForeignKey("stores.id"))
    journey: Mapped[str] = mapped_column(String(40))
    subject: Mapped[str] = mapped_column(String(160))
    contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id"))
    status: Mapped[str] = mapped_column(String(16), default="active")
    state: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    holdout: Mapped[bool] = mapped_column(Boolean, default=False)
    next_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # when the conversation retention took the customer's words out of ``state`` (connector/retention.py); None: never
    content_removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class SyncCursor(Base):
    __tablename__ = "sync_cursors"
    __table_args__ = (UniqueConstraint("store_id", "name", name="uq_sync_cursors_store_name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    store_id: Mapped[int] = mapped_column(ForeignKey("stores.id"))
    name: Mapped[str] = mapped_column(String(64))
    value: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Lease(Base):
    """A named lease so periodic jobs run once per tick however many workers run."""

    __tablename__ = "leases"
    name: Mapped[str] = mapped_column(String(120), primary_key=True)
    holder: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Handoff(Base):
    """A conversation handed to a person, with the context they need and its owner."""

    __tablename__ = "handoffs"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    store_id: Mapped[int] = mapped_column(ForeignKey("stores.id"))
    contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id"))
    key: Mapped[str] = mapped_column(String(255))  # one open hand-off per cause
    reason: Mapped[str] = mapped_column(Text)
    stage: Mapped[str] = mapped_column(String(20))
    owner: Mapped[str | None] = mapped_column(String(120))
    journey: Mapped[str | None] = mapped_column(String(40))
    subject: Mapped[str | None] = mapped_column(String(160))
    context: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(12), default="open")  # open | closed
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    closed_by: Mapped[str | None] = mapped_column(String(120))
    resolution: Mapped[str | None] = mapped_column(Text)
    # when the conversation retention emptied a closed case's context and her words in its reason
    content_removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_handoffs_store_status", "store_id", "status"),
        UniqueConstraint("store_id", "key", name="uq_handoffs_store_key"),
    )


class ReorderWindow(Base):
    """When a customer should be running out of what they bought: one per (order, product).

    Computed by connector/reorder/windows.py from orders, lines and fulfilments; the
    reorder journey starts when ``opens_at`` passes. ``status``: pending (not open yet),
    opened (the journey heard it), reordered (a later order of the product came first or
    after), cancelled (``cancel_reason`` says why), expired (opened too long ago to message,
    e.g. from a history backfill).
    """

    __tablename__ = "reorder_windows"
    __table_args__ = (
        UniqueConstraint("store_id", "order_external_id", "product_key", name="uq_reorder_windows_order_product"),
        Index("ix_reorder_windows_due", "store_id", "status", "opens_at"),
        Index("ix_reorder_windows_contact", "store_id", "contact_id", "product_key"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    store_id: Mapped[int] = mapped_column(ForeignKey("stores.id"))
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"))
    order_external_id: Mapped[str] = mapped_column(String(64))
    product_key: Mapped[str] = mapped_column(String(140))
    product_id: Mapped[str | None] = mapped_column(String(64))
    variant_id: Mapped[str | None] = mapped_column(String(64))
    sku: Mapped[str | None] = mapped_column(String(128))
    title: Mapped[str] = mapped_column(String(255))
    quantity: Mapped[int] = mapped_column(Integer)
    placed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    anchor: Mapped[str] = mapped_column(String(12))  # delivered | fulfilled | placed | handed_over (nothing shipped: no transit)
    anchor_at: Mapped[datetime] = mapped_column(UTCDateTime)
    cycle_days: Mapped[float] = mapped_column(Float)
    cycle_source: Mapped[str] = mapped_column(String(16))  # config | tag | customer | learned
    opens_at: Mapped[datetime] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(12), default="pending")
    # why a cancelled window was: ``not_sold`` (its product stopped being sold; planned again if it is
    # sold again in time), ``called_off`` (its order), ``not_a_line`` (edited out or returned), ``unplanned``
    cancel_reason: Mapped[str | None] = mapped_column(String(16))
    opened_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reorder_order_id: Mapped[str | None] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ProductCycle(Base):
    """A product's replenishment cycle from a store tag (``replenish:30d``) or learned from history."""

    __tablename__ = "product_cycles"
    __table_args__ = (UniqueConstraint("store_id", "product_key", "source", name="uq_product_cycles_key_source"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    store_id: Mapped[int] = mapped_column(ForeignKey("stores.id"))
    product_key: Mapped[str] = mapped_column(String(140))
    source: Mapped[str] = mapped_column(String(16))  # tag | learned
    cycle_days: Mapped[float] = mapped_column(Float)
    samples: Mapped[int] = mapped_column(Integer, default=0)  # repeat buyers behind a learned cycle
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ProductAvailability(Base):
    """A product the store does not sell now: archived, a draft or in the bin (``available`` false), or
    sold out (``in_stock`` false). Only such products have a row; none means buyable. Kept from the
    product webhooks (``state.apply_product_cycle``) so no reorder reminder links to what cannot be bought.

    One row per key a window can have for the product: its id (``p:``), and its SKUs and title (``s:``,
    ``t:``) for order lines that name no product; ``product_id`` ties them together, so the lot goes
    when the product is sold again, even a SKU or title it no longer has."""

    __tablename__ = "product_availability"
    __table_args__ = (UniqueConstraint("store_id", "product_key", name="uq_product_availability_key"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    store_id: Mapped[int] = mapped_column(ForeignKey("stores.id"))
    product_key: Mapped[str] = mapped_column(String(140))
    product_id: Mapped[str | None] = mapped_column(String(64))
    available: Mapped[bool] = mapped_column(Boolean)
    in_stock: Mapped[bool] = mapped_column(Boolean)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class StoreCredential(Base):
    """A token or key obtained by install, Fernet-encrypted (connector/secrets.py); never plain text.

    ``kind``: shopify_access_token, shopify_refresh_token, woo_consumer_key,
    woo_consumer_secret, woo_webhook_secret, woo_webhook_secret_previous (during a rotation).
    ``value`` is the Fernet token (ASCII).
    """

    __tablename__ = "store_credentials"
    __table_args__ = (UniqueConstraint("store_id", "kind", name="uq_store_credentials_store_kind"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    store_id: Mapped[int] = mapped_column(ForeignKey("stores.id"))
    kind: Mapped[str] = mapped_column(String(40))
    value: Mapped[str] = mapped_column(Text)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class OAuthState(Base):
    """A single-use install nonce: Shopify's OAuth ``state`` or a WooCommerce wc-auth callback path."""

    __tablename__ = "oauth_states"
    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    store_key: Mapped[str] = mapped_column(String(64))
    shop: Mapped[str] = mapped_column(String(255))  # the *.myshopify.com domain, or the WooCommerce site
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ComplianceRequest(Base):
    """A privacy request (Shopify's customers/data_request, customers/redact, shop/redact) and what was done.

    A data request keeps its export, the answer the merchant owes the customer, for
    ``worker.raw_body_retention_days`` (the window of the raw bodies it copies), after which the
    hourly purge empties it (``status`` expired, ``erased_at`` when: connector/retention.py), or
    until a later redaction of the same customer (or of the shop) erases it (``status`` erased);
    the row itself stays, the record that the request was answered and when. A redaction keeps
    counts only: never a phone, name, email or customer id (connector/compliance.py).
    """

    __tablename__ = "compliance_requests"
    __table_args__ = (Index("ix_compliance_requests_store_id", "store_id", "id"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    store_id: Mapped[int] = mapped_column(ForeignKey("stores.id"))
    kind: Mapped[str] = mapped_column(String(32))  # customer_data_request | customer_redact | shop_redact
    status: Mapped[str] = mapped_column(String(16), default="done")  # done | erased | expired
    inbox_event_id: Mapped[int | None] = mapped_column(BigId)  # the webhook delivery it answers
    contact_ids: Mapped[list[int]] = mapped_column(JSON, default=list)  # whom it concerned (ids only)
    counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    export: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    erased_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ErasedRef(Base):
    """An order, a checkout or a platform customer of a customer the connector erased
    (``connector/erased.py``): a later store event about them is ignored instead of bringing her back.

    ``ref`` is the platform order id or checkout token as it is (the orders and checkouts tables keep
    them anyway: they name no one without the store's own records), and for a customer a keyed hash
    of the platform customer id (kind ``customer``; the key is the store's row of kind ``key``), so
    the id the erasure removed is not stored again. A checkout's recovery link is kept the same way,
    hashed, as a ``checkout`` mark (``erased.link_mark``).
    """

    __tablename__ = "erased_refs"
    __table_args__ = (
        UniqueConstraint("store_id", "kind", "ref", name="uq_erased_refs_store_kind_ref"),
        # one hashing key per store, whichever erasure made it first
        Index("uq_erased_refs_one_key", "store_id", unique=True, sqlite_where=text("kind = 'key'"),
              postgresql_where=text("kind = 'key'")),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    store_id: Mapped[int] = mapped_column(ForeignKey("stores.id"))
    kind: Mapped[str] = mapped_column(String(16))  # order | checkout | customer | key
    ref: Mapped[str] = mapped_column(String(64))
    erased_at: Mapped[datetime] = mapped_column(UTCDateTime)
