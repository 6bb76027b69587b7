"""What a rule is: a name, the flag kinds it raises, thresholds, a schedule, a pure function.

A rule never opens a socket nor reads the clock.  The runner (``engine``)
fetches the frames the rule ``needs`` for its window (``data``), loads the
registry ``Facts``, and calls ``evaluate(frames, facts, now, thresholds)``.
Thresholds come from ``[rules.<name>]`` in the configuration; their defaults
are the fields of each rule's ``Thresholds`` model below (and are documented,
commented out, in ``sitetwin.sample.toml``; a test keeps the two equal).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

import pandas as pd
from pydantic import BaseModel, ConfigDict, ValidationError

from core.settings import Duration
from rules.errors import ThresholdError
from rules.finding import Finding

__all__ = ["Facts", "Frames", "Remembered", "Rule", "Thresholds"]

Frames = Mapping[str, pd.DataFrame]


class Thresholds(BaseModel):
    """Common to every rule: whether it runs, how often, and over what window."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    interval: Duration = 300.0
    window: Duration = 3600.0


def _empty(*columns: str) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})


@dataclass(frozen=True)
class Facts:
    """Registry facts from the twin, as frames (one row per site, event, bill...).

    ``sites``: site_id, lat, lon, state, region, customer_class, supply, replaces_site_id,
    state_since (UTC time of the event that entered the current state), on_air_since; both
    None when unknown (a site imported in its state without a date).
    ``reservations``: site_id, declared_kw, reserved_kw, feeder, substation, status.
    ``tariffs``: region, customer_class, period, hours, effective_from, price_cny_per_kwh.
    ``bills``: bill_id, site_id, supplier_id, supplier_name, meter_id, period_start,
    period_end (exclusive, UTC), billed_kwh, amount_cny.
    ``interferers``: interferer_id, name, lat, lon, radius_m, bands (tuple of band names,
    empty: every band), windows (tuple of (start, end) UTC timestamps): interferers.csv.
    ``maintenance``: site_id, start, end (UTC, end excluded), ticket: maintenance.csv, the
    booked visits during which a site's door may be open.
    """

    sites: pd.DataFrame = field(default_factory=lambda: _empty(
        "site_id", "lat", "lon", "state", "region", "customer_class", "supply",
        "replaces_site_id", "state_since", "on_air_since"))
    reservations: pd.DataFrame = field(default_factory=lambda: _empty(
        "site_id", "declared_kw", "reserved_kw", "feeder", "substation", "status"))
    tariffs: pd.DataFrame = field(default_factory=lambda: _empty(
        "region", "customer_class", "period", "hours", "effective_from", "price_cny_per_kwh"))
    bills: pd.DataFrame = field(default_factory=lambda: _empty(
        "bill_id", "site_id", "supplier_id", "supplier_name", "meter_id", "period_start",
        "period_end", "billed_kwh", "amount_cny"))
    interferers: pd.DataFrame = field(default_factory=lambda: _empty(
        "interferer_id", "name", "lat", "lon", "radius_m", "bands", "windows"))
    maintenance: pd.DataFrame = field(default_factory=lambda: _empty(
        "site_id", "start", "end", "ticket"))


Evaluate = Callable[[Frames, Facts, datetime, Any], list[Finding]]


@dataclass(frozen=True)
class Rule:
    """One registered rule; ``needs`` names the window frames ``rules.data`` must fetch."""

    name: str
    kinds: tuple[str, ...]
    thresholds: type[Thresholds]
    evaluate: Evaluate
    needs: tuple[str, ...] = ()
    description: str = ""
    # True when the rule only re-examines subjects inside its window (bills whose period
    # ended in it): its older flags are out of scope and never resolved for going unseen.
    scoped_by_window: bool = False
    # The site ids an evaluation observed (None: every subject).  A flag of a site it did not
    # observe is out of scope: never cleared for going unseen (a silent site's mains failure
    # is not over).
    observed: Callable[[Frames], set[str]] | None = None
    # True when a backfill may slice this rule's frames from range fetches (``rules.backfill``):
    # set only for a rule whose one-pass flags are proven equal to the step path's
    # (tests/rules/test_backfill_equivalence.py).
    one_pass: bool = False

    def configure(self, table: Mapping[str, Any] | None) -> Thresholds:
        """The thresholds of ``[rules.<name>]`` over the defaults; a bad key is named."""
        try:
            return self.thresholds(**dict(table or {}))
        except ValidationError as exc:
            first = exc.errors()[0]
            key = ".".join(str(p) for p in first["loc"])
            raise ThresholdError(
                f"invalid configuration key 'rules.{self.name}.{key}': {first['msg']}") from None
        except TypeError as exc:
            raise ThresholdError(f"invalid configuration table 'rules.{self.name}': {exc}") from None


_V = TypeVar("_V")


class Remembered(Generic[_V]):
    """The last value computed from some objects, kept while a call names the same objects.

    A backfill hands its steps the same frames (facts, a day's baseline) until something
    changes, so a rule's work on them alone is done once, not at each of thousands of steps.
    The objects are held here, which keeps their identities unique while the entry lives;
    ``extra`` (thresholds) is compared by value.  A live run builds new frames every time
    and computes afresh.
    """

    def __init__(self) -> None:
        self._entry: tuple[tuple[Any, ...], Any, _V] | None = None

    def get(self, objects: tuple[Any, ...], extra: Any, compute: Callable[[], _V]) -> _V:
        entry = self._entry
        if (entry is not None and entry[1] == extra and len(entry[0]) == len(objects)
                and all(a is b for a, b in zip(entry[0], objects, strict=True))):
            return entry[2]
        value = compute()
        self._entry = (objects, extra, value)
        return value
