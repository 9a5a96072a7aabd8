"""fedgin: federated multi-modal abdominal organ segmentation with GIN augmentation (FedGIN)."""

__version__ = "0.9.0"
