"""InfluxDB: writing line protocol (``v1`` or ``v2`` API) and reading with InfluxQL.

``InfluxWriter`` sends one batch per call and classifies failure: retryable
(down, timeout, 5xx, 429, auth or missing database - the data is fine, the
server is not) or rejected (400/413 - the data itself).  On a rejection it
bisects the batch, since InfluxDB 1.x writes the good points of a partial write
anyway and rewriting an identical point is harmless; only the lines that fail
on their own are returned as rejected, each with the server's error text.

``InfluxReader`` runs InfluxQL through ``/query`` (native on 1.x, the 1.x
compatibility API on 2.x and 3.x) and returns pandas frames.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from connectors.errors import QueryError, WriteRejected, WriteRetryable
from core.settings import InfluxSettings

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["InfluxReader", "InfluxWriter", "RejectedLine", "WriteResult", "quote_identifier", "series_frame"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RejectedLine:
    """One line InfluxDB refused, with its error text."""

    line: bytes
    error: str


@dataclass(frozen=True, slots=True)
class WriteResult:
    """Outcome of a write that reached the server: what was refused (usually nothing)."""

    lines: int
    rejected: tuple[RejectedLine, ...] = ()


def _auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Token {token}"} if token else {}


class InfluxWriter:
    """Writes line protocol batches to InfluxDB (``mode`` ``v1`` or ``v2``)."""

    def __init__(
        self,
        url: str,
        *,
        mode: str = "v1",
        database: str = "sitetwin",
        retention_policy: str = "",
        username: str | None = None,
        password: str | None = None,
        token: str | None = None,
        org: str = "",
        bucket: str = "",
        timeout: float = 10.0,
    ) -> None:
        if mode not in ("v1", "v2"):
            raise ValueError(f"unknown InfluxDB write mode {mode!r}")
        self.url = url.rstrip("/")
        self.mode = mode
        self.database = database
        self.retention_policy = retention_policy
        self.timeout = timeout
        self._send: Callable[[bytes], None]
        if mode == "v1":
            # One HTTP session per thread (the writer, the spool drain and the twin's
            # site-state writer all write): requests does not promise a Session is
            # thread-safe.  Each lives as long as its thread; ``close`` closes the rest.
            self._token = token
            self._auth = (username, password or "") if username else None
            self._local = threading.local()
            self._sessions: weakref.WeakSet[requests.Session] = weakref.WeakSet()
            self._sessions_lock = threading.Lock()
            self._params = {"db": database, "precision": "ns"}
            if retention_policy:
                self._params["rp"] = retention_policy
            self._send = self._send_v1
        else:
            from influxdb_client import InfluxDBClient
            from influxdb_client.client.write_api import SYNCHRONOUS

            self._client = InfluxDBClient(url=self.url, token=token or "", org=org,
                                          timeout=int(timeout * 1000))
            self._write_api = self._client.write_api(write_options=SYNCHRONOUS)
            self._org = org
            self._bucket = bucket or database
            self._v2_lock = threading.Lock()  # influxdb-client's write API, one call at a time
            self._send = self._send_v2

    @classmethod
    def from_settings(cls, s: InfluxSettings) -> InfluxWriter:
        return cls(
            s.url,
            mode=s.mode,
            database=s.database,
            retention_policy=s.retention_policy,
            username=s.username,
            password=s.password.get_secret_value() if s.password else None,
            token=s.token.get_secret_value() if s.token else None,
            org=s.org,
            bucket=s.bucket,
            timeout=s.timeout,
        )

    @property
    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            # After an InfluxDB restart the pooled keep-alive connections are dead; the
            # first request on one fails although the server is up.  Retry such
            # connection-level failures at once (a write is idempotent: the same points),
            # never an HTTP status: those are ours to judge.
            retry = Retry(total=2, connect=2, read=1, status=0, other=0, redirect=0,
                          allowed_methods=None, backoff_factor=0.05, raise_on_status=False)
            session.mount("http://", HTTPAdapter(max_retries=retry))
            session.mount("https://", HTTPAdapter(max_retries=retry))
            session.headers.update(_auth_headers(self._token))
            if self._auth:
                session.auth = self._auth
            with self._sessions_lock:
                self._sessions.add(session)
        return session

    # -- one HTTP request -------------------------------------------------------------------
    def _send_v1(self, body: bytes) -> None:
        try:
            resp = self._session.post(f"{self.url}/write", params=self._params, data=body,
                                      timeout=self.timeout)
        except requests.RequestException as exc:
            raise WriteRetryable(f"InfluxDB unreachable at {self.url}: {type(exc).__name__}") from exc
        self._check(resp.status_code, resp.text)

    def _send_v2(self, body: bytes) -> None:
        from influxdb_client.rest import ApiException
        from urllib3.exceptions import HTTPError

        try:
            with self._v2_lock:
                self._write_api.write(bucket=self._bucket, org=self._org, record=body,
                                      # its WritePrecision constants are plain str
                                      write_precision="ns")  # type: ignore[arg-type]
        except ApiException as exc:
            self._check(exc.status or 0, exc.body if isinstance(exc.body, str) else str(exc.body))
        except (HTTPError, OSError) as exc:
            raise WriteRetryable(f"InfluxDB unreachable at {self.url}: {type(exc).__name__}") from exc

    @staticmethod
    def _check(status: int, text: str) -> None:
        if 200 <= status < 300:
            return
        message = _error_text(text) or f"HTTP {status}"
        if status in (400, 413, 422):
            raise WriteRejected(message, status=status)
        raise WriteRetryable(f"InfluxDB answered HTTP {status}: {message}", status=status)

    # -- public -------------------------------------------------------------------------------
    def write(self, body: bytes) -> WriteResult:
        """Write one batch. Raises ``WriteRetryable``; returns the lines refused as bad data."""
        if not body:
            return WriteResult(0)
        try:
            self._send(body)
            return WriteResult(body.count(b"\n") + 1)
        except WriteRejected as exc:
            lines = body.split(b"\n")
            if len(lines) == 1:
                return WriteResult(1, (RejectedLine(body, str(exc)),))
            log.warning("InfluxDB refused part of a batch of %d lines (%s); isolating the bad lines",
                        len(lines), exc)
            return WriteResult(len(lines), tuple(self._bisect(lines)))

    def _bisect(self, lines: list[bytes]) -> list[RejectedLine]:
        if len(lines) == 1:
            try:
                self._send(lines[0])
                return []
            except WriteRejected as exc:
                return [RejectedLine(lines[0], str(exc))]
        mid = len(lines) // 2
        out = []
        for half in (lines[:mid], lines[mid:]):
            try:
                self._send(b"\n".join(half))
            except WriteRejected:
                out.extend(self._bisect(half))
        return out

    def ping(self) -> bool:
        try:
            return requests.get(f"{self.url}/ping", timeout=2).status_code in (200, 204)
        except requests.RequestException:
            return False

    def ensure_database(self) -> None:
        """v1 mode: ``CREATE DATABASE`` (idempotent). Raises ``WriteRetryable`` if unreachable."""
        if self.mode != "v1":
            return
        try:
            resp = self._session.post(f"{self.url}/query",
                                      data={"q": f"CREATE DATABASE {quote_identifier(self.database)}"},
                                      timeout=self.timeout)
        except requests.RequestException as exc:
            raise WriteRetryable(f"InfluxDB unreachable at {self.url}: {type(exc).__name__}") from exc
        self._check(resp.status_code, resp.text)

    def close(self) -> None:
        if self.mode == "v1":
            with self._sessions_lock:
                sessions = list(self._sessions)
                self._sessions = weakref.WeakSet()
            for session in sessions:
                session.close()
            self._local = threading.local()
        else:
            self._client.close()  # type: ignore[no-untyped-call]  # influxdb-client is unannotated


def quote_identifier(name: str) -> str:
    """A double-quoted InfluxQL identifier (backslashes and quotes escaped)."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _error_text(text: str) -> str:
    try:
        doc = orjson.loads(text)
        if isinstance(doc, dict):
            return str(doc.get("error") or doc.get("message") or text)[:2000]
    except orjson.JSONDecodeError:
        pass
    return text.strip()[:2000]


class InfluxReader:
    """InfluxQL over ``/query``, answered as pandas frames."""

    def __init__(
        self,
        url: str,
        database: str,
        *,
        username: str | None = None,
        password: str | None = None,
        token: str | None = None,
        retention_policy: str = "",
        timeout: float = 60.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.database = database
        self.retention_policy = retention_policy
        self.timeout = timeout
        self._headers = _auth_headers(token)
        self._auth = (username, password or "") if username else None
        # One session per thread: the rule engine asks several statements at once.  A
        # session lives as long as its thread; ``close`` closes those still alive.
        self._local = threading.local()
        self._sessions: weakref.WeakSet[requests.Session] = weakref.WeakSet()
        self._sessions_lock = threading.Lock()

    @classmethod
    def from_settings(cls, s: InfluxSettings) -> InfluxReader:
        return cls(
            s.url,
            s.database if s.mode == "v1" else (s.bucket or s.database),
            username=s.username,
            password=s.password.get_secret_value() if s.password else None,
            token=s.token.get_secret_value() if s.token else None,
            retention_policy=s.retention_policy,
            timeout=max(s.timeout, 60.0),
        )

    def raw(self, q: str) -> list[dict[str, Any]]:
        """The decoded ``results`` list of ``/query``; raises ``QueryError`` on any error."""
        params = {"db": self.database, "epoch": "ns"}
        if self.retention_policy:
            params["rp"] = self.retention_policy
        try:
            resp = self._session().post(f"{self.url}/query", params=params, data={"q": q},
                                        timeout=self.timeout)
        except requests.RequestException as exc:
            raise QueryError(f"InfluxDB unreachable at {self.url}: {type(exc).__name__}") from exc
        if resp.status_code != 200:
            raise QueryError(f"query failed with HTTP {resp.status_code}: {_error_text(resp.text)}")
        try:
            doc = orjson.loads(resp.content)
        except orjson.JSONDecodeError as exc:
            raise QueryError(f"InfluxDB answered HTTP 200 with something that is not JSON: "
                             f"{resp.text[:200]!r}") from exc
        if not isinstance(doc, dict):
            raise QueryError(f"InfluxDB answered HTTP 200 with unexpected JSON: {resp.text[:200]!r}")
        if "error" in doc:
            raise QueryError(f"query failed: {doc['error']}")
        results: list[dict[str, Any]] = doc.get("results", [])
        for r in results:
            if "error" in r:
                raise QueryError(f"query failed: {r['error']}")
        return results

    def csv(self, q: str) -> bytes | None:
        """The CSV answer of one statement (``Accept: application/csv``, InfluxDB 1.5+:
        ``name,tags,time,<fields>`` rows), or None when it is not one (an HTTP error, or
        InfluxDB 1.6's empty body, which it gives both for no rows and for a failed
        statement: ask ``raw`` then, whose JSON tells them apart).  Raises ``QueryError``
        when InfluxDB cannot be reached."""
        params = {"db": self.database, "epoch": "ns"}
        if self.retention_policy:
            params["rp"] = self.retention_policy
        try:
            resp = self._session().post(f"{self.url}/query", params=params, data={"q": q},
                                        headers={"Accept": "application/csv"}, timeout=self.timeout)
        except requests.RequestException as exc:
            raise QueryError(f"InfluxDB unreachable at {self.url}: {type(exc).__name__}") from exc
        body: bytes = resp.content
        if resp.status_code != 200 or not body.startswith(b"name,tags,time,"):
            return None
        return body

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            session.headers.update(self._headers)
            if self._auth:
                session.auth = self._auth
            with self._sessions_lock:
                self._sessions.add(session)
        return session

    def frames(self, q: str) -> list[pd.DataFrame]:
        """One frame per statement of ``q`` (statements separated by ``;``)."""
        return [series_frame(r) for r in self.raw(q)]

    def frame(self, q: str) -> pd.DataFrame:
        """The frame of a single InfluxQL statement (empty if it returned no rows)."""
        frames = self.frames(q)
        if len(frames) != 1:
            raise QueryError(f"expected one statement, got {len(frames)}")
        return frames[0]

    def close(self) -> None:
        with self._sessions_lock:
            sessions = list(self._sessions)
            self._sessions = weakref.WeakSet()
        for session in sessions:
            session.close()
        self._local = threading.local()


def series_frame(result: dict[str, Any]) -> pd.DataFrame:
    """One frame for all the series of one statement's result (``/query`` JSON), tags as
    columns and ``time`` as UTC; empty when the statement returned no rows.

    Built in one go: a ``GROUP BY "site_id"`` over 10 000 sites answers 10 000 series,
    and a frame per series (then a concat) cost the rules more than the query itself.
    """
    import numpy as np  # only readers need pandas; the collector's start-up stays light
    import pandas as pd

    series = result.get("series") or []
    if not series:
        return pd.DataFrame()
    columns = series[0]["columns"]
    if any(s["columns"] != columns for s in series):  # never in one InfluxQL statement; stay correct
        return _frame_per_series(series)
    values = [s.get("values") or [] for s in series]
    lengths = [len(v) for v in values]
    rows = [row for v in values for row in v]
    df = pd.DataFrame(rows, columns=columns)
    keys: dict[str, None] = {}
    for s in series:
        keys.update(dict.fromkeys(s.get("tags") or {}))
    for key in keys:
        tags = np.array([(s.get("tags") or {}).get(key) for s in series], dtype=object)
        df[key] = np.repeat(tags, lengths)
    if len(series) > 1 or "name" in series[0]:
        df.attrs["measurement"] = series[-1].get("name")
    if "time" in df.columns:
        df["time"] = pd.to_datetime(df["time"], unit="ns", utc=True)
    return df


def _frame_per_series(series: list[dict[str, Any]]) -> pd.DataFrame:
    import pandas as pd

    parts = []
    for s in series:
        df = pd.DataFrame(s.get("values") or [], columns=s["columns"])
        for key, value in (s.get("tags") or {}).items():
            df[key] = value
        parts.append(df)
    df = pd.concat(parts, ignore_index=True)
    df.attrs["measurement"] = series[-1].get("name")
    if "time" in df.columns:
        df["time"] = pd.to_datetime(df["time"], unit="ns", utc=True)
    return df
