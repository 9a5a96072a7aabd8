"""Federated dataset statistics: each site computes protected aggregates of its caches (`site`), the
server merges them (`merge`) and reports sites that look unlike the others (`report`).

See docs/statistics.md.
"""

from fedgin.statistics.merge import QUANTILES, central_statistics, histogram_quantiles, merge
from fedgin.statistics.report import check_sites, write_outputs
from fedgin.statistics.site import edges_from_ranges, group_key, site_ranges, site_statistics

__all__ = [
    "QUANTILES",
    "central_statistics",
    "check_sites",
    "edges_from_ranges",
    "group_key",
    "histogram_quantiles",
    "merge",
    "site_ranges",
    "site_statistics",
    "write_outputs",
]
