"""Reading devices over Modbus TCP: request plans, decoding, and pymodbus's own server on loopback."""

from __future__ import annotations

import time

import pytest

from adapters.device import Device, load_profile
from adapters.errors import DeviceError
from adapters.modbus import ModbusReader, decode, plan
from tests.adapters.servers import ModbusServer, SilentDevice, words


def test_plans_join_near_registers_and_split_far_ones():
    assert plan(load_profile("generic-meter")) == [("holding", 0, 7)]
    assert plan(load_profile("eastron-sdm630")) == [("input", 0, 8), ("input", 52, 22)]
    assert plan(load_profile("generic-rectifier")) == [("holding", 0, 6)]


def test_decode_types_scales_bits_and_word_order():
    meter = load_profile("generic-meter")
    regs = words(("uint32", 1234567), ("uint16", 2301), ("uint16", 1234), ("int32", -2500),
                 ("int16", -950))
    fields = decode(meter, {("holding", i): r for i, r in enumerate(regs)})
    assert fields == {"energy_kwh": 12345.67, "voltage_v": 230.1, "current_a": 12.34,
                      "power_kw": -2.5, "power_factor": -0.95}
    plant = load_profile("generic-rectifier")
    regs = words(("uint16", 0b101), ("uint16", 5342), ("uint16", 456), ("uint16", 87),
                 ("int16", -52), ("uint16", 0b10000))
    fields = decode(plant, {("holding", i): r for i, r in enumerate(regs)})
    assert fields == {"mains_ok": True, "on_battery": False, "generator_running": True,
                      "battery_voltage_v": 53.42, "rectifier_load_a": 45.6, "battery_soc_pct": 87.0,
                      "cabinet_temp_c": -5.2, "door_open": True}
    sdm = load_profile("eastron-sdm630")
    little = {("input", 72): words(("float32", 1.5))[1], ("input", 73): words(("float32", 1.5))[0]}
    reg = sdm.registers[-1].model_copy(update={"word_order": "little"})
    assert decode(sdm.model_copy(update={"registers": (reg,)}), little) == {"energy_kwh": 1.5}
    with pytest.raises(DeviceError, match="not read"):
        decode(meter, {})


def _device(port: int, unit: int = 1, profile: str = "generic-meter") -> Device:
    return Device(site_id="S1", meter_id="S1-M", host="127.0.0.1", port=port, unit=unit,
                  profile=profile)


@pytest.mark.integration
def test_reads_from_pymodbus_server_and_maps_its_failures():
    meter = words(("uint32", 1000), ("uint16", 2300), ("uint16", 500), ("int32", 1500),
                  ("int16", 990))
    server = ModbusServer({1: meter, 2: [0] * 3}).start()
    silent = SilentDevice()
    try:
        good = ModbusReader(_device(server.port), load_profile("generic-meter"), timeout_s=2)
        assert good.read() == {"energy_kwh": 10.0, "voltage_v": 230.0, "current_a": 5.0,
                               "power_kw": 1.5, "power_factor": 0.99}
        short = ModbusReader(_device(server.port, unit=2), load_profile("generic-meter"),
                             timeout_s=2)
        with pytest.raises(DeviceError) as exc:
            short.read()
        assert exc.value.reason == "exception" and "code 2" in str(exc.value)
        dead = ModbusReader(_device(silent.port), load_profile("generic-meter"), timeout_s=0.5)
        t0 = time.monotonic()
        with pytest.raises(DeviceError) as exc:
            dead.read()
        assert exc.value.reason == "timeout" and time.monotonic() - t0 < 3
        from sitetwin.services import free_port
        closed = ModbusReader(_device(free_port()), load_profile("generic-meter"), timeout_s=0.5)
        with pytest.raises(DeviceError) as exc:
            closed.read()
        assert exc.value.reason == "connection"
        assert good.read()["energy_kwh"] == 10.0  # the connection survived the others
    finally:
        silent.stop()
        server.stop()
