"""The registry database: ``open_store(url)`` creates or upgrades it and hands out sessions.

The URL is a SQLAlchemy URL: ``sqlite:///path/twin.sqlite`` (the default, in
the state directory; nothing to install) or ``postgresql+psycopg://user@host/db``.
SQLite runs in WAL mode with a busy timeout so the collector's live-state
flush and a person's ``sitetwin sites ...`` command can share the file.
SQLAlchemy errors are turned into ``StoreError`` here and nowhere else.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from twin.errors import StoreError
from twin.migrations import upgrade

__all__ = ["Store", "open_store", "upsert_insert"]

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000


def upsert_insert(dialect: str, table: Table) -> postgresql.Insert | sqlite.Insert:
    """An INSERT into ``table`` that takes ``on_conflict_do_update`` on either backend."""
    return postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)


def _sqlite_pragmas(dbapi_conn: Any, _record: object) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


class Store:
    """An open registry: ``engine``, ``sessionmaker`` and the ``session()`` context manager."""

    def __init__(self, engine: Engine, version: str) -> None:
        self.engine = engine
        self.version = version
        self.sessionmaker = sessionmaker(engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits if the block succeeds and rolls back if it raises."""
        session = self.sessionmaker()
        try:
            yield session
            session.commit()
        except SQLAlchemyError as exc:
            session.rollback()
            raise StoreError(f"registry error: {type(exc).__name__}: {_first_line(exc)}") from exc
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def close(self) -> None:
        self.engine.dispose()

    def __repr__(self) -> str:
        return f"Store({self.engine.url.render_as_string(hide_password=True)!r})"


def _first_line(exc: BaseException) -> str:
    return str(getattr(exc, "orig", None) or exc).strip().splitlines()[0][:300]


def open_store(url: str) -> Store:
    """Open the registry at ``url``, creating or upgrading its schema first."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        # The URL may hold a password: never repeat it.
        raise StoreError("twin.url is not a database URL"
                         " (sqlite:///path or postgresql+psycopg://user@host/db)") from None
    kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
    else:
        kwargs["pool_pre_ping"] = True
    try:
        engine = create_engine(parsed, **kwargs)
    except (SQLAlchemyError, ImportError) as exc:
        raise StoreError(f"cannot open registry {parsed.render_as_string(hide_password=True)}:"
                         f" {exc}") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    try:
        with engine.begin() as conn:
            version = upgrade(conn)
    except SQLAlchemyError as exc:
        engine.dispose()
        raise StoreError(f"cannot open registry {parsed.render_as_string(hide_password=True)}:"
                         f" {_first_line(exc)}") from None
    except StoreError:
        engine.dispose()
        raise
    return Store(engine, version)
