"""``/api/v1/audit``, ``/imports``, ``/users``, ``/me``, ``/health`` and the problem types."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Request, UploadFile
from starlette.concurrency import run_in_threadpool

from core import __version__
from core.settings import InfluxSettings
from twin.audit import list_entries, record
from web.api.common import Paging, instant, paging, store
from web.auth import client_ip, require
from web.permissions import PERMISSIONS
from web.problems import PROBLEMS, Problem
from web.schemas import (
    AuditOut,
    Health,
    ImportResult,
    Me,
    NewToken,
    Page,
    Pipeline,
    TokenIn,
    TokenOut,
)

router = APIRouter(prefix="/api/v1", tags=["admin"])

MAX_UPLOAD_BYTES = 50 * 1024 * 1024


@router.get("/audit", response_model=Page[AuditOut], summary="The audit log, newest first")
def audit(request: Request, _p=Depends(require("audit.read")), pg: Paging = Depends(paging),
          actor: str | None = None, action: str | None = None, target_type: str | None = None,
          target_id: str | None = None, since: str | None = None, until: str | None = None):
    with store(request).session() as s:
        total, items = list_entries(s, actor=actor, action=action, target_type=target_type,
                                    target_id=target_id, since=instant(request, since, "since"),
                                    until=instant(request, until, "until"), limit=pg.limit,
                                    offset=pg.offset)
    return pg.page(total, items)


def _import(store_, path: Path, kind: str, actor: str):
    from twin.imports import import_csv

    return import_csv(store_, path, kind, actor=actor)


async def import_upload(request: Request, kind: str, file: UploadFile, principal) -> dict:
    """Import an uploaded CSV through the CLI's importer and audit it (shared with the page).

    Raises ``ImportFailed`` with every bad row when nothing was imported.
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(file.filename or f"{kind}.csv").name
        size = 0
        with path.open("wb") as out:
            while chunk := await file.read(1 << 20):
                size += len(chunk)
                if size > MAX_UPLOAD_BYTES:
                    raise Problem("invalid-request",
                                  f"the file is larger than {MAX_UPLOAD_BYTES} bytes")
                out.write(chunk)
        result = await run_in_threadpool(_import, store(request), path, kind, principal.username)
    data = result.as_dict()

    def write_audit():
        with store(request).session() as s:
            record(s, actor=principal.username, action=f"import.{kind}", target_type="import",
                   target_id=file.filename, after={k: data[k] for k in
                                                   ("inserted", "updated", "rejected")},
                   client_ip=client_ip(request))
    # The import committed in its own transaction (all or nothing); its entry follows it.
    await run_in_threadpool(write_audit)
    return {k: data[k] for k in ("kind", "inserted", "updated", "rejected", "warnings")}


@router.post("/imports/{kind}", response_model=ImportResult, status_code=201,
             summary="Import a CSV (all or nothing; the invalid rows come back with reasons)")
async def post_import(request: Request, kind: Literal["sites", "reservations", "tariffs", "bills"],
                      file: Annotated[UploadFile, File(description="the CSV file")],
                      principal=Depends(require("imports.write"))):
    return await import_upload(request, kind, file, principal)


@router.get("/users", summary="Accounts and roles")
def users(request: Request, _p=Depends(require("users.manage"))):
    from twin.accounts import list_users

    with store(request).session() as s:
        return list_users(s)


@router.get("/me", response_model=Me, summary="Who the request is authenticated as")
def me(request: Request, principal=Depends(require("account.self"))):
    return {"username": principal.username, "role": principal.role, "lang": principal.lang,
            "actions": sorted(PERMISSIONS[principal.role])}


@router.get("/me/tokens", response_model=list[TokenOut],
            summary="Your API tokens (never their values)")
def my_tokens(request: Request, principal=Depends(require("account.self"))):
    from twin.accounts import list_tokens

    with store(request).session() as s:
        return list_tokens(s, principal.username)


@router.post("/me/tokens", response_model=NewToken, status_code=201,
             summary="Create an API token for yourself (shown once)")
def create_my_token(request: Request, body: TokenIn, principal=Depends(require("account.self"))):
    return _create_token(request, principal.username, body.name, principal)


@router.delete("/me/tokens/{token_id}", response_model=TokenOut,
               summary="Revoke one of your tokens")
def revoke_my_token(request: Request, token_id: int, principal=Depends(require("account.self"))):
    from twin.accounts import revoke_token

    with store(request).session() as s:
        return revoke_token(s, token_id, actor=principal.username, owner=principal.username,
                            client_ip=client_ip(request))


@router.post("/users/{username}/tokens", response_model=NewToken, status_code=201,
             summary="Create an API token for an account (admin; shown once)")
def create_user_token(request: Request, username: str, body: TokenIn,
                      principal=Depends(require("users.manage"))):
    return _create_token(request, username, body.name, principal)


@router.delete("/tokens/{token_id}", response_model=TokenOut, summary="Revoke any token (admin)")
def revoke_any_token(request: Request, token_id: int, principal=Depends(require("users.manage"))):
    from twin.accounts import revoke_token

    with store(request).session() as s:
        return revoke_token(s, token_id, actor=principal.username, client_ip=client_ip(request))


def _create_token(request: Request, username: str, name: str, principal) -> dict:
    from twin.accounts import create_token

    with store(request).session() as s:
        token, info = create_token(s, username, name, actor=principal.username,
                                   client_ip=client_ip(request))
    return {**info, "token": token}


@router.get("/health", response_model=Health,
            summary="Liveness and the registry's state (the counts only for a logged-in caller)")
def health(request: Request, principal=Depends(require("public"))):
    from sqlalchemy import func, select

    from twin.models import Flag, Site

    try:
        with store(request).session() as s:
            sites = s.scalar(select(func.count()).select_from(Site))
            flags = s.scalar(select(func.count()).select_from(Flag).where(Flag.status == "open"))
        known = principal is not None
        return {"status": "ok", "version": __version__, "registry": "ok",
                "schema_revision": store(request).version, "sites": sites if known else None,
                "open_flags": flags if known else None}
    except Exception:  # noqa: BLE001  # health answers, it does not fail
        return {"status": "degraded", "version": __version__, "registry": "unavailable",
                "schema_revision": None, "sites": None, "open_flags": None}


class InfluxPipeline:
    """The collectors' counters from InfluxDB (``connectors.pipeline``)."""

    def __init__(self, influxdb: InfluxSettings) -> None:
        self.influxdb = influxdb

    def __call__(self, now):
        from connectors.influx import InfluxReader
        from connectors.pipeline import latest_counters

        reader = InfluxReader.from_settings(self.influxdb)
        try:
            return latest_counters(reader, now)
        finally:
            reader.close()


@router.get("/pipeline", response_model=Pipeline,
            summary="The collectors' own counters (received, written, rejected, spooled...)")
def pipeline(request: Request, _p=Depends(require("pipeline.read"))):
    from web.api.common import now

    try:
        return {"collectors": request.app.state.pipeline(now(request))}
    except Exception as exc:  # noqa: BLE001  # InfluxDB down or refusing: say so, do not fail
        raise Problem("pipeline-unavailable", f"{type(exc).__name__}") from None


@router.get("/problems/{slug}", summary="What a problem type means")
def problem(slug: str, _p=Depends(require("public"))):
    if slug not in PROBLEMS:
        raise Problem("not-found", f"no problem type {slug!r}")
    status, title, description = PROBLEMS[slug]
    return {"type": f"/api/v1/problems/{slug}", "status": status, "title": title,
            "description": description}
