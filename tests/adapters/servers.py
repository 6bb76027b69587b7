"""Test servers on loopback: pymodbus's own Modbus TCP server, a silent device, a cuttable TCP proxy."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from sitetwin.services import free_port


def words(*values: tuple[str, float]) -> list[int]:
    """Registers of ``(type, value)`` pairs, big-endian words (uint16, int16, uint32, int32, float32)."""
    out: list[int] = []
    for kind, value in values:
        fmt = {"uint16": ">H", "int16": ">h", "uint32": ">I", "int32": ">i", "float32": ">f"}[kind]
        raw = struct.pack(fmt, int(value) if kind != "float32" else value)
        out += [int.from_bytes(raw[i:i + 2], "big") for i in range(0, len(raw), 2)]
    return out


class ModbusServer:
    """pymodbus's ModbusTcpServer in a thread; ``units`` maps a unit id to its registers
    (holding and input share them).  ``reads`` counts requests per unit; the units in
    ``tick`` add 1 to register 1 (a meter's energy, low word) on every read from 0."""

    def __init__(self, units: dict[int, list[int]], *, tick: frozenset[int] = frozenset()) -> None:
        self.port = free_port()
        self.units = units
        self.reads: dict[int, int] = dict.fromkeys(units, 0)
        self._tick = tick
        self._loop = asyncio.new_event_loop()
        self._server: ModbusTcpServer | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _action(self, unit: int):
        async def action(function_code, start_address, address, count, current_registers,
                         set_values):
            self.reads[unit] += 1
            if unit in self._tick and address == 0:  # a meter's counter moves between polls
                current_registers[1] = (current_registers[1] + 1) & 0xFFFF
        return action

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def main():
            devices = [SimDevice(id=unit, simdata=[SimData(address=0, values=regs,
                                                           datatype=DataType.REGISTERS)],
                                 action=self._action(unit))
                       for unit, regs in self.units.items()]
            self._server = ModbusTcpServer(devices, address=("127.0.0.1", self.port))
            self._ready.set()
            await self._server.serve_forever()

        self._loop.run_until_complete(main())

    def start(self) -> ModbusServer:
        self._thread.start()
        assert self._ready.wait(10)
        # serve_forever binds asynchronously: wait until the port answers.
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                threading.Event().wait(0.05)
        raise AssertionError("the Modbus server did not start")

    def stop(self) -> None:
        if self._server is not None:
            asyncio.run_coroutine_threadsafe(self._server.shutdown(), self._loop).result(10)
        self._thread.join(10)


class SilentDevice:
    """Accepts TCP connections and never answers: a device that times out."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def stop(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


class Proxy:
    """A TCP proxy to ``upstream``; ``cut()`` drops every connection and refuses new ones
    (a network partition between a producer and the broker) until ``restore()``."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.down = threading.Event()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.down.is_set():
                conn.close()
                continue
            try:
                up = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                conn.close()
                continue
            with self._lock:
                self._pairs.append((conn, up))
            for a, b in ((conn, up), (up, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def cut(self) -> None:
        self.down.set()
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for a, b in pairs:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def restore(self) -> None:
        self.down.clear()

    def close(self) -> None:
        self.cut()
        self.sock.close()


class Dlt645Server:
    """A serial-to-TCP converter with DL/T 645-2007 meters behind it, on loopback.

    ``meters`` maps a 12-digit address to ``{di: value bytes}``.  A request to an
    address not on the bus gets no answer (as on RS-485); a data identifier the
    meter does not have gets an abnormal answer (error 0x02, no such data item);
    ``corrupt`` addresses answer with a wrong checksum.  Energy (DI 00010000) moves
    by 0.01 kWh on every read.
    """

    def __init__(self, meters: dict[str, dict[str, bytes]], *, corrupt: frozenset[str] = frozenset()):
        from adapters.dlt645 import decode_value, encode_value, parse_frame, response_frame

        self._parse, self._answer = parse_frame, response_frame
        self._decode, self._encode = decode_value, encode_value
        self.meters = meters
        self.corrupt = corrupt
        self.requests = 0
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while True:
                try:
                    chunk = conn.recv(512)
                except OSError:
                    return
                if not chunk:
                    return
                buf += chunk
                while (got := self._parse(buf)) is not None:
                    frame, used = got
                    buf = buf[used:]
                    self.requests += 1
                    meter = self.meters.get(frame.address)
                    if meter is None:
                        continue  # not on the bus: silence
                    di = frame.data[:4][::-1].hex()
                    value = meter.get(di)
                    if di == "00010000" and value is not None:
                        meter[di] = self._encode(self._decode(value, 2) + 0.01, 4, 2)
                    answer = bytearray(self._answer(frame.address, di, value))
                    if frame.address in self.corrupt:
                        answer[-2] ^= 0xFF
                    conn.sendall(bytes(answer))

    def stop(self) -> None:
        self.sock.close()
