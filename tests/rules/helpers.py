"""Hand-built frames and facts for the pure rule tests."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd

from rules.rule import Facts

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def ts(value: str) -> pd.Timestamp:
    return pd.Timestamp(value, tz="UTC")


def sites(*rows: dict) -> pd.DataFrame:
    base = {"lat": 31.2, "lon": 121.5, "state": "on_air", "region": "SH", "customer_class": "commercial",
            "supply": "transfer", "replaces_site_id": None, "state_since": None, "on_air_since": None}
    return pd.DataFrame([{**base, **r} for r in rows])


def facts(**frames: pd.DataFrame) -> Facts:
    return Facts(**frames)
