"""Single-site training: the loop every method of the study shares (centralized, local, federated client)."""

from fedgin.training.trainer import LocalTrainer, TrainResult, run_training

__all__ = ["LocalTrainer", "TrainResult", "run_training"]
