"""The web app and HTTP API of ``sitetwin serve`` (FastAPI): ``create_app(settings, store)``.

``web.permissions`` is the one table of who may do what; ``web.auth`` the
dependency every route declares; ``web.problems`` the RFC 9457 error seam;
``web.api`` the routers of ``/api/v1``; ``web.pages`` the pages for people.
"""

from web.app import create_app

__all__ = ["create_app"]
