"""An InfluxDB-compatible write endpoint: existing gateways and Telegraf agents push line protocol.

Serves what Telegraf's ``influxdb_listener`` serves, with sitetwin's promise:

- ``POST /write`` (1.x: ``db``, ``rp``, ``precision`` n/ns/u/us/ms/s/m/h, ``u``/``p``)
  and ``POST /api/v2/write`` (``org``, ``bucket``, ``precision`` ns/us/ms/s);
  ``GET|HEAD /ping`` answers 204, ``GET /health`` 200;
- a token from ``[adapters.listener] tokens``: ``Authorization: Token X`` or
  ``Bearer X``, Basic ``user:X``, or 1.x ``?u=user&p=X``; none or a wrong one is
  401 (tokens are compared in constant time and never logged);
- ``Content-Encoding: gzip`` bodies, at most ``max_body_bytes`` once inflated (413);
- each line: parsed (``adapters.lines``), mapped onto the contract and checked by
  the collector's validation (``ReadingSink.offer``); a line that is not a
  reading - another measurement, a parse error, a value out of range - is
  dead-lettered (``source`` ``listener``) with its reason;
- **204 only once the broker acknowledged every reading of the request**; 400
  with the line errors when some lines were refused (the good ones are
  published and acknowledged first: InfluxDB's "partial write"; Telegraf drops a
  batch answered 400 rather than retrying it forever); 503 with ``Retry-After``
  when the broker did not acknowledge within ``ack_timeout`` (Telegraf retries; the
  readings already sent arrive once more, as identical points that InfluxDB
  overwrites in place).

Why the standard library's ``ThreadingHTTPServer`` and not an ASGI app: the
publisher is synchronous and one per process (``ReadingSink.lock``); an async
framework would hand every request to a thread to publish anyway, and two
routes do not need FastAPI and uvicorn as dependencies of the ingest path.
Requests are read in parallel threads and published one at a time; a keeper
thread pings the broker between requests.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hmac
import logging
import threading
import time
import zlib
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import orjson

from adapters.errors import ListenerError
from adapters.lines import PRECISION_NS, LineError, join_prb, parse_line, to_reading
from adapters.sink import ReadingSink
from connectors.errors import PublishError
from connectors.reading import Rejection
from core.settings import ListenerAdapterSettings

__all__ = ["Listener", "WriteResult"]

log = logging.getLogger(__name__)

_V2_PRECISIONS = ("ns", "us", "ms", "s")
_MAX_LINE_ERRORS = 100


@dataclass(frozen=True, slots=True)
class WriteResult:
    """The outcome of one write request."""

    status: int
    accepted: int = 0
    refused: int = 0
    errors: tuple[dict, ...] = ()
    message: str = ""


class Listener:
    """The write endpoint around one ``ReadingSink``; ``start``/``stop`` or ``serve_forever``."""

    def __init__(self, cfg: ListenerAdapterSettings, sink: ReadingSink, *, listen: str | None = None) -> None:
        """``cfg``: the ``[adapters.listener]`` section; ``listen`` overrides its address."""
        self.sink = sink
        self.tokens = [t.get_secret_value() for t in cfg.tokens if t.get_secret_value()]
        self.max_body_bytes = int(cfg.max_body_bytes)
        self.ack_timeout_s = cfg.ack_timeout
        address = listen or cfg.listen
        host, _, port = address.rpartition(":")
        try:
            self.address = (host.strip("[]") or "127.0.0.1", int(port))
        except ValueError:
            raise ListenerError(f"adapters.listener.listen {address!r} is not HOST:PORT") from None
        self.requests = 0
        self.accepted = 0
        self.refused = 0
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    # -- the work of one request (no sockets: tested directly) --------------------------

    def authorised(self, headers, query: dict[str, list[str]]) -> bool:
        """Whether the request carries one of the configured tokens."""
        given = []
        auth = headers.get("Authorization", "") or ""
        scheme, _, value = auth.partition(" ")
        if scheme.lower() in ("token", "bearer"):
            given.append(value.strip())
        elif scheme.lower() == "basic":
            with contextlib.suppress(ValueError, UnicodeDecodeError):
                given.append(base64.b64decode(value.strip()).decode().partition(":")[2])
        given += query.get("p", [])
        return any(hmac.compare_digest(g.encode(), t.encode())
                   for g in given if g for t in self.tokens)

    def write(self, body: bytes, precision: str = "ns", *, received_ns: int | None = None) -> WriteResult:
        """Validate and publish the lines of one request body; the HTTP answer to give."""
        if precision not in PRECISION_NS:
            return WriteResult(400, message=f"precision {precision[:10]!r} is not one of "
                               f"{', '.join(PRECISION_NS)}")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            return WriteResult(400, message=f"body is not UTF-8 (byte {exc.start})")
        received_ns = time.time_ns() if received_ns is None else received_ns
        scale = PRECISION_NS[precision]
        points = []
        errors: list[tuple[int, bytes, Rejection]] = []
        raw_of: dict[int, str] = {}
        for n, line in enumerate(text.split("\n"), 1):
            line = line.strip("\r")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            raw_of[n] = line
            try:
                points.append((n, parse_line(line, precision_ns=scale)))
            except LineError as exc:
                errors.append((n, line.encode(), Rejection("bad_line", str(exc))))
        points, prb_refused = join_prb(points)
        errors += [(n, raw_of[n].encode(), r) for n, r in prb_refused]
        sink = self.sink
        with sink.lock:
            for n, point in points:
                mapped = to_reading(point, received_ns)
                if isinstance(mapped, Rejection):
                    errors.append((n, raw_of[n].encode(), mapped))
                    continue
                site_id, stream, doc = mapped
                try:
                    rejection = sink.offer(site_id, stream, doc, raw=raw_of[n].encode())
                except (TypeError, ValueError) as exc:  # a document orjson cannot write
                    rejection = Rejection("schema", str(exc)[:200])
                    errors.append((n, raw_of[n].encode(), rejection))
                    continue
                if rejection is not None:
                    # offer() has queued the dead letter already.
                    errors.append((n, b"", rejection))
            for _n, raw, rejection in errors:
                if raw:
                    sink.refuse(rejection, raw, topic=None)
            accepted = sink.pending
            try:
                done = sink.commit(self.ack_timeout_s)
            except PublishError as exc:
                log.warning("write: %s", exc)
                return WriteResult(503, message="the broker did not acknowledge in time; retry")
        self.requests += 1
        self.accepted += done.readings
        self.refused += len(errors)
        if not errors:
            return WriteResult(204, accepted=accepted)
        errors.sort(key=lambda e: e[0])
        listed = tuple({"line": n, "reason": r.reason, "detail": r.detail}
                       for n, _raw, r in errors[:_MAX_LINE_ERRORS])
        first = listed[0]
        return WriteResult(400, accepted=accepted, refused=len(errors), errors=listed,
                           message=f"partial write: {len(errors)} line(s) refused, {accepted} "
                                   f"accepted; line {first['line']}: {first['reason']}: "
                                   f"{first['detail']}")

    # -- HTTP -----------------------------------------------------------------------------

    def _handler(self):
        listener = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "sitetwin-listener"
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args):  # the query may hold p=<token>: log no URLs
                log.debug("%s %s", self.address_string(), self.command)

            def _answer(self, status: int, payload: dict | None = None, extra: dict | None = None):
                body = orjson.dumps(payload) if payload is not None else b""
                self.send_response(status)
                if body:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("X-Influxdb-Version", "1.8-sitetwin")
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                if body and self.command != "HEAD":
                    self.wfile.write(body)

            def _error(self, status: int, message: str, code: str = "invalid", **more):
                self._answer(status, {"code": code, "message": message, "error": message, **more})

            def do_GET(self):
                path = urlsplit(self.path).path
                if path == "/ping":
                    self._answer(204)
                elif path == "/health":
                    self._answer(200, {"name": "sitetwin-listener", "status": "pass"})
                else:
                    self._error(404, "not found", "not found")

            do_HEAD = do_GET

            def do_POST(self):
                parts = urlsplit(self.path)
                query = parse_qs(parts.query)
                if parts.path not in ("/write", "/api/v2/write"):
                    self._drain()
                    return self._error(404, "not found", "not found")
                if not listener.authorised(self.headers, query):
                    self._drain()
                    return self._error(401, "unauthorized: a valid token is required",
                                       "unauthorized")
                precision = query.get("precision", ["ns"])[0]
                if parts.path == "/api/v2/write" and precision not in _V2_PRECISIONS:
                    self._drain()
                    return self._error(400, f"precision {precision[:10]!r} is not one of "
                                       f"{', '.join(_V2_PRECISIONS)}")
                body = self._body()
                if body is None:
                    return
                result = listener.write(body, precision)
                if result.status == 204:
                    return self._answer(204)
                if result.status == 503:
                    return self._answer(503, {"code": "unavailable", "message": result.message,
                                              "error": result.message}, {"Retry-After": "5"})
                self._error(result.status, result.message, accepted=result.accepted,
                            refused=result.refused, line_errors=list(result.errors))

            def _drain(self):
                length = int(self.headers.get("Content-Length") or 0)
                while length > 0:
                    chunk = self.rfile.read(min(length, 1 << 16))
                    if not chunk:
                        break
                    length -= len(chunk)

            def _body(self) -> bytes | None:
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                except ValueError:
                    self._error(400, "bad Content-Length")
                    return None
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    self._error(411, "send Content-Length (chunked bodies are not read)")
                    self.close_connection = True
                    return None
                if length > listener.max_body_bytes:
                    self._error(413, f"body of {length} bytes exceeds {listener.max_body_bytes}",
                                "request too large")
                    self.close_connection = True
                    return None
                raw = self.rfile.read(length)
                encoding = self.headers.get("Content-Encoding", "").lower()
                if encoding == "gzip":
                    try:
                        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
                        raw = inflater.decompress(raw, listener.max_body_bytes + 1)
                        if len(raw) > listener.max_body_bytes or inflater.unconsumed_tail:
                            self._error(413, f"inflated body exceeds {listener.max_body_bytes} "
                                        "bytes", "request too large")
                            return None
                    except (zlib.error, EOFError, gzip.BadGzipFile) as exc:
                        self._error(400, f"body is not gzip: {exc}")
                        return None
                elif encoding not in ("", "identity"):
                    self._error(415, f"Content-Encoding {encoding[:20]!r} is not supported")
                    return None
                return raw

        return Handler

    def start(self) -> None:
        """Bind and serve in background threads."""
        try:
            self._server = ThreadingHTTPServer(self.address, self._handler())
        except OSError as exc:
            raise ListenerError(f"cannot listen on {self.address[0]}:{self.address[1]}: "
                                f"{exc.strerror or exc}") from None
        self._server.daemon_threads = True
        host, port = self._server.server_address[:2]
        self.address = (str(host), port)
        serve = threading.Thread(target=self._server.serve_forever, name="listener-http",
                                 daemon=True)
        keep = threading.Thread(target=self._keep_alive, name="listener-keepalive", daemon=True)
        self._threads = [serve, keep]
        for t in self._threads:
            t.start()
        log.info("listening for line protocol on http://%s:%d (/write, /api/v2/write)",
                 *self.address)

    def _keep_alive(self) -> None:
        """Between requests, read late acknowledgements and ping the broker."""
        while not self._stop.wait(1.0):
            if self.sink.lock.acquire(timeout=0.1):
                try:
                    self.sink.publisher.idle(0.05)
                except PublishError as exc:
                    log.warning("broker: %s", exc)
                finally:
                    self.sink.lock.release()

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for t in self._threads:
            t.join(10)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{host}:{port}"
