"""How much each site's update counts in the average (`[federation] weighting`).

- `examples` (FedAvg as published): w_i = n_i / sum_j n_j, n_i the site's training slices;
- `uniform`: w_i = 1 / K for K sites;
- `modality_balanced`: every modality present in the round gets an equal share 1/M of the average, split
  among the sites by their examples of that modality; a site holding both modalities counts in both:

      w_i = sum_m (1 / M) * n_im / N_m,      N_m = sum_j n_jm,

  so that a CT site with many slices cannot outweigh the MRI sites (the committed limited-data study: the
  federations lose MRI Dice as CT is added, since FedAvg weighs the CT site by its slices).

The weights are computed after screening, over the accepted replies of the round, and they sum to 1.
They apply to the strategies that average (fedavg, fedprox and the server optimizers, which average before
their step); the robust rules select or take medians and ignore weights, and differential privacy and
SecAgg+ need every site to weigh the same: `FederationConfig` refuses those combinations.

Example:
    >>> sites = {"ct": {"ct": 100}, "mri": {"mri": 50}, "mix": {"ct": 50, "mri": 50}}
    >>> {site: round(w, 4) for site, w in site_weights(sites, "modality_balanced").items()}
    {'ct': 0.3333, 'mri': 0.25, 'mix': 0.4167}
"""

from __future__ import annotations

from collections.abc import Mapping

#: The `weighting` choices.
WEIGHTINGS = ("examples", "uniform", "modality_balanced")


def site_weights(examples: Mapping[str, Mapping[str, float]], weighting: str) -> dict[str, float]:
    """Normalised weight per site from `examples[site][modality]` (training examples of each modality)."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
    if not examples:
        return {}
    if weighting == "uniform":
        return {site: 1.0 / len(examples) for site in examples}
    if weighting == "examples":
        totals = {site: float(sum(counts.values())) for site, counts in examples.items()}
        total = sum(totals.values())
        return {site: count / total for site, count in totals.items()}
    per_modality: dict[str, float] = {}
    for counts in examples.values():
        for modality, count in counts.items():
            if count > 0:
                per_modality[modality] = per_modality.get(modality, 0.0) + float(count)
    share = 1.0 / len(per_modality)
    return {
        site: sum(share * float(count) / per_modality[m] for m, count in counts.items() if count > 0)
        for site, counts in examples.items()
    }


__all__ = ["WEIGHTINGS", "site_weights"]
