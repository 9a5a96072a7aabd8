"""Server optimizers: Flower's FedAdam, FedYogi and FedAvgM with screened replies (Reddi et al. 2021, Hsu et
al. 2019).

The server treats the change of the FedAvg of the sites' weights as a pseudo-gradient,
Delta_t = mean_k(w_k) - w_t, and steps with its own optimizer instead of taking the mean as it is:

- fedavgm: v_t = momentum * v_{t-1} + Delta_t, w_{t+1} = w_t + server_lr * v_t;
- fedadam: m_t = beta_1 m_{t-1} + (1 - beta_1) Delta_t, v_t = beta_2 v_{t-1} + (1 - beta_2) Delta_t^2,
  w_{t+1} = w_t + eta_t m_t / (sqrt(v_t) + tau), with Adam's bias correction in eta_t;
- fedyogi: as fedadam with v_t = v_{t-1} - (1 - beta_2) Delta_t^2 sign(v_{t-1} - Delta_t^2).

The sites train as under FedAvg (GIN included); only the server's step changes. Two things are fedgin's on
top of Flower's classes: w_t is the server's float32 global model without FedBN's site-local keys (Flower
takes the arrays sent, which are float16 under `update_dtype = "float16"` and hold keys the sites keep), and
the optimizer's state (moments, momentum) is read and restored, so that it is kept in last.pt and a resumed
federation steps exactly as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdam, FedAvgM, FedYogi

from fedgin.federation.screening import ScreeningMixin
from fedgin.federation.weights import to_float32


class ServerOptimizerMixin(ScreeningMixin):
    """Screening, plus the current global arrays in float32 without local keys, and a resumable state."""

    #: Attributes holding the optimizer's state (dicts of numpy arrays keyed by weight name).
    state_attributes: tuple[str, ...] = ()

    def shared_arrays(self, arrays: ArrayRecord) -> ArrayRecord:
        """The arrays the sites average, in float32 (FedBN's local keys left out)."""
        full = to_float32(arrays)
        return ArrayRecord({key: full[key] for key in full if key not in self.local_keys})

    def set_current(self, arrays: ArrayRecord) -> None:
        raise NotImplementedError

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = super().configure_train(server_round, arrays, config, grid)
        self.set_current(self.shared_arrays(arrays))
        return messages

    def optimizer_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """The optimizer's state as tensors (for a checkpoint loaded with weights_only=True)."""
        return {
            name: {key: torch.from_numpy(np.array(value)) for key, value in self._state(name).items()}
            for name in self.state_attributes
            if self._state(name)
        }

    def load_optimizer_state(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        for name in self.state_attributes:
            if name in state:
                self._load_state(name, {key: value.numpy() for key, value in state[name].items()})

    def _state(self, name: str) -> dict[str, np.ndarray]:
        return getattr(self, name) or {}

    def _load_state(self, name: str, value: dict[str, np.ndarray]) -> None:
        setattr(self, name, value)


class _FedOptState(ServerOptimizerMixin):
    state_attributes = ("m_t", "v_t")
    current_arrays: dict[str, np.ndarray] | None

    def set_current(self, arrays: ArrayRecord) -> None:
        self.current_arrays = {key: array.numpy() for key, array in arrays.items()}


class ScreenedFedAdam(_FedOptState, FedAdam):
    """Flower's FedAdam (`eta`, `beta_1`, `beta_2`, `tau`) after screening."""


class ScreenedFedYogi(_FedOptState, FedYogi):
    """Flower's FedYogi (`eta`, `beta_1`, `beta_2`, `tau`) after screening."""


class ScreenedFedAvgM(ServerOptimizerMixin, FedAvgM):
    """Flower's FedAvgM (`server_learning_rate`, `server_momentum`) after screening.

    Flower keeps its own copy of the global arrays from round to round; here it is set from the server's
    global model every round (the same arrays: the server's model is what FedAvgM returned), which is what
    makes a resumed run exact with only the momentum saved.
    """

    state_attributes = ("momentum_vector",)

    def set_current(self, arrays: ArrayRecord) -> None:
        self.current_arrays = arrays
        self._keys = list(arrays.keys())

    # Flower's momentum is a list in the order of the arrays; the checkpoint keys it by weight name.
    def _state(self, name: str) -> dict[str, np.ndarray]:
        vector = self.momentum_vector
        return dict(zip(self._keys, vector, strict=True)) if vector is not None else {}

    def _load_state(self, name: str, value: dict[str, np.ndarray]) -> None:
        self.momentum_vector = list(value.values())


__all__ = ["ScreenedFedAdam", "ScreenedFedAvgM", "ScreenedFedYogi", "ServerOptimizerMixin"]
