"""``sitetwin broker-config``: Mosquitto config, password file and ACL for production.

Writes into ``--out``: ``mosquitto.conf`` (TLS listener, no anonymous
clients), ``passwd`` (PBKDF2-SHA512 hashes), ``acl`` (a device publishes only
under its own ``sites/<site_id>/#``; the collector reads ``sites/#`` and
writes ``sitetwin/flags/#``), ``device-credentials.csv`` (one password per
site, to provision the devices; kept on re-runs) and
``collector-credentials.env``.  The secret files are created mode 0600 and no
secret is printed.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from connectors.broker import BrokerConfigError, write_bundle
from sitetwin.config import Settings
from sitetwin.errors import UserError
from sitetwin.output import emit


def register(commands: argparse._SubParsersAction, reports: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "broker-config",
        help="generate a production Mosquitto config (TLS, passwords, per-site ACL)",
        description="Generate mosquitto.conf, passwd, acl and device credentials for the given sites.",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="directory to write the files into")
    p.add_argument("--sites", metavar="FILE", help="sites CSV (only its site_id column is used)")
    p.add_argument("--site", action="append", default=[], metavar="SITE_ID",
                   help="a site id (repeatable), in addition to --sites")
    p.add_argument("--collector-user", default=None,
                   help="collector's MQTT user (default: mqtt.username, else 'collector')")
    p.add_argument("--broker-dir", default=None, metavar="DIR",
                   help="where the broker will read these files (default: --out)")
    p.add_argument("--port", type=int, default=8883, help="TLS listener port (default 8883)")
    p.add_argument("--bind", default="0.0.0.0", help="TLS listener address (default 0.0.0.0)")
    p.add_argument("--local-port", type=int, default=None,
                   help="also listen without TLS on 127.0.0.1:PORT (passwords still required)")
    p.add_argument("--tls-ca", default="ca.crt", help="CA certificate (relative to --broker-dir)")
    p.add_argument("--tls-cert", default="server.crt", help="server certificate")
    p.add_argument("--tls-key", default="server.key", help="server private key")
    p.add_argument("--require-client-cert", action="store_true",
                   help="refuse clients without a certificate signed by the CA")
    p.add_argument("--persistence-dir", default=None,
                   help="broker persistence directory (default: <broker-dir>/data/)")
    p.set_defaults(handler=run)


def read_site_ids(path: str | Path) -> list[str]:
    """The ``site_id`` column of a sites CSV (UTF-8, BOM tolerated)."""
    try:
        with Path(path).open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or "site_id" not in [f.strip() for f in reader.fieldnames]:
                raise UserError(f"{path}: no site_id column in the header")
            reader.fieldnames = [f.strip() for f in reader.fieldnames]
            return [(row.get("site_id") or "").strip() for row in reader]
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise UserError(f"{path}: not a readable CSV ({exc})") from None


def run(args: argparse.Namespace, settings: Settings) -> int:
    site_ids = list(args.site)
    if args.sites:
        site_ids += read_site_ids(args.sites)
    if not site_ids:
        raise UserError("no sites: give --sites FILE and/or --site SITE_ID")
    password = settings.mqtt.password.get_secret_value() if settings.mqtt.password else None
    try:
        bundle = write_bundle(
            args.out, site_ids,
            collector_user=args.collector_user or settings.mqtt.username or "collector",
            collector_password=password,
            broker_dir=args.broker_dir, tls_ca=args.tls_ca, tls_cert=args.tls_cert,
            tls_key=args.tls_key, port=args.port, bind_address=args.bind,
            require_client_cert=args.require_client_cert, local_port=args.local_port,
            shared_group=settings.mqtt.shared_group, persistence_location=args.persistence_dir,
        )
    except BrokerConfigError as exc:
        raise UserError(str(exc)) from None
    data = {
        "directory": str(bundle.directory),
        "sites": bundle.sites,
        "new_sites": bundle.new_sites,
        "collector_user": bundle.collector_user,
        "files": {k: str(v) for k, v in bundle.files.items()},
    }

    def text(d: dict) -> str:
        return (f"wrote broker config for {d['sites']} site(s) ({d['new_sites']} new) into {d['directory']}\n"
                f"  start it with: mosquitto -c {d['files']['mosquitto.conf']}\n"
                f"  device passwords: {d['files']['device-credentials.csv']} (mode 0600)\n"
                f"  collector: source {d['files']['collector-credentials.env']} before `sitetwin run`")

    emit(args, data, text)
    return 0
