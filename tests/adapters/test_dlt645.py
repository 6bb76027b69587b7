"""DL/T 645-2007: the codec against hand-made frames, and meters behind a loopback converter."""

from __future__ import annotations

import threading

import pytest

from adapters.device import Device, load_profile
from adapters.dlt645 import (
    Dlt645Reader,
    FrameError,
    decode_value,
    encode_value,
    parse_frame,
    read_request,
    response_frame,
)
from adapters.errors import DeviceError
from adapters.gateway import Gateway
from adapters.sink import ReadingSink
from core.settings import load_settings
from tests.adapters.servers import Dlt645Server
from tests.adapters.test_watcher import _stored
from tests.connectors.test_hostile import collector_env
from tests.support import collector_process, wait_for


def test_read_request_matches_the_standards_layout():
    # Meter 000012345678 asked for the total forward active energy (DI 00 01 00 00).
    frame = read_request("000012345678", "00010000")
    body = bytes([0x68, 0x78, 0x56, 0x34, 0x12, 0x00, 0x00, 0x68, 0x11, 0x04,
                  0x33, 0x33, 0x34, 0x33])
    assert frame == b"\xfe" * 4 + body + bytes([sum(body) & 0xFF, 0x16])


def test_a_normal_answer_round_trips_and_values_decode():
    raw = response_frame("000012345678", "00010000", encode_value(123456.78, 4, 2))
    (frame, used) = parse_frame(raw + b"\x68junk")
    assert used == len(raw)
    assert (frame.address, frame.control) == ("000012345678", 0x91)
    assert frame.data[:4] == bytes([0x00, 0x00, 0x01, 0x00])
    assert frame.data[4:] == bytes([0x78, 0x56, 0x34, 0x12])
    assert decode_value(frame.data[4:], 2) == 123456.78
    assert decode_value(encode_value(-1.234, 3, 4, signed=True), 4, signed=True) == -1.234
    assert decode_value(bytes([0x50, 0x82]), 3, signed=True) == -0.250


@pytest.mark.parametrize(("raw", "match"), [
    (b"\x69" + b"\x00" * 11, "not 0x68"),
    (bytes([0x68, 1, 2, 3, 4, 5, 6, 0x00, 0x91, 0x00, 0x00, 0x16]), "second 0x68"),
])
def test_bad_frames(raw, match):
    with pytest.raises(FrameError, match=match):
        parse_frame(raw)


def test_checksum_end_byte_and_partial_frames():
    raw = bytearray(response_frame("000000000001", "02010100", encode_value(230.1, 2, 1)))
    assert parse_frame(bytes(raw[:-3])) is None
    bad = bytearray(raw)
    bad[-2] ^= 1
    with pytest.raises(FrameError, match="checksum"):
        parse_frame(bytes(bad))
    bad = bytearray(raw)
    bad[-1] = 0x17
    with pytest.raises(FrameError, match="0x16"):
        parse_frame(bytes(bad))
    with pytest.raises(FrameError, match="BCD"):
        decode_value(b"\x1a", 0)
    with pytest.raises(ValueError):
        read_request("12345", "00010000")


def _meter(energy: float) -> dict[str, bytes]:
    return {"00010000": encode_value(energy, 4, 2), "02010100": encode_value(229.8, 2, 1),
            "02020100": encode_value(4.125, 3, 3, signed=True),
            "02030000": encode_value(0.9512, 3, 4, signed=True),
            "02060000": encode_value(-0.987, 2, 3, signed=True)}


def _device(port: int, address: str, name: str = "") -> Device:
    return Device(id=name, site_id="D1", meter_id=f"D1-{address[-2:]}", host="127.0.0.1", port=port,
                  protocol="dlt645-tcp", address=address, profile="dlt645-meter")


def test_reading_meters_through_a_converter():
    meters = {"000000000001": _meter(1000.0), "000000000002": {"00010000": encode_value(5, 4, 2)},
              "000000000003": _meter(7.0)}
    server = Dlt645Server(meters, corrupt=frozenset({"000000000003"}))
    profile = load_profile("dlt645-meter")
    try:
        good = Dlt645Reader(_device(server.port, "000000000001"), profile, timeout_s=2)
        assert good.read() == {"energy_kwh": 1000.0, "voltage_v": 229.8, "current_a": 4.125,
                               "power_kw": 0.9512, "power_factor": -0.987}
        assert good.read()["energy_kwh"] == 1000.01
        partial = Dlt645Reader(_device(server.port, "000000000002"), profile, timeout_s=2)
        with pytest.raises(DeviceError) as exc:
            partial.read()
        assert exc.value.reason == "exception" and "no such data item" in str(exc.value)
        absent = Dlt645Reader(_device(server.port, "000000000009"), profile, timeout_s=0.3)
        with pytest.raises(DeviceError) as exc:
            absent.read()
        assert exc.value.reason == "timeout"
        corrupt = Dlt645Reader(_device(server.port, "000000000003"), profile, timeout_s=2)
        with pytest.raises(DeviceError) as exc:
            corrupt.read()
        assert exc.value.reason == "decode" and "checksum" in str(exc.value)
        assert good.read()["energy_kwh"] == 1000.02
    finally:
        server.stop()


@pytest.mark.integration
def test_the_gateway_polls_dlt645_meters_into_influxdb(tmp_path, mosquitto, influxdb, influx_db):
    server = Dlt645Server({"000000000001": _meter(1000.0), "000000000002": _meter(2000.0)})
    profile = load_profile("dlt645-meter")
    devices = [(_device(server.port, "000000000001"), profile),
               (_device(server.port, "000000000002"), profile),
               (_device(server.port, "000000000007", name="absent").model_copy(
                   update={"timeout": 0.2, "retries": 0}), profile)]
    proc = collector_process(collector_env(tmp_path, mosquitto, influxdb.url, influx_db),
                             log_path=tmp_path / "c.log", wait_subscribed=True)
    settings = load_settings(None, mqtt={"servers": [mosquitto.url]},
                             services={"state_dir": str(tmp_path / "state")},
                             adapters={"gateway": {"interval": "200ms", "fsync": False,
                                                   "flush_interval": "200ms"}})
    sink = ReadingSink(settings.mqtt, dead_letter=settings.dead_letter,
                       dead_letter_path=settings.dead_letter_path, source="gateway")
    sink.connect()
    gateway = Gateway(settings.adapters.gateway, sink, devices, state_dir=settings.state_dir,
                      buffer_max_bytes=settings.spool.max_bytes)
    stop = threading.Event()
    thread = threading.Thread(target=gateway.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: min(s.polls_ok for s in gateway.devices[:2]) >= 5, timeout=60,
                 message="5 polls of each meter")
        stop.set()
        thread.join(60)
        wait_for(lambda: len(_stored(influxdb, influx_db, "power", "ms")) >= gateway.readings_polled,
                 timeout=60, message="every reading stored")
    finally:
        stop.set()
        gateway.close()
        sink.close()
        proc.terminate()
        proc.wait(30)
        server.stop()
    rows = _stored(influxdb, influx_db, "power", "ms")
    assert len(rows) == len({(r["meter_id"], r["time"]) for r in rows}) == gateway.readings_polled
    first = sorted((r for r in rows if r["meter_id"] == "D1-01"), key=lambda r: r["time"])
    assert [round(r["energy_kwh"], 2) for r in first[:3]] == [1000.0, 1000.01, 1000.02]
    assert (first[0]["voltage_v"], first[0]["power_factor"]) == (229.8, -0.987)
    absent = gateway.devices[2]
    assert absent.polls_ok == 0 and set(absent.errors) == {"timeout"}
