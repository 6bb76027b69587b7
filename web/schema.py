"""Print the HTTP API's OpenAPI schema as checked in.

    .venv/bin/python -m web.schema > docs/openapi.json
"""

from __future__ import annotations

import json
import sys

from core.settings import Settings


def schema_text() -> str:
    """The schema, as ``docs/openapi.json`` holds it (sorted keys, two-space indent)."""
    from web.app import create_app

    app = create_app(Settings(), store=None, peaks=lambda facts, until: (None, 0.0, None))
    return json.dumps(app.openapi(), indent=2, ensure_ascii=False, sort_keys=True) + "\n"


if __name__ == "__main__":
    sys.stdout.write(schema_text())
