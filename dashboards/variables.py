"""The template variables every dashboard shares, and the InfluxQL filters on them.

Values come from the tags the pipeline writes: ``county`` and ``site_id`` from
the twin's ``site_state``, ``cell_id`` and ``band`` from ``interference``.
Filters use the regex form (``=~ /^$site$/``) so that one query works for a
single value, several values, and "All" (``.*``, except for ``$site``, whose
"All" is every site of the selected counties, so that the county filter holds
on measurements without a county tag).
"""

from __future__ import annotations

from dashboards.model import Variable

__all__ = [
    "BAND",
    "CELL",
    "COUNTY",
    "SITE",
    "SITE_ONE",
    "by_band",
    "by_cell",
    "by_county",
    "by_site",
]

COUNTY = Variable("county", "County",
                  'SHOW TAG VALUES FROM "site_state" WITH KEY = "county"')
# "All" sites is the list of the county's sites, not ".*": most measurements (power,
# tower, interference, flags) carry no county tag, so the county filters them through
# the site list.
SITE = Variable("site", "Site",
                'SHOW TAG VALUES FROM "site_state" WITH KEY = "site_id" '
                'WHERE "county" =~ /^$county$/', all_value=None)
SITE_ONE = Variable(SITE.name, SITE.label, SITE.influxql, multi=False, include_all=False)
CELL = Variable("cell", "Cell",
                'SHOW TAG VALUES FROM "interference" WITH KEY = "cell_id" '
                'WHERE "site_id" =~ /^$site$/')
BAND = Variable("band", "Band",
                'SHOW TAG VALUES FROM "interference" WITH KEY = "band" '
                'WHERE "site_id" =~ /^$site$/')

by_county = '"county" =~ /^$county$/'
by_site = '"site_id" =~ /^$site$/'
by_cell = '"cell_id" =~ /^$cell$/'
by_band = '"band" =~ /^$band$/'
