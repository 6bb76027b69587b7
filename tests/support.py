"""Helpers shared by the integration tests: a bounded QoS 1 publisher, waiting, counting."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from sitetwin.services import InfluxDB

ROOT = Path(__file__).resolve().parents[1]


def publish(host: str, port: int, messages: Iterable[tuple[str, bytes]], *, qos: int = 1,
            max_inflight: int = 500, client_id: str | None = None, retain: bool = False) -> int:
    """Publish and wait until the broker acknowledged every message; returns the count."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"pub-{os.getpid()}-{time.time_ns()}",
                         protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(max_inflight)
    window = threading.Semaphore(max_inflight)
    client.on_publish = lambda c, u, mid, rc, props: window.release()
    client.connect(host, port)
    client.loop_start()
    n = 0
    infos = []
    try:
        for topic, payload in messages:
            if qos:
                window.acquire()
            infos.append(client.publish(topic, payload, qos=qos, retain=retain))
            n += 1
        for info in infos:
            info.wait_for_publish(timeout=60)
            assert info.is_published(), "broker did not acknowledge a publish"
    finally:
        client.disconnect()
        client.loop_stop()
    return n


def tower_messages(sites: int, per_site: int, start_s: int = 1_790_000_000,
                   step_s: int = 60) -> list[tuple[str, bytes]]:
    """Distinct valid tower readings: one (site, ts) each."""
    out = []
    for i in range(per_site):
        for s in range(sites):
            out.append((f"sites/S{s:04d}/tower", orjson.dumps({
                "ts": start_s + i * step_s, "mains_ok": True, "battery_soc_pct": 90.0 + (i % 10),
                "cabinet_temp_c": 25.5,
            })))
    return out


def count(influx: InfluxDB, db: str, q: str) -> int:
    out = influx.query(q, db=db)
    series = out["results"][0].get("series")
    if not series:
        return 0
    return sum(row[1] for s in series for row in s["values"])


def wait_for(predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.2,
             message: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message} (last: {last!r})")


# CI (which sets CI=true) runs the long tests at full length; a developer's default run
# shortens them (SITETWIN_FULL_TESTS=1 gives the full length locally too).
FULL_LENGTH = os.environ.get("CI") == "true" or os.environ.get("SITETWIN_FULL_TESTS") == "1"


def full_or_short(full: float, short: float) -> float:
    """``full`` in CI (or with SITETWIN_FULL_TESTS=1), ``short`` on a developer's run."""
    return full if FULL_LENGTH else short


SUBSCRIBED = b"MQTT subscribed"


def collector_process(env: dict[str, str], *, instance: int | None = None,
                      log_path: Path | None = None, wait_subscribed: bool = False,
                      timeout: float = 60.0, args: tuple[str, ...] = ()) -> subprocess.Popen:
    """``sitetwin run`` as a child process (pure collector: no rules, no twin).

    With ``wait_subscribed`` (needs ``log_path``), return only once this process has
    logged its subscription: a message published before the shared subscription
    exists is, by MQTT's rules, delivered to nobody.
    """
    argv = [sys.executable, "-m", "sitetwin", "run", "--no-rules", "--no-twin"]
    if instance is not None:
        argv += ["--instance", str(instance)]
    argv += list(args)
    before = log_path.read_bytes().count(SUBSCRIBED) if log_path and log_path.exists() else 0
    with open(log_path or os.devnull, "ab") as out:  # the child keeps its own descriptor
        proc = subprocess.Popen(argv, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
                                cwd=ROOT)
    if wait_subscribed:
        assert log_path is not None, "wait_subscribed needs log_path"
        deadline = time.monotonic() + timeout
        while log_path.read_bytes().count(SUBSCRIBED) <= before:
            if proc.poll() is not None:
                raise AssertionError(f"the collector exited with {proc.returncode}: "
                                     f"{log_path.read_text(errors='replace')[-2000:]}")
            if time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"the collector did not subscribe within {timeout}s")
            time.sleep(0.1)
    return proc
