"""Render every dashboard and the provisioning files, and write them to a folder.

``render`` is pure (the same target gives byte-identical files, so the
committed ``dashboards/built/`` can be checked for staleness); ``write`` is
the only function here that touches the disk.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from dashboards import interference, noc, overcharging, power, site
from dashboards.errors import DashboardError, DefinitionError
from dashboards.lint import problems
from dashboards.model import Dashboard
from dashboards.provisioning import Target, alerting_yaml, dashboards_yaml, datasource_yaml

__all__ = ["BUILT_DIR", "DASHBOARDS", "DASHBOARDS_SUBDIR", "render", "write"]

DASHBOARDS: Sequence[Dashboard] = (
    noc.DASHBOARD,
    site.DASHBOARD,
    interference.DASHBOARD,
    power.DASHBOARD,
    overcharging.DASHBOARD,
)

BUILT_DIR = Path(__file__).with_name("built")
DASHBOARDS_SUBDIR = "dashboards"
DATASOURCE_FILE = "provisioning/datasources/sitetwin.yaml"
PROVIDER_FILE = "provisioning/dashboards/sitetwin.yaml"
ALERTING_FILE = "provisioning/alerting/sitetwin.yaml"
DEFAULT_TARGET = Target()


def dashboard_json(d: Dashboard, target: Target) -> str:
    return json.dumps(d.render(target.datasource_uid, target.display), indent=2,
                      ensure_ascii=False) + "\n"


def render(target: Target = DEFAULT_TARGET, dashboards: Sequence[Dashboard] = DASHBOARDS
           ) -> dict[str, str]:
    """Relative path -> file text, for every dashboard and provisioning file.

    Raises ``DefinitionError`` rather than produce a dashboard that fails lint.
    """
    found = problems([d.render(target.datasource_uid, target.display) for d in dashboards],
                     {target.datasource_uid})
    if found:
        raise DefinitionError(f"{len(found)} problem(s) in the dashboard definitions: "
                              + "; ".join(found[:5]))
    files = {f"{DASHBOARDS_SUBDIR}/{d.uid}.json": dashboard_json(d, target) for d in dashboards}
    files[DATASOURCE_FILE] = datasource_yaml(target)
    files[PROVIDER_FILE] = dashboards_yaml(target)
    files[ALERTING_FILE] = alerting_yaml(target)
    return files


def write(out_dir: Path, target: Target = DEFAULT_TARGET) -> list[Path]:
    """Write the files under ``out_dir`` (created if needed); returns their paths."""
    written = []
    try:
        for rel, text in render(target).items():
            path = out_dir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(path)
            written.append(path)
    except OSError as exc:
        reason = exc.strerror or exc
        raise DashboardError(f"cannot write dashboards to {out_dir}: {reason}") from None
    return written
