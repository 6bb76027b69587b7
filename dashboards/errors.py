"""Errors of the dashboards package.

    DashboardError                 (a sitetwin.errors.SitetwinError)
    ├── DefinitionError            a dashboard definition breaks a structural rule
    └── PushError                  uploading to Grafana failed (HTTP status and reason)
        └── GrafanaClientMissing   the optional ``grafana-client`` is not installed

grafana-client's and niquests' exceptions are translated in ``push.py`` and
never leave this package.
"""

from __future__ import annotations

from core.errors import SitetwinError

__all__ = ["DashboardError", "DefinitionError", "GrafanaClientMissing", "PushError"]


class DashboardError(SitetwinError):
    """Root of the dashboards package's errors."""


class DefinitionError(DashboardError):
    """A dashboard definition is inconsistent (duplicate uid, undefined variable...)."""


class PushError(DashboardError):
    """Grafana refused or could not be reached; the message says which call and why."""


class GrafanaClientMissing(PushError):
    """``sitetwin dashboards push`` needs the optional extra ``sitetwin[grafana]``."""
