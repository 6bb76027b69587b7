"""Ingest benchmark: the broker's limit, paho, Node-RED and sitetwin end to end.

Run:  .venv/bin/python bench/ingest.py [--messages 200000] [--cases r,a,n,p,b,c,d] [--rounds N]

Each case drains the same backlog of QoS 1 messages that the broker queued for
a persistent session while its consumer was away, so publishing cost (a Python
publisher on the same two cores) is kept out of the figures:

  (r) a subscriber on a raw socket that frames PUBLISH packets and answers PUBACK,
      many per syscall (bench/ackonly.py) - the broker's limit on this machine;
  (s) the same raw socket answering each PUBLISH with its own PUBACK as it is
      framed (a subscriber that "only parses and acks", as issue 15 measured it);
  (a) a paho subscriber that only counts (auto-ack);
  (n) Node-RED 4 + node-red-contrib-influxdb, installed from npm into the bench's
      temp folder: mqtt in (QoS 1, persistent session) -> function -> join
      (5000 / 1 s) -> influxdb batch; acks on receipt, validates nothing;
  (b) ``sitetwin run`` (one collector process): MQTT -> validate -> line protocol
      -> InfluxDB, acked after the write; every point is counted in InfluxDB;
  (p) as (b) with ``[mqtt] client = "paho"`` (paho as it comes: before/after);
  (c) ``sitetwin run --workers 2``: the supervisor and two collector processes on the
      shared subscription (c/b is the scaling; CPU counts the supervisor and its workers);
  (d) as (b) with the twin's live state on (flushed to SQLite), plus the twin's
      lag behind telemetry (newest reading vs newest ``last_seen``).

Figures are msgs/s over the steady part (first to last point), printed with
the ratios b/r, b/s, b/n, b/a, b/p, c/b and d/b.  Services are private instances on free ports.
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
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from connectors.publisher import WirePublisher
from sitetwin.config import load_settings
from sitetwin.services import InfluxDB, Mosquitto, free_port

SITES = 2000
START_S = int(time.time()) - 30 * 86400  # a month ago: well inside any retention


def backlog(n: int) -> list[tuple[str, bytes]]:
    """n distinct tower readings (one per site and minute), ~170 bytes each."""
    out = []
    for i in range(n):
        site, k = i % SITES, i // SITES
        out.append((f"sites/B{site:05d}/tower", orjson.dumps({
            "ts": START_S + k * 60, "mains_ok": True, "on_battery": False,
            "battery_voltage_v": 53.5, "battery_soc_pct": 100.0 - (k % 7),
            "rectifier_load_a": 31.2 + (i % 13) / 10, "cabinet_temp_c": 24.0 + (k % 11) / 2,
            "humidity_pct": 40.0, "door_open": False,
        })))
    return out


def publish(mq: Mosquitto, messages: list[tuple[str, bytes]]) -> float:
    """QoS 1 through the project's publisher (bounded window of unacked messages); msgs/s."""
    settings = load_settings(None, mqtt={"servers": [mq.url]})
    pub = WirePublisher(settings.mqtt, client_id=f"bench-pub-{time.time_ns()}", max_inflight=1000)
    t0 = time.perf_counter()
    pub.connect()
    pub.publish_all(messages)
    stats = pub.close()
    if stats.acked != len(messages):
        raise SystemExit(f"the broker acknowledged {stats.acked} of {len(messages)} publishes")
    return len(messages) / (time.perf_counter() - t0)


# -- (a) the broker alone -------------------------------------------------------------------
_COUNTER = r"""
import sys, time, threading
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes
host, port, cid, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
mode, group = sys.argv[5], sys.argv[6]  # "subscribe" or "drain"; the shared group
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
props = Properties(PacketTypes.CONNECT); props.SessionExpiryInterval = 3600
props.ReceiveMaximum = 20000
got = 0; first = last = None; done = threading.Event(); subscribed = threading.Event()
def on_message(c, u, m):
    global got, first, last
    got += 1
    if first is None: first = time.perf_counter()
    last = time.perf_counter()
    if got >= n: done.set()
c.on_message = on_message
c.on_subscribe = lambda *a: subscribed.set()
c.connect(host, port, clean_start=False, properties=props)
c.loop_start()
if mode == "subscribe":
    c.subscribe(f"$share/{group}/sites/+/+", qos=1); subscribed.wait(10)
    time.sleep(0.5); c.disconnect(); c.loop_stop(); print("{}"); sys.exit(0)
done.wait(600)
c.disconnect(); c.loop_stop()
print('{"received": %d, "seconds": %.6f, "cpu_s": %.3f}' % (got, (last or 0) - (first or 0), time.process_time()))
"""


def case_a(mq: Mosquitto, messages, group: str = "benchraw") -> dict:
    # Every round its own group: an earlier round's session would still get its share.
    cid = f"bench-raw-{time.time_ns()}"
    argv = [sys.executable, "-c", _COUNTER, mq.host, str(mq.port), cid, str(len(messages))]
    subprocess.run([*argv, "subscribe", group], check=True, capture_output=True)
    pub_rate = publish(mq, messages)
    mq_cpu0 = _cpu_s(mq._proc.pid)
    out = subprocess.run([*argv, "drain", group], check=True, capture_output=True, text=True)
    res = json.loads(out.stdout)
    assert res["received"] == len(messages), res
    end_session(mq, cid)
    per_10k = 10_000 / len(messages)
    return {"msgs_per_s": res["received"] / res["seconds"], "publish_msgs_per_s": pub_rate,
            "cpu_s_per_10k_msgs": {"mosquitto": round((_cpu_s(mq._proc.pid) - mq_cpu0) * per_10k, 3),
                                   "subscriber": round(res["cpu_s"] * per_10k, 3)}}


def end_session(mq: Mosquitto, client_id: str) -> None:
    """Drop a case's persistent session once it is done: else its subscription keeps
    taking a copy of every later case's backlog (slower publishing, a larger broker
    state to save, a busier broker in every later case)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    c.connect(mq.host, mq.port, clean_start=True)  # no Session Expiry: ends with the connection
    c.disconnect()


# -- (r) the broker's limit: ack-only on a raw socket --------------------------------------------
def case_r(mq: Mosquitto, messages, group: str = "benchack", *, each: bool = False) -> dict:
    """``each``: case (s), a PUBACK per message as it is framed (see bench/ackonly.py)."""
    cid = f"bench-ack-{time.time_ns()}"
    argv = [sys.executable, str(ROOT / "bench" / "ackonly.py"), mq.host, str(mq.port), cid,
            str(len(messages))]
    topic = f"$share/{group}/sites/+/+"
    subprocess.run([*argv, "subscribe", topic], check=True, capture_output=True)
    pub_rate = publish(mq, messages)
    mq_cpu0 = _cpu_s(mq._proc.pid)
    out = subprocess.run([*argv, "drain-each" if each else "drain", topic], check=True,
                         capture_output=True, text=True)
    res = json.loads(out.stdout)
    assert res["received"] == len(messages), res
    end_session(mq, cid)
    per_10k = 10_000 / len(messages)
    return {"msgs_per_s": res["received"] / res["seconds"], "publish_msgs_per_s": pub_rate,
            "cpu_s_per_10k_msgs": {"mosquitto": round((_cpu_s(mq._proc.pid) - mq_cpu0) * per_10k, 3),
                                   "subscriber": round(res["cpu_s"] * per_10k, 3)}}


# -- (n) Node-RED ------------------------------------------------------------------------------------
NODE_RED_PACKAGES = ["node-red@4", "node-red-contrib-influxdb@0.7"]

_NODE_RED_FUNCTION = """
const d = msg.payload;
const ts = d.ts;
delete d.ts;
msg.payload = {measurement: msg.topic.split("/")[2], tags: {site: msg.topic.split("/")[1]},
               fields: d, timestamp: ts};
return msg;
"""


def install_node_red(work: Path) -> Path:
    """npm install Node-RED and the InfluxDB nodes into ``work/node-red``; its directory."""
    home = work / "node-red"
    home.mkdir(parents=True, exist_ok=True)
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("case n needs npm (Node.js 18+) on PATH")
    t0 = time.perf_counter()
    res = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--loglevel=error",
                          *NODE_RED_PACKAGES], cwd=home, capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        raise SystemExit(f"npm install {' '.join(NODE_RED_PACKAGES)} failed:\n{res.stderr[-2000:]}")
    print(f"Node-RED installed from npm in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return home


def _node_red_flow(mq: Mosquitto, influx: InfluxDB, db: str, cid: str, group: str) -> list[dict]:
    return [
        {"id": "bench-tab", "type": "tab", "label": "bench"},
        {"id": "bench-broker", "type": "mqtt-broker", "broker": mq.host, "port": str(mq.port),
         "clientid": cid, "autoConnect": True, "usetls": False, "protocolVersion": "5",
         "keepalive": "60", "cleansession": False, "sessionExpiry": "3600",
         "autoUnsubscribe": False},  # else it unsubscribes when stopped: no backlog
        {"id": "bench-in", "type": "mqtt in", "z": "bench-tab", "topic": f"$share/{group}/sites/+/+", "qos": "1",
         "datatype": "json", "broker": "bench-broker", "nl": False, "rap": True, "inputs": 0,
         "wires": [["bench-fn"]]},
        {"id": "bench-fn", "type": "function", "z": "bench-tab", "func": _NODE_RED_FUNCTION, "outputs": 1,
         "wires": [["bench-join"]]},
        {"id": "bench-join", "type": "join", "z": "bench-tab", "mode": "custom", "build": "array",
         "property": "payload", "propertyType": "msg", "key": "topic", "joiner": "\\n",
         "joinerType": "str", "accumulate": False, "timeout": "1", "count": "5000",
         "reduceRight": False, "wires": [["bench-out"]]},
        {"id": "bench-influx", "type": "influxdb", "hostname": influx.host, "port": str(influx.port),
         "protocol": "http", "database": db, "name": "", "usetls": False, "influxdbVersion": "1.x"},
        {"id": "bench-out", "type": "influxdb batch", "z": "bench-tab", "influxdb": "bench-influx", "precision": "s",
         "retentionPolicy": "", "wires": []},
    ]


def case_nodered(mq: Mosquitto, influx: InfluxDB, messages, *, home: Path, work: Path,
                 name: str) -> dict:
    db = f"bench_{name}"
    influx.query(f'DROP DATABASE "{db}"')
    influx.query(f'CREATE DATABASE "{db}"')
    user_dir = work / f"node-red-{name}"
    user_dir.mkdir(parents=True, exist_ok=True)
    flow = user_dir / "flows.json"
    flow.write_text(json.dumps(_node_red_flow(mq, influx, db, f"bench-nr-{name}", f"g{name}")))
    settings = user_dir / "settings.js"
    settings.write_text(f"module.exports = {{uiPort: {free_port()}, uiHost: '127.0.0.1',"
                        " credentialSecret: false, logging: {console: {level: 'warn'}}};\n")
    log = work / f"node-red-{name}.log"
    argv = ["node", str(home / "node_modules" / "node-red" / "red.js"), "--settings", str(settings),
            "--userDir", str(user_dir), str(flow)]

    def start() -> subprocess.Popen:
        return subprocess.Popen(argv, cwd=user_dir, stdout=open(log, "ab"), stderr=subprocess.STDOUT)

    # 1. the persistent session and its subscription; probes prove the flow writes.
    proc = start()
    probe = [(f"sites/P{i:03d}/tower", orjson.dumps({"ts": START_S - 60, "mains_ok": True}))
             for i in range(20)]
    t_end = time.monotonic() + 120
    while _count(influx, db) < len(probe) and time.monotonic() < t_end:
        publish(mq, probe)
        time.sleep(1.0)
    _stop([proc])
    base = _count(influx, db)
    if base < len(probe):
        raise SystemExit(f"case {name}: Node-RED wrote {base} of {len(probe)} probes; see {log}")
    # 2. the backlog waits in the broker; 3. Node-RED returns and drains it.
    pub_rate = publish(mq, messages)
    t_start = time.perf_counter()
    proc = start()
    res = _drain(mq, influx, db, [proc], base, len(messages), t_start)
    _stop([proc])
    end_session(mq, f"bench-nr-{name}")
    if res["verified_points"] != len(messages):
        raise SystemExit(f"case {name}: {res['verified_points']} of {len(messages)} points in "
                         f"InfluxDB; see {log}")
    return {**res, "publish_msgs_per_s": pub_rate}


def _drain(mq: Mosquitto, influx: InfluxDB, db: str, procs: list[subprocess.Popen], base: int,
           count: int, t_start: float) -> dict:
    """Wait until ``count`` new points are in ``db``: rates and the CPU split by process."""
    cpu0 = _cpu_split(mq, influx, procs)
    first = None
    want = base + count
    n = seen = base
    progress = time.monotonic()
    while time.monotonic() - progress < 120:  # give up after two minutes without a new point
        n = _count(influx, db)
        now = time.perf_counter()
        if first is None and n > base:
            first = (now, n)
        if n >= want:
            break
        if n > seen:
            seen, progress = n, time.monotonic()
        time.sleep(0.5)
    t_done = time.perf_counter()
    cpu1 = _cpu_split(mq, influx, procs)
    steady_s = t_done - first[0] if first else 0.0
    return {
        "msgs_per_s": (want - first[1]) / steady_s if steady_s > 0 else float("nan"),
        "wall_msgs_per_s": count / (t_done - t_start),
        "verified_points": n - base,
        "cpu_s_per_10k_msgs": {k: round((cpu1[k] - cpu0[k]) * 10_000 / count, 3) for k in cpu0},
        "cpu_cores_busy": round(sum(cpu1[k] - cpu0[k] for k in cpu0) / (t_done - t_start), 2),
    }


# -- (b), (c), (d): sitetwin end to end ------------------------------------------------------------
def _env(mq: Mosquitto, influx: InfluxDB, db: str, state: Path, group: str, twin: bool) -> dict:
    env = {
        **os.environ,
        "SITETWIN_MQTT__SERVERS": json.dumps([mq.url]),
        "SITETWIN_MQTT__CLIENT_ID": f"bench-{group}",
        "SITETWIN_MQTT__SHARED_GROUP": group,
        "SITETWIN_INFLUXDB__URL": influx.url,
        "SITETWIN_INFLUXDB__DATABASE": db,
        "SITETWIN_SERVICES__STATE_DIR": str(state),
        "SITETWIN_COLLECTOR__METRICS_INTERVAL": "10s",
        "SITETWIN_LOG_LEVEL": "WARNING",
    }
    if twin:
        env["SITETWIN_TWIN__URL"] = f"sqlite:///{state / 'twin.sqlite'}"
    return env


PROFILE_DIR: Path | None = None


def _collectors(env: dict, count: int, twin: bool, log: Path) -> list[subprocess.Popen]:
    """``sitetwin run --instance 0`` for one collector, ``sitetwin run --workers N`` for more:
    one process either way (the supervisor's workers connect as ``<client_id>-0``, ``-1``...)."""
    argv = [sys.executable, "-m", "sitetwin", "run", "--no-rules"]
    argv += ["--workers", str(count)] if count > 1 else ["--instance", "0"]
    if not twin:
        argv.append("--no-twin")
    with open(log, "ab") as out:  # the child keeps its own descriptor
        proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    if PROFILE_DIR is not None:
        out_path = PROFILE_DIR / f"{env['SITETWIN_MQTT__SHARED_GROUP']}-{time.time_ns()}.txt"
        proc.profiler = subprocess.Popen(
            [str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(proc.pid),
             "--format", "raw", "--threads", "--idle", "--nonblocking", "-r", "100", "-o", str(out_path),
             *(["--subprocesses"] if count > 1 else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return [proc]


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        profiler = getattr(p, "profiler", None)
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(30)
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (and its reaped children), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(x) for x in fields[11:15]) / ticks


def _tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (a supervisor's workers)."""
    out = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for child in children:
        out += _tree(int(child))
    return out


def _cpu_split(mq: Mosquitto, influx: InfluxDB, procs: list[subprocess.Popen]) -> dict[str, float]:
    return {"mosquitto": _cpu_s(mq._proc.pid), "influxd": _cpu_s(influx._proc.pid),
            "consumer": sum(_cpu_s(pid) for p in procs for pid in _tree(p.pid))}


def _count(influx: InfluxDB, db: str) -> int:
    res = influx.query('SELECT count("mains_ok") FROM "tower"', db=db)["results"][0]
    series = res.get("series")
    return int(series[0]["values"][0][1]) if series else 0


def _twin_up_to_date(state: Path, expected_last: dict[str, int]) -> int:
    """How many sites' ``last_seen`` in the twin equals the timestamp of their last reading."""
    from sqlalchemy import select

    from twin.models import LiveSiteState
    from twin.store import open_store

    path = state / "twin.sqlite"
    if not path.exists():
        return 0
    store = open_store(f"sqlite:///{path}")
    try:
        with store.session() as session:
            rows = session.execute(select(LiveSiteState.site_id, LiveSiteState.last_seen)).all()
    except Exception:  # noqa: BLE001 - the collector holds the write lock for a moment: try again
        return 0
    finally:
        store.engine.dispose()
    return sum(1 for site, seen in rows
               if site in expected_last and int(seen.timestamp()) == expected_last[site])


def _expected_last(n: int) -> dict[str, int]:
    """The newest reading's timestamp per site in ``backlog(n)``."""
    return {f"B{site:05d}": START_S + ((n - 1 - site) // SITES) * 60 for site in range(min(n, SITES))}


def case_sitetwin(mq: Mosquitto, influx: InfluxDB, messages, *, collectors: int, twin: bool,
                  work: Path, name: str, client: str | None = None) -> dict:
    db = f"bench_{name}"
    state = work / f"state-{name}"
    state.mkdir(parents=True, exist_ok=True)
    influx.query(f'DROP DATABASE "{db}"')
    influx.query(f'CREATE DATABASE "{db}"')
    env = _env(mq, influx, db, state, f"g{name}", twin)
    if client:
        env["SITETWIN_MQTT__CLIENT"] = client
    log = work / f"collector-{name}.log"
    # 1. establish the persistent sessions and the shared subscription, then leave.
    procs = _collectors(env, collectors, twin, log)
    probe = [(f"sites/P{i:03d}/tower", orjson.dumps({"ts": START_S - 60, "mains_ok": True}))
             for i in range(collectors * 20)]
    t_end = time.monotonic() + 60
    while _count(influx, db) < len(probe) and time.monotonic() < t_end:
        publish(mq, probe)
        time.sleep(1.0)
    _stop(procs)
    base = _count(influx, db)
    # 2. the backlog waits in the broker for the sessions.
    pub_rate = publish(mq, messages)
    # 3. the collectors return and drain it.
    t_start = time.perf_counter()
    procs = _collectors(env, collectors, twin, log)
    out = _drain(mq, influx, db, procs, base, len(messages), t_start)
    out["publish_msgs_per_s"] = pub_rate
    t_done = time.perf_counter()
    if twin:
        # The twin's lag: from the moment the last point is in InfluxDB until every
        # site's last_seen in the twin is its newest reading.
        expected_last = _expected_last(len(messages))
        while (_twin_up_to_date(state, expected_last) < len(expected_last)
               and time.perf_counter() - t_done < 120):
            time.sleep(0.25)
        out["twin_lag_s"] = time.perf_counter() - t_done
    _stop(procs)
    for i in range(collectors):
        end_session(mq, f"{env['SITETWIN_MQTT__CLIENT_ID']}-{i}")
    if out["verified_points"] != len(messages):
        raise SystemExit(f"case {name}: {out['verified_points']} of {len(messages)} points in "
                         f"InfluxDB; see {log}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--cases", default="r,a,n,p,b,c,d")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run the cases this many times, interleaved; figures are per-case medians")
    ap.add_argument("--profile", metavar="DIR", type=Path,
                    help="run the collectors under py-spy, collapsed stacks into DIR")
    args = ap.parse_args()
    global PROFILE_DIR
    PROFILE_DIR = args.profile
    if PROFILE_DIR:
        PROFILE_DIR.mkdir(parents=True, exist_ok=True)
    cases = set(args.cases.split(","))
    work = Path(tempfile.mkdtemp(prefix="sitetwin-bench-"))
    mq = Mosquitto(root=work / "mosquitto", port=free_port())
    influx = InfluxDB(root=work / "influxdb", port=free_port(), database="")
    mq.start()
    influx.start()
    messages = backlog(args.messages)
    node_red = install_node_red(work) if "n" in cases else None
    size = sum(len(p) for _, p in messages) / len(messages)
    print(f"{len(messages)} messages of {size:.0f} bytes, {os.cpu_count()} cores, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} before", file=sys.stderr)
    rounds: dict[str, list[dict]] = {}
    try:
        for i in range(max(1, args.rounds)):
            tag = f"round {i + 1}: " if args.rounds > 1 else ""
            if "r" in cases:
                r = case_r(mq, messages, group=f"benchack{i + 1}")
                rounds.setdefault("r", []).append(r)
                print(f"{tag}(r) broker -> ack-only raw socket: {r['msgs_per_s']:,.0f} msgs/s", file=sys.stderr)
            if "s" in cases:
                r = case_r(mq, messages, group=f"benchone{i + 1}", each=True)
                rounds.setdefault("s", []).append(r)
                print(f"{tag}(s) broker -> raw socket, a PUBACK per message: {r['msgs_per_s']:,.0f} msgs/s",
                      file=sys.stderr)
            if "n" in cases:
                r = case_nodered(mq, influx, messages, home=node_red, work=work,
                                 name="n" if args.rounds == 1 else f"n{i + 1}")
                rounds.setdefault("n", []).append(r)
                print(f"{tag}(n) Node-RED -> InfluxDB: {r['msgs_per_s']:,.0f} msgs/s", file=sys.stderr)
            if "a" in cases:
                r = case_a(mq, messages, group=f"benchraw{i + 1}")
                rounds.setdefault("a", []).append(r)
                print(f"{tag}(a) broker -> counting subscriber: {r['msgs_per_s']:,.0f} msgs/s", file=sys.stderr)
            for key, n, twin, client in (("p", 1, False, "paho"), ("b", 1, False, None),
                                         ("c", 2, False, None), ("d", 1, True, None)):
                if key in cases:
                    # A fresh database, session group and state per round.  A round's last
                    # batch can be stored but not yet acknowledged when its collector stops;
                    # with the same session the broker redelivers it in the next round, whose
                    # count then starts above the probes and never reaches base + N.
                    r = case_sitetwin(mq, influx, messages, collectors=n, twin=twin, work=work,
                                      name=key if args.rounds == 1 else f"{key}{i + 1}",
                                      client=client)
                    rounds.setdefault(key, []).append(r)
                    print(f"{tag}({key}) sitetwin, {n} collector(s){' (--workers 2)' if n > 1 else ''}"
                          f"{' + twin' if twin else ''}"
                          f"{', paho transport' if client == 'paho' else ''}: "
                          f"{r['msgs_per_s']:,.0f} msgs/s", file=sys.stderr)
    finally:
        mq.stop()
        influx.stop()
    # Per case, the round with the median rate (its CPU split too), and every round's rate.
    results: dict[str, dict] = {}
    for key, runs in rounds.items():
        ordered = sorted(runs, key=lambda r: r["msgs_per_s"])
        results[key] = {**ordered[(len(ordered) - 1) // 2],
                        "rounds_msgs_per_s": [round(r["msgs_per_s"]) for r in runs]}
    ratios = {}
    for base in ("r", "s", "n"):
        if base in results and "b" in results:
            ratios[f"b/{base}"] = results["b"]["msgs_per_s"] / results[base]["msgs_per_s"]
    if "a" in results and "b" in results:
        ratios["b/a"] = results["b"]["msgs_per_s"] / results["a"]["msgs_per_s"]
    if "p" in results and "b" in results:
        ratios["b/p"] = results["b"]["msgs_per_s"] / results["p"]["msgs_per_s"]
    if "b" in results and "c" in results:
        ratios["c/b"] = results["c"]["msgs_per_s"] / results["b"]["msgs_per_s"]
    if "b" in results and "d" in results:
        ratios["d/b"] = results["d"]["msgs_per_s"] / results["b"]["msgs_per_s"]
    report = {"messages": len(messages), "payload_bytes": round(size), "cores": os.cpu_count(),
              "load_average_after": [round(x, 2) for x in os.getloadavg()],
              "results": results, "ratios": ratios}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print("\n| case | msgs/s (steady) | msgs/s (wall) | points verified |")
        print("|---|---:|---:|---:|")
        for key, r in results.items():
            print(f"| {key} | {r['msgs_per_s']:,.0f} | {r.get('wall_msgs_per_s', r['msgs_per_s']):,.0f}"
                  f" | {r.get('verified_points', '-')} |")
        for key, r in results.items():
            if "cpu_s_per_10k_msgs" in r:
                print(f"({key}) CPU s per 10k msgs: {r['cpu_s_per_10k_msgs']}, "
                      f"cores busy {r.get('cpu_cores_busy', '-')}")
        for k, v in ratios.items():
            print(f"{k} = {v:.2f}")
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        if args.rounds > 1:
            for key, r in results.items():
                print(f"({key}) rounds: {', '.join(f'{x:,}' for x in r['rounds_msgs_per_s'])} msgs/s")
            if "b" in rounds and "d" in rounds:
                per_round = [d["msgs_per_s"] / b["msgs_per_s"] for b, d in zip(rounds["b"], rounds["d"], strict=False)]
                print("d/b per round: " + ", ".join(f"{x:.2f}" for x in per_round))
        if "d" in results:
            print(f"twin lag after the last point = {results['d']['twin_lag_s']:.1f} s")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
