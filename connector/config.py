"""TOML configuration, parsed once into frozen, validated settings.

Every problem is reported at once with its key path (``stores[1].timezone: ...``).
Unknown keys are errors, so a typo never silently turns a feature off. Secrets may be
written as ``"env:NAME"`` to read them from the environment; they are held as
``SecretStr`` and never appear in a repr, a log line or ``check-config`` output.
"""

from __future__ import annotations

import functools

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
import phonenumbers
from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from connector.errors import ConfigError, Problems
from connector.toml_lines import problem_lines
from connector.toml_values import FromEnv, checked_scalar

ENV_PREFIX = "env:"
DEFAULT_COD_GATEWAYS = {
    # platform-facts.md A4 (Shopify's manual method and the Indian COD apps) and B2 (WooCommerce's `cod`).
    "shopify": ("cash on delivery", "cash on delivery (cod)", "cod", "cash_on_delivery"),
    "woocommerce": ("cod",),
}
_KEY_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# What a WooCommerce order status says about the parcel (``shipping_statuses``); the store-neutral
# meanings adapters/woocommerce/normalize.py turns into fulfilment events
SHIPPING_MEANINGS = ("shipped", "out_for_delivery", "delivered", "failed_delivery")
# Statuses that shipping plugins commonly add, and core ``completed``; a store's own list is merged over these
DEFAULT_SHIPPING_STATUSES: dict[str, str] = {
    "completed": "shipped",
    "shipped": "shipped",
    "dispatched": "shipped",
    "in-transit": "shipped",
    "out-for-delivery": "out_for_delivery",
    "delivered": "delivered",
    # the courier could not deliver (returned to origin)
    "failed-delivery": "failed_delivery",
    "rto": "failed_delivery",
}
# WooCommerce's own statuses of an order that has not shipped: never a shipping status
_NOT_SHIPPING = frozenset({"pending", "processing", "on-hold", "cancelled", "refunded", "failed", "checkout-draft", "trash"})


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _Settings(_Frozen):
    @field_validator("*", mode="before")
    @classmethod
    def _as_toml_writes_it(cls, value: Any, info: ValidationInfo) -> Any:
        """A quoted number or boolean is a typo, not a value to convert (``toml_values``)."""
        return checked_scalar(cls, value, info)


class ServerSettings(_Settings):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    max_body_bytes: int = Field(4_194_304, ge=1024, description="larger webhook and admin bodies get 413; WhatsApp's route never caps below 4 MiB (Meta batches up to ~3 MB per POST)")
    admin_token: SecretStr | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    public_url: AnyHttpUrl | None = Field(
        None, description="the https base URL stores reach this server at: install redirect_uri and webhook addresses")

    @property
    def public_base_url(self) -> str | None:
        return str(self.public_url).rstrip("/") if self.public_url is not None else None


class DatabaseSettings(_Settings):
    url: str = "sqlite:///storeloop.db"
    auto_migrate: bool = Field(True, description="SQLite only: serve migrates an unmigrated file itself")
    group_commit_max: int = Field(256, ge=1, le=10_000, description="webhooks written per transaction at most")
    ingest_journal: Literal["burst", "always", "off"] = Field(
        "burst", description="SQLite file: under a burst, acknowledge webhooks from an append-only journal beside the "
        "database and move them into the inbox after it (storage/journal.py); always; or off (always the inbox itself)")
    pool_size: int = Field(5, ge=1, le=100)

    @field_validator("url")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        """A URL SQLAlchemy can open with the drivers installed, checked here so a typo is a
        config error and not a traceback at start. Problems never quote the URL (its password)."""
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        if value.startswith("postgresql://"):
            value = "postgresql+psycopg://" + value.removeprefix("postgresql://")
        try:
            url = make_url(value)
        except (ArgumentError, ValueError):
            raise ValueError("is not a database URL: write sqlite:///path/to/file.db or "
                             "postgresql+psycopg://user:password@host:5432/dbname") from None
        backend, _, driver = url.drivername.partition("+")  # by name: asking SQLAlchemy loads the dialect
        if backend == "sqlite":
            if driver not in ("", "pysqlite"):
                raise ValueError(f"SQLite is opened with Python's own driver: write sqlite:///..., not {url.drivername}://")
            if url.host:
                raise ValueError("a SQLite URL has three slashes before a relative path (sqlite:///storeloop.db) "
                                 "and four before an absolute one (sqlite:////var/lib/storeloop.db)")
        elif backend == "postgresql":
            if driver != "psycopg":
                raise ValueError(f"the PostgreSQL driver installed is psycopg: write postgresql+psycopg://..., not {url.drivername}://")
            if url.port is not None and not 1 <= url.port <= 65535:
                raise ValueError(f"port {url.port} is outside 1-65535")
        else:
            raise ValueError("must be a sqlite:/// or postgresql+psycopg:// URL")
        return value

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")


class WorkerSettings(_Settings):
    inbox_poll_seconds: float = Field(0.5, gt=0, le=60)
    inbox_batch_size: int = Field(
        2000, ge=1, le=5000,
        description="inbox rows loaded and applied at once (a batch's bodies and events are held until its rows are marked: "
                    "about 30 KB a row); while no webhooks arrive a transaction goes on with further batches until its slice is "
                    "spent (2.5 s in serve, where a webhook or any other write of the process ends it at the next row, and on "
                    "PostgreSQL; 0.25 s in a separate worker on SQLite); while webhooks arrive a transaction is a few rows and 5 ms")
    inbox_max_attempts: int = Field(5, ge=1, le=100)
    raw_body_retention_days: int = Field(30, ge=1)
    conversation_retention_days: int = Field(
        365, description="message texts, closed hand-offs' context and the customer's words in their reason, settled "
                         "sends' rendered messages and finished journey runs' typed words older than this are emptied "
                         "hourly; the report's figures stay")
    reconcile_minutes: float = Field(15, gt=0, description="how often orders are reconciled with each store's API")
    checkout_poll_minutes: float = Field(
        15, ge=0, description="how often each Shopify store's abandoned checkouts are polled (lost checkout webhooks); 0: off")
    reorder_minutes: float = Field(15, gt=0, description="how often reorder windows are refreshed and due ones opened")
    number_quality_hours: float = Field(
        4, ge=0, description="how often each store's WhatsApp number's quality rating (YELLOW too, which no webhook says) "
                             "and messaging limit are read from Meta; 0: off (never in dry run); else at least 0.25")

    @field_validator("number_quality_hours")
    @classmethod
    def _reading_spaced(cls, value: float) -> float:
        """Each read is a Graph API call the sends' allowance pays for too (80007): not every few seconds."""
        if 0 < value < 0.25:
            raise ValueError(f"{value:g} would read the number every {value * 60:.3g} minutes: 0 turns it off, else at least 0.25 (15 minutes)")
        return value

    @model_validator(mode="before")
    @classmethod
    def _conversations_default(cls, data: Any) -> Any:
        """Unset, the conversation is kept a year, or as long as the raw bodies when those are kept
        longer: a config that kept bodies over a year loaded before this setting existed, and still does."""
        if isinstance(data, dict) and "conversation_retention_days" not in data:
            raw = data.get("raw_body_retention_days")
            if isinstance(raw, int) and not isinstance(raw, bool) and raw > 365:
                return {**data, "conversation_retention_days": raw}
        return data

    @model_validator(mode="after")
    def _conversations_outlive_bodies(self) -> "WorkerSettings":
        """The raw bodies hold the same texts (and more): kept longer than the conversation, they would keep
        what the conversation retention promises is gone. No value turns it off (a long one keeps texts long)."""
        days = self.conversation_retention_days
        if days < 1:
            raise Problems([("conversation_retention_days", f"{days} is not a number of days: write how many days message "
                                                             "texts are kept, at least 1 (e.g. 365; a large number keeps them longer)")])
        if days < self.raw_body_retention_days:
            raise Problems([("conversation_retention_days", f"{days} is below raw_body_retention_days ({self.raw_body_retention_days}): "
                                                             "the raw webhook bodies hold the same texts, so they would outlive the "
                                                             "conversation; make it at least raw_body_retention_days, or lower that")])
        return self


MAX_SEND_WITHIN_HOURS = 8760
# a parcel out for delivery is news for that day: held longer, it has most likely arrived
DEFAULT_SEND_WITHIN_HOURS: dict[str, float] = {"delivery.out_for_delivery": 6.0}


def _number(text: str) -> float | None:
    """A number read from the environment (``"env:NAME"``: text by nature, as everywhere else), or None."""
    try:
        return float(text)
    except ValueError:
        return None


class PolicySettings(_Settings):
    """The policy gate's knobs, per store (see connector/policy.py for the rules)."""

    quiet_hours: str = Field("21:00-09:00", description="'HH:MM-HH:MM' in the store's time zone; '' disables")
    utility_in_quiet_hours: bool = True
    marketing_cap: int = Field(3, ge=0, description="marketing messages per contact in marketing_cap_days, all journeys "
                                                   "(the cart ladder's reminders must fit: three by default)")
    marketing_cap_days: int = Field(7, ge=1)
    cart_quiet_after_order_hours: int = Field(24, ge=0)
    utility_needs_consent: bool = True
    utility_consent_from_order: bool = Field(True, description="an order with a phone counts as WhatsApp contact consent")
    unreachable_retry_days: int = Field(7, ge=0, le=365, description="days after WhatsApp refused a number (131026) before "
                                                                  "one new message tries it again; 0: never")
    marketing_send_within_hours: float = Field(
        6, gt=0, le=MAX_SEND_WITHIN_HOURS, description="a marketing message (cart, reorder reminder) held longer than this "
        "after it was meant to go (a restricted account, the number rated RED, the connector down) is not sent: skipped as too_late")
    utility_send_within_hours: float = Field(
        24, gt=0, le=MAX_SEND_WITHIN_HOURS, description="the same for utility messages (order, COD, payment, delivery)")
    send_within_hours: tuple[tuple[str, float], ...] = Field(
        tuple(sorted(DEFAULT_SEND_WITHIN_HOURS.items())),
        description="per journey or journey.step, over its category's: { \"delivery.out_for_delivery\" = 6, reorder = 12 }; "
                    "merged over the defaults")
    messaging_limit_marketing_percent: float = Field(
        80, gt=0, le=100, description="cart and reorder reminders (marketing) that start a conversation stop at this share "
        "of WhatsApp's messaging limit (the customers messaged outside their 24 h window in a moving 24 h, shared by the "
        "business's numbers): order, COD and delivery messages keep the rest; the held ones wait for the window to move")
    stop_words: tuple[str, ...] | None = None
    start_words: tuple[str, ...] | None = None

    @field_validator("send_within_hours", mode="before")
    @classmethod
    def _send_within(cls, value: Any) -> Any:
        """A TOML table of journey or journey.step -> hours, each naming an installed journey (and a step it
        sends): a typo would leave its messages on the category's limit without a word."""
        if not isinstance(value, dict):
            return value  # the defaults as stored (a tuple of pairs), or a wrong type pydantic reports
        from connector.journeys.registry import journeys

        known = journeys()
        problems: list[tuple[str, str]] = []
        out = dict(DEFAULT_SEND_WITHIN_HOURS)
        for key, hours in value.items():
            name, _, step = str(key).partition(".")
            journey = known.get(name)
            steps = getattr(journey, "template_steps", None)
            if journey is None:
                problems.append((key, f"unknown journey {name!r} (known: {', '.join(sorted(known))}); "
                                      "write a journey or journey.step, e.g. delivery.out_for_delivery"))
            elif step and steps and not any(re.fullmatch(pattern, step) for pattern in steps):
                shown = ", ".join(p.replace(r"\d+", "N") for p in steps)
                problems.append((key, f"{step!r} is not a step {name} sends ({shown})"))
            elif isinstance(hours, FromEnv) and _number(hours) is None:
                problems.append((key, f"the environment gives {str(hours)!r}, not a number of hours, e.g. 6 or 0.5"))
            elif isinstance(hours, bool) or not isinstance(hours, (int, float, FromEnv)):
                problems.append((key, "must be a number of hours, e.g. 6 or 0.5"))  # quoted in TOML: a typo
            elif not 0 < (hours := _number(hours) if isinstance(hours, FromEnv) else hours) <= MAX_SEND_WITHIN_HOURS:
                problems.append((key, f"must be greater than 0 and at most {MAX_SEND_WITHIN_HOURS} hours (a year)"))
            else:
                out[str(key)] = float(hours)
        if problems:
            raise Problems(problems)
        return tuple(sorted(out.items()))

    @field_validator("quiet_hours")
    @classmethod
    def _hours(cls, value: str) -> str:
        if value and not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-3]):[0-5]\d", value):
            raise ValueError(f"{value!r} is not 'HH:MM-HH:MM' (24 h clock) or ''")
        start, _, end = value.partition("-")
        if value and start == end:
            # the gate reads an empty span as no quiet hours at all; meant was all day, or none
            raise ValueError(f"{value!r} starts and ends at the same time, which is no quiet hours at all: "
                             "write '' for none, or the hours messages must wait")
        return value

    @model_validator(mode="after")
    def _keywords_apart(self) -> "PolicySettings":
        """A word in both lists is always read as STOP (the gate asks stop_words first): the
        customer who sends it to opt back in is opted out again instead."""
        from connector.policy import DEFAULT_START_WORDS, DEFAULT_STOP_WORDS, keyword_form

        stop = self.stop_words if self.stop_words is not None else DEFAULT_STOP_WORDS
        start = self.start_words if self.start_words is not None else DEFAULT_START_WORDS
        folded_stop = {keyword_form(w) for w in stop}
        both = [w for w in start if keyword_form(w) in folded_stop]
        if both:
            where = "start_words" if self.start_words is not None else "stop_words"
            raise Problems([(where, f"{', '.join(repr(w) for w in both)} is in both stop_words and start_words "
                                    "(with the defaults of the one not set): such a message always opts the customer out")])
        return self

    def rules(self) -> Any:
        """The policy gate's rules, built once per distinct settings (every queued message asks)."""
        return _rules_of(self)

    def _build_rules(self) -> Any:
        from datetime import time, timedelta

        from connector.policy import DEFAULT_START_WORDS, DEFAULT_STOP_WORDS, PolicyRules

        start = end = None
        if self.quiet_hours:
            a, b = self.quiet_hours.split("-")
            start, end = time.fromisoformat(a), time.fromisoformat(b)
        return PolicyRules(
            quiet_start=start,
            quiet_end=end,
            utility_in_quiet_hours=self.utility_in_quiet_hours,
            marketing_cap=self.marketing_cap,
            marketing_cap_window=timedelta(days=self.marketing_cap_days),
            cart_quiet_after_order=timedelta(hours=self.cart_quiet_after_order_hours),
            utility_needs_consent=self.utility_needs_consent,
            unreachable_retry_after=timedelta(days=self.unreachable_retry_days) if self.unreachable_retry_days else None,
            marketing_send_within=timedelta(hours=self.marketing_send_within_hours),
            utility_send_within=timedelta(hours=self.utility_send_within_hours),
            send_within={key: timedelta(hours=hours) for key, hours in self.send_within_hours},
            stop_words=frozenset(self.stop_words if self.stop_words is not None else DEFAULT_STOP_WORDS),
            start_words=frozenset(self.start_words if self.start_words is not None else DEFAULT_START_WORDS),
        )


@functools.lru_cache(maxsize=256)
def _rules_of(policy: PolicySettings) -> Any:
    return policy._build_rules()  # frozen settings hash by value: equal settings share their rules


STAGES = ("entry", "qualification", "conversion", "post_purchase", "retention")


class StageSettings(_Settings):
    owner: str | None = Field(None, description="who gets this stage's hand-offs (shown in the hand-off and the report)")
    notify_url: SecretStr | None = Field(None, description="Slack-compatible incoming webhook for new hand-offs")

    @field_validator("notify_url")
    @classmethod
    def _webhook_url(cls, value: SecretStr | None) -> SecretStr | None:
        """An http(s) URL with a host and no whitespace (a secret read from the environment often
        ends in a newline); the problem never quotes the URL, which is a secret."""
        if value is None:
            return None
        url = value.get_secret_value()
        if any(c.isspace() or not c.isprintable() for c in url):
            raise ValueError("contains whitespace or a control character (a trailing newline from the environment?)")
        try:
            parsed = httpx.URL(url)
        except Exception:
            parsed = None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError("must be an http:// or https:// URL with a host")
        if parsed.port is not None and not 1 <= parsed.port <= 65535:
            raise ValueError("has a port outside 1-65535")
        return value


class HandoffSettings(_Settings):
    free_text_replies: bool = Field(True, description="a reply that is not a button or keyword goes to a person")
    order_value_over: float | dict[str, float] | None = Field(
        None, description="orders above this total open a hand-off: a number is in the store's `currency` (every order's, "
        "when that is not set), a table names one per currency ({ INR = 20000, USD = 250 }); an order in a currency it does "
        "not name is not compared (there are no exchange rates)")
    reply_match_days: float = Field(7, gt=0, description="a reply that quotes none of our messages continues the active run "
                                    "whose message reached the customer last, within this many days of the reply")
    follow_up_minutes: float | None = Field(
        30, gt=0, description="a customer's message added to an open case tells its owner again when they were last told of "
                              "that case at least this many minutes ago (at most one such alert per case in that time); "
                              "none: never (only the opening and a journey's news are told)")

    @field_validator("order_value_over")
    @classmethod
    def _value_over(cls, value: float | dict[str, float] | None) -> float | dict[str, float] | None:
        if value is None:
            return None
        if isinstance(value, dict):
            out: dict[str, float] = {}
            for code, amount in value.items():
                key = code.strip().upper()
                if not re.fullmatch(r"[A-Z]{3}", key):
                    raise ValueError(f"{code!r} is not a currency code (use ISO 4217 like 'INR')")
                if not amount > 0:
                    raise ValueError(f"{key}: must be greater than 0")
                out[key] = float(amount)
            return out
        if not value > 0:
            raise ValueError("must be greater than 0")
        return value

    def value_over(self, currency: str | None, store_currency: str | None) -> float | None:
        """The threshold for an order in ``currency``; None: this order is not compared."""
        over = self.order_value_over
        if isinstance(over, dict):
            return over.get((currency or store_currency or "").upper())
        if over is None or (store_currency and currency and currency.upper() != store_currency):
            return None
        return over


class TemplateButton(_Settings):
    type: Literal["quick_reply", "url"]
    text: str = Field(max_length=25, description="the button label")
    payload: str | None = Field(None, max_length=256, description="quick_reply: comes back when tapped")
    url: str | None = Field(None, description="url: the template URL with {{1}} for the suffix")
    suffix: str | None = Field(None, description="url: the variable appended to the URL")

    @model_validator(mode="after")
    def _shape(self) -> "TemplateButton":
        from connector.templates import VARIABLES

        if self.type == "quick_reply" and not self.payload:
            raise ValueError("a quick_reply button needs a payload")
        if self.type == "url":
            if not self.url or "{{1}}" not in self.url:
                raise ValueError("a url button needs url with {{1}}")
            if self.suffix not in VARIABLES:
                raise ValueError(f"suffix must be one of the known variables, not {self.suffix!r}")
        return self


# Meta's template language codes: a language (two or three letters) and an optional region
_META_LANGUAGE = re.compile(r"[a-z]{2,3}(_[A-Z]{2})?")


class TemplateSettings(_Settings):
    step: str = Field(pattern=r"^[a-z_]+\.[a-z_0-9]+$", description="journey.step, e.g. cod_confirmation.ask")
    name: str = Field(pattern=r"^[a-z0-9_]+$")
    language: str = "en"
    category: Literal["utility", "marketing"]
    body_text: str = Field(max_length=1024, description="the template body with {{1}}..{{n}}")
    body: tuple[str, ...] = Field((), description="one variable per placeholder, in order")
    header_image: str | None = None
    buttons: tuple[TemplateButton, ...] = Field((), max_length=10)

    @field_validator("language")
    @classmethod
    def _meta_language(cls, code: str) -> str:
        """Meta names a template's language ``en``, ``en_US``, ``pt_BR``, ``fil``: sent as ``en-US`` or ``en_us``,
        every message of the step fails (132001, no such template in that language) and ``templates check``
        calls the template missing."""
        if _META_LANGUAGE.fullmatch(code):
            return code
        parts = re.split(r"[-_]", code.strip())
        if len(parts) == 2 and parts[0].isalpha() and parts[1].isalpha() and 2 <= len(parts[0]) <= 3 and len(parts[1]) == 2:
            raise ValueError(f"{code!r} is not how Meta names a template language: write {parts[0].lower()}_{parts[1].upper()}")
        raise ValueError(f"{code!r} is not a WhatsApp template language code (like en, en_US, pt_BR, fil)")

    @field_validator("body")
    @classmethod
    def _bindings(cls, body: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        """A field validator (not a model one) so these problems are listed beside the buttons' own."""
        from connector.templates import VARIABLES, placeholders

        problems = [f"unknown variable {v!r}" for v in body if v not in VARIABLES]
        text = info.data.get("body_text")
        if text is not None:
            wanted = placeholders(text)
            if wanted != list(range(1, len(wanted) + 1)):
                problems.append(f"body_text placeholders must be {{{{1}}}}..{{{{n}}}} without gaps, found {wanted}")
            elif len(wanted) != len(body):
                problems.append(f"body_text has {len(wanted)} placeholder(s) but body binds {len(body)} variable(s)")
        if problems:
            raise ValueError("; ".join(problems))
        return body


class WhatsAppSettings(_Settings):
    graph_base_url: AnyHttpUrl = AnyHttpUrl("https://graph.facebook.com")
    api_version: str = Field("v23.0", pattern=r"^v\d+\.\d+$")
    app_secret: SecretStr | None = Field(None, description="Meta app secret: verifies X-Hub-Signature-256")
    verify_token: SecretStr | None = Field(None, description="answers the GET subscription challenge")
    access_token: SecretStr | None = Field(None, description="empty: messages are recorded as dry runs")
    business_account_id: str | None = None
    messages_per_second: float = Field(80, gt=0, le=1000, description="per sending phone number (Meta: 80 default)")
    pair_spacing_seconds: float = Field(6, ge=0, description="minimum gap between two messages from one business number to one recipient (Meta error 131056)")
    send_concurrency: int = Field(
        64, ge=1, le=512,
        description="most sends in flight per dispatcher; fewer are used while rate x latency needs fewer",
    )
    lease_seconds: int = Field(60, ge=5, description="a claimed send not finished by then becomes 'uncertain'")
    max_attempts: int = Field(8, ge=1, le=50)
    backoff_base_seconds: float = Field(2, gt=0)
    backoff_cap_seconds: float = Field(3600, gt=0)

    @model_validator(mode="after")
    def _cap_above_base(self) -> "WhatsAppSettings":
        """The retry delay grows from the base up to the cap: a cap below the base would make every
        retry wait the cap, less than the base that was asked for."""
        if self.backoff_cap_seconds < self.backoff_base_seconds:
            raise Problems([("backoff_cap_seconds", f"{self.backoff_cap_seconds:g} is below backoff_base_seconds "
                                                    f"({self.backoff_base_seconds:g}): every retry would wait {self.backoff_cap_seconds:g} s "
                                                    "and the wait would never grow; the cap must be at least the base")])
        return self

    @property
    def dry_run(self) -> bool:
        return self.access_token is None or not self.access_token.get_secret_value()


class _StoreBase(_Frozen):
    """A store's table. Not a ``_Settings``: pydantic refuses a before-validator on ``platform``, the
    key that tells a Shopify store from a WooCommerce one, so a store's own numbers and booleans (none
    yet) would need ``checked_scalar`` named per field; its sub-tables (policy, handoff...) check theirs."""

    key: str
    name: str | None = None
    webhook_secret: SecretStr
    previous_webhook_secret: SecretStr | None = Field(None, description="accepted during a secret rotation")
    admin_token: SecretStr | None = Field(
        None, description="opens this store's admin API routes and dashboard pages and no other store's (for the store's own "
        "team in an agency deployment); server.admin_token opens every store")
    timezone: str = "UTC"
    default_country: str = "US"
    currency: str | None = Field(
        None, description="the store's own currency (ISO 4217, e.g. INR), listed first in every revenue figure of the report; "
        "revenue is reported per currency, never converted or added across currencies")
    cod_gateways: tuple[str, ...] | None = Field(
        None, description="payment gateway names (exact, case-insensitive) that mean cash on delivery, replacing the default "
        "list; on Shopify a gateway whose words say so ('COD', 'Cash/Pay/Collect on Delivery') is COD besides "
        "(adapters/cod_gateways.py)")
    whatsapp_phone_number_id: str | None = None
    whatsapp_display_phone_number: str | None = Field(
        None, description="the number as WhatsApp Manager shows it (digits with the country code, e.g. 15550783881): Meta's "
        "quality news names a number only so. Needed only when several stores send from numbers of one business account; "
        "unset, every such store hears the news of any of its numbers")
    policy: PolicySettings = PolicySettings()
    templates: tuple[TemplateSettings, ...] = ()
    journeys: dict[str, Any] = Field(default_factory=dict, description="[stores.journeys.<name>]: a journey runs only when listed")
    stages: dict[Literal["entry", "qualification", "conversion", "post_purchase", "retention"], StageSettings] = Field(default_factory=dict)
    handoff: HandoffSettings = HandoffSettings()

    @model_validator(mode="before")
    @classmethod
    def _plain_text(cls, value: Any) -> Any:
        """Its secrets read from the environment held as plain text, as every ``_Settings`` field is."""
        if isinstance(value, dict):
            return {k: str(v) if isinstance(v, FromEnv) else v for k, v in value.items()}
        return value

    @field_validator("journeys")
    @classmethod
    def _journeys(cls, value: dict[str, Any]) -> dict[str, Any]:
        """Each journey validates its own block (plugins bring their own settings model)."""
        from connector.journeys.engine import accepts_holdout
        from connector.journeys.registry import journeys

        known = journeys()
        out: dict[str, Any] = {}
        problems: list[tuple[str, str]] = []
        for name, block in value.items():
            journey = known.get(name)
            if journey is None:
                problems.append((name, f"unknown journey (known: {', '.join(sorted(known))})"))
                continue
            derived = getattr(journey.config_model, "set_when_loaded", {})
            if isinstance(block, dict) and derived.keys() & block.keys():
                problems += [(f"{name}.{key}", f"set by the connector from the store's other settings ({derived[key]}), "
                              "not in the configuration: remove it") for key in block if key in derived]
                block = {k: v for k, v in block.items() if k not in derived}  # the rest still checked
            try:
                out[name] = journey.config_model.model_validate(block or {})
            except ValidationError as exc:
                for err in exc.errors(include_url=False):  # the input only for its kind (``_not_text``): never shown
                    located = (err.get("ctx") or {}).get("error")
                    if isinstance(located, Problems):  # a journey's check that names its own settings
                        problems += [(".".join([name, *(str(p) for p in err["loc"]), *([where] if where else [])]), what)
                                     for where, what in located.located]
                        continue
                    msg = "unknown key (typo?)" if err["type"] == "extra_forbidden" else \
                        _not_text(err) or err["msg"].removeprefix("Value error, ")
                    problems.append((".".join([name, *(str(p) for p in err["loc"])]), msg))  # no loc: the block as a whole
                continue
            if getattr(out[name], "holdout_percent", 0) > 0 and not accepts_holdout(journey):
                problems.append((f"{name}.holdout_percent", f"{name} keeps no control group (only marketing journeys do): "
                                 "its holdout customers would get no message yet still have the journey act on their "
                                 "orders (e.g. cancel an unconfirmed COD order); remove holdout_percent"))
        if problems:
            raise Problems(problems)
        return out

    @model_validator(mode="after")
    def _woocommerce_only_settings(self) -> "_StoreBase":
        """WooCommerce pending/failed orders go to checkout_recovery or payment_recovery, never both; the
        WooCommerce-only journey settings are off on other platforms (``settle_woocommerce_settings``)."""
        from connector.journeys.checkout_recovery import settle_woocommerce_settings

        problems = settle_woocommerce_settings(self.platform, self.journeys)  # type: ignore[attr-defined]
        if problems:
            raise Problems.of([f"journeys.{p}" for p in problems])
        return self

    @model_validator(mode="after")
    def _discounts_are_marketing(self) -> "_StoreBase":
        """A template that offers a discount is marketing (Meta: any promotional content makes it so, and it
        re-categorises such a template): written "utility", a COD pay-now offer with its code was gated as
        utility and reached customers who had stopped promotions. Refused: a utility template that binds
        ``discount.code``, or for a step its journey gives a code to (``discount_steps(config)``, named by
        ``discount_setting``; the code may reach her by the step's link, as the reorder link's ``?discount=``)."""
        from connector.journeys.registry import journeys

        known = journeys()
        problems: list[tuple[str, str]] = []
        for i, tpl in enumerate(self.templates):  # type: ignore[attr-defined]
            if tpl.category != "utility":
                continue
            name, step = tpl.step.split(".", 1)
            journey, cfg = known.get(name), self.journeys.get(name)  # type: ignore[attr-defined]
            steps = getattr(journey, "discount_steps", None)
            if "discount.code" in (*tpl.body, *(b.suffix for b in tpl.buttons)):
                why = "binds discount.code"
            elif cfg is not None and steps is not None and step in steps(cfg):
                why = f"is given a discount code by journey {name} ({getattr(journey, 'discount_setting', 'discount_code')})"
            else:
                continue
            problems.append((f"templates[{i}].category",
                             f"'utility', but {tpl.step} {why}: a message that offers a discount is marketing (Meta "
                             "re-categorises such a template), and gated as utility it would reach customers who opted "
                             'out of promotions; use category "marketing"'))
        if problems:
            raise Problems(problems)
        return self

    def warnings(self) -> list[str]:
        """Settings that load but work against each other: said by ``check-config`` and logged at
        start, not refused (a config that ran yesterday keeps running after an upgrade)."""
        out: list[str] = self._unused_templates() + self._discount_never_given() + self._journey_warnings()
        cart = self.journeys.get("checkout_recovery")  # type: ignore[attr-defined]
        ladder = getattr(cart, "ladder_minutes", None)
        if ladder and cart.enabled:
            window = self.policy.marketing_cap_days * 24 * 60  # type: ignore[attr-defined]
            # the most reminders any one cap window holds (it may start at any step, not only the first)
            inside = max(sum(1 for m in ladder if 0 <= m - start < window) for start in ladder)
            cap = self.policy.marketing_cap  # type: ignore[attr-defined]
            if inside > cap:
                out.append(
                    f"stores[{self.key}].journeys.checkout_recovery.ladder_minutes sends {inside} reminders within "  # type: ignore[attr-defined]
                    f"{self.policy.marketing_cap_days} day(s) but [stores.policy] marketing_cap allows {cap} marketing "  # type: ignore[attr-defined]
                    f"message(s) per contact in that time: a later reminder (the discount step by default) is always "
                    f"skipped as frequency_cap; raise marketing_cap to {inside} or spread the ladder out")
        if self.policy.marketing_cap == 0:  # type: ignore[attr-defined]
            from connector.journeys.registry import journeys

            known = journeys()
            for name, cfg in self.enabled_journeys().items():
                if name != "checkout_recovery" and getattr(known.get(name), "marketing", False):  # its ladder is said above
                    out.append(f"stores[{self.key}].policy.marketing_cap is 0 but journey {name} sends marketing messages: "  # type: ignore[attr-defined]
                               "each is skipped as frequency_cap; raise marketing_cap or turn the journey off")
        return out

    def _journey_warnings(self) -> list[str]:
        """What each enabled journey says of its own settings (``warnings(config)``, where it has one)."""
        from connector.journeys.registry import journeys

        known = journeys()
        return [f"stores[{self.key}].journeys.{name}.{w}"  # type: ignore[attr-defined]
                for name, cfg in self.enabled_journeys().items()
                for w in getattr(known.get(name), "warnings", lambda _c: [])(cfg)]

    def _unused_templates(self) -> list[str]:
        """Templates for a step no installed journey sends (a misspelt step): never sent, and the
        step meant goes out as ``no_template_configured``. Warned, not refused: it loaded before."""
        from connector.journeys.registry import journeys

        known = journeys()
        out: list[str] = []
        for i, tpl in enumerate(self.templates):  # type: ignore[attr-defined]
            name, step = tpl.step.split(".", 1)
            where = f"stores[{self.key}].templates[{i}].step"  # type: ignore[attr-defined]
            journey = known.get(name)
            if journey is None:
                out.append(f"{where}: no journey named {name!r} is installed: this template is never sent")
                continue
            steps = getattr(journey, "template_steps", None)
            if steps and not any(re.fullmatch(pattern, step) for pattern in steps):
                shown = ", ".join(p.replace(r"\d+", "N") for p in steps)
                out.append(f"{where}: {tpl.step!r} is not a step {name} sends ({shown}): this template is never sent")
        return out

    def _discount_never_given(self) -> list[str]:
        """Templates that bind ``discount.code`` for a step whose journey gives none with these settings (no
        ``discount_code``, a cart step before ``discount_from_step``, a COD prepaid offer without
        ``prepaid_discount_code``): every such message is skipped as ``missing_value``. Every journey that
        says which steps carry one (``discount_steps(config)``, and ``discount_setting`` when the code is
        not ``discount_code``) is checked. Warned, not refused: it loaded before."""
        from connector.journeys.registry import journeys

        known = journeys()
        out: list[str] = []
        for i, tpl in enumerate(self.templates):  # type: ignore[attr-defined]
            if "discount.code" not in (*tpl.body, *(b.suffix for b in tpl.buttons)):
                continue
            name, step = tpl.step.split(".", 1)
            cfg = self.enabled_journeys().get(name)
            journey = known.get(name)
            steps = getattr(journey, "discount_steps", None)
            if cfg is None or steps is None or step in (given := steps(cfg)):
                continue
            setting = getattr(journey, "discount_setting", "discount_code")
            if not getattr(cfg, setting, None):
                why = f"it has no {setting}"
            elif hasattr(cfg, "discount_from_step"):
                why = f"its discount_from_step is {cfg.discount_from_step}"
            else:
                why = f"only {', '.join(sorted(given))} carries its {setting}"
            out.append(f"stores[{self.key}].templates[{i}] ({tpl.step}) binds discount.code but journey {name} gives none "  # type: ignore[attr-defined]
                       f"to that step ({why}): each of its messages is skipped as missing_value; set the code or "
                       f"take discount.code out of the template")
        return out

    def enabled_journeys(self) -> dict[str, Any]:
        return {name: cfg for name, cfg in self.journeys.items() if cfg.enabled}

    @field_validator("templates")
    @classmethod
    def _unique_steps(cls, value: tuple[TemplateSettings, ...]) -> tuple[TemplateSettings, ...]:
        steps = [t.step for t in value]
        dupes = sorted({s for s in steps if steps.count(s) > 1})
        if dupes:
            raise ValueError(f"more than one template for step(s) {', '.join(dupes)}")
        return value

    def template_for(self, step: str) -> TemplateSettings | None:
        return next((t for t in self.templates if t.step == step), None)

    @field_validator("webhook_secret", "previous_webhook_secret")
    @classmethod
    def _signing_secret(cls, value: SecretStr | None) -> SecretStr | None:
        """An HMAC keyed with nothing is one anyone can compute."""
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("is empty (an environment variable set to nothing?): anyone could sign this store's webhooks")
        return value

    @field_validator("key")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not _KEY_RE.match(value):
            raise ValueError("must be lower-case letters, digits, '-' or '_' (it appears in URLs)")
        return value

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (use an IANA name like 'Asia/Kolkata')") from None
        return value

    @field_validator("default_country")
    @classmethod
    def _country(cls, value: str) -> str:
        value = value.upper()
        if value not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"unknown country code {value!r} (use ISO 3166 alpha-2 like 'IN')")
        return value

    @field_validator("currency")
    @classmethod
    def _currency(cls, value: str | None) -> str | None:
        if value is None:
            return None
        code = value.strip().upper()
        if not re.fullmatch(r"[A-Z]{3}", code):
            raise ValueError(f"{value!r} is not a currency code (use ISO 4217 like 'INR')")
        return code

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def display_digits(self) -> str | None:
        """``whatsapp_display_phone_number`` as Meta's webhooks write it: its digits only."""
        digits = "".join(c for c in self.whatsapp_display_phone_number or "" if c.isdigit())
        return digits or None

    def cod_gateway_names(self) -> tuple[str, ...]:
        names = self.cod_gateways if self.cod_gateways is not None else DEFAULT_COD_GATEWAYS[self.platform]  # type: ignore[attr-defined]
        return tuple(n.strip().lower() for n in names)

    def webhook_secrets(self) -> tuple[str, ...]:
        secrets = [self.webhook_secret.get_secret_value()]
        if self.previous_webhook_secret is not None:
            secrets.append(self.previous_webhook_secret.get_secret_value())
        return tuple(secrets)


# A8; products/*: reorder cycles; fulfillments/* (delivery updates) need read_fulfillments
# (adapters/shopify/subscriptions.py TOPIC_SCOPES: what each subscribed topic needs)
DEFAULT_SHOPIFY_SCOPES = ("read_orders", "write_orders", "read_customers", "write_customers", "read_products", "read_fulfillments")


class ShopifyStore(_StoreBase):
    platform: Literal["shopify"]
    shop_domain: str
    client_id: str | None = None
    client_secret: SecretStr | None = Field(
        None, description="the app's client secret: client credentials grant, OAuth install, and it signs the app's webhooks")
    access_token: SecretStr | None = Field(None, description="legacy custom-app token; a token obtained by install takes precedence")
    scopes: tuple[str, ...] = Field(DEFAULT_SHOPIFY_SCOPES, description="asked for by /shopify/install")
    api_version: str = Field("2026-07", pattern=r"^\d{4}-\d{2}$|^unstable$")
    api_base_url: AnyHttpUrl | None = Field(None, description="defaults to https://{shop_domain}")
    pickup_lines: tuple[str, ...] = Field(
        (), description="the shipping-line titles (or codes) of the store's local pickup, exact, any case: Shopify names a "
        "pickup order's shipping line after the pickup location (e.g. 'Main Street Store') and its order webhook carries no "
        "other sign of a pickup; such an order is collected, so it gets no shipped or delivered message")

    @field_validator("pickup_lines")
    @classmethod
    def _pickup_lines(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        """Kept as the normaliser compares them: trimmed, lower case."""
        return tuple(dict.fromkeys(v.strip().lower() for v in value if v.strip()))

    @field_validator("shop_domain")
    @classmethod
    def _myshopify(cls, value: str) -> str:
        value = value.strip().lower()
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]*\.myshopify\.com", value):
            raise ValueError("must be the shop's *.myshopify.com domain")
        return value

    @property
    def admin_base_url(self) -> str:
        return str(self.api_base_url or f"https://{self.shop_domain}").rstrip("/")

    def webhook_secrets(self) -> tuple[str, ...]:
        """Also the client secret: subscriptions the app creates (``storeloop install``) are signed with it."""
        secrets = super().webhook_secrets()
        if self.client_secret is not None and self.client_secret.get_secret_value():
            extra = self.client_secret.get_secret_value()
            if extra not in secrets:
                secrets = (*secrets, extra)
        return secrets


def provider_slug(name: str) -> str:
    """A Shipment Tracking provider's name as its tracking items store it ("DHL US" -> "dhl-us",
    WordPress's ``sanitize_title`` for the names the extension lists)."""
    return re.sub(r"[^a-z0-9_]+", "-", name.strip().lower()).strip("-")


def _home_address(url: AnyHttpUrl) -> AnyHttpUrl:
    """A site's home address, as WordPress's Settings > General writes it: no query, no fragment."""
    if url.query or url.fragment:
        raise ValueError(f"{str(url)!r} is not a site's home address (it has a query or a fragment)")
    return url


class WooCommerceStore(_StoreBase):
    platform: Literal["woocommerce"]
    site_url: AnyHttpUrl
    consumer_key: SecretStr | None = None
    consumer_secret: SecretStr | None = None
    api_base_url: AnyHttpUrl | None = Field(None, description="defaults to {site_url}/wp-json/wc/v3")
    webhook_sources: list[Annotated[AnyHttpUrl, AfterValidator(_home_address)]] = Field(
        default_factory=list,
        description="other home addresses of this very shop, whose deliveries are accepted besides site_url's "
        "(WooCommerce's X-WC-Webhook-Source, WordPress's User-Agent): a multilingual shop whose home address names "
        "its language directory (WPML: https://bloom.example/en/). Any other site is refused, since a staging copy "
        "(https://staging.bloom.example, or a subfolder such as https://bloom.example/staging/) signs with the live "
        "shop's secret; never list a copy here",
    )
    cart_webhook_token: SecretStr | None = Field(
        None,
        description="the secret in the Cart Abandonment Recovery plugin's webhook URL "
        "(/webhooks/woocommerce/{key}/carts/{token}); unset: that endpoint answers 401",
    )

    tracking_links: dict[str, str] = Field(
        default_factory=dict,
        description="links of the Shipment Tracking extension's predefined providers, by provider name, as the "
        "store's public /wp-json/wc-shipment-tracking/v3/shipment-trackings/providers lists them "
        "(%1$s the tracking number, %2$s the postcode, %3$s the country; or Advanced Shipment Tracking's "
        "%number%, %postal_code%, %country_code%), or an AfterShip courier slug's; an order's tracking item "
        "names only its provider, so without this its 'shipped' message has no link (AfterShip's: the "
        "plugin's track.aftership.com page)",
    )

    @field_validator("tracking_links")
    @classmethod
    def _tracking_links(cls, value: dict[str, str]) -> dict[str, str]:
        links: dict[str, str] = {}
        for name, url in value.items():
            if not provider_slug(name):
                raise ValueError(f"provider name {name!r} is empty")
            if not re.match(r"https?://[^\s/]+", url.strip()):
                raise ValueError(f"link of {name!r} must be an http(s) URL, got {url!r}")
            links[name.strip()] = url.strip()
        return links

    def tracking_provider(self, stored: str) -> tuple[str, str] | None:
        """The configured (name, link format) of the provider an order's tracking item names, which
        stores it as a slug ("dhl-us") or, written through the REST API, as the name ("DHL US")."""
        slug = provider_slug(stored)
        return next(((name, url) for name, url in self.tracking_links.items() if provider_slug(name) == slug), None)

    shipping_statuses: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_SHIPPING_STATUSES),
        description="order statuses (core 'completed' and those shipping plugins add) and what each says about the "
        "parcel: " + " / ".join(SHIPPING_MEANINGS) + "; merged over the defaults (completed, shipped, dispatched, "
        "in-transit = shipped; out-for-delivery; delivered; failed-delivery, rto = failed_delivery). An order in one "
        "has left: a COD run stops asking, and no cancel or status write-back touches it")
    checkout_url: AnyHttpUrl | None = Field(
        None, description="the store's checkout page when it is not {site_url}/checkout/ (renamed or translated): the "
        "order-status and pay links are built on it when an order does not carry its own pay link")

    @field_validator("shipping_statuses", mode="before")
    @classmethod
    def _shipping_statuses(cls, value: Any) -> dict[str, str]:
        """The store's statuses over the defaults, as an order's ``status`` reads (no ``wc-``, lower case)."""
        if not isinstance(value, dict):
            raise ValueError("must be a table of status = meaning, e.g. { dispatched = \"shipped\" }")
        merged = dict(DEFAULT_SHIPPING_STATUSES)
        for raw, meaning in value.items():
            status = str(raw).strip().lower().removeprefix("wc-")
            if not re.fullmatch(r"[a-z0-9_-]{1,20}", status):
                raise ValueError(f"{raw!r} is not a WooCommerce status (a slug like 'dispatched', at most 20 characters)")
            if status in _NOT_SHIPPING:
                raise ValueError(f"{raw!r} is WooCommerce's own status of an order that has not shipped; it cannot mean {meaning!r}")
            if meaning not in SHIPPING_MEANINGS:
                raise ValueError(f"{raw!r} = {meaning!r}: the meaning must be one of {', '.join(SHIPPING_MEANINGS)}")
            merged[status] = meaning
        return merged

    @field_validator("cart_webhook_token")
    @classmethod
    def _url_secret(cls, value: SecretStr | None) -> SecretStr | None:
        """It travels in a URL path with no signature beside it: long, random and URL-safe."""
        if value is None:
            return None
        token = value.get_secret_value()
        if len(token) < 24:
            raise ValueError("must be at least 24 characters (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)")
        if not re.fullmatch(r"[A-Za-z0-9_-]+", token):
            raise ValueError("may contain only letters, digits, '-' and '_' (it is part of a URL)")
        return value

    @property
    def rest_base_url(self) -> str:
        return str(self.api_base_url or f"{str(self.site_url).rstrip('/')}/wp-json/wc/v3").rstrip("/")


StoreSettings = Annotated[ShopifyStore | WooCommerceStore, Field(discriminator="platform")]


class Settings(_Settings):
    server: ServerSettings = ServerSettings()
    database: DatabaseSettings = DatabaseSettings()
    worker: WorkerSettings = WorkerSettings()
    whatsapp: WhatsAppSettings = WhatsAppSettings()
    stores: tuple[StoreSettings, ...] = ()

    @model_validator(mode="after")
    def _unique(self) -> "Settings":
        """Each problem at the store that repeats what an earlier store has (``stores[1].key``)."""
        problems: list[tuple[str, str]] = []
        for label, value_of in (
            ("key", lambda s: s.key),
            ("shop_domain", lambda s: s.shop_domain if isinstance(s, ShopifyStore) else None),
            ("whatsapp_phone_number_id", lambda s: s.whatsapp_phone_number_id or None),
            ("whatsapp_display_phone_number", lambda s: s.display_digits),
        ):
            seen: dict[str, int] = {}
            for i, store in enumerate(self.stores):
                value = value_of(store)
                if value is None:
                    continue
                if value in seen:
                    problems.append((f"stores[{i}].{label}", f"{value!r} is used by more than one store (also stores[{seen[value]}])"))
                seen.setdefault(value, i)
        problems += self._shared_webhook_secrets()
        everyone = self.server.admin_token.get_secret_value() if self.server.admin_token is not None else None
        owners: dict[str, str] = {}
        for i, store in enumerate(self.stores):  # one token, one scope: a shared token would open the wrong store
            if store.admin_token is None:
                continue
            token, where = store.admin_token.get_secret_value(), f"stores[{i}].admin_token"
            if not token:
                problems.append((where, "is empty (leave it out instead)"))
            elif token == everyone or token in owners:
                problems.append((where, f"the admin_token of store {store.key!r} is also "
                                 f"{'server.admin_token' if token == everyone else 'the admin_token of store ' + repr(owners[token])}"
                                 " (one token, one scope: give the store a token of its own)"))
            owners.setdefault(token, store.key)
        if problems:
            raise Problems(problems)
        return self

    def _shared_webhook_secrets(self) -> list[tuple[str, str]]:
        """A WooCommerce store's webhook secret is typed into that store's own admin, so whoever runs it
        knows it: shared with another store, it signs webhooks into that store's data. Shopify stores
        may share one (an app signs every shop's webhooks with its client secret, which no shop sees)."""
        problems: list[tuple[str, str]] = []
        first: dict[str, tuple[int, ShopifyStore | WooCommerceStore]] = {}
        for i, store in enumerate(self.stores):
            for field in ("webhook_secret", "previous_webhook_secret"):
                secret = getattr(store, field)
                if secret is None:
                    continue
                seen = first.setdefault(secret.get_secret_value(), (i, store))
                if seen[0] != i and "woocommerce" in (store.platform, seen[1].platform):
                    problems.append((f"stores[{i}].{field}", f"is also a webhook secret of store {seen[1].key!r}: whoever runs "
                                     "one store could sign webhooks as the other (give each WooCommerce store a secret of its own)"))
        return problems

    def warnings(self) -> list[str]:
        """Every store's ``warnings``: settings that load but work against each other."""
        return [w for s in self.stores for w in s.warnings()]

    def store(self, key: str) -> ShopifyStore | WooCommerceStore:
        for s in self.stores:
            if s.key == key:
                return s
        raise KeyError(key)

    def summary(self) -> dict[str, Any]:
        """What ``check-config`` prints: every setting, secrets shown only as set / not set."""

        def scrub(value: Any) -> Any:
            if isinstance(value, SecretStr):
                return "<set>" if value.get_secret_value() else "<empty>"
            if isinstance(value, BaseModel):
                return {k: scrub(getattr(value, k)) for k in type(value).model_fields}
            if isinstance(value, (list, tuple)):
                return [scrub(v) for v in value]
            if value is None:
                return None
            if isinstance(value, (str, int, float, bool)):
                return value
            return str(value)

        out = scrub(self)
        out["database"]["url"] = redact_url(self.database.url)
        out["whatsapp"]["mode"] = "dry-run (no access token)" if self.whatsapp.dry_run else "live"
        return out


def redact_url(url: str) -> str:
    """Hide a password in a database URL."""
    return re.sub(r"(://[^:/@]+:)[^@]+@", r"\1***@", url)


def _resolve_env(node: Any, path: str, problems: list[str], environ: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {k: _resolve_env(v, f"{path}.{k}" if path else k, problems, environ) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve_env(v, f"{path}[{i}]", problems, environ) for i, v in enumerate(node)]
    if isinstance(node, str) and node.startswith(ENV_PREFIX):
        name = node[len(ENV_PREFIX) :]
        if not name.strip():
            problems.append(f"{path}: 'env:' names no environment variable (write env:NAME)")
            return None
        if name not in environ:
            problems.append(f"{path}: environment variable {name} is not set")
            return None
        return FromEnv(environ[name])  # text: may stand for a number (``toml_values``)
    return node


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("shopify", "woocommerce") and out.endswith("]"):
            continue  # the discriminator's branch name adds nothing for the reader
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _not_text(err: Any) -> str | None:
    """Text written as a TOML number or boolean (an id pasted without quotes), in words; the value is
    never quoted (it may be a secret)."""
    value = err.get("input")
    if err["type"] != "string_type" or not isinstance(value, (bool, int, float)):
        return None
    return f"is written as {'true or false' if isinstance(value, bool) else 'a number'}, but it is text: write it in quotes"


def _described(path: str, err: Any) -> list[str]:
    """One pydantic error as problem lines at the setting's own key path, in words."""
    kind, ctx = err["type"], err.get("ctx") or {}
    if isinstance(ctx.get("error"), Problems):
        top = path == "(top level)"
        return [f"{where if top else path + '.' + where if where else path}: {what}" for where, what in ctx["error"].located]
    if kind == "extra_forbidden":
        return [f"{path}: unknown key (typo?)"]
    if kind == "union_tag_not_found":
        return [f"{path}.{ctx.get('discriminator', 'platform').strip(chr(39))}: missing (shopify or woocommerce)"]
    if kind == "union_tag_invalid":
        return [f"{path}.{ctx.get('discriminator', 'platform').strip(chr(39))}: {ctx.get('tag')!r} is not shopify or woocommerce"]
    if (not_text := _not_text(err)) is not None:
        return [f"{path}: {not_text}"]
    if path.endswith(".[key]"):  # a table's name that is not one of those it may have (stages)
        return [f"{path.removesuffix('.[key]')}: not a {path.split('.')[-3].removesuffix('s')}: {err['msg']}"]
    return [f"{path}: {err['msg'].removeprefix('Value error, ')}"]


def parse_settings(data: dict[str, Any], environ: dict[str, str] | None = None) -> Settings:
    problems: list[str] = []
    resolved = _resolve_env(data, "", problems, dict(os.environ) if environ is None else environ)
    try:
        settings = Settings.model_validate(resolved)
    except ValidationError as exc:
        unset = {p.split(":", 1)[0] for p in problems}  # already reported as a missing env var
        for err in exc.errors(include_url=False):  # the input only for its kind (``_not_text``): never shown
            path = _loc(tuple(err["loc"]))
            if path in unset:
                continue
            problems.extend(_described(path, err))
        raise ConfigError(problems) from None
    if problems:
        raise ConfigError(problems)
    return settings


def load_settings(path: str | Path, environ: dict[str, str] | None = None) -> Settings:
    """Read and validate a TOML file; raises ``ConfigError`` listing every problem."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read ({exc.strerror})"]) from None
    try:
        text = raw.decode("utf-8")
        data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: not valid TOML ({exc})"]) from None
    try:
        return parse_settings(data, environ)
    except ConfigError as exc:
        raise ConfigError(exc.problems, problem_lines(exc.problems, text)) from None
