"""Fixtures that start real services on free ports, private to the test run.

Nothing here skips: a service that is not installed or will not start makes
the tests that need it error out, in CI as on a laptop.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sitetwin.config import Settings, load_settings
from sitetwin.services import InfluxDB, Mosquitto, PostgreSQL, VictoriaMetrics, free_port, temp_root


@pytest.fixture(autouse=True)
def _no_developer_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's ``SITETWIN_*`` variables (a config file, a password, a URL) must not
    reach the tests: each test starts from the defaults plus what it sets itself."""
    for name in list(os.environ):
        if name.startswith("SITETWIN_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """One Mosquitto for the session (tests use distinct client ids and topics)."""
    svc = Mosquitto(root=tmp_path_factory.mktemp("mosquitto"), port=free_port())
    svc.start()
    yield svc
    svc.stop()


@pytest.fixture
def private_mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A Mosquitto of the test's own, which the test may stop and restart."""
    svc = Mosquitto(root=tmp_path / "mosquitto", port=free_port())
    svc.start()
    yield svc
    svc.stop()


@pytest.fixture(scope="session")
def influxdb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxDB]:
    """One InfluxDB 1.x for the session; each test gets its own database (``influx_db``)."""
    svc = InfluxDB(root=tmp_path_factory.mktemp("influxdb"), port=free_port(), database="")
    svc.start()
    yield svc
    svc.stop()


@pytest.fixture
def private_influxdb(tmp_path: Path) -> Iterator[InfluxDB]:
    """An InfluxDB of the test's own, which the test may stop and restart."""
    svc = InfluxDB(root=tmp_path / "influxdb", port=free_port(), database="sitetwin")
    svc.start()
    yield svc
    svc.stop()


@pytest.fixture
def influx_db(influxdb: InfluxDB) -> Iterator[str]:
    """A fresh database name in the session InfluxDB, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    influxdb.query(f'CREATE DATABASE "{name}"')
    yield name
    influxdb.query(f'DROP DATABASE "{name}"')


@pytest.fixture(scope="session")
def victoria_metrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VictoriaMetrics]:
    """VictoriaMetrics: a real server of InfluxDB's /api/v2/write."""
    svc = VictoriaMetrics(root=tmp_path_factory.mktemp("vm"), port=free_port())
    svc.start()
    yield svc
    svc.stop()


@pytest.fixture(scope="session")
def postgresql() -> Iterator[PostgreSQL]:
    """A throw-away PostgreSQL cluster for the session."""
    root = temp_root("sitetwin-pg-")
    svc = PostgreSQL(root=root, port=free_port())
    svc.start()
    yield svc
    svc.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgresql_url(postgresql: PostgreSQL) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(host=postgresql.host, port=postgresql.port, user=postgresql.user,
                         dbname="postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://{postgresql.user}@{postgresql.host}:{postgresql.port}/{name}"
    with psycopg.connect(host=postgresql.host, port=postgresql.port, user=postgresql.user,
                         dbname="postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def twin_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The registry URL, once on SQLite and once on a real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'twin.sqlite'}"
    return request.getfixturevalue("postgresql_url")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings with every local path under the test's own directory."""
    return load_settings(None, services={"state_dir": str(tmp_path / "state")},
                         spool={"fsync": False})
