"""Private instances of the real services, for one machine and for tests.

``sitetwin services up`` runs Mosquitto and InfluxDB (Debian's 1.x) from
generated configs under the state dir; the pytest fixtures use the same
classes on free ports in temporary directories, plus VictoriaMetrics (a real
server of ``/api/v2/write``) and PostgreSQL.  Each service is a child process
we started ourselves, tracked by a PID file, so nothing depends on a
system-wide daemon.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from connectors.broker import AUTOSAVE_CHANGES
from sitetwin.errors import SitetwinError

__all__ = [
    "InfluxDB",
    "Mosquitto",
    "PostgreSQL",
    "ServiceError",
    "ServiceProcess",
    "VictoriaMetrics",
    "free_port",
    "local_services",
]


class ServiceError(SitetwinError):
    """A local service could not be found, started or stopped."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _which(name: str, *extra_dirs: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for d in extra_dirs:
        candidate = Path(d) / name
        if candidate.exists():
            return str(candidate)
    raise ServiceError(
        f"'{name}' is not installed; install it with: apt-get install -y "
        + {"mosquitto": "mosquitto", "influxd": "influxdb", "victoria-metrics": "victoria-metrics"}.get(
            name, "postgresql"
        )
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); reap it if it is ours.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def _port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


@dataclass(kw_only=True)
class ServiceProcess:
    """A server process we start, watch through a PID file, and stop."""

    name: str
    root: Path
    host: str = "127.0.0.1"
    port: int = 0
    start_timeout: float = 30.0
    _proc: subprocess.Popen | None = field(default=None, init=False, repr=False)

    # -- to be provided by each service ---------------------------------------------------
    def argv(self) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def prepare(self) -> None:
        """Write configs and create directories before the first start."""

    def ready(self) -> bool:
        return _port_open(self.host, self.port)

    def after_start(self) -> None:
        """Run once the service answers (create a database...)."""

    def run_as(self) -> str | None:
        return None

    # -- common machinery -----------------------------------------------------------------
    @property
    def pid_file(self) -> Path:
        return self.root / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.root / f"{self.name}.log"

    @property
    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _pid_alive(pid) else None

    def running(self) -> bool:
        return self.pid is not None and self.ready()

    def start(self) -> int:
        """Start the service unless it already runs; wait until it answers; return its PID."""
        pid = self.pid
        if pid is not None:
            self._wait_ready(pid)
            return pid
        self.root.mkdir(parents=True, exist_ok=True)
        if self.port and _port_open(self.host, self.port):
            raise ServiceError(
                f"{self.name}: port {self.host}:{self.port} is already in use by another process"
            )
        self.prepare()
        log = self.log_file.open("ab")
        kwargs: dict = {}
        user = self.run_as()
        if user:
            kwargs.update(user=user, group=pwd.getpwnam(user).pw_gid, extra_groups=[])
        try:
            self._proc = subprocess.Popen(
                self.argv(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.root,
                **kwargs,
            )
        finally:
            log.close()
        self.pid_file.write_text(f"{self._proc.pid}\n")
        self._wait_ready(self._proc.pid)
        self.after_start()
        return self._proc.pid

    def _wait_ready(self, pid: int) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if not _pid_alive(pid):
                raise ServiceError(
                    f"{self.name} exited while starting: {self.log_tail(1)} (log: {self.log_file})"
                )
            if self.ready():
                return
            time.sleep(0.05)
        raise ServiceError(
            f"{self.name} did not answer on {self.host}:{self.port} within {self.start_timeout:.0f}s"
            f" (log: {self.log_file})"
        )

    def stop(self, timeout: float = 15.0, sig: int = signal.SIGTERM) -> bool:
        """Stop the service; SIGKILL after ``timeout``. Returns whether one was running."""
        pid = self.pid
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            while _pid_alive(pid):
                time.sleep(0.05)
        if self._proc is not None:
            with contextlib.suppress(Exception):
                self._proc.wait(timeout=1)
            self._proc = None
        self.pid_file.unlink(missing_ok=True)
        return True

    def kill(self) -> None:
        """SIGKILL: the abrupt end a fault-injection test wants."""
        self.stop(timeout=0, sig=signal.SIGKILL)

    def status(self) -> dict:
        pid = self.pid
        return {
            "service": self.name,
            "pid": pid,
            "address": f"{self.host}:{self.port}",
            "running": pid is not None and self.ready(),
            "log": str(self.log_file),
        }

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


@dataclass(kw_only=True)
class Mosquitto(ServiceProcess):
    """Mosquitto 2.x with persistence and unbounded per-client queues.

    Queues are unbounded (``max_queued_messages 0``) because the collector
    relies on the broker to hold the backlog while it is away or has stopped
    acknowledging; Mosquitto's default of 1000 would drop messages.
    """

    name: str = "mosquitto"
    extra_config: str = ""
    persistence: bool = True
    # Save after this many changes (queued messages, subscriptions, persistent
    # connects), not every 30 s: see connectors/broker.py for the window and its cost.
    autosave_changes: int = AUTOSAVE_CHANGES

    @property
    def url(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    @property
    def config_file(self) -> Path:
        return self.root / "mosquitto.conf"

    def prepare(self) -> None:
        data = self.root / "mosquitto-data"
        data.mkdir(parents=True, exist_ok=True)
        listener = "" if "listener " in self.extra_config else (
            f"listener {self.port} {self.host}\nallow_anonymous true\n"
        )
        self.config_file.write_text(
            "# generated by sitetwin; edits are overwritten on start\n"
            "per_listener_settings false\n"
            # As root, Mosquitto would switch to user "mosquitto", who cannot reach our files.
            f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
            f"{listener}"
            f"persistence {'true' if self.persistence else 'false'}\n"
            f"persistence_location {data}/\n"
            "autosave_on_changes true\n"
            f"autosave_interval {int(self.autosave_changes)}\n"
            "max_queued_messages 0\n"
            "max_inflight_messages 0\n"
            "log_dest stdout\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            "connection_messages true\n"
            f"{self.extra_config}\n"
        )

    def argv(self) -> list[str]:
        return [_which("mosquitto", "/usr/sbin"), "-c", str(self.config_file)]

@dataclass(kw_only=True)
class InfluxDB(ServiceProcess):
    """InfluxDB 1.x (``influxd``) serving ``/write`` and ``/query`` on ``port``."""

    name: str = "influxdb"
    rpc_port: int = 0
    database: str = "sitetwin"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def config_file(self) -> Path:
        return self.root / "influxdb.conf"

    def prepare(self) -> None:
        d = self.root / "influxdb-data"
        for sub in ("meta", "data", "wal"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        rpc = self.rpc_port or free_port(self.host)
        self.config_file.write_text(
            "# generated by sitetwin; edits are overwritten on start\n"
            "reporting-disabled = true\n"
            f'bind-address = "{self.host}:{rpc}"\n'
            "[meta]\n"
            f'  dir = "{d / "meta"}"\n'
            "  logging-enabled = false\n"
            "[data]\n"
            f'  dir = "{d / "data"}"\n'
            f'  wal-dir = "{d / "wal"}"\n'
            "  query-log-enabled = false\n"
            "  max-series-per-database = 0\n"
            "  max-values-per-tag = 0\n"
            "[coordinator]\n"
            "  log-queries-after = \"0s\"\n"
            "[monitor]\n"
            "  store-enabled = false\n"
            "[http]\n"
            "  enabled = true\n"
            f'  bind-address = "{self.host}:{self.port}"\n'
            "  auth-enabled = false\n"
            "  log-enabled = false\n"
            "  write-tracing = false\n"
            "  max-body-size = 0\n"
            "[continuous_queries]\n"
            "  enabled = false\n"
            "[logging]\n"
            '  level = "warn"\n'
        )

    def argv(self) -> list[str]:
        return [_which("influxd", "/usr/bin"), "-config", str(self.config_file)]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/ping", timeout=1) as resp:
                return resp.status == 204
        except (urllib.error.URLError, OSError):
            return False

    def after_start(self) -> None:
        if self.database:
            from connectors.influx import quote_identifier

            self.query(f"CREATE DATABASE {quote_identifier(self.database)}")

    def query(self, q: str, db: str | None = None) -> dict:
        """Run one InfluxQL statement (POST /query) and return the decoded JSON."""
        import json

        params = {"q": q}
        if db:
            params["db"] = db
        body = urllib.parse.urlencode(params).encode()
        req = urllib.request.Request(f"{self.url}/query", data=body, method="POST")
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())


@dataclass(kw_only=True)
class VictoriaMetrics(ServiceProcess):
    """VictoriaMetrics single-node: a real server of InfluxDB's ``/api/v2/write``."""

    name: str = "victoria-metrics"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def argv(self) -> list[str]:
        return [
            _which("victoria-metrics", "/usr/bin"),
            f"-storageDataPath={self.root / 'vm-data'}",
            f"-httpListenAddr={self.host}:{self.port}",
            "-search.latencyOffset=0s",
            # Keep points of any age (tests replay old timestamps) and collapse
            # identical points as InfluxDB does, so counts mean "exactly once".
            "-retentionPeriod=100y",
            "-dedup.minScrapeInterval=1ms",
            "-loggerLevel=WARN",
        ]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=1) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False


@dataclass(kw_only=True)
class PostgreSQL(ServiceProcess):
    """A throw-away PostgreSQL cluster (initdb + postgres) with trust auth on loopback.

    PostgreSQL refuses to run as root, so as root the cluster belongs to the
    ``postgres`` system user and lives in a directory that user can reach.
    """

    name: str = "postgresql"
    user: str = "sitetwin"
    database: str = "sitetwin"

    @property
    def data_dir(self) -> Path:
        return self.root / "pgdata"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{self.database}"

    def run_as(self) -> str | None:
        return "postgres" if os.geteuid() == 0 else None

    def _bin(self, name: str) -> str:
        dirs = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
        return _which(name, *(str(d) for d in dirs))

    def prepare(self) -> None:
        owner = self.run_as()
        if owner:
            self.root.chmod(0o755)
            shutil.chown(self.root, owner)
        if (self.data_dir / "PG_VERSION").exists():
            return
        kwargs: dict = {}
        if owner:
            kwargs.update(user=owner, group=pwd.getpwnam(owner).pw_gid, extra_groups=[])
        subprocess.run(
            [self._bin("initdb"), "-D", str(self.data_dir), "-U", self.user, "--auth=trust",
             "--encoding=UTF8", "--no-sync"],
            check=True, capture_output=True, **kwargs,
        )

    def argv(self) -> list[str]:
        return [
            self._bin("postgres"), "-D", str(self.data_dir), "-p", str(self.port),
            "-c", f"listen_addresses={self.host}", "-c", f"unix_socket_directories={self.root}",
            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
            "-c", "max_connections=50",
        ]

    def after_start(self) -> None:
        import psycopg
        from psycopg import sql

        deadline = time.monotonic() + self.start_timeout
        while True:
            try:
                with psycopg.connect(
                    host=self.host, port=self.port, user=self.user, dbname="postgres", autocommit=True
                ) as conn:
                    exists = conn.execute(
                        "SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)
                    ).fetchone()
                    if not exists:
                        conn.execute(sql.Composed([sql.SQL("CREATE DATABASE "), sql.Identifier(self.database)]))
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self, timeout: float = 15.0, sig: int = signal.SIGINT) -> bool:
        # SIGINT is PostgreSQL's "fast shutdown".
        return super().stop(timeout=timeout, sig=sig)


def temp_root(prefix: str) -> Path:
    """A fresh directory that a service running as another user can use."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def local_services(settings) -> list[ServiceProcess]:
    """The services ``sitetwin services up`` manages, configured from settings."""
    svc = settings.services
    root = settings.state_dir / "services"
    return [
        Mosquitto(root=root, host=svc.mqtt_host, port=svc.mqtt_port, start_timeout=svc.start_timeout),
        InfluxDB(
            root=root,
            port=svc.influxdb_port,
            rpc_port=svc.influxdb_rpc_port,
            database=settings.influxdb.database,
            start_timeout=svc.start_timeout,
        ),
    ]
