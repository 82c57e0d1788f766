"""Tenants and API keys. A key is shown once; only its SHA-256 is stored."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from db.models import ApiKey, Tenant

KEY_PREFIX = "moa_"


def hash_key(key: str) -> str:
    # Keys are long random strings, so a fast hash is enough: no guessing to slow down.
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, tenant: str) -> str:
    """A new key for ``tenant`` (created if new); returns the key, which is not kept."""
    session.execute(pg_insert(Tenant).values(name=tenant).on_conflict_do_nothing())
    tenant_id = session.scalars(select(Tenant.id).where(Tenant.name == tenant)).one()
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(tenant_id=tenant_id, key_hash=hash_key(key), prefix=key[:12]))
    session.flush()
    return key


def tenant_for_key(session: Session, digest: str) -> str | None:
    """The tenant of a live key, found by its ``hash_key`` digest."""
    query = (
        select(Tenant.name)
        .join(ApiKey, ApiKey.tenant_id == Tenant.id)
        .where(ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None))
    )
    return session.scalars(query).first()
