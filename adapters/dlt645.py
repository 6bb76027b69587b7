"""DL/T 645-2007, the Chinese multi-function meter protocol: a small codec and a TCP reader.

Why our own codec: the PyPI packages for DL/T 645 are small single-author
projects with serial-port I/O built in; what the gateway needs is about a
hundred lines - frame, checksum, the read request (control code 0x11) and its
answers (0x91 normal, 0xD1 abnormal) - and a reader over TCP (meters sit on
RS-485 behind a transparent serial-to-TCP converter).

A frame::

    [FE FE FE FE]  68  A0..A5  68  C  L  DATA(L bytes, each + 0x33)  CS  16

``A0..A5`` is the meter address, 12 BCD digits, lowest byte first (the printed
address ``000012345678`` is sent ``78 56 34 12 00 00``); ``CS`` is the sum
modulo 256 of every byte from the first ``68`` to the end of the data.  A read
request's data is the data identifier ``DI0..DI3`` (lowest first); a normal
answer repeats it and appends the value, BCD, lowest byte first; for signed
values the top bit of the highest byte is the sign.  An abnormal answer
carries one error byte (bit 1: no such data item).

``read_request``/``parse_frame`` are pure; ``Dlt645Reader`` is the one place the
socket is used, its failures become ``DeviceError`` (``connection``,
``timeout``, ``exception`` with the meter's error byte, ``decode`` for a bad
checksum or an answer to another address).
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from dataclasses import dataclass

from adapters.device import Device, Profile
from adapters.errors import DeviceError

__all__ = ["Dlt645Bus", "Dlt645Reader", "Frame", "FrameError", "decode_value", "encode_value",
           "parse_frame", "read_request", "response_frame"]

READ = 0x11
_PREAMBLE = b"\xfe\xfe\xfe\xfe"
_ADDRESS = re.compile(r"^\d{12}$")
_DI = re.compile(r"^[0-9A-Fa-f]{8}$")
_ERRORS = {0x01: "other error", 0x02: "no such data item", 0x04: "password error",
           0x08: "baud rate cannot change", 0x10: "year zone count exceeded",
           0x20: "day slot count exceeded", 0x40: "tariff count exceeded"}


class FrameError(ValueError):
    """Bytes that are not a DL/T 645 frame (bad start, length, checksum or end)."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame: the meter address (12 digits), the control code and the data (unmasked)."""

    address: str
    control: int
    data: bytes


def _address_bytes(address: str) -> bytes:
    if not _ADDRESS.match(address):
        raise ValueError(f"DL/T 645 address {address!r} must be 12 digits")
    return bytes(int(address[i:i + 2], 16) for i in range(10, -1, -2))


def _di_bytes(di: str) -> bytes:
    if not _DI.match(di):
        raise ValueError(f"data identifier {di!r} must be 8 hex digits (DI3 DI2 DI1 DI0)")
    return bytes.fromhex(di)[::-1]


def frame(address: str, control: int, data: bytes) -> bytes:
    """A complete frame (without the FE preamble)."""
    body = (b"\x68" + _address_bytes(address) + b"\x68" + bytes([control, len(data)])
            + bytes((b + 0x33) & 0xFF for b in data))
    return body + bytes([sum(body) & 0xFF, 0x16])


def read_request(address: str, di: str) -> bytes:
    """The master's read request for one data identifier, with the wake-up preamble."""
    return _PREAMBLE + frame(address, READ, _di_bytes(di))


def parse_frame(raw: bytes) -> tuple[Frame, int] | None:
    """The first frame in ``raw`` and the bytes it used, None if ``raw`` ends inside it;
    raises ``FrameError`` for bytes that cannot be a frame."""
    start = 0
    while start < len(raw) and raw[start] == 0xFE:
        start += 1
    if start >= len(raw):
        return None
    if raw[start] != 0x68:
        raise FrameError(f"frame starts with 0x{raw[start]:02x}, not 0x68")
    if len(raw) < start + 10:
        return None
    if raw[start + 7] != 0x68:
        raise FrameError("second 0x68 missing")
    length = raw[start + 9]
    end = start + 10 + length + 2
    if len(raw) < end:
        return None
    body = raw[start:start + 10 + length]
    if sum(body) & 0xFF != raw[end - 2]:
        raise FrameError(f"checksum 0x{raw[end - 2]:02x}, expected 0x{sum(body) & 0xFF:02x}")
    if raw[end - 1] != 0x16:
        raise FrameError(f"frame ends with 0x{raw[end - 1]:02x}, not 0x16")
    address = "".join(f"{b:02x}" for b in reversed(raw[start + 1:start + 7]))
    data = bytes((b - 0x33) & 0xFF for b in raw[start + 10:start + 10 + length])
    return Frame(address=address, control=raw[start + 8], data=data), end


def encode_value(value: float, size: int, decimals: int, *, signed: bool = False) -> bytes:
    """``value`` as ``size`` BCD bytes, lowest first (what a meter sends)."""
    n = round(abs(value) * 10 ** decimals)
    digits = f"{n:0{size * 2}d}"
    if len(digits) > size * 2 or (signed and int(digits[0]) > 7):
        raise ValueError(f"{value} does not fit {size} BCD bytes with {decimals} decimals")
    out = bytearray(int(digits[i:i + 2], 16) for i in range(0, size * 2, 2))
    if signed and value < 0:
        out[0] |= 0x80
    return bytes(reversed(out))


def decode_value(raw: bytes, decimals: int, *, signed: bool = False) -> float:
    """BCD bytes, lowest first, as a number; ``FrameError`` for a byte that is not BCD."""
    high_first = bytearray(reversed(raw))
    negative = False
    if signed and high_first and high_first[0] & 0x80:
        negative = True
        high_first[0] &= 0x7F
    text = high_first.hex()
    if not text.isdigit():
        raise FrameError(f"value {raw.hex()} is not BCD")
    value = int(text) / 10 ** decimals
    return -value if negative else value


def response_frame(address: str, di: str, value_bytes: bytes | None, *, error: int = 0x02) -> bytes:
    """A meter's answer to a read (for test servers): normal with the value, else abnormal."""
    if value_bytes is None:
        return _PREAMBLE + frame(address, 0xD1, bytes([error]))
    return _PREAMBLE + frame(address, 0x91, _di_bytes(di) + value_bytes)


class Dlt645Bus:
    """One serial-to-TCP converter: one connection, one request at a time.

    An RS-485 bus is half-duplex and a transparent converter forwards whatever
    arrives on its TCP connections, so the meters behind one converter share one
    connection and one lock; meters behind different converters are read in parallel.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.lock = threading.Lock()
        self._sock: socket.socket | None = None

    def connected(self, timeout_s: float) -> socket.socket:
        if self._sock is None:
            try:
                self._sock = socket.create_connection((self.host, self.port), timeout=timeout_s)
            except OSError as exc:
                raise DeviceError("connection", f"cannot connect to {self.host}:{self.port}: "
                                  f"{exc.strerror or exc}") from None
        return self._sock

    def close(self) -> None:
        """Drop the connection (after any failure: a late answer must not be read as the next)."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None


class Dlt645Reader:
    """One meter on a ``Dlt645Bus``; ``read`` returns the fields of one poll."""

    def __init__(self, device: Device, profile: Profile, *, timeout_s: float,
                 bus: Dlt645Bus | None = None) -> None:
        if not device.address:
            raise ValueError(f"device {device.name}: a DL/T 645 device needs address")
        self.device = device
        self.profile = profile
        self.timeout_s = timeout_s
        self.bus = bus or Dlt645Bus(device.host, device.port)

    def _ask(self, sock: socket.socket, di: str) -> bytes:
        address = self.device.address or ""
        sock.sendall(read_request(address, di))
        buf = b""
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                got = parse_frame(buf)
            except FrameError as exc:
                raise DeviceError("decode", f"DI {di}: {exc}") from None
            if got is not None:
                answer, _used = got
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeviceError("timeout", f"no answer to DI {di} within {self.timeout_s:g}s")
            sock.settimeout(left)
            try:
                chunk = sock.recv(512)
            except TimeoutError:
                raise DeviceError("timeout", f"no answer to DI {di} within "
                                  f"{self.timeout_s:g}s") from None
            except OSError as exc:
                raise DeviceError("connection", str(exc)) from None
            if not chunk:
                raise DeviceError("connection", "the converter closed the connection")
            buf += chunk
        if answer.address != address:
            raise DeviceError("decode", f"answer from meter {answer.address}, asked {address}")
        if answer.control == 0xD1:
            code = answer.data[0] if answer.data else 0
            reason = ", ".join(t for bit, t in _ERRORS.items() if code & bit) or "unknown"
            raise DeviceError("exception", f"meter error 0x{code:02x} ({reason}) for DI {di}")
        if answer.control != 0x91 or answer.data[:4] != _di_bytes(di):
            raise DeviceError("decode", f"unexpected answer (control 0x{answer.control:02x}) "
                              f"to DI {di}")
        return answer.data[4:]

    def read(self) -> dict[str, float | bool]:
        """Read every data item of the profile (one request each)."""
        with self.bus.lock:
            try:
                return self._read()
            except DeviceError:
                self.bus.close()
                raise

    def _read(self) -> dict[str, float | bool]:
        sock = self.bus.connected(self.timeout_s)
        fields: dict[str, float | bool] = {}
        for item in self.profile.items:
            raw = self._ask(sock, item.di)
            if len(raw) != item.size:
                raise DeviceError("decode", f"DI {item.di}: {len(raw)} bytes, expected "
                                  f"{item.size}")
            try:
                value = decode_value(raw, item.decimals, signed=item.signed)
            except FrameError as exc:
                raise DeviceError("decode", f"DI {item.di}: {exc}") from None
            fields[item.field] = round(value * item.scale, 6)
        return fields

    def close(self) -> None:
        self.bus.close()
