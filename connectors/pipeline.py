"""The collectors' own counters as last written to InfluxDB (measurement ``sitetwin_pipeline``).

Read by the web app's ``/api/v1/pipeline``: the latest point of each collector
within a window, with its age, so a NOC sees at once which collector went quiet.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

__all__ = ["latest_counters"]


def latest_counters(reader: Any, now: datetime, *, within_s: float = 600.0) -> list[dict[str, Any]]:
    """Per collector seen within ``within_s`` of ``now``: its newest counters, oldest id first."""
    q = (f'SELECT * FROM "sitetwin_pipeline" WHERE time > now() - {int(within_s)}s'
         ' GROUP BY "collector" ORDER BY time DESC LIMIT 1')
    frame = reader.frame(q)
    out = []
    for row in frame.to_dict(orient="records") if not frame.empty else []:
        at = row.pop("time").to_pydatetime(warn=False)
        collector = row.pop("collector", None)
        counters = {k: (int(v) if float(v).is_integer() else float(v)) for k, v in row.items()
                    if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v))}
        out.append({"collector": collector, "at": at,
                    "age_s": round((now - at).total_seconds(), 1), "counters": counters})
    return sorted(out, key=lambda r: str(r["collector"]))
