"""The HTTP API's contract: request and response models (they make ``docs/openapi.json``).

Times are ISO 8601 with an offset (UTC, ``Z``) in answers; in parameters a
value without an offset is local time in ``[time] zone``, as on the command line.
List answers carry ``total``, ``limit``, ``offset`` and ``items``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class Page(_Out, Generic[T]):
    total: int = Field(description="items matching the filters, over all pages")
    limit: int
    offset: int
    items: list[T]


class SiteSummary(_Out):
    site_id: str
    name: str
    county: str
    kind: str
    supply: str
    state: str
    online: bool
    last_seen: datetime | None
    on_battery: bool | None
    battery_soc_pct: float | None
    power_kw: float | None


class LiveState(_Out):
    last_seen: datetime
    online: bool
    age_s: float
    mains_ok: bool | None
    on_battery: bool | None
    battery_soc_pct: float | None
    power_kw: float | None
    cabinet_temp_c: float | None
    energy_kwh: float | None


class LifecycleEventOut(_Out):
    at: datetime
    from_state: str | None
    to_state: str
    verb: str
    actor: str
    note: str | None
    reason: str | None


class ReservationOut(_Out):
    declared_kw: float
    reserved_kw: float
    feeder: str
    substation: str
    status: str


class MeterOut(_Out):
    meter_id: str
    first_seen: datetime
    last_seen: datetime


class CellOut(_Out):
    cell_id: str
    band: str
    first_seen: datetime
    last_seen: datetime


class FlagOut(_Out):
    id: int
    kind: str
    rule: str
    site_id: str | None
    cell_id: str | None
    bill_id: str | None
    supplier_id: str | None
    severity: Literal["info", "warning", "critical"]
    status: Literal["open", "confirmed", "dismissed", "resolved"]
    opened_at: datetime
    updated_at: datetime
    resolved_at: datetime | None
    window_start: datetime
    window_end: datetime
    summary: str
    evidence: dict[str, Any]
    acknowledged_by: str | None = None
    acknowledged_at: datetime | None = None
    assignee: str | None = None


class ReviewOut(_Out):
    decision: Literal["confirmed", "dismissed"]
    reviewed_by: str
    reviewed_at: datetime
    note: str | None


class FlagDetail(FlagOut):
    reviews: list[ReviewOut]


class SiteDetail(_Out):
    site_id: str
    name: str
    lat: float
    lon: float
    county: str
    district: str | None
    kind: str
    supply: str
    region: str
    customer_class: str
    owner: str | None
    operators: list[str]
    planned_year: int | None
    state: str
    replaces_site_id: str | None
    replaced_by: list[str]
    address: str | None = Field(None, description="postal address, where the registry has one")
    created_at: datetime
    updated_at: datetime
    at: datetime | None = Field(None, description="the as-of time asked for with ?at=")
    state_at: str | None = Field(None, description="the lifecycle state at ?at= (null: none yet)")
    history: list[LifecycleEventOut]
    live: LiveState | None
    reservation: ReservationOut | None
    meters: list[MeterOut]
    cells: list[CellOut]
    open_flags: list[FlagOut]


class TransitionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    state: str = Field(description="the target lifecycle state")
    at: str | None = Field(None, description="when it happened (ISO 8601; default now)")
    note: str | None = Field(None, max_length=2000)
    reason: str | None = Field(None, max_length=2000, description="why a site is blocked")


class TransitionOut(_Out):
    site_id: str
    at: datetime
    from_state: str | None
    to_state: str
    verb: str
    actor: str
    note: str | None
    reason: str | None


class ReviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    decision: Literal["confirmed", "dismissed"]
    note: str = Field(min_length=1, max_length=4000, pattern=r"\S",
                      description="why: required, kept in the review trail and the audit log")


class AckIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    note: str | None = Field(None, max_length=2000, description="kept in the audit log")


class AssignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    assignee: str = Field(min_length=1, max_length=100, pattern=r"\S",
                          description="who is to handle the flag")


class ReservationRow(_Out):
    site_id: str
    feeder: str
    substation: str
    declared_kw: float
    reserved_kw: float
    status: str
    updated_at: datetime


class LedgerRow(_Out):
    level: Literal["site", "feeder", "substation"]
    site_id: str | None
    feeder: str | None
    substation: str | None
    state: str | None
    status: str | None
    declared_kw: float | None
    reserved_kw: float | None
    peak_kw: float | None
    peak_at: datetime | None
    headroom_kw: float | None
    utilisation_pct: float | None
    sites: int | None


class Ledger(_Out):
    window_start: datetime
    window_end: datetime
    peaks: Literal["ok", "unavailable"] = Field(
        description="whether InfluxDB gave the peaks (if not, peak and headroom are null)")
    rows: list[LedgerRow] = Field(description="sites, then feeders, then substations")


class TariffRow(_Out):
    region: str
    customer_class: str
    period: str
    hours: str | None
    effective_from: datetime
    price_cny_per_kwh: float


class BillRow(_Out):
    bill_id: str
    site_id: str
    supplier_id: str
    supplier_name: str | None
    meter_id: str | None
    period_start: datetime
    period_end: datetime
    billed_kwh: float
    amount_cny: float


class SupplierRow(_Out):
    supplier_id: str
    total: int
    open: int
    confirmed: int
    dismissed: int
    resolved: int


class AuditOut(_Out):
    id: int
    at: datetime
    actor: str
    client_ip: str | None
    action: str
    target_type: str
    target_id: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    note: str | None


class Health(_Out):
    status: Literal["ok", "degraded"]
    version: str
    registry: Literal["ok", "unavailable"]
    schema_revision: str | None
    sites: int | None
    open_flags: int | None


class CollectorCounters(_Out):
    collector: str | None
    at: datetime
    age_s: float
    counters: dict[str, float | int]


class Pipeline(_Out):
    collectors: list[CollectorCounters] = Field(
        description="each collector that wrote its counters in the last 10 minutes")


class Me(_Out):
    username: str
    role: str
    lang: str | None
    actions: list[str]


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=100, pattern=r"\S", description="what it is for")


class TokenOut(_Out):
    id: int
    username: str
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class NewToken(TokenOut):
    token: str = Field(description="the token itself: shown in this answer only, never again")


class ImportRejected(_Out):
    line: int
    column: str
    reason: str


class ImportResult(_Out):
    kind: str
    inserted: int
    updated: int
    rejected: int
    warnings: list[str] = []


class ProblemOut(_Out):
    type: str
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
