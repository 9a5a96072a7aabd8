"""Robust aggregation: Flower's median, trimmed mean, Krum, MultiKrum and Bulyan with screened replies.

Each replaces FedAvg's weighted mean by a statistic that a minority of bad updates cannot drag far:

- median: the coordinate-wise median of the sites' weights (Yin et al. 2018);
- trimmed_mean: per coordinate, the mean after dropping the `trim_beta` share of highest and lowest values;
- krum: the one update closest (sum of squared L2 distances to its n - f - 2 nearest) to the others, with f
  = `num_malicious` sites assumed bad (Blanchard et al. 2017); multikrum: the FedAvg of the
  `multikrum_select` best such updates;
- bulyan: MultiKrum's selection followed by a trimmed mean around the coordinate-wise median (El Mhamdi et
  al. 2018), which needs n >= 4f + 3 replies.

Screening (errors, timeouts, non-finite or misshapen weights) runs first, as for FedAvg: a site sending NaN
is left out before any statistic sees it. The statistics ignore num-examples (every accepted site counts
once), except MultiKrum's and Bulyan's averages over the selected updates.
"""

from __future__ import annotations

from flwr.serverapp.strategy import Bulyan, FedMedian, FedTrimmedAvg, Krum, MultiKrum

from fedgin.federation.screening import ScreeningMixin


class ScreenedFedMedian(ScreeningMixin, FedMedian):
    """Flower's FedMedian after screening."""


class ScreenedFedTrimmedAvg(ScreeningMixin, FedTrimmedAvg):
    """Flower's FedTrimmedAvg (`beta`: the share trimmed at each end) after screening."""


class ScreenedKrum(ScreeningMixin, Krum):
    """Flower's Krum (`num_malicious_nodes`) after screening."""


class ScreenedMultiKrum(ScreeningMixin, MultiKrum):
    """Flower's MultiKrum (`num_malicious_nodes`, `num_nodes_to_select`) after screening."""


class ScreenedBulyan(ScreeningMixin, Bulyan):
    """Flower's Bulyan (`num_malicious_nodes`) after screening."""


__all__ = [
    "ScreenedBulyan",
    "ScreenedFedMedian",
    "ScreenedFedTrimmedAvg",
    "ScreenedKrum",
    "ScreenedMultiKrum",
]
