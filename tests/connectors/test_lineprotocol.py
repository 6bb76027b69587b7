"""Line protocol of validated readings: measurements, tags, field types, escaping."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

from connectors.lineprotocol import encode, field_value, line
from connectors.reading import parse_message

NOW = datetime(2026, 11, 24, 8, 15, tzinfo=UTC)


def readings(topic, doc):
    parsed = parse_message(topic, orjson.dumps(doc), NOW)
    assert parsed.ok, parsed.rejection
    return parsed.readings


def test_tower_power_interference_lines():
    body = encode([
        *readings("sites/S1/tower", {"ts": 1795508000, "mains_ok": True, "battery_soc_pct": 80}),
        *readings("sites/S1/power", {"ts": 1795508000, "meter_id": "M1", "energy_kwh": 5,
                                     "power_kw": 2.5}),
        *readings("sites/S1/interference", {"ts": 1795508000, "cell_id": "C1", "band": "n78",
                                            "ul_interference_dbm": -101.5,
                                            "prb_dbm": [-110, -109.5]}),
    ]).decode().split("\n")
    ts = "1795508000000000000"
    assert body == [
        f"tower,site_id=S1 mains_ok=true,battery_soc_pct=80.0 {ts}",
        f"power,meter_id=M1,site_id=S1 energy_kwh=5.0,power_kw=2.5 {ts}",
        f"interference,band=n78,cell_id=C1,site_id=S1 ul_interference_dbm=-101.5,period_s=900i {ts}",
        f"interference_prb,band=n78,cell_id=C1,site_id=S1 prb_000=-110.0,prb_001=-109.5 {ts}",
    ]


def test_generic_line_escapes_tags_and_strings_and_sorts_tags():
    out = line("flags", {"site_id": "S1", "kind": "a b,c=d"}, {"summary": 'say "x"\\', "open": True,
                                                             "n": 3, "skip": None}, 7)
    assert out == 'flags,kind=a\\ b\\,c\\=d,site_id=S1 summary="say \\"x\\"\\\\",open=true,n=3i 7'


def test_field_values_keep_their_types():
    assert field_value(True) == "true"
    assert field_value(3) == "3i"
    assert field_value(0.1) == "0.1"
    assert field_value("a\nb") == '"a\\nb"'
