"""Single-use install nonces (``oauth_states``): Shopify's OAuth ``state`` and the path secret
of a WooCommerce wc-auth callback.

A nonce is consumed by one conditional UPDATE (``used_at IS NULL`` and young enough), so two
requests racing with the same nonce cannot both win, on SQLite and PostgreSQL alike.

At most ``MAX_OUTSTANDING`` unused nonces are kept per store: making one more drops the
oldest, so however often a flow is started (a replayed signed install URL, a script) the table
stays small; only a merchant who started that many flows since loses the earliest one.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

from sqlalchemy import delete, func, insert, select, update

from connector.storage.db import Database
from connector.storage.models import OAuthState

NONCE_TTL = timedelta(minutes=15)  # the merchant approves within minutes; a stale state is refused
KEEP_USED = timedelta(days=1)  # rows older than this are purged when a new nonce is made
MAX_OUTSTANDING = 20  # unused nonces kept per store; the oldest goes when another is made


def new_nonce(db: Database, store_key: str, shop: str, now: datetime) -> str:
    nonce = secrets.token_urlsafe(32)
    with db.write_lock(), db.engine.begin() as conn:
        conn.execute(delete(OAuthState).where(OAuthState.created_at < now - KEEP_USED))
        unused = (OAuthState.store_key == store_key, OAuthState.used_at.is_(None))
        outstanding = conn.execute(select(func.count()).select_from(OAuthState).where(*unused)).scalar_one()
        if outstanding >= MAX_OUTSTANDING:
            oldest = select(OAuthState.nonce).where(*unused).order_by(OAuthState.created_at, OAuthState.nonce) \
                .limit(outstanding - MAX_OUTSTANDING + 1)
            conn.execute(delete(OAuthState).where(OAuthState.nonce.in_(oldest.scalar_subquery())))
        conn.execute(insert(OAuthState).values(nonce=nonce, store_key=store_key, shop=shop, created_at=now, used_at=None))
    return nonce


def consume_nonce(db: Database, nonce: str, now: datetime, *, ttl: timedelta = NONCE_TTL) -> tuple[str, str] | None:
    """``(store_key, shop)`` the first time a live nonce is presented; None if unknown, used or expired."""
    if not nonce or len(nonce) > 64:
        return None
    with db.write_lock(), db.engine.begin() as conn:
        won = conn.execute(
            update(OAuthState)
            .where(OAuthState.nonce == nonce, OAuthState.used_at.is_(None), OAuthState.created_at >= now - ttl)
            .values(used_at=now)
        ).rowcount
        if won != 1:
            return None
        row = conn.execute(select(OAuthState.store_key, OAuthState.shop).where(OAuthState.nonce == nonce)).one()
        return row.store_key, row.shop


def peek_nonce(db: Database, nonce: str, now: datetime, *, ttl: timedelta = NONCE_TTL) -> tuple[str, str] | None:
    """Like ``consume_nonce`` without using it up (to check it belongs to the shop first)."""
    if not nonce or len(nonce) > 64:
        return None
    with db.engine.connect() as conn:
        row = conn.execute(
            select(OAuthState.store_key, OAuthState.shop)
            .where(OAuthState.nonce == nonce, OAuthState.used_at.is_(None), OAuthState.created_at >= now - ttl)
        ).first()
    return (row.store_key, row.shop) if row is not None else None
