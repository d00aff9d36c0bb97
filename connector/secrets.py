"""Secrets at rest: what ``storeloop install`` obtains (tokens, keys, webhook secrets) is kept
Fernet-encrypted in ``store_credentials``; never in plain text.

The key comes from the environment: ``STORELOOP_SECRET_KEYS`` holds one or more Fernet keys
separated by commas, **newest first**. ``MultiFernet`` encrypts with the first key and
decrypts with any of them, so a key rotation is:

1. put a new key in front: ``STORELOOP_SECRET_KEYS=<new>,<old>`` (restart the server);
2. ``storeloop rotate-secrets`` re-encrypts every stored value with the new key;
3. drop the old key: ``STORELOOP_SECRET_KEYS=<new>``.

Without a key, nothing is stored (install refuses with ``SecretsUnavailable``) and stored
values cannot be read. A value whose key was dropped before step 2 cannot be decrypted:
that is reported, never papered over. Values never appear in a repr, an exception or a log.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import Connection, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from connector.errors import StoreloopError
from connector.storage.db import Database
from connector.storage.models import StoreCredential

SECRET_KEYS_ENV = "STORELOOP_SECRET_KEYS"

SHOPIFY_ACCESS_TOKEN = "shopify_access_token"
SHOPIFY_REFRESH_TOKEN = "shopify_refresh_token"
WOO_CONSUMER_KEY = "woo_consumer_key"
WOO_CONSUMER_SECRET = "woo_consumer_secret"
WOO_WEBHOOK_SECRET = "woo_webhook_secret"
# the secret ``--new-secret`` replaced, still accepted: ``expires_at`` None while some webhook may still sign with it
# (the rotation is not confirmed on every webhook), else the end of the grace period for deliveries already on their way
WOO_PREVIOUS_WEBHOOK_SECRET = "woo_webhook_secret_previous"
KINDS = (SHOPIFY_ACCESS_TOKEN, SHOPIFY_REFRESH_TOKEN, WOO_CONSUMER_KEY, WOO_CONSUMER_SECRET, WOO_WEBHOOK_SECRET,
         WOO_PREVIOUS_WEBHOOK_SECRET)

HOW_TO = (
    f"set {SECRET_KEYS_ENV} to a Fernet key (generate one with `storeloop new-secret-key`); "
    "install never stores a token in plain text"
)


class SecretsUnavailable(StoreloopError):
    """No usable key: install refuses, and stored credentials cannot be read."""


def generate_key() -> str:
    return Fernet.generate_key().decode("ascii")


class SecretBox:
    """Encrypt / decrypt short secrets with the configured keys (first key encrypts)."""

    def __init__(self, keys: Sequence[str]):
        fernets = []
        for i, key in enumerate(k.strip() for k in keys):
            if not key:
                continue
            try:
                fernets.append(Fernet(key.encode("ascii")))
            except (ValueError, UnicodeEncodeError):
                raise SecretsUnavailable(
                    f"{SECRET_KEYS_ENV}: key #{i + 1} is not a Fernet key (32 url-safe base64-encoded bytes); "
                    "generate one with `storeloop new-secret-key`"
                ) from None
        if not fernets:
            raise SecretsUnavailable(f"{SECRET_KEYS_ENV} is not set: {HOW_TO}")
        self._multi = MultiFernet(fernets)
        self.key_count = len(fernets)

    def __repr__(self) -> str:  # never the keys
        return f"SecretBox({self.key_count} key(s))"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "SecretBox | None":
        """The box from ``STORELOOP_SECRET_KEYS``; None when unset or empty (a bad key still raises)."""
        raw = (os.environ if environ is None else environ).get(SECRET_KEYS_ENV, "")
        if not raw.strip():
            return None
        return cls(raw.split(","))

    @classmethod
    def require(cls, environ: Mapping[str, str] | None = None) -> "SecretBox":
        box = cls.from_env(environ)
        if box is None:
            raise SecretsUnavailable(f"{SECRET_KEYS_ENV} is not set: {HOW_TO}")
        return box

    def encrypt(self, plain: str) -> str:
        return self._multi.encrypt(plain.encode("utf-8")).decode("ascii")

    def decrypt(self, token: str) -> str:
        try:
            return self._multi.decrypt(token.encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeError):
            raise SecretsUnavailable(
                "a stored credential cannot be decrypted with the keys in "
                f"{SECRET_KEYS_ENV} (was a key dropped before `storeloop rotate-secrets` ran?)"
            ) from None

    def rotate(self, token: str) -> str:
        """Re-encrypt with the first key (any configured key may have encrypted it)."""
        try:
            return self._multi.rotate(token.encode("ascii")).decode("ascii")
        except (InvalidToken, UnicodeError):
            raise SecretsUnavailable(
                f"a stored credential cannot be decrypted with the keys in {SECRET_KEYS_ENV}; "
                "keep the old key in the list until rotate-secrets has run"
            ) from None


@dataclass(frozen=True)
class Credential:
    value: str = field(repr=False)
    expires_at: datetime | None
    updated_at: datetime


def _insert(conn: Connection) -> Any:
    return (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(StoreCredential)


def put_credentials(
    db: Database, box: SecretBox, store_id: int, values: Mapping[str, tuple[str, datetime | None]], now: datetime,
    *, delete_kinds: Iterable[str] = (),
) -> None:
    """Upsert ``kind -> (plain value, expires_at)`` for a store in one transaction (and delete
    ``delete_kinds``, e.g. a refresh token that no longer applies)."""
    for kind in values:
        if kind not in KINDS:
            raise ValueError(f"unknown credential kind {kind!r}")
    rows = [
        {"store_id": store_id, "kind": kind, "value": box.encrypt(plain), "expires_at": expires, "updated_at": now}
        for kind, (plain, expires) in values.items()
    ]
    drop = [k for k in delete_kinds if k not in values]
    with db.write_lock(), db.engine.begin() as conn:
        for row in rows:
            stmt = _insert(conn).values(**row)
            conn.execute(stmt.on_conflict_do_update(
                index_elements=["store_id", "kind"],
                set_={"value": row["value"], "expires_at": row["expires_at"], "updated_at": now},
            ))
        if drop:
            conn.execute(delete(StoreCredential).where(StoreCredential.store_id == store_id, StoreCredential.kind.in_(drop)))


def get_credentials(db: Database, box: SecretBox, store_id: int, kinds: Iterable[str] | None = None) -> dict[str, Credential]:
    stmt = select(StoreCredential.kind, StoreCredential.value, StoreCredential.expires_at, StoreCredential.updated_at).where(
        StoreCredential.store_id == store_id)
    if kinds is not None:
        stmt = stmt.where(StoreCredential.kind.in_(list(kinds)))
    with db.engine.connect() as conn:
        rows = conn.execute(stmt).all()
    return {r.kind: Credential(box.decrypt(r.value), r.expires_at, r.updated_at) for r in rows}


def stored_kinds(db: Database) -> dict[int, set[str]]:
    """store id -> the kinds stored for it (nothing is decrypted)."""
    out: dict[int, set[str]] = {}
    with db.engine.connect() as conn:
        for r in conn.execute(select(StoreCredential.store_id, StoreCredential.kind)):
            out.setdefault(r.store_id, set()).add(r.kind)
    return out


def delete_credentials(db: Database, store_id: int, kinds: Iterable[str] | None = None) -> int:
    stmt = delete(StoreCredential).where(StoreCredential.store_id == store_id)
    if kinds is not None:
        stmt = stmt.where(StoreCredential.kind.in_(list(kinds)))
    with db.write_lock(), db.engine.begin() as conn:
        return conn.execute(stmt).rowcount or 0


def rotate_credentials(db: Database, box: SecretBox) -> int:
    """Re-encrypt every stored value with the first key; returns how many. All or nothing:
    one value no configured key can read aborts the run and changes nothing."""
    with db.write_lock(), db.engine.begin() as conn:
        rows = conn.execute(select(StoreCredential.id, StoreCredential.value)).all()
        fresh = [(r.id, box.rotate(r.value)) for r in rows]
        for row_id, value in fresh:
            conn.execute(update(StoreCredential).where(StoreCredential.id == row_id).values(value=value))
    return len(fresh)


__all__ = [
    "Credential", "HOW_TO", "KINDS", "SECRET_KEYS_ENV", "SHOPIFY_ACCESS_TOKEN", "SHOPIFY_REFRESH_TOKEN", "SecretBox",
    "SecretsUnavailable", "WOO_CONSUMER_KEY", "WOO_CONSUMER_SECRET", "WOO_PREVIOUS_WEBHOOK_SECRET", "WOO_WEBHOOK_SECRET",
    "delete_credentials",
    "generate_key", "get_credentials", "put_credentials", "rotate_credentials", "stored_kinds",
]
