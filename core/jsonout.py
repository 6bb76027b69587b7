"""JSON for machines (``--json``, MQTT flag messages, API bodies)."""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["to_json"]


def to_json(data: Any) -> str:
    """JSON for machines: UTC datetimes as ISO 8601, anything else by ``str``."""
    return orjson.dumps(
        data,
        default=str,
        option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY
        | orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC,
    ).decode()
