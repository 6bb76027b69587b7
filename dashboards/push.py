"""Upload the dashboards to a running Grafana over its HTTP API, idempotently.

Steps: make sure the folder exists (create it with a fixed uid if not), make
sure the datasource with the fixed uid exists (create it if not; an existing
one is left alone, since its credentials were set by its owner), then post
every dashboard with ``overwrite: true`` so that pushing again replaces it.

Uses ``grafana-client`` (optional extra ``sitetwin[grafana]``); its and
niquests' exceptions are translated here, and the token never appears in a
message or a log line.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import SecretStr

from dashboards.build import DASHBOARDS, dashboard_json
from dashboards.errors import GrafanaClientMissing, PushError
from dashboards.provisioning import Target

__all__ = ["InfluxCredentials", "PushReport", "connect", "datasource_payload", "push"]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class PushReport:
    """What ``push`` did: created or found the folder and datasource, uploaded dashboards."""

    url: str
    folder: str
    folder_action: str
    datasource_uid: str
    datasource_action: str
    dashboards: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"url": self.url, "folder": self.folder, "folder_action": self.folder_action,
                "datasource_uid": self.datasource_uid,
                "datasource_action": self.datasource_action, "dashboards": self.dashboards}


def _public(url: str) -> str:
    """The URL without any user:password in it, fit for messages."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def connect(url: str, token: SecretStr | None, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> Any:
    """A ``grafana_client.GrafanaApi`` for ``url`` authenticated with the bearer ``token``."""
    try:
        from grafana_client import GrafanaApi
    except ImportError:
        raise GrafanaClientMissing(
            "pushing dashboards needs grafana-client: pip install 'sitetwin[grafana]' "
            "(or load dashboards/built/ through Grafana provisioning instead)") from None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PushError(f"not a Grafana URL: {_public(url)!r} (use http://host:3000)")
    if token is None and not parts.username:
        raise PushError("no Grafana token: set SITETWIN_GRAFANA__TOKEN to a service account token")
    credential = token.get_secret_value() if token is not None else None
    return GrafanaApi.from_url(url, credential=credential, timeout=timeout_s)


@dataclass(frozen=True)
class InfluxCredentials:
    """How Grafana authenticates to InfluxDB: a 1.x user, or a 2.x/3.x token (header)."""

    username: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None

    def __repr__(self) -> str:  # never show a secret, even in a traceback
        return f"InfluxCredentials(username={self.username!r}, password=***, token=***)"


def datasource_payload(target: Target,
                       credentials: InfluxCredentials = InfluxCredentials()) -> dict[str, Any]:
    """The InfluxQL datasource of provisioning/datasources/sitetwin.yaml, with credentials:
    a token goes in an ``Authorization: Token ...`` header (InfluxDB 2.x/3.x), a user and
    password as InfluxDB 1.x basic credentials.  Secrets go in ``secureJsonData``."""
    payload: dict[str, Any] = {
        "name": "sitetwin InfluxDB",
        "uid": target.datasource_uid,
        "type": "influxdb",
        "access": "proxy",
        "url": target.influx_url,
        "isDefault": False,
        "jsonData": {"version": "InfluxQL", "dbName": target.database, "httpMode": "POST",
                     "timeInterval": "10s"},
    }
    secure: dict[str, str] = {}
    if credentials.token is not None:
        payload["jsonData"]["httpHeaderName1"] = "Authorization"
        secure["httpHeaderValue1"] = f"Token {credentials.token.get_secret_value()}"
    elif credentials.username:
        payload["user"] = credentials.username
        if credentials.password is not None:
            secure["password"] = credentials.password.get_secret_value()
    if secure:
        payload["secureJsonData"] = secure
    return payload


def _status(exc: Exception) -> int:
    return int(getattr(exc, "status_code", 0) or 0)


def _call(what: str, fn, *args, **kwargs) -> Any:
    """Run one API call; a Grafana or network failure becomes a ``PushError`` naming the call."""
    from grafana_client.client import GrafanaException
    from niquests.exceptions import RequestException

    try:
        return fn(*args, **kwargs)
    except RequestException as exc:
        # niquests names host and port only (never userinfo or headers) in its messages.
        reason = " ".join(str(exc).split())[:240]
        raise PushError(f"{what}: no response from Grafana: {type(exc).__name__}: {reason}") \
            from None
    except GrafanaException as exc:
        status = _status(exc)
        if status == 401:
            raise PushError(f"{what}: Grafana refused the token (HTTP 401); check "
                            "SITETWIN_GRAFANA__TOKEN") from None
        if status == 403:
            raise PushError(f"{what}: the token lacks permission (HTTP 403); it needs the "
                            "Editor role, or Admin to create the datasource") from None
        reason = str(getattr(exc, "message", "") or exc).splitlines()[0][:200]
        where = f"HTTP {status}" if status else "no response"
        raise PushError(f"{what}: {where}: {reason}") from None


def _exists(what: str, fn, *args) -> bool:
    """True if the GET succeeds, False on 404; anything else is an error."""
    from grafana_client.client import GrafanaException
    from niquests.exceptions import RequestException

    try:
        fn(*args)
        return True
    except RequestException as exc:
        return _call(what, _reraise, exc)
    except GrafanaException as exc:
        if _status(exc) == 404:
            return False
        return _call(what, _reraise, exc)


def _reraise(exc: Exception) -> None:
    raise exc


def push(url: str, token: SecretStr | None, target: Target, *, folder_title: str | None = None,
         credentials: InfluxCredentials = InfluxCredentials(), api: Any = None) -> PushReport:
    """Create the folder and datasource if missing and upload every dashboard (overwrite)."""
    api = api if api is not None else connect(url, token)
    public = _public(url)
    folder_uid = target.folder
    if _exists("reading the folder", api.folder.get_folder, folder_uid):
        folder_action = "exists"
    else:
        _call("creating the folder", api.folder.create_folder, folder_title or folder_uid,
              uid=folder_uid)
        folder_action = "created"
    log.info("Grafana %s: folder %s %s", public, folder_uid, folder_action)

    if _exists("reading the datasource", api.datasource.get_datasource_by_uid,
               target.datasource_uid):
        ds_action = "exists"
    else:
        _call("creating the datasource", api.datasource.create_datasource,
              datasource_payload(target, credentials))
        ds_action = "created"
    log.info("Grafana %s: datasource %s %s", public, target.datasource_uid, ds_action)

    uploaded = []
    for d in DASHBOARDS:
        body = {"dashboard": json.loads(dashboard_json(d, target)), "folderUid": folder_uid,
                "overwrite": True, "message": "sitetwin dashboards push"}
        answer = _call(f"uploading dashboard {d.uid}", api.dashboard.update_dashboard, body) or {}
        uploaded.append({"uid": d.uid, "status": str(answer.get("status", "success")),
                         "url": str(answer.get("url", f"/d/{d.uid}"))})
        log.info("Grafana %s: dashboard %s uploaded", public, d.uid)
    return PushReport(url=public, folder=folder_uid, folder_action=folder_action,
                      datasource_uid=target.datasource_uid, datasource_action=ds_action,
                      dashboards=uploaded)
