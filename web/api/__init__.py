"""The HTTP API, ``/api/v1``: one router per resource, all under ``web.auth.require``."""
