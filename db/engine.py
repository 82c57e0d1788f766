"""Engine and session factory; one engine per process, built from a plain URL."""

from __future__ import annotations

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker


def make_engine(url: str, *, pool_size: int = 5) -> Engine:
    # No pre-ping: it costs a round trip per checkout on the hot path. A connection that a
    # server restart broke raises once, SQLAlchemy drops the whole pool, and the task retries.
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
