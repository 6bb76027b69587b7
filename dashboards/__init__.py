"""Grafana dashboards as code: definitions, rendered JSON, provisioning files, push.

``render()`` gives every file ``sitetwin dashboards build`` writes; ``problems()``
lints rendered dashboards; ``push()`` uploads them with grafana-client
(optional extra ``sitetwin[grafana]``).  The built files live in ``built/``.
"""

from dashboards.build import BUILT_DIR, DASHBOARDS, render, write
from dashboards.errors import DashboardError, DefinitionError, GrafanaClientMissing, PushError
from dashboards.lint import problems
from dashboards.provisioning import Target
from dashboards.push import push

__all__ = [
    "BUILT_DIR",
    "DASHBOARDS",
    "DashboardError",
    "DefinitionError",
    "GrafanaClientMissing",
    "PushError",
    "Target",
    "problems",
    "push",
    "render",
    "write",
]
