"""What the commands share: failing with a message, a short-lived database session."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from sqlalchemy.orm import Session

from moa.console import console
from moa.settings import Settings

ConfigOption = Annotated[Path | None, typer.Option("--config", help="extra moa.toml")]


def fail(message: str) -> typer.Exit:
    console.print(f"[bold red]error:[/] {escape(message)}")  # it may quote the user's input
    return typer.Exit(2)


@contextmanager
def session_for(settings: Settings) -> Iterator[Session]:
    from db.engine import make_engine, make_sessionmaker

    engine = make_engine(settings.effective_database_url, pool_size=1)
    try:
        with make_sessionmaker(engine)() as session:
            yield session
    finally:
        engine.dispose()
