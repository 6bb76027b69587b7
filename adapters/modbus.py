"""Reading one device over Modbus TCP: the profile's registers in as few requests as possible.

``plan(profile)`` groups the profile's registers into contiguous reads per table
(at most 125 registers a request, the protocol's limit; gaps of up to 8 unused
registers are read through rather than split).  ``decode(profile, words)`` turns
the registers into the stream's fields (pure; tested without a device).
``ModbusReader`` is the one place pymodbus is used: its exceptions and
exception responses become ``DeviceError`` with a reason (``connection``,
``timeout``, ``exception`` with the Modbus exception code, ``decode``).  After
any failure the connection is closed, so a late answer to a timed-out request
can never be read as the answer to the next one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import struct
from collections.abc import Mapping

from pymodbus.client import ModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from adapters.device import Device, Profile, Register
from adapters.errors import DeviceError

__all__ = ["ModbusReader", "decode", "plan"]

MAX_REGISTERS = 125
MAX_GAP = 8
_EXCEPTIONS = {1: "illegal function", 2: "illegal data address", 3: "illegal data value",
               4: "server device failure", 5: "acknowledge", 6: "server device busy",
               10: "gateway path unavailable", 11: "gateway target device failed to respond"}

# pymodbus logs every failed request at ERROR with a traceback; the gateway reports
# failures itself (one line per device and back-off step).
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


def plan(profile: Profile) -> list[tuple[str, int, int]]:
    """``(table, first address, count)`` reads covering every register of the profile."""
    out: list[tuple[str, int, int]] = []
    for table in ("holding", "input"):
        spans = sorted({(r.address, r.address + r.width) for r in profile.registers
                        if r.table == table})
        start: int | None = None
        end = 0
        for lo, hi in spans:
            if start is None:
                start, end = lo, hi
            elif lo - end <= MAX_GAP and max(end, hi) - start <= MAX_REGISTERS:
                end = max(end, hi)
            else:
                out.append((table, start, end - start))
                start, end = lo, hi
        if start is not None:
            out.append((table, start, end - start))
    return out


def _raw(reg: Register, words: Mapping[tuple[str, int], int]) -> float | int:
    try:
        regs = [words[(reg.table, reg.address + i)] for i in range(reg.width)]
    except KeyError:
        raise DeviceError("decode", f"register {reg.table} {reg.address} was not read") from None
    if reg.width == 2 and reg.word_order == "little":
        regs.reverse()
    raw = b"".join(r.to_bytes(2, "big") for r in regs)
    fmt = {"uint16": ">H", "int16": ">h", "uint32": ">I", "int32": ">i", "float32": ">f"}[reg.type]
    return struct.unpack(fmt, raw)[0]


def decode(profile: Profile, words: Mapping[tuple[str, int], int]) -> dict[str, float | bool]:
    """The profile's fields from ``(table, address) -> register``; raises ``DeviceError``."""
    fields: dict[str, float | bool] = {}
    for reg in profile.registers:
        raw = _raw(reg, words)
        if reg.bit is not None:
            fields[reg.field] = bool((int(raw) >> reg.bit) & 1)
            continue
        value = raw * reg.scale + reg.offset
        if not math.isfinite(value):
            raise DeviceError("decode", f"{reg.field} is {value} (register {reg.address})")
        fields[reg.field] = round(float(value), 6)
    return fields


class ModbusReader:
    """One device's connection; ``read`` returns the fields of one poll."""

    def __init__(self, device: Device, profile: Profile, *, timeout_s: float) -> None:
        self.device = device
        self.profile = profile
        self.plan = plan(profile)
        self.timeout_s = timeout_s
        self._client: ModbusTcpClient | None = None

    def _connected(self) -> ModbusTcpClient:
        if self._client is None:
            self._client = ModbusTcpClient(self.device.host, port=self.device.port,
                                           timeout=self.timeout_s, retries=0)
        if not self._client.connected and not self._client.connect():
            self.close()
            raise DeviceError("connection", f"cannot connect to {self.device.host}:"
                              f"{self.device.port}")
        return self._client

    def read(self) -> dict[str, float | bool]:
        """Read and decode every register of the profile (one attempt)."""
        try:
            client = self._connected()
            words: dict[tuple[str, int], int] = {}
            for table, start, count in self.plan:
                call = client.read_holding_registers if table == "holding" \
                    else client.read_input_registers
                response = call(start, count=count, device_id=self.device.unit)
                if response.isError():
                    code = getattr(response, "exception_code", 0)
                    raise DeviceError("exception", f"exception code {code} "
                                      f"({_EXCEPTIONS.get(code, 'unknown')}) reading {table} "
                                      f"{start}..{start + count - 1}")
                registers = list(response.registers)
                if len(registers) < count:
                    raise DeviceError("decode", f"{len(registers)} registers for {count} asked")
                for i, value in enumerate(registers[:count]):
                    words[(table, start + i)] = value
            return decode(self.profile, words)
        except DeviceError:
            self.close()
            raise
        except ConnectionException as exc:
            self.close()
            raise DeviceError("connection", str(exc)[:200]) from None
        except ModbusIOException as exc:
            self.close()
            raise DeviceError("timeout", f"no answer within {self.timeout_s:g}s "
                              f"({str(exc)[:120]})") from None
        except (ModbusException, OSError) as exc:
            self.close()
            raise DeviceError("connection", str(exc)[:200]) from None

    def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(OSError, ModbusException):
                self._client.close()
            self._client = None
