"""Devices files and profiles: loaded once, every mistake named."""

from __future__ import annotations

import pytest

from adapters.device import PROFILES_DIR, load_devices, load_profile
from adapters.errors import DevicesFileError


def test_builtin_profiles_load():
    names = sorted(p.stem for p in PROFILES_DIR.glob("*.toml"))
    assert names == ["dlt645-meter", "eastron-sdm630", "generic-meter", "generic-rectifier"]
    for name in names:
        profile = load_profile(name)
        assert profile.name == name and (profile.registers or profile.items)


def test_a_devices_file_with_builtin_and_own_profiles(tmp_path):
    (tmp_path / "mine.toml").write_text(
        'name = "mine"\nstream = "tower"\n[[register]]\nfield = "mains_ok"\naddress = 9\nbit = 3\n')
    devices = tmp_path / "devices.toml"
    devices.write_text(
        '[[device]]\nsite_id = "S1"\nmeter_id = "S1-M"\nhost = "10.0.0.1"\nprofile = "generic-meter"\n'
        'interval = "15s"\n'
        '[[device]]\nsite_id = "S1"\nhost = "10.0.0.2"\nunit = 7\nprofile = "mine.toml"\n')
    [(meter, mp), (plant, pp)] = load_devices(devices)
    assert (meter.name, meter.interval, meter.port, mp.stream) == ("S1-M", 15.0, 502, "power")
    assert (plant.unit, pp.name, pp.registers[0].bit) == (7, "mine", 3)


@pytest.mark.parametrize(("text", "match"), [
    ("", "no \\[\\[device\\]\\]"),
    ("[[devices]]\nx = 1\n", "unknown table"),
    ('[[device]]\nsite_id = "S 1"\nhost = "h"\nprofile = "generic-meter"\n', "device 1: site_id"),
    ('[[device]]\nsite_id = "S1"\nhost = "h"\nprofile = "generic-meter"\n', "give meter_id"),
    ('[[device]]\nsite_id = "S1"\nhost = "h"\nprofile = "nope"\n', "profile 'nope' not found"),
    ('[[device]]\nsite_id = "S1"\nhost = "h"\nprofile = "generic-rectifier"\nprot = 1\n',
     "device 1: prot"),
    ('[[device]]\nsite_id = "S1"\nhost = "h"\nprofile = "generic-rectifier"\n'
     '[[device]]\nsite_id = "S1"\nhost = "h"\nprofile = "generic-rectifier"\n', "twice"),
    ("[[device\n", "devices file"),
    ('[[device]]\nsite_id = "S1"\nmeter_id = "M"\nhost = "h"\nprofile = "dlt645-meter"\n',
     "is for dlt645"),
    ('[[device]]\nsite_id = "S1"\nmeter_id = "M"\nhost = "h"\nprotocol = "dlt645-tcp"\n'
     'profile = "dlt645-meter"\n', "12-digit address"),
])
def test_bad_devices_files_are_named(tmp_path, text, match):
    path = tmp_path / "devices.toml"
    path.write_text(text)
    with pytest.raises(DevicesFileError, match=match):
        load_devices(path)


@pytest.mark.parametrize(("text", "match"), [
    ('name = "p"\nstream = "power"\n[[register]]\nfield = "power_kw"\naddress = 0\n', "energy_kwh"),
    ('name = "p"\nstream = "tower"\n[[register]]\nfield = "mains_ok"\naddress = 0\n'
     '[[register]]\nfield = "energy_kwh"\naddress = 1\n', "not a tower field"),
    ('name = "p"\nstream = "tower"\n[[register]]\nfield = "mains_ok"\naddress = 0\ntype = "u8"\n',
     "register.0.type"),
    ('name = "p"\nstream = "power"\nprotocol = "dlt645"\n[[register]]\nfield = "energy_kwh"\n'
     'address = 0\n', "\\[\\[item\\]\\]"),
    ('name = "p"\nstream = "interference"\n[[register]]\nfield = "band"\naddress = 0\n', "stream"),
])
def test_bad_profiles_are_named(tmp_path, text, match):
    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(DevicesFileError, match=match):
        load_profile("p.toml", tmp_path)
