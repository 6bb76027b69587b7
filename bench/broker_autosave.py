"""What Mosquitto's save policy costs: publish rate into a backlog, and what a crash keeps.

Run:  .venv/bin/python bench/broker_autosave.py [--messages 20000] [--policies 30s,10000,1000,100]

For each policy a private Mosquitto 2 is started; a persistent QoS 1 session
subscribes to ``bench/#`` and goes away, so every message published is queued
(a backlog - the case a crash hurts).  A QoS 1 publisher sends ``--messages``
messages and waits for every PUBACK; the rate is printed with the size of the
saved database.  Then the broker is killed with SIGKILL and restarted and the
subscriber counts what it gets back: ``kept`` of ``--messages``.

A policy ``30s`` is ``autosave_interval 30`` (time-based, the Mosquitto
default kind); a number N is ``autosave_on_changes true`` + ``autosave_interval N``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sitetwin.services import Mosquitto, free_port
from tests.support import publish


def _session(port: int, *, got: list | None = None) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-backlog", protocol=mqtt.MQTTv5)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    if got is not None:
        c.on_message = lambda cl, u, m: got.append(m.payload)
    c.connect("127.0.0.1", port, clean_start=False, properties=props)
    return c


def run(policy: str, messages: int) -> dict:
    root = Path(tempfile.mkdtemp(prefix="sitetwin-autosave-"))
    if policy.endswith("s"):
        broker = Mosquitto(root=root, port=free_port(),
                           extra_config=f"autosave_on_changes false\nautosave_interval {int(policy[:-1])}\n")
    else:
        broker = Mosquitto(root=root, port=free_port(), autosave_changes=int(policy))
    broker.start()
    try:
        sub = _session(broker.port)
        sub.loop_start()
        done = threading.Event()
        sub.on_subscribe = lambda *a: done.set()
        sub.subscribe("bench/#", qos=1)
        done.wait(10)
        sub.disconnect()
        sub.loop_stop()
        payloads = [(f"bench/{i % 100}", b"x" * 120 + str(i).encode()) for i in range(messages)]
        t0 = time.perf_counter()
        publish("127.0.0.1", broker.port, payloads)
        rate = messages / (time.perf_counter() - t0)
        db = root / "mosquitto-data" / "mosquitto.db"
        saved = db.stat().st_size if db.exists() else 0
        os.kill(broker.pid, signal.SIGKILL)
        time.sleep(0.5)
        broker.pid_file.unlink(missing_ok=True)
        broker.start()
        got: list = []
        sub = _session(broker.port, got=got)
        sub.loop_start()
        last, quiet_since = -1, time.monotonic()
        while time.monotonic() - quiet_since < 2.0:
            if len(got) != last:
                last, quiet_since = len(got), time.monotonic()
            time.sleep(0.1)
        sub.disconnect()
        sub.loop_stop()
        return {"policy": policy, "publish_msgs_per_s": round(rate), "db_bytes": saved,
                "kept_after_sigkill": len(set(got)), "of": messages}
    finally:
        broker.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--policies", default="30s,10000,1000,100")
    args = ap.parse_args()
    for policy in args.policies.split(","):
        print(run(policy, args.messages), flush=True)


if __name__ == "__main__":
    main()
