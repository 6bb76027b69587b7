"""The text people receive: one message per event, or one digest of several. Pure.

An event's *payload* is a snapshot of the flag taken when the event was
queued (the flag may change before a digest or a retry goes out, but the
message says what happened then).  Times are shown in local time
(``[time] zone``) with their offset, as everywhere people read them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import tzinfo
from typing import Any

from core.timeutil import format_local, parse_instant

__all__ = ["Message", "digest_message", "event_message", "snapshot"]

VERBS = {"open": "opened", "escalate": "escalated", "resolve": "resolved", "review": "reviewed",
         "remind": "still open"}


@dataclass(frozen=True)
class Message:
    """A title, a body and an Apprise notification type (info, warning, failure, success)."""

    title: str
    body: str
    kind: str


def snapshot(flag: Any, event: str, site: Any | None) -> dict[str, Any]:
    """The payload of one event: what the message will say about the flag."""
    def iso(value):
        return value.isoformat() if value is not None else None

    return {"flag_id": flag.id, "event": event, "kind": flag.kind, "severity": flag.severity,
            "status": flag.status, "site_id": flag.site_id, "cell_id": flag.cell_id,
            "bill_id": flag.bill_id, "site_name": getattr(site, "name", None),
            "county": getattr(site, "county", None), "summary": flag.summary,
            "opened_at": iso(flag.opened_at), "resolved_at": iso(flag.resolved_at),
            "acknowledged_by": flag.acknowledged_by, "assignee": flag.assignee}


def _subject(p: dict[str, Any]) -> str:
    site = p["site_id"] or "-"
    if p.get("site_name"):
        site += f" {p['site_name']}"
    if p.get("cell_id"):
        site += f" cell {p['cell_id']}"
    if p.get("bill_id"):
        site += f" bill {p['bill_id']}"
    return site + (f" ({p['county']})" if p.get("county") else "")


def _headline(p: dict[str, Any]) -> str:
    verb = VERBS.get(p["event"], p["event"])
    if p["event"] == "review":
        verb = f"reviewed: {p['status']}"
    return f"[{p['severity'].upper()}] {p['kind']} {verb} - {_subject(p)}"


def _when(text: str | None, zone: tzinfo) -> str:
    return format_local(parse_instant(text, zone), zone) if text else ""


def _type(p: dict[str, Any]) -> str:
    if p["event"] in ("resolve", "review"):
        return "success" if p["event"] == "resolve" else "info"
    return {"critical": "failure", "warning": "warning"}.get(p["severity"], "info")


def event_message(p: dict[str, Any], zone: tzinfo) -> Message:
    """The message of one event."""
    lines = [p["summary"], f"flag #{p['flag_id']}, opened {_when(p['opened_at'], zone)}"]
    if p.get("resolved_at"):
        lines[-1] += f", resolved {_when(p['resolved_at'], zone)}"
    owner = []
    if p.get("acknowledged_by"):
        owner.append(f"acknowledged by {p['acknowledged_by']}")
    if p.get("assignee"):
        owner.append(f"assigned to {p['assignee']}")
    if owner:
        lines.append("; ".join(owner))
    lines.append(f"sitetwin flags show {p['flag_id']}")
    return Message(_headline(p), "\n".join(lines), _type(p))


def digest_message(payloads: Sequence[dict[str, Any]], zone: tzinfo) -> Message:
    """One message for several events, the most severe first, then oldest first."""
    from notify.route import severity_rank

    ordered = sorted(enumerate(payloads), key=lambda ip: (-severity_rank(ip[1]["severity"]), ip[0]))
    worst = ordered[0][1]["severity"]
    lines = [f"{_headline(p)}: {p['summary']} (flag #{p['flag_id']})" for _, p in ordered]
    title = f"sitetwin: {len(payloads)} alarm event(s), worst {worst}"
    return Message(title, "\n".join(lines), {"critical": "failure", "warning": "warning"}.get(worst, "info"))
