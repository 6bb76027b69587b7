"""The cells file: ``cell_id,site_id,band`` for PM counters whose DN names only the cell.

A CSV file with a header (UTF-8, a byte-order mark accepted), columns in any
order, other columns ignored.  The twin learns cells from telemetry, so for
PM files this file is the registry: an operator exports it from the OMC's
configuration data (``sitetwin`` cannot import the twin here, by design:
ingest does not depend on the registry).  The simulator writes one
(``simulator.pmfile.write_cells_csv``).
"""

from __future__ import annotations

import csv
from pathlib import Path

from adapters.errors import CellsFileError
from adapters.pm import CellInfo
from connectors.errors import InvalidIdentifier
from connectors.reading import check_id

__all__ = ["CellInfo", "read_cells"]

_REQUIRED = ("cell_id", "site_id", "band")


def read_cells(path: str | Path) -> dict[str, CellInfo]:
    """``cell_id -> CellInfo``; raises ``CellsFileError`` naming the line of a bad row."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in _REQUIRED if c not in (reader.fieldnames or ())]
            if missing:
                raise CellsFileError(f"{path}: missing column(s) {', '.join(missing)} "
                                     f"(needs {', '.join(_REQUIRED)})")
            out: dict[str, CellInfo] = {}
            for row in reader:
                line = reader.line_num
                try:
                    cell = check_id((row["cell_id"] or "").strip(), "cell_id")
                    site = check_id((row["site_id"] or "").strip(), "site_id")
                except InvalidIdentifier as exc:
                    raise CellsFileError(f"{path} line {line}: {exc}") from None
                out[cell] = CellInfo(site_id=site, band=(row["band"] or "").strip())
            return out
    except OSError as exc:
        raise CellsFileError(f"cannot read the cells file {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise CellsFileError(f"{path} is not a UTF-8 CSV file: {exc}") from None
