"""The registry's tables: SQLAlchemy 2 declarative models on one ``Base``.

Every datetime is timezone-aware UTC in Python.  PostgreSQL stores
``timestamptz``; SQLite has no time zones, so ``UTCDateTime`` stores naive UTC
there and hands back aware values.  Identifiers are at most 64 characters
(docs/contracts.md).  ``sites.state`` duplicates the last lifecycle event's
``to_state`` so that lists and filters need no history scan; only
``twin.lifecycle`` and the importer write it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    event,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from core.states import State
from core.timeutil import utcnow

__all__ = [
    "OPEN_FLAG_INDEX",
    "ApiToken",
    "AuditEntry",
    "Base",
    "Bill",
    "Cell",
    "Feeder",
    "Flag",
    "FlagAction",
    "FlagReview",
    "Interferer",
    "LifecycleEvent",
    "LiveSiteState",
    "MaintenanceWindow",
    "Meter",
    "NotifyOutbox",
    "NotifyState",
    "Reservation",
    "ReservationChange",
    "Site",
    "Substation",
    "SupplyChange",
    "Tariff",
    "UTCDateTime",
    "User",
    "WebSession",
    "utcnow",
]

ID = String(64)
OPEN_FLAG_INDEX = "uq_flags_open_condition"


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend; naive values are refused."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the registry stores UTC-aware times")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


JSONType = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    """Declarative base of every registry table."""

    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime()}
    # Every model here is mapped to a Table (never a join or a select), so say so to the checker.
    __table__: ClassVar[Table]


class Site(Base):
    """A base-station site: identity, attributes (docs/contracts.md section 2) and current state."""

    __tablename__ = "sites"
    site_id: Mapped[str] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    lat: Mapped[float] = mapped_column(Float)
    lon: Mapped[float] = mapped_column(Float)
    county: Mapped[str] = mapped_column(String(100), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    supply: Mapped[str] = mapped_column(String(16))
    region: Mapped[str] = mapped_column(String(100))
    customer_class: Mapped[str] = mapped_column(String(100))
    district: Mapped[str | None] = mapped_column(String(100))
    owner: Mapped[str | None] = mapped_column(String(200))
    operators: Mapped[str | None] = mapped_column(String(200))  # ';'-separated, as in the CSV
    planned_year: Mapped[int | None] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(32), index=True, default=State.PLANNED.value)
    replaces_site_id: Mapped[str | None] = mapped_column(ID, index=True)
    address: Mapped[str | None] = mapped_column(String(300))  # postal address, for reports
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    @property
    def operator_list(self) -> list[str]:
        return [o for o in (self.operators or "").split(";") if o]


class LifecycleEvent(Base):
    """One lifecycle move: the history from which ``state_at`` is answered."""

    __tablename__ = "lifecycle_events"
    __table_args__ = (Index("ix_lifecycle_events_site_at", "site_id", "at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    site_id: Mapped[str] = mapped_column(ID, ForeignKey("sites.site_id", ondelete="CASCADE"))
    from_state: Mapped[str | None] = mapped_column(String(32))
    to_state: Mapped[str] = mapped_column(String(32))
    verb: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(100))
    note: Mapped[str | None] = mapped_column(Text)
    reason: Mapped[str | None] = mapped_column(Text)  # why a site was blocked

    def as_dict(self) -> dict[str, Any]:
        return {"at": self.at, "from_state": self.from_state, "to_state": self.to_state,
                "verb": self.verb, "actor": self.actor, "note": self.note, "reason": self.reason}


class Meter(Base):
    """An electricity meter, linked to the site it was first seen reporting for."""

    __tablename__ = "meters"
    meter_id: Mapped[str] = mapped_column(ID, primary_key=True)
    site_id: Mapped[str] = mapped_column(ID, index=True)
    first_seen: Mapped[datetime]
    last_seen: Mapped[datetime]


class Cell(Base):
    """A radio cell and its band, linked to its site from telemetry."""

    __tablename__ = "cells"
    cell_id: Mapped[str] = mapped_column(ID, primary_key=True)
    site_id: Mapped[str] = mapped_column(ID, index=True)
    band: Mapped[str] = mapped_column(String(8))
    first_seen: Mapped[datetime]
    last_seen: Mapped[datetime]


class Reservation(Base):
    """Grid capacity reserved for a site (reservations.csv)."""

    __tablename__ = "reservations"
    site_id: Mapped[str] = mapped_column(ID, ForeignKey("sites.site_id", ondelete="CASCADE"),
                                         primary_key=True)
    declared_kw: Mapped[float] = mapped_column(Float)
    reserved_kw: Mapped[float] = mapped_column(Float)
    feeder: Mapped[str] = mapped_column(String(100), index=True)
    substation: Mapped[str] = mapped_column(String(100), index=True)
    status: Mapped[str] = mapped_column(String(16))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class ReservationChange(Base):
    """One row of a site's reservation history: the values in force from ``effective_from``.

    ``reservations`` holds the row in force now (a copy, for lists and rules); the history
    answers "what was reserved then" for backfills and past reports (``twin.history``).
    ``dated`` is False for a row imported without a date: if it is a site's first row, it
    is assumed to have held before it too (the reservation predates the registry).
    """

    __tablename__ = "reservation_changes"
    __table_args__ = (UniqueConstraint("site_id", "effective_from", name="uq_reservation_changes"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    site_id: Mapped[str] = mapped_column(ID, ForeignKey("sites.site_id", ondelete="CASCADE"),
                                         index=True)
    effective_from: Mapped[datetime]
    dated: Mapped[bool] = mapped_column(Boolean, default=True)
    declared_kw: Mapped[float] = mapped_column(Float)
    reserved_kw: Mapped[float] = mapped_column(Float)
    feeder: Mapped[str] = mapped_column(String(100))
    substation: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16))
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)


class SupplyChange(Base):
    """One row of a site's supply history (``direct`` or ``transfer``) from ``effective_from``.

    ``sites.supply`` is the value in force now.  Before a site's first row its first value
    is assumed (a site always has some supply); a transfer row followed by a direct one is
    a conversion (转供电改直供电).
    """

    __tablename__ = "supply_changes"
    __table_args__ = (UniqueConstraint("site_id", "effective_from", name="uq_supply_changes"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    site_id: Mapped[str] = mapped_column(ID, ForeignKey("sites.site_id", ondelete="CASCADE"),
                                         index=True)
    effective_from: Mapped[datetime]
    supply: Mapped[str] = mapped_column(String(16))
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)


class Feeder(Base):
    """A distribution feeder and its rating (feeders.csv): headroom is rating - coincident peak."""

    __tablename__ = "feeders"
    feeder: Mapped[str] = mapped_column(String(100), primary_key=True)
    substation: Mapped[str] = mapped_column(String(100), index=True)
    rated_kw: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Substation(Base):
    """A substation and its rating (substations.csv)."""

    __tablename__ = "substations"
    substation: Mapped[str] = mapped_column(String(100), primary_key=True)
    rated_kw: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Tariff(Base):
    """A regulated catalogue price, valid from ``effective_from`` until the next row of its key."""

    __tablename__ = "tariffs"
    __table_args__ = (UniqueConstraint("region", "customer_class", "period", "effective_from",
                                       name="uq_tariffs_key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    region: Mapped[str] = mapped_column(String(100))
    customer_class: Mapped[str] = mapped_column(String(100))
    period: Mapped[str] = mapped_column(String(16), default="flat", server_default="flat")
    hours: Mapped[str | None] = mapped_column(String(200))  # e.g. "8-11;18-21" for peak
    effective_from: Mapped[datetime]
    price_cny_per_kwh: Mapped[float] = mapped_column(Float)


class Bill(Base):
    """A transfer-power bill a landlord issued for a site (bills.csv)."""

    __tablename__ = "bills"
    bill_id: Mapped[str] = mapped_column(ID, primary_key=True)
    site_id: Mapped[str] = mapped_column(ID, ForeignKey("sites.site_id", ondelete="CASCADE"),
                                         index=True)
    supplier_id: Mapped[str] = mapped_column(ID, index=True)
    supplier_name: Mapped[str | None] = mapped_column(String(200))
    # The landlord's identity for a report handed to the regulator (revision 0002).
    supplier_credit_code: Mapped[str | None] = mapped_column(String(18))  # 统一社会信用代码
    supplier_address: Mapped[str | None] = mapped_column(String(300))
    supplier_contact: Mapped[str | None] = mapped_column(String(200))
    meter_id: Mapped[str | None] = mapped_column(ID)
    period_start: Mapped[datetime]
    period_end: Mapped[datetime]
    billed_kwh: Mapped[float] = mapped_column(Float)
    amount_cny: Mapped[float] = mapped_column(Float)


class LiveSiteState(Base):
    """The latest telemetry per site, flushed from ``twin.live.LiveState``.

    Sites seen in telemetry but absent from the registry are kept with
    ``registered = false`` (``sitetwin sites list --unregistered``).
    """

    __tablename__ = "live_state"
    site_id: Mapped[str] = mapped_column(ID, primary_key=True)
    last_seen: Mapped[datetime]
    mains_ok: Mapped[bool | None] = mapped_column(Boolean)
    on_battery: Mapped[bool | None] = mapped_column(Boolean)
    battery_soc_pct: Mapped[float | None] = mapped_column(Float)
    power_kw: Mapped[float | None] = mapped_column(Float)
    cabinet_temp_c: Mapped[float | None] = mapped_column(Float)
    energy_kwh: Mapped[float | None] = mapped_column(Float)
    registered: Mapped[bool] = mapped_column(Boolean, default=False, index=True)


class Flag(Base):
    """A finding of a rule, with its evidence (docs/contracts.md section 4); written by ``rules``."""

    __tablename__ = "flags"
    # At most one open flag per rule and condition, whoever writes (revision 0004): two
    # ``rules run`` at once used to open one flag each for the same condition.
    __table_args__ = (Index(OPEN_FLAG_INDEX, "rule", "dedup_key", unique=True,
                            postgresql_where=text("status = 'open'"),
                            sqlite_where=text("status = 'open'")),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    rule: Mapped[str] = mapped_column(String(64))
    site_id: Mapped[str | None] = mapped_column(ID, index=True)
    cell_id: Mapped[str | None] = mapped_column(ID)
    bill_id: Mapped[str | None] = mapped_column(ID)
    supplier_id: Mapped[str | None] = mapped_column(ID)
    severity: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), index=True)
    opened_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    resolved_at: Mapped[datetime | None]
    clear_since: Mapped[datetime | None]
    window_start: Mapped[datetime]
    window_end: Mapped[datetime]
    summary: Mapped[str] = mapped_column(Text)
    evidence: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    dedup_key: Mapped[str] = mapped_column(String(300), index=True)
    # An operator's acknowledgement and assignment of an operational flag (revision 0005).
    acknowledged_by: Mapped[str | None] = mapped_column(String(100))
    acknowledged_at: Mapped[datetime | None]
    assignee: Mapped[str | None] = mapped_column(String(100))


class FlagReview(Base):
    """A person's decision on a flag (confirmed or dismissed)."""

    __tablename__ = "flag_reviews"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    flag_id: Mapped[int] = mapped_column(ForeignKey("flags.id", ondelete="CASCADE"), index=True)
    decision: Mapped[str] = mapped_column(String(16))
    reviewed_by: Mapped[str] = mapped_column(String(100))
    reviewed_at: Mapped[datetime]
    note: Mapped[str | None] = mapped_column(Text)


class FlagAction(Base):
    """A person taking a flag on: ``ack`` (acknowledged, ``actor``) or ``assign`` (``value``)."""

    __tablename__ = "flag_actions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    flag_id: Mapped[int] = mapped_column(ForeignKey("flags.id", ondelete="CASCADE"), index=True)
    action: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(100))
    value: Mapped[str | None] = mapped_column(String(100))
    at: Mapped[datetime]
    note: Mapped[str | None] = mapped_column(Text)


class NotifyState(Base):
    """What the notifier last announced of a flag, so each change is announced once."""

    __tablename__ = "notify_state"
    flag_id: Mapped[int] = mapped_column(ForeignKey("flags.id", ondelete="CASCADE"), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    severity: Mapped[str] = mapped_column(String(16))  # the highest announced while it was open
    seq: Mapped[int] = mapped_column(Integer, default=0)  # events announced so far
    notified_at: Mapped[datetime]


class NotifyOutbox(Base):
    """One notification of one flag event on one channel: pending, sent or dead (dead-lettered)."""

    __tablename__ = "notify_outbox"
    __table_args__ = (UniqueConstraint("flag_id", "seq", "channel", name="uq_notify_outbox_event"),
                      Index("ix_notify_outbox_due", "status", "due_at"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    flag_id: Mapped[int] = mapped_column(ForeignKey("flags.id", ondelete="CASCADE"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    event: Mapped[str] = mapped_column(String(16))
    channel: Mapped[str] = mapped_column(String(64))
    severity: Mapped[str] = mapped_column(String(16))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime]
    due_at: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime | None]
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claimed_until: Mapped[datetime | None]
class Interferer(Base):
    """A known, authorised interferer (公用干扰器: an exam-hall jammer), from interferers.csv.

    ``bands``: ``;``-separated band names (empty: every band).  ``windows``: when it may
    transmit, as ``;``-separated ``start/end`` instants, stored in UTC (``...Z/...Z``); the
    file gives them in local time.  An interference finding inside its radius, in one of
    its bands and windows, is marked authorised rather than escalated (revision 0007).
    """

    __tablename__ = "interferers"
    interferer_id: Mapped[str] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    lat: Mapped[float] = mapped_column(Float)
    lon: Mapped[float] = mapped_column(Float)
    radius_m: Mapped[float] = mapped_column(Float)
    bands: Mapped[str | None] = mapped_column(String(300))
    windows: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class MaintenanceWindow(Base):
    """A booked maintenance visit to a site (maintenance.csv): its door may be open then.

    ``start`` included, ``end`` excluded, UTC; a door open outside every window of its
    site is a ``door_open`` flag (revision 0007).
    """

    __tablename__ = "maintenance_windows"
    site_id: Mapped[str] = mapped_column(ID, ForeignKey("sites.site_id", ondelete="CASCADE"),
                                         primary_key=True)
    start: Mapped[datetime] = mapped_column(primary_key=True)
    end: Mapped[datetime]
    ticket: Mapped[str | None] = mapped_column(String(100))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


# --- Accounts and audit (revision 0005) -------------------------------------------------------

class User(Base):
    """A person's local account: one role, an argon2id password hash, a preferred language."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str | None] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(200))
    lang: Mapped[str | None] = mapped_column(String(8))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiToken(Base):
    """A machine's bearer token: only its SHA-256 is stored; the token is shown once."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))  # the first characters, to tell tokens apart
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class WebSession(Base):
    """A browser's login: the cookie holds a random id, the table its SHA-256 and CSRF token."""

    __tablename__ = "web_sessions"
    id_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    client_ip: Mapped[str | None] = mapped_column(String(64))


class AuditEntry(Base):
    """One line of the append-only audit log: who did what, when, from where, before and after.

    UPDATE and DELETE are refused by triggers (``twin.audit``), not only by convention.
    """

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_target", "target_type", "target_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(index=True)
    actor: Mapped[str] = mapped_column(String(64))
    client_ip: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64), index=True)
    target_type: Mapped[str] = mapped_column(String(32))
    target_id: Mapped[str | None] = mapped_column(String(200))
    before: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    note: Mapped[str | None] = mapped_column(Text)


# The audit log refuses UPDATE and DELETE in the database itself, so a bug or a hand-typed
# statement cannot rewrite history; revision 0005 installs the same triggers on old registries.
AUDIT_APPEND_ONLY_DDL: dict[str, tuple[str, ...]] = {
    "sqlite": (
        "CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log"
        " BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END",
        "CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log"
        " BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END",
    ),
    "postgresql": (
        "CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN RAISE EXCEPTION 'audit_log is append-only'; END $$",
        "CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log"
        " FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()",
        "CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log"
        " FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()",
    ),
}


def _audit_append_only(target: Any, connection: Any, **_kw: Any) -> None:
    from sqlalchemy import text

    for statement in AUDIT_APPEND_ONLY_DDL.get(connection.dialect.name, ()):
        connection.execute(text(statement))


event.listen(AuditEntry.__table__, "after_create", _audit_append_only)
