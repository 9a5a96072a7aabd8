"""FedAvg (weighted by num-examples) with screened client replies."""

from __future__ import annotations

from flwr.serverapp.strategy import FedAvg

from fedgin.federation.screening import ScreeningMixin


class ScreenedFedAvg(ScreeningMixin, FedAvg):
    """Flower's FedAvg; replies with errors, non-finite or misshapen weights are left out and reported."""
