"""FedProx (server side as FedAvg, clients add the proximal term) with screened client replies."""

from __future__ import annotations

from flwr.serverapp.strategy import FedProx

from fedgin.federation.screening import ScreeningMixin


class ScreenedFedProx(ScreeningMixin, FedProx):
    """Flower's FedProx: sends `proximal-mu` to the clients; bad replies are left out and reported."""
