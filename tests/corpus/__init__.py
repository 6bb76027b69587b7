"""The hostile-input corpus: hand-written cases (``mqtt_handwritten.jsonl``) plus generated ones.

Each case is a topic, a payload and the expected outcome: ``"ok"`` with the
number of readings, or the rejection reason code of ``connectors.reading``.
Payload text may use placeholders, expanded against the test's clock so that
time-relative cases stay valid: ``$NOW``, ``$NOW+N``/``$NOW-N`` (epoch
seconds), ``$NOWMS`` (epoch milliseconds), ``$ISO-N`` (ISO 8601 with a +02:00
offset, N seconds ago), ``$DEEPn`` (n nested arrays), ``$PRB276`` (276 PRB values).
Cases with ``"mqtt": false`` cannot be published (or would not match the
collector's subscription ``sites/+/+``) and are unit-tested only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import orjson

__all__ = ["Case", "corpus", "generated", "handwritten"]

HERE = Path(__file__).parent
_PLACEHOLDER = re.compile(r"\$(NOWMS|NOW([+-]\d+)?|ISO-(\d+)|DEEP(\d+)|PRB276)")
ID_HOSTILE = [" ", ",", "=", '"', "'", "\\", "\n", "\r", "\t", "é", "\u200b", "\ufeff", "😀", "\x00", "/",
              "+", "#", "*", "$", ";", "|", "`"]


@dataclass(frozen=True)
class Case:
    name: str
    topic: str
    payload: bytes
    expect: str  # "ok" or a rejection reason
    points: int = 0
    mqtt: bool = True

    @property
    def ok(self) -> bool:
        return self.expect == "ok"


def _expand(text: str, now: int) -> str:
    def sub(m: re.Match) -> str:
        token = m.group(1)
        if token == "NOWMS":
            return str(now * 1000)
        if token.startswith("NOW"):
            return str(now + int(m.group(2) or 0))
        if token.startswith("ISO"):
            tz = timezone(timedelta(hours=2))
            return (datetime.fromtimestamp(now - int(m.group(3)), UTC).astimezone(tz)).isoformat()
        if token.startswith("DEEP"):
            n = int(m.group(4))
            return "[" * n + "]" * n
        return orjson.dumps([-100.0] * 276).decode()

    return _PLACEHOLDER.sub(sub, text)


def handwritten(now: int) -> list[Case]:
    cases = []
    for line in (HERE / "mqtt_handwritten.jsonl").read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        d = orjson.loads(line)
        if "payload_hex" in d:
            payload = bytes.fromhex(d["payload_hex"])
        else:
            payload = _expand(d["payload"], now).encode("utf-8", "surrogatepass")
        topic = d["topic"]
        mqtt = d.get("mqtt", True) and _publishable(topic)
        cases.append(Case(d["name"], topic, payload, d["expect"], d.get("points", 0), mqtt))
    return cases


def _publishable(topic: str) -> bool:
    """Whether a client may publish on ``topic`` and ``sites/+/+`` matches it.

    Mosquitto drops a client that publishes on a topic with wildcards, NUL or
    other control characters (U+0001-U+001F, U+007F-U+009F), so those never
    reach a collector.
    """
    parts = topic.split("/")
    return (len(parts) == 3 and parts[0] == "sites" and all(parts)
            and not any(c in "+#" or ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in topic))


def generated(now: int, *, max_payload_bytes: int = 1024 * 1024) -> list[Case]:
    """Cases too big or too many to write by hand."""
    tower = {"ts": now, "mains_ok": True}
    cases = [
        Case("oversize payload", "sites/B0100/tower", b" " * (max_payload_bytes + 1), "oversize"),
        Case("10 001 readings", "sites/B0100/tower", orjson.dumps([tower] * 10_001), "too_many_readings"),
        Case("huge array of numbers", "sites/B0100/tower", orjson.dumps(list(range(20_000))),
             "too_many_readings"),
        Case("5 000 readings in one message", "sites/G0100/tower",
             orjson.dumps([{"ts": now - 5000 + i, "mains_ok": i % 2 == 0} for i in range(5000)]),
             "ok", 5000),
        Case("275 PRBs", "sites/G0101/interference",
             orjson.dumps({"ts": now, "cell_id": "c1", "band": "n41", "ul_interference_dbm": -99.5,
                           "prb_dbm": [-140.0 + (i % 100) for i in range(275)]}), "ok", 1),
        Case("half a megabyte in an unknown field", "sites/G0102/tower",
             orjson.dumps({**tower, "blob": "x" * 500_000}), "ok", 1),
        Case("ten thousand unknown keys", "sites/G0103/tower",
             orjson.dumps({**tower, **{f"k{i}": i for i in range(10_000)}}), "ok", 1),
    ]
    for i, ch in enumerate(ID_HOSTILE):
        for field, stream, base in (
            ("meter_id", "power", {"ts": now, "energy_kwh": 1.0}),
            ("cell_id", "interference", {"ts": now, "band": "n78", "ul_interference_dbm": -100.0}),
        ):
            for j, value in enumerate((f"X{ch}1", f"{ch}X", f"X{ch}")):
                cases.append(Case(f"{field} with {ch!r} ({j})", f"sites/B02{i:02d}/{stream}",
                                  orjson.dumps({**base, field: value}), "schema"))
        topic = f"sites/B{ch}03{i:02d}/tower"
        expect = "bad_topic" if ch == "/" else "bad_site_id"
        cases.append(Case(f"topic site id with {ch!r}", topic, orjson.dumps(tower), expect,
                          mqtt=_publishable(topic)))
    return cases


def corpus(now: int, *, max_payload_bytes: int = 1024 * 1024) -> list[Case]:
    return handwritten(now) + generated(now, max_payload_bytes=max_payload_bytes)
