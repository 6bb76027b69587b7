"""Secrets stay secret, and input never reaches a shell, eval or unparameterised SQL.

A full ``sitetwin run`` at debug level with distinctive passwords and tokens in
the environment - through normal ingest, an unreachable InfluxDB, and a broker
that refuses the password - must not print any of them; neither may
``services status --json``.  A static check walks the code's syntax tree for
``eval``/``exec``, ``shell=True`` and SQL built with f-strings or ``%``.
"""

from __future__ import annotations

import ast
import base64
import os
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import orjson
import pytest

from sitetwin.config import load_settings
from sitetwin.services import free_port
from tests.support import ROOT, collector_process, count, publish, tower_messages, wait_for

SECRETS = {
    "SITETWIN_MQTT__PASSWORD": "mqttSecret-7f3a9c41",
    "SITETWIN_INFLUXDB__PASSWORD": "influxSecret-b81e2077",
    "SITETWIN_INFLUXDB__TOKEN": "influxToken-5d0c4e19",
    "SITETWIN_GRAFANA__TOKEN": "grafanaToken-99ab1263",
}
PG_PASSWORD = "pgSecret-3e7d61aa"
# A notification channel whose URL holds a password and a token (Apprise json:// webhook).
NOTIFY_SECRETS = ("notifyPass-2c8e51", "notifyToken-6a0f93d7")


def _forms(secret: str, user: str | None = None) -> list[str]:
    """The ways a secret could show up: as is, URL-encoded, in a Basic auth header."""
    out = [secret, urllib.parse.quote(secret)]
    if user:
        out.append(base64.b64encode(f"{user}:{secret}".encode()).decode())
    return out


def _all_forms() -> list[str]:
    forms = _forms(PG_PASSWORD) + [f for secret in NOTIFY_SECRETS for f in _forms(secret, "ops")]
    for key, secret in SECRETS.items():
        forms += _forms(secret, "collector" if "MQTT" in key else "writer")
    return forms


def _assert_clean(text: str, where: str) -> None:
    leaked = [f for f in _all_forms() if f in text]
    assert not leaked, f"secret(s) {leaked} printed in {where}"


def _env(tmp_path: Path, mqtt_url: str, influx_url: str, db: str, **extra: str) -> dict[str, str]:
    return {
        **SECRETS,
        "SITETWIN_LOG_LEVEL": "DEBUG",
        "SITETWIN_MQTT__SERVERS": orjson.dumps([mqtt_url]).decode(),
        "SITETWIN_MQTT__USERNAME": "collector",
        "SITETWIN_MQTT__CLIENT_ID": f"secrets-{tmp_path.name}",
        "SITETWIN_MQTT__SHARED_GROUP": f"s{abs(hash(str(tmp_path))) % 10**8}",
        "SITETWIN_INFLUXDB__URL": influx_url,
        "SITETWIN_INFLUXDB__DATABASE": db,
        "SITETWIN_INFLUXDB__USERNAME": "writer",
        "SITETWIN_COLLECTOR__BATCH_AGE": "0.2",
        "SITETWIN_COLLECTOR__METRICS_INTERVAL": "1",
        "SITETWIN_SERVICES__STATE_DIR": str(tmp_path / "state"),
        "SITETWIN_SPOOL__FSYNC": "false",
        "SITETWIN_SPOOL__DRAIN_INTERVAL": "0.2",
        **extra,
    }


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    proc.wait(30)


def _live_sites(url: str) -> int:
    from sqlalchemy import func, select

    from twin.models import LiveSiteState
    from twin.store import open_store

    store = open_store(url)
    try:
        with store.session() as s:
            return s.scalar(select(func.count()).select_from(LiveSiteState)) or 0
    finally:
        store.close()


def _open_flag(url: str) -> None:
    from datetime import UTC, datetime

    from twin.models import Flag
    from twin.store import open_store

    store = open_store(url)
    now = datetime.now(UTC)
    try:
        with store.session() as s:
            s.add(Flag(kind="mains_failure", rule="mains_failure", site_id="S0001",
                       severity="critical", status="open", opened_at=now, updated_at=now,
                       window_start=now, window_end=now, summary="on battery", evidence={},
                       dedup_key="mains_failure:S0001"))
    finally:
        store.close()


def _with_password(url: str) -> str:
    scheme, rest = url.split("://", 1)
    user, host = rest.split("@", 1)
    return f"{scheme}://{user}:{PG_PASSWORD}@{host}"


@pytest.mark.integration
def test_a_full_run_at_debug_level_prints_no_secret(tmp_path, mosquitto, influxdb, influx_db,
                                                     postgresql_url):
    logs = []
    # 1. a full run: collector, twin (PostgreSQL, password in the URL), rules, and a
    # notification channel that is down (an open flag waits for it); good and bad input
    _open_flag(postgresql_url)
    channel = (f"json://ops:{NOTIFY_SECRETS[0]}@127.0.0.1:{free_port()}/hook/{NOTIFY_SECRETS[1]}"
               f"?token={NOTIFY_SECRETS[1]}")
    env = _env(tmp_path, mosquitto.url, influxdb.url, influx_db,
               SITETWIN_TWIN__URL=_with_password(postgresql_url),
               SITETWIN_COLLECTOR__LIVE_FLUSH_INTERVAL="0.5",
               SITETWIN_NOTIFY__INTERVAL="0.5s", SITETWIN_NOTIFY__RETRY_BACKOFF="0.2s",
               SITETWIN_NOTIFY__CHANNELS=orjson.dumps([{"name": "hook", "url": channel}]).decode())
    log = tmp_path / "full.log"
    logs.append(log)
    proc = subprocess.Popen([sys.executable, "-m", "sitetwin", "-vv", "run"], env={**os.environ, **env},
                            stdout=log.open("ab"), stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        # the session is persistent only once subscribed: publish until the first reading lands
        k = 0
        deadline = time.monotonic() + 90
        while not count(influxdb, influx_db, "SELECT count(mains_ok) FROM tower"):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"nothing ingested in 90 s: {log.read_text()[-3000:]}"
            publish(mosquitto.host, mosquitto.port, tower_messages(1, 1, start_s=1_790_000_000 + k))
            k += 1
            time.sleep(0.3)
        publish(mosquitto.host, mosquitto.port,
                [*tower_messages(5, 20),
                 ("sites/S0001/tower", b"{bad json " + SECRETS["SITETWIN_MQTT__PASSWORD"][:3].encode())])
        wait_for(lambda: count(influxdb, influx_db, "SELECT count(mains_ok) FROM tower") >= 100,
                 message="ingest")
        wait_for(lambda: count(influxdb, influx_db, "SELECT count(received_msgs) FROM sitetwin_pipeline"),
                 message="pipeline metrics")
        # the twin has flushed the live state of all 5 sites (a flush every 0.5 s here)
        wait_for(lambda: _live_sites(postgresql_url) >= 5, message="the twin's live state")
        # the notifier tried the channel that is down, and said so
        wait_for(lambda: "notify: channel hook (json://ops:****@127.0.0.1" in log.read_text(),
                 message="the failing channel in the log")
    finally:
        _stop(proc)
    assert proc.returncode == 0, log.read_text()[-3000:]

    # 2. InfluxDB unreachable: write errors and spooling get logged
    dead = f"http://127.0.0.1:{free_port()}"
    log = tmp_path / "influx-down.log"
    logs.append(log)
    proc = collector_process(_env(tmp_path, mosquitto.url, dead, influx_db), log_path=log,
                             wait_subscribed=True)
    try:
        spool = tmp_path / "state" / "spool"
        publish(mosquitto.host, mosquitto.port, tower_messages(3, 10, start_s=1_791_000_000))
        try:
            wait_for(lambda: any(spool.rglob("*.lp")), timeout=60, message="spooled batches")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{log.read_text()[-3000:]}") from None
    finally:
        _stop(proc)

    # 3. a broker that refuses the password (TLS listener of `sitetwin broker-config`)
    from tests.connectors.test_broker_security import _start_broker

    broker = _start_broker(tmp_path / "secure", require_client_cert=False)
    log = tmp_path / "refused.log"
    logs.append(log)
    try:
        proc = collector_process(_env(tmp_path, f"ssl://127.0.0.1:{broker.svc.port}", influxdb.url, influx_db,
                                      SITETWIN_MQTT__TLS_CA=broker.ca), log_path=log)
        try:
            # a connection failure ("failed; retrying") may come first: wait for the refusal itself
            wait_for(lambda: any(s in log.read_text() for s in ("Not authorized", "refused")),
                     message="the broker's refusal in the log")
        finally:
            _stop(proc)
    finally:
        broker.svc.stop()

    texts = {p.name: p.read_text(errors="replace") for p in logs}
    assert "DEBUG" in texts["full.log"]  # the runs really were at debug level
    assert "Not authorized" in texts["refused.log"] or "refused" in texts["refused.log"]
    for name, text in texts.items():
        _assert_clean(text, name)


def test_services_status_and_settings_never_show_secrets(tmp_path, monkeypatch):
    env = _env(tmp_path, "tcp://127.0.0.1:1", "http://127.0.0.1:1", "x",
               SITETWIN_TWIN__URL=f"postgresql+psycopg://u:{PG_PASSWORD}@127.0.0.1:1/x")
    for args in (["services", "status", "--json"], ["-vv", "services", "status"],
                 ["rejected", "counts", "--json"]):
        out = subprocess.run([sys.executable, "-m", "sitetwin", *args], env={**os.environ, **env},
                             capture_output=True, text=True, cwd=ROOT, timeout=60)
        _assert_clean(out.stdout + out.stderr, " ".join(args))
        if "--json" in args:
            orjson.loads(out.stdout)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    for shown in (repr(settings), str(settings), settings.model_dump_json()):
        for key, secret in SECRETS.items():
            assert secret not in shown, key
    assert settings.mqtt.password.get_secret_value() == SECRETS["SITETWIN_MQTT__PASSWORD"]


# -- static: no shell, no eval, no SQL from strings ------------------------------------------

PACKAGES = ("sitetwin", "connectors", "twin", "rules", "dashboards", "adapters")
SQL_CALLS = {"execute", "executemany", "executescript", "exec_driver_sql", "text"}
# (file, start of the statement): formatted SQL that is reviewed and carries no input.
REVIEWED = {
    # a module constant integer; PRAGMAs cannot take parameters
    ("twin/store.py", "PRAGMA busy_timeout="),
    # int() of a validated Size setting; PRAGMAs cannot take parameters
    ("connectors/deadletter.py", "PRAGMA journal_size_limit="),
    # InfluxQL has no parameters for identifiers: quoted by connectors.influx.quote_identifier()
    ("sitetwin/services.py", "CREATE DATABASE "),
}


def _sources() -> list[Path]:
    return [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]


def _first_text(node: ast.AST) -> str:
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value for v in node.values if isinstance(v, ast.Constant))
    if isinstance(node, ast.BinOp) and isinstance(node.left, ast.Constant):
        return str(node.left.value)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
            isinstance(node.func.value, ast.Constant):
        return str(node.func.value.value)
    return ""


def _findings(paths: list[Path] | None = None, root: Path = ROOT) -> list[str]:
    out = []
    for path in paths if paths is not None else _sources():
        rel = path.relative_to(root).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            where = f"{rel}:{node.lineno}"
            if isinstance(func, ast.Name) and name in {"eval", "exec", "compile", "__import__"}:
                out.append(f"{where}: {name}()")
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and \
                    (func.value.id, name) in {("os", "system"), ("os", "popen"), ("pickle", "loads"),
                                              ("pickle", "load"), ("marshal", "loads")}:
                out.append(f"{where}: {func.value.id}.{name}()")
            for kw in node.keywords:
                if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                    out.append(f"{where}: shell=")
            if name in {"Popen", "run", "call", "check_call", "check_output"} and node.args and \
                    isinstance(node.args[0], (ast.Constant, ast.JoinedStr)) and \
                    isinstance(func, ast.Attribute) and getattr(func.value, "id", "") == "subprocess":
                out.append(f"{where}: subprocess with a command string")
            if name in SQL_CALLS and node.args:
                sql = node.args[0]
                formatted = isinstance(sql, ast.JoinedStr) or (
                    isinstance(sql, ast.BinOp) and isinstance(sql.op, (ast.Mod, ast.Add))) or (
                    isinstance(sql, ast.Call) and isinstance(sql.func, ast.Attribute) and sql.func.attr == "format")
                if formatted:
                    head = _first_text(sql)
                    if not any(rel == f and head.startswith(h) for f, h in REVIEWED):
                        out.append(f"{where}: SQL built from a formatted string ({head[:40]!r}...)")
    return out


def test_no_eval_no_shell_no_formatted_sql_in_the_code():
    assert len(_sources()) > 20
    assert _findings() == []


def test_the_static_check_does_catch_what_it_looks_for(tmp_path):
    bad = tmp_path / "probe.py"
    bad.write_text(
        "import subprocess, os\n"
        "def f(conn, x):\n"
        "    eval(x)\n"
        "    subprocess.run('ls ' + x, shell=True)\n"
        "    os.system(x)\n"
        "    conn.execute(f\"SELECT * FROM t WHERE id = '{x}'\")\n"
        "    conn.execute('SELECT %s' % x)\n"
    )
    found = _findings([bad], root=tmp_path)
    assert len(found) == 5, found
