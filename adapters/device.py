"""The gateway's devices file and device profiles (which registers are which contract fields).

A devices file is TOML with one ``[[device]]`` table per device::

    [[device]]
    site_id = "BJ0001"
    meter_id = "BJ0001-M1"        # power profiles: the contract's meter_id
    host = "10.20.0.15"           # the device, or its serial-to-TCP gateway
    port = 502
    unit = 1                      # Modbus unit (slave) id, 1-247 (0 only for TCP-native)
    profile = "eastron-sdm630"    # a built-in profile, or a path relative to this file
    # interval, timeout, retries: per-device overrides of [adapters.gateway]

A profile (``adapters/profiles/*.toml`` are the built-in ones) names the stream,
the protocol (``modbus``, the default, or ``dlt645``) and, for Modbus, one
``[[register]]`` per contract field: ``table`` (holding or input),
0-based ``address``, ``type`` (uint16, int16, uint32, int32, float32),
``word_order`` of 32-bit values, ``bit`` (a flag in a status word), ``scale``
and ``offset`` (value = raw x scale + offset); for DL/T 645-2007, one ``[[item]]``
per field: the data identifier ``di`` as printed (``"00010000"``), the value's
``size`` in BCD bytes, ``decimals``, ``signed`` and ``scale``.  Both are checked once, when
loaded: a field the stream does not have, a power profile without
``energy_kwh``, a tower profile without ``mains_ok`` or a device without the
identifiers its stream needs is an error naming the device and the key.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from adapters.errors import DevicesFileError
from connectors.reading import ID_PATTERN, MODELS
from core.units import Duration

__all__ = ["PROFILES_DIR", "DataItem", "Device", "Profile", "Register", "load_devices",
           "load_profile"]

PROFILES_DIR = Path(__file__).with_name("profiles")
_WIDTH = {"uint16": 1, "int16": 1, "uint32": 2, "int32": 2, "float32": 2}
_REQUIRED = {"power": "energy_kwh", "tower": "mains_ok"}


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Register(_Model):
    """One contract field read from one register (or a pair of them)."""

    field: str
    table: Literal["holding", "input"] = "holding"
    address: int = Field(ge=0, le=65535)
    type: Literal["uint16", "int16", "uint32", "int32", "float32"] = "uint16"
    word_order: Literal["big", "little"] = "big"
    bit: int | None = Field(default=None, ge=0, le=31)
    scale: float = 1.0
    offset: float = 0.0

    @property
    def width(self) -> int:
        """Registers this field occupies."""
        return _WIDTH[self.type]


class DataItem(_Model):
    """One contract field read by a DL/T 645-2007 data identifier."""

    field: str
    di: str = Field(pattern=r"^[0-9A-Fa-f]{8}$")  # DI3 DI2 DI1 DI0, as printed: "00010000"
    size: int = Field(ge=1, le=8)  # BCD bytes of the value
    decimals: int = Field(default=0, ge=0, le=8)
    signed: bool = False  # the top bit of the highest byte is the sign
    scale: float = 1.0


class Profile(_Model):
    """A device model's register map (Modbus) or data items (DL/T 645) onto one stream."""

    name: str
    stream: Literal["power", "tower"]
    protocol: Literal["modbus", "dlt645"] = "modbus"
    description: str = ""
    registers: tuple[Register, ...] = Field(default=(), alias="register")
    items: tuple[DataItem, ...] = Field(default=(), alias="item")

    @model_validator(mode="after")
    def _fields_of_the_stream(self) -> Profile:
        known = set(MODELS[self.stream].model_fields) - {"site_id", "ts", "meter_id"}
        mapped = self.registers if self.protocol == "modbus" else self.items
        other = self.items if self.protocol == "modbus" else self.registers
        table = "[[register]]" if self.protocol == "modbus" else "[[item]]"
        if not mapped or other:
            raise ValueError(f"a {self.protocol} profile maps its fields with {table} "
                             f"(and only with it)")
        for reg in mapped:
            if reg.field not in known:
                raise ValueError(f"field {reg.field!r} is not a {self.stream} field "
                                 f"({', '.join(sorted(known))})")
        names = [r.field for r in mapped]
        if len(set(names)) != len(names):
            raise ValueError("a field is mapped twice")
        if _REQUIRED[self.stream] not in names:
            raise ValueError(f"a {self.stream} profile must map {_REQUIRED[self.stream]}")
        return self


class Device(_Model):
    """One polled device (a meter, or a site's power plant controller)."""

    id: str = ""
    site_id: str = Field(pattern=ID_PATTERN)
    meter_id: str | None = Field(default=None, pattern=ID_PATTERN)
    host: str
    port: int = Field(default=502, ge=1, le=65535)
    unit: int = Field(default=1, ge=0, le=255)
    protocol: Literal["modbus-tcp", "dlt645-tcp"] = "modbus-tcp"
    address: str | None = Field(default=None, pattern=r"^\d{12}$")  # DL/T 645 meter address
    profile: str
    interval: Duration | None = None
    timeout: Duration | None = None
    retries: int | None = Field(default=None, ge=0, le=10)

    @property
    def name(self) -> str:
        return self.id or self.meter_id or f"{self.site_id}@{self.host}:{self.port}/{self.unit}"


def _describe(exc: ValidationError) -> str:
    err = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in err["loc"]) or "entry"
    return f"{where}: {err['msg']}"


def load_profile(name: str, base: Path | None = None) -> Profile:
    """A built-in profile by name, or a profile file (relative to ``base``)."""
    candidates = [PROFILES_DIR / f"{name}.toml"] if "/" not in name and not name.endswith(".toml") \
        else [(base or Path.cwd()) / name]
    path = candidates[0]
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        builtin = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.toml")))
        raise DevicesFileError(f"profile {name!r} not found (built-in: {builtin}; or a path to "
                               "a .toml file)") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise DevicesFileError(f"profile {path}: {exc}") from None
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        raise DevicesFileError(f"profile {path}: {_describe(exc)}") from None


def load_devices(path: str | Path) -> list[tuple[Device, Profile]]:
    """Every device of the file with its profile; ``DevicesFileError`` names the bad entry."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise DevicesFileError(f"devices file not found: {path}") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise DevicesFileError(f"devices file {path}: {exc}") from None
    unknown = set(data) - {"device"}
    if unknown:
        raise DevicesFileError(f"devices file {path}: unknown table(s) {', '.join(sorted(unknown))}"
                               " (only [[device]])")
    entries = data.get("device", [])
    if not entries:
        raise DevicesFileError(f"devices file {path} lists no [[device]]")
    profiles: dict[str, Profile] = {}
    out = []
    names = set()
    for i, entry in enumerate(entries, 1):
        try:
            device = Device.model_validate(entry)
        except ValidationError as exc:
            raise DevicesFileError(f"devices file {path}, device {i}: {_describe(exc)}") from None
        if device.profile not in profiles:
            profiles[device.profile] = load_profile(device.profile, path.parent)
        profile = profiles[device.profile]
        if profile.protocol != device.protocol.removesuffix("-tcp"):
            raise DevicesFileError(f"devices file {path}, device {i} ({device.name}): profile "
                                   f"{profile.name!r} is for {profile.protocol}, the device "
                                   f"speaks {device.protocol}")
        if device.protocol == "dlt645-tcp" and not device.address:
            raise DevicesFileError(f"devices file {path}, device {i} ({device.name}): a DL/T 645 "
                                   "meter needs its 12-digit address")
        if profile.stream == "power" and not device.meter_id:
            raise DevicesFileError(f"devices file {path}, device {i} ({device.name}): profile "
                                   f"{profile.name!r} reads a meter: give meter_id")
        if device.name in names:
            raise DevicesFileError(f"devices file {path}, device {i}: {device.name!r} twice")
        names.add(device.name)
        out.append((device, profile))
    return out
