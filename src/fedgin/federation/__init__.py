"""Federated training (FedAvg / FedProx / FedBN with GIN on the clients) on Flower's Message API."""

from fedgin.federation.screening import ClientReport, FederationError
from fedgin.federation.server import FederationResult
from fedgin.federation.simulation import run_federation

__all__ = ["ClientReport", "FederationError", "FederationResult", "run_federation"]
