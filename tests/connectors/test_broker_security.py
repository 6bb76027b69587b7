"""Broker security: the generated Mosquitto config, password file and ACL, on a real Mosquitto.

A test CA, server and client certificates are made with the ``openssl`` CLI;
the broker runs from the files ``sitetwin broker-config`` writes.
"""

from __future__ import annotations

import os
import ssl
import stat
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from connectors.broker import (
    BrokerConfig,
    BrokerConfigError,
    acl_text,
    hash_password,
    mosquitto_conf,
    verify_password,
    write_bundle,
)
from connectors.collector import Collector
from connectors.deadletter import DeadLetterStore
from sitetwin.cli import main
from sitetwin.config import load_settings
from sitetwin.services import Mosquitto, free_port
from sitetwin.wiring import collector_config
from tests.support import count, wait_for

# -- pure generation --------------------------------------------------------------------------


def test_our_hash_matches_mosquitto_passwd(tmp_path):
    pw_file = tmp_path / "pw"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(pw_file), "S1", "s3cret pass"], check=True)
    theirs = pw_file.read_text().strip().split(":", 1)[1]
    assert theirs.startswith("$7$")
    assert verify_password("s3cret pass", theirs)
    assert not verify_password("s3cret pasS", theirs)
    ours = hash_password("s3cret pass")
    assert ours.split("$")[1:3] == theirs.split("$")[1:3]  # same scheme and iterations
    assert verify_password("s3cret pass", ours) and not verify_password("other", ours)
    assert not verify_password("x", "not a hash")


def test_acl_grants_devices_their_own_topics_and_the_collector_reads_only():
    acl = acl_text(["S1", "S2"], collector_user="collector")
    assert "pattern write sites/%u/#" in acl
    lines = [ln for ln in acl.splitlines() if ln and not ln.startswith("#")]
    assert lines == ["user collector", "topic read sites/#", "topic write sitetwin/flags/#",
                     "pattern write sites/%u/#"]


@pytest.mark.parametrize("bad", ["S 1", "S1,x", "a=b", 'q"', "S1\nuser collector", "sité", "", "+", "#"])
def test_acl_refuses_site_ids_outside_the_contract(bad):
    with pytest.raises(BrokerConfigError, match="site_id"):
        acl_text(["S1", bad])


def test_conf_refuses_anonymous_and_can_require_client_certificates():
    conf = mosquitto_conf(BrokerConfig(tls_ca="/b/ca.crt", tls_cert="/b/s.crt", tls_key="/b/s.key",
                                       password_file="/b/passwd", acl_file="/b/acl",
                                       require_client_cert=True, local_port=1883))
    lines = conf.splitlines()
    for expected in ("allow_anonymous false", "password_file /b/passwd", "acl_file /b/acl",
                     "listener 8883 0.0.0.0", "cafile /b/ca.crt", "require_certificate true",
                     "listener 1883 127.0.0.1", "persistence true", "max_queued_messages 0",
                     "autosave_on_changes true", "autosave_interval 1000"):
        assert expected in lines, expected
    assert "allow_anonymous true" not in conf


def test_both_generated_configs_save_after_changes_not_every_30_seconds(tmp_path):
    """Issue 11: saving every 30 s lost up to 12 029 of 20 000 acknowledged readings on a crash."""
    from connectors.broker import AUTOSAVE_CHANGES
    from sitetwin.services import Mosquitto

    services_up = Mosquitto(root=tmp_path, port=1)
    services_up.prepare()
    for conf in (services_up.config_file.read_text(),
                 mosquitto_conf(BrokerConfig(tls_ca="/b/ca.crt", tls_cert="/b/s.crt", tls_key="/b/s.key",
                                             password_file="/b/passwd", acl_file="/b/acl"))):
        lines = conf.splitlines()
        assert "autosave_on_changes true" in lines
        assert f"autosave_interval {AUTOSAVE_CHANGES}" in lines
        assert "persistence true" in lines and "max_queued_messages 0" in lines


def test_a_site_named_like_the_collector_is_refused():
    with pytest.raises(BrokerConfigError, match="clashes"):
        acl_text(["collector"])


def test_config_refuses_a_path_that_would_inject_a_directive(tmp_path):
    with pytest.raises(BrokerConfigError):
        write_bundle(tmp_path, ["S1"], tls_ca="/etc/ca.crt\nallow_anonymous true")


def test_broker_config_command_writes_private_files_keeps_passwords_and_prints_no_secret(
        tmp_path, capsys, monkeypatch):
    sites = tmp_path / "sites.csv"
    sites.write_text("\ufeffsite_id,name\nS1,One\nS2,Two\n", encoding="utf-8")
    out = tmp_path / "broker"
    monkeypatch.setenv("SITETWIN_MQTT__PASSWORD", "collector-pw-Zq9")
    assert main(["broker-config", "--out", str(out), "--sites", str(sites), "--json"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert report["sites"] == 2 and report["new_sites"] == 2
    for name in ("passwd", "device-credentials.csv", "collector-credentials.env"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600, name
    creds = (out / "device-credentials.csv").read_text()
    s1_pw = next(ln.split(",")[1] for ln in creds.splitlines() if ln.startswith("S1,"))
    assert "collector,collector-pw-Zq9," in creds
    # a re-run with one more site keeps the existing passwords and names only one new site
    assert main(["broker-config", "--out", str(out), "--sites", str(sites), "--site", "S3", "--json"]) == 0
    captured = capsys.readouterr()
    again = orjson.loads(captured.out)
    assert again["sites"] == 3 and again["new_sites"] == 1
    assert f"S1,{s1_pw}," in (out / "device-credentials.csv").read_text()
    assert s1_pw not in captured.out + captured.err and "collector-pw-Zq9" not in captured.out
    for line in (out / "passwd").read_text().splitlines():
        user, hashed = line.split(":", 1)
        assert user in {"collector", "S1", "S2", "S3"} and hashed.startswith("$7$101$")
    # bad input: one line on stderr, exit 1, nothing written
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"site_id\nS\xff1\n")
    assert main(["broker-config", "--out", str(tmp_path / "x"), "--sites", str(bad)]) == 1
    assert "not UTF-8" in capsys.readouterr().err
    assert main(["broker-config", "--out", str(tmp_path / "x"), "--site", "bad id"]) == 1
    assert "site_id" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


# -- against a real Mosquitto -----------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(d: Path) -> None:
    """A test CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    d.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=sitetwin test CA", cwd=d)
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
                      ("client", "extendedKeyUsage=clientAuth")):
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN=sitetwin {name}", cwd=d)
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext",
                 cwd=d)


@dataclass(kw_only=True)
class SecureMosquitto(Mosquitto):
    """Mosquitto running exactly the generated ``mosquitto.conf`` (plus running as us, logging)."""

    bundle_dir: Path

    def prepare(self) -> None:
        generated = (self.bundle_dir / "mosquitto.conf").read_text()
        import pwd

        self.config_file.write_text(generated + f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
                                    "log_dest stdout\n")


@dataclass
class Broker:
    svc: SecureMosquitto
    dir: Path
    passwords: dict[str, str]

    @property
    def ca(self) -> str:
        return str(self.dir / "ca.crt")


def _start_broker(tmp: Path, *, require_client_cert: bool) -> Broker:
    bundle = tmp / "bundle"
    make_pki(bundle)
    port = free_port()
    write_bundle(bundle, ["S1", "S2"], collector_password="collector-pw", port=port,
                 bind_address="127.0.0.1", require_client_cert=require_client_cert)
    creds = {}
    for line in (bundle / "device-credentials.csv").read_text().splitlines()[1:]:
        user, pw, _topic = line.split(",")
        creds[user] = pw
    svc = SecureMosquitto(root=tmp / "mosq", port=port, bundle_dir=bundle)
    svc.start()
    return Broker(svc=svc, dir=bundle, passwords=creds)


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    b = _start_broker(tmp_path_factory.mktemp("secure"), require_client_cert=False)
    yield b
    b.svc.stop()


class _Client:
    """A paho client that records the CONNACK, SUBACK and received messages as plain data."""

    def __init__(self, broker: Broker, user: str | None, password: str | None, *,
                 tls: bool = True, cert: bool = False) -> None:
        self.connack = threading.Event()
        self.reason = None
        self.suback: list = []
        self.subscribed = threading.Event()
        self.received: list[tuple[str, bytes]] = []
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{user}-{time.time_ns()}",
                             protocol=mqtt.MQTTv5)
        if user is not None:
            self.c.username_pw_set(user, password)
        if tls:
            d = broker.dir
            self.c.tls_set(ca_certs=broker.ca, certfile=str(d / "client.crt") if cert else None,
                           keyfile=str(d / "client.key") if cert else None,
                           cert_reqs=ssl.CERT_REQUIRED)
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = self._on_subscribe
        self.dropped = threading.Event()
        self.c.on_disconnect = lambda c, u, f, rc, p: self.dropped.set()
        self.c.on_message = lambda c, u, m: self.received.append((m.topic, m.payload))
        self.error: Exception | None = None
        try:
            self.c.connect("127.0.0.1", broker.svc.port)
        except (OSError, ssl.SSLError) as exc:
            self.error = exc
            return
        self.c.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.reason = reason_code
        self.connack.set()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        self.suback = list(reason_codes)
        self.subscribed.set()

    def accepted(self, timeout: float = 10.0) -> bool:
        """Whether the broker accepted the connection (False if refused or dropped)."""
        if self.error is not None:
            return False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.connack.wait(0.05):
                return not self.reason.is_failure
            if self.dropped.is_set():
                return False
        return False

    def close(self) -> None:
        if self.error is None:
            self.c.disconnect()
            self.c.loop_stop()


@pytest.mark.integration
def test_anonymous_and_wrong_passwords_are_refused(broker):
    anon = _Client(broker, None, None)
    wrong = _Client(broker, "S1", broker.passwords["S2"])
    unknown = _Client(broker, "S9", "whatever")
    good = _Client(broker, "S1", broker.passwords["S1"])
    try:
        assert not anon.accepted()
        assert anon.reason is None or anon.reason.is_failure
        assert not wrong.accepted()
        assert not unknown.accepted()
        assert good.accepted()
    finally:
        for c in (anon, wrong, unknown, good):
            c.close()
    # without TLS, nothing: the listener speaks TLS only
    plain = _Client(broker, "S1", broker.passwords["S1"], tls=False)
    try:
        assert not plain.accepted(timeout=5)
    finally:
        plain.close()


def _forge(broker: Broker, user: str, topic: str, payload: bytes) -> str:
    """Publish where ``user`` may not, at QoS 1; return how the broker answered."""
    client = _Client(broker, user, broker.passwords[user])
    assert client.accepted()
    outcome: list[str] = []
    client.c.on_publish = lambda c, u, mid, rc, p: outcome.append(str(rc))
    client.c.on_disconnect = lambda c, u, f, rc, p: outcome.append("disconnected")
    client.c.publish(topic, payload, qos=1)
    wait_for(lambda: outcome, message=f"the broker's answer to {user} publishing on {topic}")
    client.close()
    return outcome[0]


@pytest.mark.integration
def test_devices_publish_only_their_own_site_and_read_nothing(broker):
    watcher = _Client(broker, "collector", broker.passwords["collector"])
    s1 = _Client(broker, "S1", broker.passwords["S1"])
    try:
        assert watcher.accepted() and s1.accepted()
        watcher.c.subscribe("sites/#", qos=1)
        assert watcher.subscribed.wait(10) and not watcher.suback[0].is_failure
        # A device may not read telemetry (its own or others'). Mosquitto 2.0 grants the
        # subscription and applies the read ACL to each delivery: checked at the end.
        s1.c.subscribe("sites/#", qos=1)
        assert s1.subscribed.wait(10)
        forged = orjson.dumps({"ts": 1_790_000_000, "mains_ok": False})
        # Each forgery is refused (PUBACK "Not authorized" and/or the link dropped) before the
        # legitimate message below is even sent: had the broker forwarded a forgery, the
        # watcher would have received it first.
        for user, topic in (("S1", "sites/S2/tower"), ("S1", "sites/S2"), ("S1", "sites/S1x/tower"),
                            ("S1", "sitetwin/flags/x"), ("S1", "other"), ("collector", "sites/S2/tower")):
            assert _forge(broker, user, topic, forged) in ("Not authorized", "disconnected")
        own = orjson.dumps({"ts": 1_790_000_000, "mains_ok": True})
        own = orjson.dumps({"ts": 1_790_000_000, "mains_ok": True})
        s1.c.publish("sites/S1/tower", own, qos=1).wait_for_publish(10)
        wait_for(lambda: watcher.received, message="the legitimate message")
        assert watcher.received == [("sites/S1/tower", own)]
        s1.c.publish("sites/S1/power", own, qos=1).wait_for_publish(10)
        wait_for(lambda: len(watcher.received) == 2, message="second legitimate message")
        assert [t for t, _ in watcher.received] == ["sites/S1/tower", "sites/S1/power"]
        # a QoS 1 round trip on s1's own connection: anything the broker had sent s1
        # before this PUBACK has been handled by then
        s1.c.publish("sites/S1/tower", own, qos=1).wait_for_publish(10)
        assert s1.received == []
    finally:
        watcher.close()
        s1.close()


@pytest.mark.integration
def test_collector_over_tls_with_password_ingests_only_what_devices_may_send(
        broker, tmp_path, influxdb, influx_db):
    settings = load_settings(
        None,
        mqtt={"servers": [f"ssl://127.0.0.1:{broker.svc.port}"], "client_id": "secure-collector",
              "shared_group": "secure", "username": "collector", "password": broker.passwords["collector"],
              "tls_ca": broker.ca},
        influxdb={"url": influxdb.url, "database": influx_db},
        collector={"batch_size": 100, "batch_age": "100ms"},
        services={"state_dir": str(tmp_path / "state")},
        spool={"fsync": False},
    )
    collector = Collector(collector_config(settings))
    collector.start()
    s2 = _Client(broker, "S2", broker.passwords["S2"])
    try:
        wait_for(collector.subscribed.is_set, message="shared subscription over TLS")
        assert s2.accepted()
        for i in range(3):  # refused before the legitimate ones are sent
            _forge(broker, "S2", "sites/S1/tower", orjson.dumps({"ts": 1_790_000_000 + i, "mains_ok": False}))
        for i in range(5):
            s2.c.publish("sites/S2/tower", orjson.dumps({"ts": 1_790_000_000 + i, "mains_ok": True}),
                         qos=1).wait_for_publish(10)
        wait_for(lambda: count(influxdb, influx_db, "SELECT count(mains_ok) FROM tower") == 5,
                 message="S2's own readings")
    finally:
        s2.close()
        collector.stop()
    out = influxdb.query('SELECT count(mains_ok) FROM tower GROUP BY site_id', db=influx_db)
    per_site = {s["tags"]["site_id"]: s["values"][0][1] for s in out["results"][0]["series"]}
    assert per_site == {"S2": 5}
    assert DeadLetterStore(settings.dead_letter_path).total() == 0


@pytest.mark.integration
def test_client_certificate_can_be_required(tmp_path):
    b = _start_broker(tmp_path, require_client_cert=True)
    try:
        without = _Client(b, "S1", b.passwords["S1"])
        with_cert = _Client(b, "S1", b.passwords["S1"], cert=True)
        cert_wrong_pw = _Client(b, "S1", "nope", cert=True)
        try:
            assert not without.accepted(timeout=5)
            assert with_cert.accepted()
            assert not cert_wrong_pw.accepted()
        finally:
            for c in (without, with_cert, cert_wrong_pw):
                c.close()
        # the collector presents its certificate from tls_cert/tls_key
        settings = load_settings(
            None,
            mqtt={"servers": [f"ssl://127.0.0.1:{b.svc.port}"], "client_id": "cert-collector",
                  "username": "collector", "password": b.passwords["collector"], "tls_ca": b.ca,
                  "tls_cert": str(b.dir / "client.crt"), "tls_key": str(b.dir / "client.key")},
            influxdb={"url": "http://127.0.0.1:1", "create_database": False},
            services={"state_dir": str(tmp_path / "state")},
        )
        collector = Collector(collector_config(settings))
        collector.start()
        try:
            wait_for(collector.subscribed.is_set, message="collector subscribed with a client certificate")
        finally:
            collector.stop(timeout=5)
    finally:
        b.svc.stop()
