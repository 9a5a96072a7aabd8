"""Acquisition protocols as data: the shipped protocols, the vendors' MRI curves and the sources' mixes.

A protocol (`fedgin.config.CTProtocol` / `MRProtocol`) says what a scanner does to an anatomy; a data source
is a weighted mix of protocols (`fedgin.config.ProtocolMix`). The shipped mixes imitate the study's sources:

- `totalseg-ct`: TotalSegmentator CT (Wasserthal et al., Radiol Artif Intell 2023;5:e230024): routine CT of
  one university hospital's many scanners, all contrast phases, 100-140 kVp, smooth to sharp kernels,
  1-5 mm slices.
- `totalseg-mri`: TotalSegmentator MRI (Akinci D'Antonoli et al., Radiology 2025): 1.5 T and 3 T, mostly
  one vendor, T1 gradient echo (in-/opposed-phase, fat-saturated before and after gadolinium) and T2
  single-shot / turbo spin echo.
- `amos`: AMOS 2022 (Ji et al., NeurIPS 2022 Datasets and Benchmarks): other hospitals and vendors; here
  more 3 T, other vendor curves, delayed and low-kVp CT, spin-echo T1 and fat-saturated single-shot T2:
  several of its protocols occur in no training mix, others in both (so seen and unseen protocols can be
  compared).
- `single`: one protocol per modality family (portal-venous CT, 1.5 T spin-echo T1 and T2): no shift
  within a modality.

The shares are illustrative, not counts from those papers: what matters for the benchmark is that the
test mix shares some protocols with the training mixes and adds others.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedgin.config import CTProtocol, MRProtocol, ProtocolMix, SynthConfig
from fedgin.errors import ConfigError

AnyProtocol = CTProtocol | MRProtocol

_PHASE_TAG = {"native": "nat", "arterial": "art", "portal_venous": "pv", "delayed": "del"}
_CONTRAST_TAG = {"none": "", "arterial": "_art", "portal_venous": "_pv"}


def ct(phase: str, kvp: int, kernel: str, slice_mm: float) -> tuple[str, CTProtocol]:
    """(name, protocol) of a CT protocol, named e.g. ct_pv_120kvp_standard_3mm."""
    name = f"ct_{_PHASE_TAG[phase]}_{kvp}kvp_{kernel}_{slice_mm:g}mm".replace(".", "p")
    return name, CTProtocol(phase=phase, kvp=kvp, kernel=kernel, slice_mm=slice_mm)  # type: ignore[arg-type]


def mr(
    field_t: float, sequence: str, vendor: str, fat_sat: bool = False, contrast: str = "none"
) -> tuple[str, MRProtocol]:
    """(name, protocol) of an MRI protocol, named e.g. mr3t_t1_gre_fs_pv_b."""
    field_tag = "15t" if field_t == 1.5 else "3t"
    name = f"mr{field_tag}_{sequence}{'_fs' if fat_sat else ''}{_CONTRAST_TAG[contrast]}_{vendor}"
    protocol = MRProtocol(
        field_t=field_t,
        sequence=sequence,  # type: ignore[arg-type]
        fat_sat=fat_sat,
        contrast=contrast,  # type: ignore[arg-type]
        vendor=vendor,  # type: ignore[arg-type]
    )
    return name, protocol


#: Every shipped protocol by name, grouped by the mixes that use them.
PROTOCOLS: dict[str, AnyProtocol] = dict(
    [
        # TotalSegmentator-like CT
        ct("portal_venous", 120, "standard", 3.0),
        ct("portal_venous", 100, "smooth", 1.5),
        ct("portal_venous", 120, "sharp", 1.0),
        ct("arterial", 120, "standard", 1.5),
        ct("arterial", 100, "smooth", 3.0),
        ct("native", 120, "smooth", 5.0),
        ct("portal_venous", 140, "standard", 5.0),
        # AMOS-like CT (it also holds ct_pv_120kvp_standard_3mm of the TotalSegmentator-like mix)
        ct("portal_venous", 120, "standard", 5.0),
        ct("delayed", 120, "standard", 5.0),
        ct("arterial", 80, "sharp", 2.0),
        ct("native", 140, "sharp", 2.0),
        ct("portal_venous", 80, "smooth", 1.0),
        # TotalSegmentator-like MRI: T1 family
        mr(1.5, "t1_gre_in", "a"),
        mr(1.5, "t1_gre_opposed", "a"),
        mr(3.0, "t1_gre_in", "a"),
        mr(3.0, "t1_gre", "a", fat_sat=True),
        mr(3.0, "t1_gre", "a", fat_sat=True, contrast="portal_venous"),
        mr(1.5, "t1_gre", "a", fat_sat=True, contrast="arterial"),
        mr(1.5, "t1_gre", "b", fat_sat=True, contrast="portal_venous"),
        # TotalSegmentator-like MRI: T2 family
        mr(1.5, "t2_ssfse", "a"),
        mr(3.0, "t2_ssfse", "a"),
        mr(3.0, "t2_tse", "a", fat_sat=True),
        mr(1.5, "t2_tse", "b"),
        # AMOS-like MRI (mr3t_t1_gre_fs_pv_a and mr15t_t2_ssfse_a also occur in TotalSegmentator's mix)
        mr(3.0, "t1_gre", "c", fat_sat=True, contrast="portal_venous"),
        mr(3.0, "t1_gre_opposed", "d"),
        mr(1.5, "t1_se", "c"),
        mr(3.0, "t1_gre", "d", fat_sat=True, contrast="arterial"),
        mr(3.0, "t2_ssfse", "c", fat_sat=True),
        mr(3.0, "t2_tse", "d"),
        mr(1.5, "t2_tse", "c", fat_sat=True),
        # The single-protocol reference
        ct("portal_venous", 120, "standard", 5.0),
        mr(1.5, "t1_se", "a"),
        mr(1.5, "t2_tse", "a"),
    ]
)

#: The shipped mixes (name -> protocol weights).
MIXES: dict[str, dict[str, float]] = {
    "totalseg-ct": {
        "ct_pv_120kvp_standard_3mm": 0.25,
        "ct_pv_100kvp_smooth_1p5mm": 0.15,
        "ct_pv_120kvp_sharp_1mm": 0.10,
        "ct_art_120kvp_standard_1p5mm": 0.15,
        "ct_art_100kvp_smooth_3mm": 0.10,
        "ct_nat_120kvp_smooth_5mm": 0.15,
        "ct_pv_140kvp_standard_5mm": 0.10,
    },
    "totalseg-mri": {
        "mr15t_t1_gre_in_a": 0.08,
        "mr15t_t1_gre_opposed_a": 0.08,
        "mr3t_t1_gre_in_a": 0.06,
        "mr3t_t1_gre_fs_a": 0.08,
        "mr3t_t1_gre_fs_pv_a": 0.10,
        "mr15t_t1_gre_fs_art_a": 0.06,
        "mr15t_t1_gre_fs_pv_b": 0.04,
        "mr15t_t2_ssfse_a": 0.18,
        "mr3t_t2_ssfse_a": 0.12,
        "mr3t_t2_tse_fs_a": 0.12,
        "mr15t_t2_tse_b": 0.08,
    },
    "amos": {
        "ct_pv_120kvp_standard_5mm": 0.30,
        "ct_pv_120kvp_standard_3mm": 0.15,
        "ct_del_120kvp_standard_5mm": 0.15,
        "ct_art_80kvp_sharp_2mm": 0.15,
        "ct_nat_140kvp_sharp_2mm": 0.10,
        "ct_pv_80kvp_smooth_1mm": 0.15,
        "mr3t_t1_gre_fs_pv_a": 0.10,
        "mr3t_t1_gre_fs_pv_c": 0.15,
        "mr3t_t1_gre_opposed_d": 0.10,
        "mr15t_t1_se_c": 0.10,
        "mr3t_t1_gre_fs_art_d": 0.05,
        "mr15t_t2_ssfse_a": 0.10,
        "mr3t_t2_ssfse_fs_c": 0.15,
        "mr3t_t2_tse_d": 0.15,
        "mr15t_t2_tse_fs_c": 0.10,
    },
    "single": {"ct_pv_120kvp_standard_5mm": 1.0, "mr15t_t1_se_a": 1.0, "mr15t_t2_tse_a": 1.0},
}


@dataclass(frozen=True)
class VendorCurve:
    """A vendor's MRI reconstruction: scanner units for the brightest tissue, and a monotone curve.

    Stored value = top * c(s / ref), with c(t) = t^gamma (1 + knee) / (1 + knee t): gamma bends the grey
    scale, knee compresses the bright end. Monotone for gamma >= 1 and any knee >= 0, or knee = 0.
    """

    top: tuple[float, float]
    gamma: float
    knee: float

    def apply(self, relative: np.ndarray, top: float) -> np.ndarray:
        relative = np.maximum(relative, 0.0)
        return top * relative**self.gamma * (1.0 + self.knee) / (1.0 + self.knee * relative)


#: Four made-up vendors, as different as real scanners' stored intensities are (no vendor is imitated).
VENDORS: dict[str, VendorCurve] = {
    "a": VendorCurve(top=(300.0, 1200.0), gamma=1.0, knee=0.0),
    "b": VendorCurve(top=(1500.0, 4000.0), gamma=0.85, knee=0.0),
    "c": VendorCurve(top=(200.0, 700.0), gamma=1.0, knee=0.8),
    "d": VendorCurve(top=(800.0, 3000.0), gamma=1.25, knee=0.3),
}


def family_of(protocol: AnyProtocol) -> str:
    """The synthetic modality a protocol renders: ct, mri_t1 or mri_t2."""
    return "ct" if isinstance(protocol, CTProtocol) else f"mri_{protocol.family}"


@dataclass(frozen=True)
class ResolvedMix:
    """A mix with every protocol looked up: name -> (protocol, weight)."""

    name: str
    entries: dict[str, tuple[AnyProtocol, float]]

    def for_modality(self, modality: str) -> dict[str, tuple[AnyProtocol, float]]:
        return {n: e for n, e in self.entries.items() if family_of(e[0]) == modality and e[1] > 0}

    def check(self, modality: str) -> None:
        """ConfigError unless the mix holds a `modality` protocol with a positive weight."""
        if not self.for_modality(modality):
            families = sorted({family_of(p) for p, w in self.entries.values() if w > 0})
            raise ConfigError(
                f"synth.protocols: the mix {self.name!r} has no {modality} protocol with a positive weight "
                f"(it renders {', '.join(families)})"
            )

    def choose(self, modality: str, rng: np.random.Generator) -> str:
        """One protocol name of `modality`, drawn by weight."""
        names, shares = self._shares(modality)
        return names[int(rng.choice(len(names), p=shares))]

    def assign(self, modality: str, count: int, rng: np.random.Generator) -> list[str]:
        """Protocols for `count` subjects in proportion to the weights, in a random order.

        Stratified rather than drawn independently: each protocol gets its share of the subjects rounded by
        largest remainder, so a small data set still holds every protocol its weights can give a case to
        (and per-protocol results have stable group sizes).
        """
        names, shares = self._shares(modality)
        exact = shares * count
        counts = np.floor(exact).astype(int)
        order = sorted(range(len(names)), key=lambda i: (-(exact[i] - counts[i]), i))
        for i in order[: count - int(counts.sum())]:
            counts[i] += 1
        assigned = [name for name, n in zip(names, counts, strict=True) for _ in range(n)]
        return [assigned[i] for i in rng.permutation(count)]

    def _shares(self, modality: str) -> tuple[list[str], np.ndarray]:
        self.check(modality)
        entries = self.for_modality(modality)
        names = sorted(entries)  # independent of the order the mix was written in
        weights = np.array([entries[n][1] for n in names], float)
        return names, weights / weights.sum()

    def protocol(self, name: str) -> AnyProtocol:
        return self.entries[name][0]


def default_mix(layout: str) -> dict[str, float]:
    """The layout's realistic mix: amos for the AMOS layout, TotalSegmentator's CT and MRI mixes otherwise."""
    if layout == "amos":
        return MIXES["amos"]
    return {**MIXES["totalseg-ct"], **MIXES["totalseg-mri"]}


def resolve_mix(config: SynthConfig, layout: str = "totalseg") -> ResolvedMix:
    """The protocols and weights of `config.protocols` (a preset, a mix, or None for the layout's mix).

    Every requested modality needs at least one protocol with a positive weight in the mix.
    """
    chosen = config.protocols
    if chosen is None:
        name, mix = ("amos" if layout == "amos" else "totalseg"), ProtocolMix(weights=default_mix(layout))
    elif isinstance(chosen, str):
        name, mix = chosen, ProtocolMix(weights=MIXES[chosen])
    else:
        name, mix = "custom", chosen
    library: dict[str, AnyProtocol] = {**PROTOCOLS, **mix.custom}
    resolved = ResolvedMix(name, {n: (library[n], float(w)) for n, w in mix.weights.items()})
    for modality in dict.fromkeys(config.modalities):
        resolved.check(modality)
    return resolved


def describe(protocol: AnyProtocol) -> str:
    """A short human description, e.g. 'portal venous, 120 kVp, standard kernel, 3 mm'."""
    if isinstance(protocol, CTProtocol):
        return (
            f"{protocol.phase.replace('_', ' ')}, {protocol.kvp} kVp, {protocol.kernel} kernel, "
            f"{protocol.slice_mm:g} mm"
        )
    sequence = {
        "t1_se": "T1 spin echo",
        "t1_gre_in": "T1 GRE in-phase",
        "t1_gre_opposed": "T1 GRE opposed-phase",
        "t1_gre": "T1 3D GRE",
        "t2_tse": "T2 turbo spin echo",
        "t2_ssfse": "T2 single-shot FSE",
    }[protocol.sequence]
    parts = [f"{protocol.field_t:g} T", sequence]
    if protocol.fat_sat:
        parts.append("fat-saturated")
    if protocol.contrast != "none":
        parts.append(f"gadolinium {protocol.contrast.replace('_', ' ')}")
    parts.append(f"vendor {protocol.vendor}")
    return ", ".join(parts)
