"""``sitetwin dashboards build|push``: Grafana dashboards as code."""

from __future__ import annotations

import argparse
from pathlib import Path

from sitetwin.config import Settings
from sitetwin.errors import UserError
from sitetwin.output import emit


def register(commands: argparse._SubParsersAction, reports: argparse._SubParsersAction) -> None:
    p = commands.add_parser("dashboards", help="build Grafana dashboards and provisioning files, "
                                               "or push them to a Grafana")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    build = sub.add_parser("build", help="write dashboard JSON and Grafana provisioning YAML")
    build.add_argument("--out", metavar="DIR", type=Path, default=None,
                       help="output folder (default: <services.state_dir>/grafana)")
    build.add_argument("--dashboards-path", metavar="PATH", default=None,
                       help="where the Grafana host reads the dashboard JSON from "
                            "(written into provisioning/dashboards/sitetwin.yaml)")
    build.set_defaults(handler=run_build)
    push = sub.add_parser("push", help="create folder and datasource if missing, upload dashboards "
                                       "(needs sitetwin[grafana]; token from "
                                       "SITETWIN_GRAFANA__TOKEN)")
    push.add_argument("--grafana-url", metavar="URL", default=None,
                      help="Grafana base URL (default: grafana.url)")
    push.set_defaults(handler=run_push)


def display(settings: Settings):
    """The dashboards' ``Display``: the ``[grafana]`` and ``[rules]`` sections and the zone."""
    from dashboards.display import Display

    return Display.from_settings(grafana=settings.grafana, rules=settings.rules, zone=settings.time.zone)


def _target(settings: Settings, dashboards_path: str | None = None):
    from dashboards.provisioning import Target

    extra = {"dashboards_path": dashboards_path} if dashboards_path else {}
    return Target(datasource_uid=settings.grafana.datasource_uid, influx_url=settings.influxdb.url,
                  database=settings.influxdb.database, folder=settings.grafana.folder,
                  display=display(settings), **extra)


def build(settings: Settings, out: Path | None = None,
          dashboards_path: str | None = None) -> dict:
    """Write the dashboards and provisioning files; what ``sitetwin demo`` calls too."""
    from dashboards.build import write

    out = out or settings.state_dir / "grafana"
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    target = _target(settings, dashboards_path)
    paths = write(out, target)
    return {"out": str(out.resolve()), "files": [str(p.relative_to(out)) for p in paths],
            "datasource_uid": target.datasource_uid, "dashboards_path": target.dashboards_path}


def build_text(d: dict) -> str:
    """Where the files are and the two ways to load them into a Grafana."""
    from dashboards.build import DASHBOARDS_SUBDIR

    lines = [f"wrote {len(d['files'])} files under {d['out']}:"]
    lines += [f"  {f}" for f in d["files"]]
    lines += [
        "load them into a Grafana:",
        f"  - provisioning: copy {d['out']}/provisioning/* to /etc/grafana/provisioning/ and "
        f"{d['out']}/{DASHBOARDS_SUBDIR}/*.json to {d['dashboards_path']}, restart Grafana;",
        "  - or over HTTP: SITETWIN_GRAFANA__TOKEN=... sitetwin dashboards push "
        "--grafana-url http://grafana:3000",
    ]
    return "\n".join(lines)


def run_build(args: argparse.Namespace, settings: Settings) -> int:
    emit(args, build(settings, args.out, args.dashboards_path), build_text)
    return 0


def run_push(args: argparse.Namespace, settings: Settings) -> int:
    from dashboards.push import InfluxCredentials, push

    url = args.grafana_url or settings.grafana.url
    influx = settings.influxdb
    # Tokens come from settings (SITETWIN_GRAFANA__TOKEN, ...), never from the command line.
    report = push(url, settings.grafana.token, _target(settings),
                  folder_title=settings.grafana.folder,
                  credentials=InfluxCredentials(influx.username, influx.password, influx.token))
    emit(args, report.as_dict(), lambda d: "\n".join(
        [f"Grafana {d['url']}: folder {d['folder']} ({d['folder_action']}), datasource "
         f"{d['datasource_uid']} ({d['datasource_action']})"]
        + [f"  {x['uid']}: {x['status']} {x['url']}" for x in d["dashboards"]]))
    return 0
