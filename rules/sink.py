"""Where changed flags go besides the registry: InfluxDB (``flags``) for Grafana, and MQTT.

Both are best effort: the registry is the record, so a failure here is logged
and the next change writes the flag again.  MQTT: topic
``sitetwin/flags/{kind}/{site_id}``, QoS 1, payload the flag JSON of
docs/contracts.md section 4.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from connectors.lineprotocol import line
from core.settings import Settings
from core.jsonout import to_json

__all__ = ["flag_lines", "flag_topic", "publish_flags", "write_flags"]

log = logging.getLogger(__name__)

_OPEN = ("open", "confirmed")


def flag_topic(flag: dict[str, Any]) -> str:
    return f"sitetwin/flags/{flag['kind']}/{flag['site_id']}"


def _ns(ts: datetime) -> int:
    return int(ts.timestamp() * 1_000_000) * 1000


def flag_lines(flags: Sequence[dict[str, Any]]) -> bytes:
    """Line protocol of measurement ``flags``, one point per flag at its ``updated_at``."""
    out = []
    for f in flags:
        excess = (f.get("evidence") or {}).get("excess_cny")
        out.append(line(
            "flags",
            {"kind": f["kind"], "rule": f["rule"], "site_id": f["site_id"], "severity": f["severity"],
             "status": f["status"], "cell_id": f.get("cell_id"), "supplier_id": f.get("supplier_id")},
            {"flag_id": int(f["id"]), "summary": f["summary"],
             "excess_cny": float(excess) if isinstance(excess, (int, float)) else 0.0,
             "open": 1 if f["status"] in _OPEN else 0},
            _ns(f["updated_at"]),
        ))
    return "\n".join(out).encode()


def write_flags(settings: Settings, flags: Sequence[dict[str, Any]]) -> bool:
    """Write the flags to InfluxDB; False (and a warning) if that failed."""
    if not flags:
        return True
    from connectors.errors import ConnectorError
    from connectors.influx import InfluxWriter

    writer = InfluxWriter.from_settings(settings.influxdb)
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


def publish_flags(settings: Settings, flags: Sequence[dict[str, Any]], *, timeout_s: float = 10.0) -> int:
    """Publish the flags over MQTT (QoS 1) and wait for the broker's acks; returns how many."""
    if not flags:
        return 0
    from connectors.collector import mqtt_client

    url = settings.mqtt.servers[0]
    parts = urlsplit(url if "://" in url else f"tcp://{url}")
    tls = parts.scheme in ("ssl", "mqtts", "tls")
    client = mqtt_client(settings, f"{settings.mqtt.client_id}-rules-{os.getpid()}-{threading.get_ident()}")
    connected = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: connected.set() if not rc.is_failure else None
    try:
        client.connect(parts.hostname or "127.0.0.1", parts.port or (8883 if tls else 1883),
                       keepalive=int(max(5, settings.mqtt.keepalive)))
        client.loop_start()
        if not connected.wait(timeout_s):
            log.warning("MQTT broker %s did not accept the flag publisher", parts.hostname)
            return 0
        infos = [client.publish(flag_topic(f), to_json(f).encode(), qos=1) for f in flags]
        done = 0
        for info in infos:
            info.wait_for_publish(timeout=timeout_s)
            done += info.is_published()
        return done
    except (OSError, ValueError, RuntimeError) as exc:
        log.warning("publishing %d flag(s) over MQTT failed: %s", len(flags), exc)
        return 0
    finally:
        try:
            client.disconnect()
            client.loop_stop()
        except Exception:  # noqa: BLE001 - closing a broken client must not mask the result
            pass
