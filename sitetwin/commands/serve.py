"""``sitetwin serve``: the web app and the HTTP API (``web.app.create_app``) on uvicorn."""

from __future__ import annotations

import argparse

from sitetwin.config import Settings


def register(commands: argparse._SubParsersAction, reports: argparse._SubParsersAction) -> None:
    p = commands.add_parser("serve", help="the web app and the HTTP API (/api/v1)")
    p.add_argument("--host", help="listen address (default: [web] host)")
    p.add_argument("--port", type=int, help="listen port (default: [web] port)")
    p.set_defaults(handler=run_serve, default_verbosity=1)


def run_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from twin.store import open_store
    from web.app import create_app

    host = args.host or settings.web.host
    port = args.port or settings.web.port
    store = open_store(settings.twin_url)
    try:
        app = create_app(settings, store)
        print(f"sitetwin: serving http://{host}:{port}/ (API docs at /api/v1/docs)", flush=True)
        # Uvicorn's access log carries no cookies or Authorization headers, only the path.
        uvicorn.run(app, host=host, port=port, log_level="info", proxy_headers=False)
    finally:
        store.close()
    return 0
