"""Soak: a steady QoS 1 load for N minutes; the collector's RSS must stay flat.

Run:  .venv/bin/python bench/soak.py [--minutes 10] [--rate MSGS_PER_S] [--influx-outage 120]

1. Private Mosquitto and InfluxDB on free ports, one ``sitetwin run`` collector
   process (``--twin`` adds the twin's live state on SQLite).
2. Unless ``--rate`` is given, the maximum end-to-end rate is measured first:
   a backlog of ``--calibrate`` messages queued for the collector's persistent
   session is drained and timed (publishing cost kept out); the soak then runs
   at ``--load`` (default 50 %) of it.
3. The soak publishes distinct tower readings at that rate and samples, every
   ``--sample`` seconds, the collector's RSS, its spool depth, and the points
   counted in InfluxDB.  ``--influx-outage S`` stops InfluxDB for S seconds in
   the middle (the spool fills, then drains).
4. It prints the series, a least-squares slope of RSS (KiB per minute, over the
   whole run and over its second half), and checks that every published
   reading is in InfluxDB exactly once.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sitetwin.services import InfluxDB, Mosquitto, free_port

SITES = 2000
START_S = int(time.time()) - 20 * 86400  # distinct, well inside any retention


def reading(i: int, start_s: int = START_S) -> tuple[str, bytes]:
    """The i-th distinct tower reading (one per site and 10 s)."""
    site, k = i % SITES, i // SITES
    return (f"sites/K{site:05d}/tower", orjson.dumps({
        "ts": start_s + k * 10, "mains_ok": True, "on_battery": False, "battery_voltage_v": 53.5,
        "battery_soc_pct": 100.0 - (k % 7), "rectifier_load_a": 31.2 + (i % 13) / 10,
        "cabinet_temp_c": 24.0 + (k % 11) / 2, "humidity_pct": 40.0, "door_open": False,
    }))


class Publisher:
    """One QoS 1 client with a bounded window of unacknowledged messages."""

    def __init__(self, mq: Mosquitto, window: int = 1000) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"soak-pub-{time.time_ns()}",
                                  protocol=mqtt.MQTTv5)
        self.client.max_inflight_messages_set(window)
        self.client.max_queued_messages_set(0)
        self.window = threading.Semaphore(window)
        self.acked = 0
        self.client.on_publish = self._on_publish
        self.client.connect(mq.host, mq.port)
        self.client.loop_start()

    def _on_publish(self, c, u, mid, rc, props) -> None:
        self.acked += 1
        self.window.release()

    def send(self, topic: str, payload: bytes) -> None:
        self.window.acquire()
        self.client.publish(topic, payload, qos=1)

    def close(self, sent: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.acked < sent and time.monotonic() < deadline:
            time.sleep(0.05)
        self.client.disconnect()
        self.client.loop_stop()


def _count(influx: InfluxDB, db: str, since_s: int | None = None) -> int:
    """Tower points in ``db`` (only those at or after ``since_s``, if given)."""
    where = f" WHERE time >= {since_s * 10**9}" if since_s is not None else ""
    out = influx.query(f'SELECT count("mains_ok") FROM "tower"{where}', db=db)
    series = out["results"][0].get("series")
    return series[0]["values"][0][1] if series else 0


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _spool(state: Path) -> tuple[int, int]:
    files = list((state / "spool").rglob("*.lp"))
    return len(files), sum(f.stat().st_size for f in files if f.exists())


def _slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs."""
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=False)) / den if den else 0.0


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.root = Path(tempfile.mkdtemp(prefix="sitetwin-soak-"))
        self.mq = Mosquitto(root=self.root / "mq", port=free_port())
        self.influx = InfluxDB(root=self.root / "influx", port=free_port(), database="soak")
        self.state = self.root / "state"
        self.log = self.root / "collector.log"
        self.proc: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "SITETWIN_MQTT__SERVERS": json.dumps([self.mq.url]),
            "SITETWIN_MQTT__CLIENT_ID": "soak",
            "SITETWIN_INFLUXDB__URL": self.influx.url,
            "SITETWIN_INFLUXDB__DATABASE": "soak",
            "SITETWIN_SERVICES__STATE_DIR": str(self.state),
            "SITETWIN_COLLECTOR__METRICS_INTERVAL": "10s",
        }

    def start_collector(self) -> None:
        argv = [sys.executable, "-m", "sitetwin", "run", "--no-rules"]
        if not self.args.twin:
            argv.append("--no-twin")
        self.proc = subprocess.Popen(argv, env=self.env(), cwd=ROOT, stdout=self.log.open("ab"),
                                     stderr=subprocess.STDOUT)

    def stop_collector(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)

    def wait_count(self, n: int, timeout: float, since_s: int | None = None) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _count(self.influx, "soak", since_s) >= n:
                return time.monotonic()
            time.sleep(0.2)
        raise SystemExit(f"timed out waiting for {n} points (have {_count(self.influx, 'soak')}); "
                         f"log: {self.log}")

    def start_subscribed(self) -> None:
        """Start the collector and wait until a probe reading lands (its session now exists)."""
        self.start_collector()
        for k in range(120):  # a probe lands only once the shared subscription exists
            pub = Publisher(self.mq)
            pub.send(*reading(k, START_S - 2 * 86400))
            pub.close(1)
            time.sleep(1.0)
            if _count(self.influx, "soak"):
                return
        raise SystemExit(f"the collector never started ingesting; log: {self.log}")

    def calibrate(self) -> float:
        """Maximum end-to-end msgs/s: drain a backlog queued for the collector's session."""
        n = self.args.calibrate
        self.stop_collector()
        base = _count(self.influx, "soak")
        pub = Publisher(self.mq)
        for i in range(n):
            pub.send(*reading(i, START_S - 86400))
        pub.close(n)
        self.start_collector()
        first = None
        while first is None:
            have = _count(self.influx, "soak")
            if have > base + n // 20:
                first = (time.monotonic(), have)
            time.sleep(0.05)
        done = self.wait_count(base + n, 600)
        return (base + n - first[1]) / max(done - first[0], 1e-3)

    def soak(self, rate: float) -> dict:
        args = self.args
        duration = args.minutes * 60
        stop = threading.Event()
        sent = [0]

        def load() -> None:
            pub = Publisher(self.mq)
            t0 = time.monotonic()
            i = 0
            while not stop.is_set() and time.monotonic() - t0 < duration:
                pub.send(*reading(i))
                i += 1
                ahead = t0 + i / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
                sent[0] = i
            pub.close(i)
            sent[0] = i

        outage = None
        if args.influx_outage:
            outage = (duration / 2 - args.influx_outage / 2, duration / 2 + args.influx_outage / 2)
        t = threading.Thread(target=load, daemon=True)
        t0 = time.monotonic()
        t.start()
        samples = []
        influx_up = True
        while t.is_alive():
            elapsed = time.monotonic() - t0
            if outage and influx_up and elapsed >= outage[0]:
                self.influx.stop()
                influx_up = False
            if outage and not influx_up and elapsed >= outage[1]:
                self.influx.start()
                influx_up = True
            if self.proc.poll() is not None:
                stop.set()
                raise SystemExit(f"the collector exited ({self.proc.returncode}) after {elapsed:.0f}s:\n"
                                 + self.log.read_text(errors="replace")[-1500:])
            files, spool_bytes = _spool(self.state)
            sample = {"t_s": round(elapsed, 1), "sent": sent[0], "rss_kib": _rss_kib(self.proc.pid),
                      "spool_files": files, "spool_bytes": spool_bytes,
                      "influx_points": _count(self.influx, "soak", START_S) if influx_up else None}
            samples.append(sample)
            if not args.json:
                print(f"{sample['t_s']:>7.1f}s sent {sample['sent']:>8} rss {sample['rss_kib']:>7} KiB "
                      f"spool {files:>4} files {spool_bytes:>10} B influx "
                      f"{sample['influx_points'] if sample['influx_points'] is not None else 'down':>8}",
                      flush=True)
            t.join(args.sample)
        if not influx_up:
            self.influx.start()
        total = sent[0]
        self.wait_count(total, 600, since_s=START_S)
        stored = _count(self.influx, "soak", START_S)
        out = self.influx.query('SELECT max("spool_bytes") FROM "sitetwin_pipeline"', db="soak")
        series = out["results"][0].get("series")
        pipeline_spool_max = series[0]["values"][0][1] if series else None
        xs = [s["t_s"] / 60 for s in samples]
        ys = [s["rss_kib"] for s in samples]
        half = len(xs) // 2
        return {
            "rate_target": round(rate, 1),
            "rate_achieved": round(total / duration, 1),
            "minutes": args.minutes,
            "sent": total,
            "stored": stored,
            "lost": total - stored,
            "rss_kib_first": ys[0] if ys else None,
            "rss_kib_last": ys[-1] if ys else None,
            "rss_kib_max": max(ys) if ys else None,
            "rss_slope_kib_per_min": round(_slope(xs, ys), 1),
            "rss_slope_second_half_kib_per_min": round(_slope(xs[half:], ys[half:]), 1),
            "spool_bytes_max": max((s["spool_bytes"] for s in samples), default=0),
            "sitetwin_pipeline_spool_bytes_max": pipeline_spool_max,
            "influx_outage_s": args.influx_outage,
            "samples": samples,
        }

    def close(self) -> None:
        self.stop_collector()
        self.mq.stop()
        self.influx.stop()
        if not self.args.keep:
            shutil.rmtree(self.root, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--rate", type=float, default=None, help="msgs/s (default: --load of the measured max)")
    ap.add_argument("--load", type=float, default=0.5, help="fraction of the measured max (default 0.5)")
    ap.add_argument("--calibrate", type=int, default=40_000, help="backlog size for measuring the max")
    ap.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    ap.add_argument("--influx-outage", type=float, default=0.0, metavar="S",
                    help="stop InfluxDB for S seconds in the middle of the run")
    ap.add_argument("--twin", action="store_true", help="also update the twin's live state (SQLite)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    args = ap.parse_args()

    def _terminate(signum, frame):
        raise SystemExit(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, _terminate)  # still stop the private services
    run = Run(args)
    try:
        run.mq.start()
        run.influx.start()
        run.start_subscribed()
        if args.rate:
            rate, max_rate = args.rate, None
        else:
            max_rate = run.calibrate()
            rate = max_rate * args.load
            if not args.json:
                print(f"measured max {max_rate:.0f} msgs/s end to end; soaking at {rate:.0f} msgs/s", flush=True)
        result = run.soak(rate)
        result["rate_max_measured"] = round(max_rate, 1) if max_rate else None
        if run.proc.poll() is not None:
            result["collector_exit"] = run.proc.returncode
            result["collector_log_tail"] = run.log.read_text(errors="replace")[-1500:]
    finally:
        run.close()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        summary = {k: v for k, v in result.items() if k != "samples"}
        print(json.dumps(summary, indent=2))
    return 0 if result["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
