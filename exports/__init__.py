"""The registry's data on its way out: report tables as XLSX/CSV files, live state as line protocol.

``exports.tables`` writes any frame to ``.csv`` or ``.xlsx`` (every report of the
CLI and the web app); ``exports.site_state`` turns the registry and its live state
into the ``site_state`` points that ``sitetwin run`` writes to InfluxDB for the
dashboards.  Above the twin and the connectors, below the rules, the web app and
the shell; neither the twin nor the ingest path imports it.  ``site_state_lines`` is
imported from its module, so that writing a CSV does not load the registry's models.
"""

from exports.errors import ExportError, ReportFileError
from exports.tables import FORMATS, Sheet, unit_of, write_sheets, write_table, write_workbook

__all__ = [
    "FORMATS",
    "ExportError",
    "ReportFileError",
    "Sheet",
    "unit_of",
    "write_sheets",
    "write_table",
    "write_workbook",
]
