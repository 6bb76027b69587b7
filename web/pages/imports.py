"""The admin's import page: upload a CSV, see what was imported or every refused row."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile

from twin.errors import ImportFailed
from web.api.admin import import_upload
from web.auth import require
from web.render import render

router = APIRouter(include_in_schema=False)

KINDS = ("sites", "reservations", "tariffs", "bills")


@router.get("/imports")
def imports_page(request: Request, _p=Depends(require("imports.write"))):
    return render(request, "imports.html", {"kinds": KINDS, "result": None, "errors": None})


@router.post("/imports")
async def imports_upload(request: Request,
                         kind: Annotated[Literal["sites", "reservations", "tariffs", "bills"], Form()],
                         file: Annotated[UploadFile, File()],
                         principal=Depends(require("imports.write"))):
    try:
        result = await import_upload(request, kind, file, principal)
    except ImportFailed as exc:
        return render(request, "imports.html", {"kinds": KINDS, "result": None, "kind": kind,
                                                "filename": file.filename, "errors": exc.errors},
                      status_code=422)
    return render(request, "imports.html", {"kinds": KINDS, "result": result, "kind": kind,
                                            "filename": file.filename, "errors": None},
                  status_code=201)
