"""Client-level differential privacy: Flower's DP wrappers after fedgin's screening, and the epsilon spent.

With `[federation.privacy]` every site's update u_k = w_k - w_t is clipped to L2 norm C (on the server or on
the site), the clipped updates are averaged with equal weights, and Gaussian noise N(0, (z C / n)^2) is added
to the mean (DP-FedAvg, McMahan et al. 2018; Flower's DifferentialPrivacy{Server,Client}Side{Fixed,Adaptive}
Clipping). Each round is then one Gaussian mechanism of noise multiplier z on the sum of n bounded updates,
and the rounds compose; the RDP accountant (Flower's RdpAccountant on Google's dp-accounting) reports the
epsilon spent after each round at `target_delta`, for a neighbouring federation with one site added or
removed. Adaptive clipping (Andrew et al. 2021) spends part of the budget on a noisy count of clipped
updates; Flower's wrapper splits z so that the two releases together are a Gaussian mechanism of multiplier
z, which is what is accounted.

What fedgin adds to Flower's parts, and why:

- The order: screening (errors, non-finite, misshapen replies) runs before clipping, since Flower's wrappers
  clip whatever arrives (a misshapen reply would stop the round).
- The accountant is fedgin's, not the wrappers' `accountant=`: Flower 1.41 accounts only its plain FedAvg
  aggregation, and the screened FedAvg is not that class. The accounting here holds the same conditions:
  equal weights (the sites send a weight of 1 under DP instead of their number of slices, whose weighted
  mean would let a large site move the model by more than C / n), every sampled site's reply in every
  committed round (min_clients = the number of sites), no sampling amplification claimed.
- Seeds: the wrappers draw their noise from numpy's global generator; it is seeded per round from the run's
  seed (and restored after), so a DP run is as reproducible and as exactly resumable as any other.
- Adaptive clipping steps its norm towards the target quantile (AdaptiveNormMixin): Flower 1.41's wrappers
  step with the clipped share where the paper uses the unclipped one, which moves the norm away from it.
- Client-side clipping is done by fedgin's ClientApp with Flower's clipping functions: Flower's clipping mods
  require a message with one ConfigRecord, and fedgin's first message of a site carries two (the round's
  settings and the run's).

Refused before anything starts (one line each): clipping = "none", noise_multiplier = 0 (epsilon infinite),
a strategy other than fedavg/fedprox (a median or Krum has another sensitivity; a server optimizer steps
after the noise), FedBN, fraction_train < 1, min_clients below the number of sites, client-side clipping with
float16 updates (the rounding could lift an update's norm above C), an adaptive z that Flower's split cannot
reach, and a run whose planned rounds would spend more than target_epsilon.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import GaussianPrivacyEvent, NeighboringRelation, PrivacyConfig, SamplingMethod
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
)
from flwr.supercore.differential_privacy import (
    KEY_CLIPPING_NORM,
    KEY_NORM_BIT,
    compute_adaptive_clip_model_update,
    compute_adaptive_noise_params,
    compute_clip_model_update,
)

from fedgin.config import FederationConfig, PrivacySettings
from fedgin.errors import ConfigError
from fedgin.federation.protocol import CLIPPING_NORM, NORM_BIT, UNIT_WEIGHT
from fedgin.federation.screening import ScreeningMixin
from fedgin.training.seeding import derive_seed

# The wire keys (fedgin.federation.protocol) are Flower's own.
assert (CLIPPING_NORM, NORM_BIT) == (KEY_CLIPPING_NORM, KEY_NORM_BIT)


# ----------------------------------------------------------------------------------------------------------
# Accounting


class PrivacyLedger:
    """The epsilon spent by the rounds so far: Flower's RDP accountant, one Gaussian event per round."""

    def __init__(self, settings: PrivacySettings, sites: int) -> None:
        from flwr.serverapp import RdpAccountant  # needs flwr[dp] (dp-accounting)

        self.settings = settings
        self.sites = sites
        self.accountant = RdpAccountant(
            PrivacyConfig(
                target_delta=settings.target_delta,
                population_size=sites,
                neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                sampling_method=SamplingMethod.NO_AMPLIFICATION,
            )
        )

    @property
    def event(self) -> GaussianPrivacyEvent:
        return GaussianPrivacyEvent(
            noise_multiplier=self.settings.noise_multiplier,
            sample_size=self.sites,
            population_size=self.sites,
        )

    def compose(self, rounds: int = 1) -> None:
        """Add `rounds` released global models (a resumed run composes the rounds it already has)."""
        if rounds > 0:
            self.accountant.compose(self.event, rounds)

    @property
    def epsilon(self) -> float:
        if self.accountant.num_releases == 0:
            return 0.0
        return float(self.accountant.get_epsilon(self.settings.target_delta))

    def summary(self) -> dict[str, Any]:
        """What summary.json and the report say of the run's privacy."""
        spent = self.accountant.get_privacy_spent() if self.accountant.num_releases else None
        settings = self.settings
        return {
            "epsilon": self.epsilon,
            "delta": settings.target_delta,
            "rounds_accounted": self.accountant.num_releases,
            "noise_multiplier": settings.noise_multiplier,
            "clipping": settings.clipping,
            "clip_on": settings.clip_on,
            "accounting": "RDP, client-level (one site added or removed), no sampling amplification",
            "optimal_order": spent.optimal_order if spent is not None else None,
        }


def planned_epsilon(federation: FederationConfig) -> float:
    """The epsilon a federation's planned rounds would spend."""
    assert federation.privacy is not None
    ledger = PrivacyLedger(federation.privacy, len(federation.clients))
    ledger.compose(federation.rounds)
    return ledger.epsilon


def check_privacy(federation: FederationConfig) -> None:
    """ConfigError (one line) for the DP settings this federation cannot run or account for."""
    privacy = federation.privacy
    assert privacy is not None
    prefix = "federation.privacy"
    sites = len(federation.clients)
    if privacy.clipping == "none":
        raise ConfigError(
            f"{prefix}.clipping is none: noise without clipping bounds no site's influence, so no epsilon "
            "holds (set clipping = fixed or adaptive, or remove [federation.privacy])"
        )
    if privacy.clipping_norm is None:
        raise ConfigError(f"{prefix}.clipping_norm: needed for {privacy.clipping} clipping (initial norm)")
    if privacy.noise_multiplier == 0:
        raise ConfigError(
            f"{prefix}.noise_multiplier is 0: clipping alone spends an infinite epsilon (set a positive z)"
        )
    if federation.strategy not in {"fedavg", "fedprox"}:
        raise ConfigError(
            f"{prefix}: strategy {federation.strategy} is not accounted (the noise is calibrated for the "
            "mean of clipped updates; use fedavg or fedprox)"
        )
    if federation.fedbn:
        raise ConfigError(f"{prefix}: FedBN is not supported under DP (its site-local keys are not clipped)")
    if federation.fraction_train < 1.0:
        raise ConfigError(
            f"{prefix}: fraction_train must be 1 (the noise is calibrated for every site's update each round)"
        )
    if federation.min_clients != sites:
        raise ConfigError(
            f"{prefix}: min_clients is {federation.min_clients} but there are {sites} sites; under DP a "
            f"round is committed only with every site's update (set min_clients = {sites})"
        )
    if privacy.clip_on == "client" and federation.update_dtype == "float16":
        raise ConfigError(
            f"{prefix}: client-side clipping needs update_dtype = float32 (float16 rounding could lift a "
            "clipped update above clipping_norm)"
        )
    if privacy.clipping == "adaptive":
        try:
            compute_adaptive_noise_params(privacy.noise_multiplier, sites, privacy.clipped_count_stddev)
        except ValueError:
            stddev = privacy.clipped_count_stddev if privacy.clipped_count_stddev is not None else sites / 20
            raise ConfigError(
                f"{prefix}: adaptive clipping with noise_multiplier {privacy.noise_multiplier:g} needs "
                f"clipped_count_stddev above z / 2 = {privacy.noise_multiplier / 2:g} (it is {stddev:g})"
            ) from None
    if privacy.target_epsilon is not None:
        epsilon = planned_epsilon(federation)
        if epsilon > privacy.target_epsilon:
            raise ConfigError(
                f"{prefix}: {federation.rounds} rounds at noise_multiplier {privacy.noise_multiplier:g} "
                f"spend epsilon {epsilon:.3g} at delta {privacy.target_delta:g}, above target_epsilon "
                f"{privacy.target_epsilon:g} (raise noise_multiplier or lower rounds)"
            )


# ----------------------------------------------------------------------------------------------------------
# Server: the wrappers after screening


@contextmanager
def seeded_numpy(seed: int) -> Iterator[None]:
    """numpy's global generator seeded for the block, then restored (Flower's wrappers draw from it)."""
    state = np.random.get_state()
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        np.random.set_state(state)


class PrivacyMixin(ScreeningMixin):
    """Screening, then one of Flower's DP wrappers around a plain FedAvg with equal weights.

    Configured by keyword as the other strategies (`local_keys`, `node_timeout_s` for screening; `seed` for
    the noise; the rest for Flower's wrapper, whose `strategy` is the inner FedAvg).
    """

    strategy: FedAvg
    clipping_norm: float

    def __init__(self, *args: Any, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seed = seed

    # Screening reads these of the strategy it runs before: here, the wrapped FedAvg's.
    @property
    def min_train_nodes(self) -> int:  # type: ignore[override]
        return self.strategy.min_train_nodes

    @property
    def min_available_nodes(self) -> int:  # type: ignore[override]
        return self.strategy.min_available_nodes

    @property
    def weighted_by_key(self) -> str:  # type: ignore[override]
        return self.strategy.weighted_by_key

    @property
    def arrayrecord_key(self) -> str:  # type: ignore[override]
        return self.strategy.arrayrecord_key

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        with seeded_numpy(derive_seed(self.seed, "dp-noise", server_round)):
            return super().aggregate_train(server_round, replies)

    def privacy_state(self) -> dict[str, float]:
        """What last.pt keeps for an exact resume: the clipping norm (it moves under adaptive clipping)."""
        return {"clipping_norm": float(self.clipping_norm)}

    def load_privacy_state(self, state: dict[str, float]) -> None:
        if "clipping_norm" in state:
            self.clipping_norm = float(state["clipping_norm"])


class ScreenedDPServerSideFixedClipping(PrivacyMixin, DifferentialPrivacyServerSideFixedClipping):
    """Flower's server-side fixed clipping and noise after screening."""


class AdaptiveNormMixin:
    """Andrew et al.'s geometric step on the clipping norm, C <- C exp(-lr (unclipped share - target)).

    Flower 1.41's adaptive wrappers step on the *clipped* share with the same sign, which drives C away from
    the target quantile (with most updates clipped C shrinks further, towards 0). The noisy count is the
    wrappers' own (the same privacy cost); only the share's complement is taken, so that `target_quantile`
    is what it is in the paper: the share of updates whose norm C should lie above.
    """

    def _geometric_update(self, clipped_fraction: float) -> None:
        super()._geometric_update(1.0 - clipped_fraction)  # type: ignore[misc]


class ScreenedDPServerSideAdaptiveClipping(
    AdaptiveNormMixin, PrivacyMixin, DifferentialPrivacyServerSideAdaptiveClipping
):
    """Flower's server-side adaptive clipping and noise after screening."""


class ScreenedDPClientSideFixedClipping(PrivacyMixin, DifferentialPrivacyClientSideFixedClipping):
    """Flower's noise on updates the sites clipped to the norm it sends (fedgin's client clips)."""


class ScreenedDPClientSideAdaptiveClipping(
    AdaptiveNormMixin, PrivacyMixin, DifferentialPrivacyClientSideAdaptiveClipping
):
    """Flower's adaptive norm from the sites' clipped bits, and noise (fedgin's client clips)."""


def build_private_strategy(
    federation: FederationConfig, strategy: FedAvg, screening: dict[str, Any], seed: int
) -> PrivacyMixin:
    """The DP wrapper of `federation.privacy` around `strategy` (a FedAvg or FedProx weighted by
    UNIT_WEIGHT), after screening(**screening)."""
    privacy = federation.privacy
    assert privacy is not None and privacy.clipping_norm is not None
    assert strategy.weighted_by_key == UNIT_WEIGHT, "DP aggregates with equal weights"
    sites = len(federation.clients)
    common = {
        "strategy": strategy,
        "noise_multiplier": privacy.noise_multiplier,
        "num_sampled_clients": sites,
    }
    adaptive = {
        "initial_clipping_norm": privacy.clipping_norm,
        "target_clipped_quantile": privacy.target_quantile,
        "clip_norm_lr": privacy.clip_lr,
        "clipped_count_stddev": privacy.clipped_count_stddev,
    }
    options = {**screening, "seed": seed}
    if privacy.clipping == "fixed":
        fixed = {**common, "clipping_norm": privacy.clipping_norm, **options}
        if privacy.clip_on == "server":
            return ScreenedDPServerSideFixedClipping(**fixed)
        return ScreenedDPClientSideFixedClipping(**fixed)
    if privacy.clip_on == "server":
        return ScreenedDPServerSideAdaptiveClipping(**common, **adaptive, **options)
    return ScreenedDPClientSideAdaptiveClipping(**common, **adaptive, **options)


# ----------------------------------------------------------------------------------------------------------
# Client: clipping on the site


def clip_on_site(
    trained: dict[str, torch.Tensor], start: dict[str, torch.Tensor], settings: ConfigRecord, adaptive: bool
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The site's weights with its update clipped to the round's norm (Flower's FlatClip), and the metrics
    to add to its reply (the norm bit for adaptive clipping; the weight 1 of every site under DP)."""
    norm = float(settings[CLIPPING_NORM])
    keys = [key for key, value in trained.items() if value.is_floating_point()]
    sent = [trained[key].detach().cpu().double().numpy() for key in keys]
    received = [start[key].detach().cpu().double().numpy() for key in keys]
    if adaptive:
        clipped = compute_adaptive_clip_model_update(sent, received, norm)
    else:
        compute_clip_model_update(sent, received, norm)
        clipped = False
    out = dict(trained)
    for key, value in zip(keys, sent, strict=True):
        out[key] = torch.from_numpy(value).to(trained[key].dtype)
    metrics = {NORM_BIT: float(clipped)} if adaptive else {}
    return out, metrics


__all__ = [
    "CLIPPING_NORM",
    "NORM_BIT",
    "UNIT_WEIGHT",
    "PrivacyLedger",
    "PrivacyMixin",
    "build_private_strategy",
    "check_privacy",
    "clip_on_site",
    "planned_epsilon",
    "seeded_numpy",
]
