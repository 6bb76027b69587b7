"""Where changed flags go besides the registry: InfluxDB (``flags``) for Grafana, and MQTT.

Both are best effort: the registry is the record, so a failure here is logged
and the next change writes the flag again.  MQTT: topic
``sitetwin/flags/{kind}/{site_id}``, QoS 1, payload the flag JSON of
docs/contracts.md section 4 (an event stream: a subscriber sees changes from
when it connected).

The current alarms are also *retained*, so that a subscriber that connects
later (a NOC screen, a gateway) sees what is open now without asking the
registry: ``sitetwin/alarms/{site_id}`` holds the site's open and confirmed
flags (an empty retained message clears a site with none, as MQTT brokers
expect), and ``sitetwin/alarms`` a summary of the whole fleet (open flags by
severity and kind, and the sites that have any).  Both are republished from
the registry after every change, so they are the registry's view, never a sum
of events that a lost message could skew.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from connectors.lineprotocol import line
from connectors.mqtt import publish_once
from core.jsonout import to_json
from core.settings import InfluxSettings, MqttSettings
from core.states import FlagStatus

__all__ = ["ALARMS_TOPIC", "alarm_messages", "flag_lines", "flag_topic", "publish_flags",
           "publish_site_alarms", "write_flags"]

log = logging.getLogger(__name__)

_OPEN = (FlagStatus.OPEN, FlagStatus.CONFIRMED)
ALARMS_TOPIC = "sitetwin/alarms"


def flag_topic(flag: dict[str, Any]) -> str:
    return f"sitetwin/flags/{flag['kind']}/{flag['site_id']}"


def _ns(ts: datetime) -> int:
    return int(ts.timestamp() * 1_000_000) * 1000


def _ms(ts: datetime | None) -> int | None:
    return None if ts is None else int(ts.timestamp() * 1000)


def _ended_at(f: dict[str, Any]) -> datetime | None:
    """When the flag's span ends on a graph: resolution, or the review that dismissed it."""
    if f.get("resolved_at") is not None:
        return f["resolved_at"]
    return f["updated_at"] if f["status"] == FlagStatus.DISMISSED else None


def flag_lines(flags: Sequence[dict[str, Any]]) -> bytes:
    """Line protocol of measurements ``flags`` and ``flag_spans`` (docs/contracts.md §5).

    ``flags``: one point per change at ``updated_at``.  The tags are what never
    changes in a flag's life (``flag_id``, kind, rule, site, cell, supplier), so each
    flag is exactly one series; status and severity change (a review, an
    escalation) and are fields.  When they were tags, a confirmed or escalated
    flag left its earlier series behind with ``open`` = 1: a ghost open row, and
    the flag counted twice.

    ``flag_spans``: one point per flag at ``opened_at``, rewritten in place at
    every change (same series, same timestamp), with ``ended_ms`` once the flag is
    resolved or dismissed: what Grafana draws as one region per flag from opening
    to resolution, instead of a line at every update.
    """
    out = []
    for f in flags:
        excess = (f.get("evidence") or {}).get("excess_cny")
        tags = {"flag_id": int(f["id"]), "kind": f["kind"], "rule": f["rule"],
                "site_id": f["site_id"], "cell_id": f.get("cell_id"),
                "supplier_id": f.get("supplier_id")}
        state = {"summary": f["summary"], "status": f["status"], "severity": f["severity"],
                 "open": 1 if f["status"] in _OPEN else 0}
        out.append(line("flags", tags, {
            **state, "excess_cny": float(excess) if isinstance(excess, (int, float)) else 0.0},
            _ns(f["updated_at"])))
        opened_at = f.get("opened_at") or f["updated_at"]
        out.append(line("flag_spans", {k: v for k, v in tags.items() if k != "rule"},
                        {**state, "ended_ms": _ms(_ended_at(f))}, _ns(opened_at)))
    return "\n".join(out).encode()


def write_flags(influxdb: InfluxSettings, flags: Sequence[dict[str, Any]]) -> bool:
    """Write the flags to InfluxDB (the ``[influxdb]`` section); False (and a warning) if that failed."""
    if not flags:
        return True
    from connectors.errors import ConnectorError
    from connectors.influx import InfluxWriter

    writer = InfluxWriter.from_settings(influxdb)
    try:
        result = writer.write(flag_lines(flags))
        if result.rejected:
            log.warning("InfluxDB refused %d flag point(s): %s", len(result.rejected), result.rejected[0].error)
        return not result.rejected
    except ConnectorError as exc:
        log.warning("writing %d flag(s) to InfluxDB failed: %s", len(flags), exc)
        return False
    finally:
        writer.close()


def publish_flags(broker: MqttSettings, flags: Sequence[dict[str, Any]], *, timeout_s: float = 10.0) -> int:
    """Publish the flags over MQTT (QoS 1) to ``broker`` (the ``[mqtt]`` section) and wait for
    its acks; returns how many."""
    if not flags:
        return 0
    return publish_once(broker, [(flag_topic(f), to_json(f).encode()) for f in flags],
                        role="rules", timeout_s=timeout_s)


def alarm_messages(open_flags: Sequence[dict[str, Any]], site_ids: Sequence[str], now: datetime
                   ) -> list[tuple[str, bytes, bool]]:
    """The retained messages for ``site_ids`` and the fleet summary, given every open flag."""
    by_site: dict[str, list[dict[str, Any]]] = {}
    for f in open_flags:
        by_site.setdefault(f["site_id"], []).append(f)
    out = []
    for site_id in sorted({s for s in site_ids if s}):
        flags = by_site.get(site_id)
        payload = to_json({"site_id": site_id, "updated_at": now, "flags": flags}).encode() \
            if flags else b""
        out.append((f"{ALARMS_TOPIC}/{site_id}", payload, True))
    severities: dict[str, int] = {}
    kinds: dict[str, int] = {}
    for f in open_flags:
        severities[f["severity"]] = severities.get(f["severity"], 0) + 1
        kinds[f["kind"]] = kinds.get(f["kind"], 0) + 1
    summary = {"updated_at": now, "open": len(open_flags), "by_severity": severities,
               "by_kind": kinds, "sites": sorted(by_site)}
    out.append((ALARMS_TOPIC, to_json(summary).encode(), True))
    return out


def publish_site_alarms(broker: MqttSettings, store: Any, site_ids: Sequence[str], *,
                        timeout_s: float = 10.0) -> int:
    """Republish the retained alarms of ``site_ids`` and the summary from the registry
    (``broker`` as in ``publish_flags``)."""
    if not site_ids:
        return 0
    from rules.flag import FlagBook

    try:
        book = FlagBook(store)
        open_flags = [f for status in _OPEN for f in book.list(status=status.value)]
    except Exception as exc:  # noqa: BLE001 - best effort, as every publication here
        log.warning("reading the open flags for MQTT failed: %s", exc)
        return 0
    open_flags.sort(key=lambda f: f["id"])
    from core.timeutil import utcnow

    messages = [(topic, payload) for topic, payload, _retain in alarm_messages(open_flags, site_ids, utcnow())]
    return publish_once(broker, messages, retain=True, role="rules", timeout_s=timeout_s)
