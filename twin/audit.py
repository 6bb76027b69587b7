"""The audit log: who did what, when, from where, with the before and after of the change.

Every review, lifecycle move, import, and user or token change is appended here
in the same transaction as the change itself, so the log and the registry cannot
disagree.  The table refuses UPDATE and DELETE (triggers, see ``twin.models``);
this module only appends and reads.
"""

from __future__ import annotations

import enum
from datetime import date, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.timeutil import utcnow
from twin.models import AuditEntry

__all__ = ["audit_dict", "list_entries", "plain", "record"]


def plain(value: Any) -> Any:
    """A value as JSON types: times as ISO 8601 with offset, enums by value."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [plain(v) for v in value]
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    return value


def record(session: Session, *, actor: str, action: str, target_type: str,
           target_id: str | int | None = None, before: dict[str, Any] | None = None,
           after: dict[str, Any] | None = None, note: str | None = None,
           client_ip: str | None = None, at: datetime | None = None) -> AuditEntry:
    """Append one entry in the caller's transaction."""
    entry = AuditEntry(at=at or utcnow(), actor=actor, client_ip=client_ip, action=action,
                       target_type=target_type,
                       target_id=None if target_id is None else str(target_id),
                       before=plain(before) if before is not None else None,
                       after=plain(after) if after is not None else None, note=note)
    session.add(entry)
    session.flush()
    return entry


def audit_dict(entry: AuditEntry) -> dict[str, Any]:
    return {"id": entry.id, "at": entry.at, "actor": entry.actor, "client_ip": entry.client_ip,
            "action": entry.action, "target_type": entry.target_type,
            "target_id": entry.target_id, "before": entry.before, "after": entry.after,
            "note": entry.note}


def list_entries(session: Session, *, actor: str | None = None, action: str | None = None,
                 target_type: str | None = None, target_id: str | None = None,
                 since: datetime | None = None, until: datetime | None = None,
                 limit: int = 50, offset: int = 0) -> tuple[int, list[dict[str, Any]]]:
    """``(total, entries)``, newest first, matching every filter given."""
    q = select(AuditEntry)
    for column, value in ((AuditEntry.actor, actor), (AuditEntry.action, action),
                          (AuditEntry.target_type, target_type),
                          (AuditEntry.target_id, target_id)):
        if value is not None:
            q = q.where(column == value)
    if since is not None:
        q = q.where(AuditEntry.at >= since)
    if until is not None:
        q = q.where(AuditEntry.at < until)
    total = session.scalar(select(func.count()).select_from(q.subquery())) or 0
    rows = session.scalars(q.order_by(AuditEntry.at.desc(), AuditEntry.id.desc())
                           .limit(limit).offset(offset))
    return total, [audit_dict(e) for e in rows]
