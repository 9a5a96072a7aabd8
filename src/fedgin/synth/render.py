"""Render a synthetic anatomy under an acquisition protocol: CT in Hounsfield units, MRI in scanner units.

CT: value = native HU + iodine enhancement of the phase (scaled by the tube voltage), parenchymal texture,
the kernel's blur, the slice thickness's partial volume along z, and noise whose size and texture follow
kVp, kernel and thickness.

MRI: every voxel holds water and fat; each gives a signal by the sequence's equation with the field
strength's relaxation times (T1 shortened by gadolinium), the two add with the chemical-shift phase of the
echo time, fat saturation removes most of the fat, then the bias field, Rician noise at the protocol's SNR
and the vendor's reconstruction curve.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.ndimage import gaussian_filter

from fedgin.config import CTProtocol, MRProtocol
from fedgin.synth.anatomy import Anatomy, Tissue
from fedgin.synth.protocols import VENDORS

SynthModality = Literal["ct", "mri_t1", "mri_t2"]

# --- CT -----------------------------------------------------------------------------------------------------
# HU at 120 kVp per tissue and phase: (native, arterial ~35 s, portal venous ~70 s, delayed ~3 min).
# After standard HU tables and Bae KT, "Intravenous contrast medium administration and scan timing at CT",
# Radiology 2010;256:32-61; kidneys after Yuh BI, Cohan RH, "Different phases of renal enhancement",
# AJR 1999;173:747-755: corticomedullary (arterial) cortex >> medulla, nephrographic (portal venous) both
# bright, excretory (delayed) medulla and collecting system brighter than the cortex. Spleen and pancreas
# peak in the late arterial ("pancreatic") phase, the liver in the portal-venous phase. Cortical bone is
# given at 3 mm voxels (partial volume with marrow). Lumen contents without oral contrast: fluid ~15 HU,
# gas -1000 HU.
CT_PHASES = ("native", "arterial", "portal_venous", "delayed")
CT_HU: dict[Tissue, tuple[float, float, float, float]] = {
    Tissue.AIR: (-1000.0, -1000.0, -1000.0, -1000.0),
    Tissue.FAT: (-100.0, -100.0, -100.0, -100.0),
    Tissue.MUSCLE: (50.0, 55.0, 60.0, 60.0),
    Tissue.MARROW: (220.0, 230.0, 235.0, 235.0),
    Tissue.CORTICAL_BONE: (900.0, 900.0, 900.0, 900.0),
    Tissue.ARTERIAL_BLOOD: (45.0, 300.0, 170.0, 120.0),
    Tissue.VENOUS_BLOOD: (45.0, 110.0, 165.0, 125.0),
    Tissue.LUNG: (-850.0, -850.0, -850.0, -850.0),
    Tissue.BOWEL_WALL: (40.0, 85.0, 90.0, 75.0),
    Tissue.FLUID: (15.0, 15.0, 15.0, 15.0),
    Tissue.GAS: (-1000.0, -1000.0, -1000.0, -1000.0),
    Tissue.LIVER: (58.0, 75.0, 110.0, 90.0),
    Tissue.KIDNEY_CORTEX: (35.0, 190.0, 180.0, 145.0),
    Tissue.KIDNEY_MEDULLA: (35.0, 80.0, 140.0, 175.0),
    Tissue.SPLEEN: (48.0, 125.0, 118.0, 100.0),
    Tissue.PANCREAS: (42.0, 115.0, 100.0, 80.0),
    Tissue.BILE: (10.0, 10.0, 10.0, 10.0),
}
# Tube voltage: iodine attenuates more as the mean photon energy nears its K edge (33 keV), bone a little
# more, fat a little less; noise at the dose of automatic exposure control rises as kVp falls. Relative to
# 120 kVp, after Nakayama Y et al., "Abdominal CT with low tube voltage", Radiology 2005;237:945-951 and
# Yu L et al., "Optimal tube potential for radiation dose reduction", RadioGraphics 2011;31:835-848.
KVP_IODINE = {80: 1.65, 100: 1.3, 120: 1.0, 140: 0.82}
KVP_BONE = {80: 1.35, 100: 1.15, 120: 1.0, 140: 0.9}
KVP_FAT = {80: 1.15, 100: 1.07, 120: 1.0, 140: 0.95}
KVP_NOISE = {80: 1.4, 100: 1.15, 120: 1.0, 140: 0.9}
# Kernel: (in-plane PSF sigma in voxels, noise SD factor, noise correlation sigma in voxels). Smooth
# (soft-tissue) kernels blur edges and low-pass the noise; sharp (bone/lung) kernels keep edges and give
# fine, strong noise.
CT_KERNELS = {"smooth": (0.9, 0.7, 1.0), "standard": (0.6, 1.0, 0.6), "sharp": (0.3, 2.0, 0.25)}
# Texture (HU standard deviation of a fine correlated pattern) inside each tissue.
CT_TEXTURE_HU: dict[Tissue, float] = {
    Tissue.FAT: 10.0,
    Tissue.MUSCLE: 8.0,
    Tissue.MARROW: 40.0,
    Tissue.BOWEL_WALL: 12.0,
    Tissue.LIVER: 8.0,
    Tissue.KIDNEY_CORTEX: 10.0,
    Tissue.KIDNEY_MEDULLA: 10.0,
    Tissue.SPLEEN: 6.0,
    Tissue.PANCREAS: 14.0,  # lobulated, fatty interdigitation
}
#: Arterial-phase spleen: the arciform ("zebra") pattern of red and white pulp, as coarse heterogeneity.
SPLEEN_ARTERIAL_HETEROGENEITY_HU = 30.0

# --- MRI ----------------------------------------------------------------------------------------------------
# Water component per tissue, (relative proton density, T1 ms, T2 ms) at 1.5 T and 3 T:
#   liver 586/46 and 809/34, spleen 1057/79 and 1328/61, pancreas 584/46 and 725/43, renal cortex 966/87
#   and 1142/76, renal medulla 1412/85 and 1545/81, skeletal muscle 856/27 and 898/29, vertebral marrow
#   549/49 and 586/49: de Bazelaire CM et al., "MR imaging relaxation times of abdominal and pelvic tissues
#   measured in vivo at 3.0 T: preliminary results", Radiology 2004;230:652-659.
#   blood 1441/290 and 1932/275: Stanisz GJ et al., "T1, T2 relaxation and magnetization transfer in tissue
#   at 3T", Magn Reson Med 2005;54:507-512.
#   free fluid (CSF-like) ~4000/2000 and gallbladder bile ~3000/1000 (a little longer T1 and shorter T2 at
#   3 T); bowel wall approximated as smooth muscle/mucosa; lung, cortical bone and gas give (almost) no
#   signal. Proton densities are typical relative water contents.
MRI_WATER: dict[float, dict[Tissue, tuple[float, float, float]]] = {
    1.5: {
        Tissue.AIR: (0.0, 1000.0, 1.0),
        Tissue.FAT: (0.7, 856.0, 27.0),  # the water in adipose tissue (septa): muscle-like
        Tissue.MUSCLE: (0.7, 856.0, 27.0),
        Tissue.MARROW: (0.8, 549.0, 49.0),
        Tissue.CORTICAL_BONE: (0.05, 1000.0, 1.0),
        Tissue.ARTERIAL_BLOOD: (0.9, 1441.0, 290.0),
        Tissue.VENOUS_BLOOD: (0.9, 1441.0, 290.0),
        Tissue.LUNG: (0.1, 1200.0, 30.0),
        Tissue.BOWEL_WALL: (0.75, 900.0, 45.0),
        Tissue.FLUID: (1.0, 4000.0, 2000.0),
        Tissue.GAS: (0.0, 1000.0, 1.0),
        Tissue.LIVER: (0.7, 586.0, 46.0),
        Tissue.KIDNEY_CORTEX: (0.8, 966.0, 87.0),
        Tissue.KIDNEY_MEDULLA: (0.85, 1412.0, 85.0),
        Tissue.SPLEEN: (0.8, 1057.0, 79.0),
        Tissue.PANCREAS: (0.7, 584.0, 46.0),
        Tissue.BILE: (1.0, 3000.0, 1000.0),
    },
    3.0: {
        Tissue.AIR: (0.0, 1000.0, 1.0),
        Tissue.FAT: (0.7, 898.0, 29.0),
        Tissue.MUSCLE: (0.7, 898.0, 29.0),
        Tissue.MARROW: (0.8, 586.0, 49.0),
        Tissue.CORTICAL_BONE: (0.05, 1000.0, 1.0),
        Tissue.ARTERIAL_BLOOD: (0.9, 1932.0, 275.0),
        Tissue.VENOUS_BLOOD: (0.9, 1932.0, 275.0),
        Tissue.LUNG: (0.1, 1400.0, 25.0),
        Tissue.BOWEL_WALL: (0.75, 1100.0, 40.0),
        Tissue.FLUID: (1.0, 4300.0, 1800.0),
        Tissue.GAS: (0.0, 1000.0, 1.0),
        Tissue.LIVER: (0.7, 809.0, 34.0),
        Tissue.KIDNEY_CORTEX: (0.8, 1142.0, 76.0),
        Tissue.KIDNEY_MEDULLA: (0.85, 1545.0, 81.0),
        Tissue.SPLEEN: (0.8, 1328.0, 61.0),
        Tissue.PANCREAS: (0.7, 725.0, 43.0),
        Tissue.BILE: (1.0, 3200.0, 900.0),
    },
}
# Fat component: subcutaneous fat 343/58 ms at 1.5 T, 382/68 ms at 3 T (de Bazelaire 2004), proton density
# 0.9. On fast spin echo fat stays bright (J-coupling is broken up by the echo train): its T2 is lengthened
# there. Chemical shift of fat against water: 3.4 ppm (217 Hz at 1.5 T, 434 Hz at 3 T), so water and fat
# are opposed at TE 2.3 / 1.15 ms and in phase at TE 4.6 / 2.3 ms.
MRI_FAT: dict[float, tuple[float, float, float]] = {1.5: (0.9, 343.0, 58.0), 3.0: (0.9, 382.0, 68.0)}
FAT_T2_FSE_FACTOR = 1.8
FAT_SHIFT_HZ_PER_T = 3.4 * 42.577
# Fat fraction per tissue where it does not depend on the subject (adipose tissue ~90 % triglyceride); the
# liver's, pancreas's and marrow's fat fractions are the subject's (`Patient`).
FAT_FRACTION: dict[Tissue, float] = {Tissue.FAT: 0.9}
# Gadolinium: relaxivities r1, r2 (L/mmol/s) of a macrocyclic agent in plasma, 1.5 T and 3 T, after Rohrer M
# et al., "Comparison of magnetic properties of MRI contrast media solutions at different magnetic field
# strengths", Invest Radiol 2005;40:715-724. Tissue concentrations (mmol/L) in the arterial (~30 s) and
# portal-venous (~70 s) phases after 0.1 mmol/kg are representative values chosen to reproduce the
# enhancement order of dynamic abdominal MRI: arterial aorta >> renal cortex > spleen ~ pancreas > liver,
# portal venous vessels ~ kidneys > spleen ~ liver > pancreas > muscle.
GD_RELAXIVITY: dict[float, tuple[float, float]] = {1.5: (3.6, 4.3), 3.0: (3.5, 4.9)}
GD_MMOL: dict[Tissue, tuple[float, float]] = {
    Tissue.ARTERIAL_BLOOD: (4.0, 1.5),
    Tissue.VENOUS_BLOOD: (0.8, 1.5),
    Tissue.LIVER: (0.15, 0.5),
    Tissue.SPLEEN: (0.7, 0.5),
    Tissue.PANCREAS: (0.6, 0.35),
    Tissue.KIDNEY_CORTEX: (1.6, 1.0),
    Tissue.KIDNEY_MEDULLA: (0.3, 1.1),
    Tissue.MUSCLE: (0.1, 0.15),
    Tissue.BOWEL_WALL: (0.35, 0.4),
    Tissue.MARROW: (0.2, 0.3),
    Tissue.FAT: (0.03, 0.05),
}
# Sequence timing (ms) and flip angle (degrees): TR range, TE range (None: set by the chemical shift), flip.
SEQUENCES: dict[str, tuple[tuple[float, float], tuple[float, float] | None, float]] = {
    "t1_se": ((450.0, 600.0), (8.0, 14.0), 90.0),
    "t1_gre_in": ((150.0, 200.0), None, 70.0),  # 2D dual-echo spoiled gradient echo
    "t1_gre_opposed": ((150.0, 200.0), None, 70.0),
    "t1_gre": ((3.5, 5.0), None, 12.0),  # 3D spoiled gradient echo (VIBE/LAVA/THRIVE-like)
    "t2_tse": ((3000.0, 5000.0), (80.0, 100.0), 90.0),
    "t2_ssfse": ((1e5, 1e5), (80.0, 100.0), 90.0),  # single shot: full recovery between slices
}
# Parenchymal SNR at 1.5 T by sequence; 3 T gives about 1.6 times as much (not twice: longer T1, SAR limits).
SNR_15T = {"t1_se": 25.0, "t1_gre_in": 22.0, "t1_gre_opposed": 22.0, "t1_gre": 20.0, "t2_tse": 25.0,
           "t2_ssfse": 16.0}  # fmt: skip
SNR_3T_FACTOR = 1.6
# Bias-field amplitude (log scale) by field strength: the RF field's inhomogeneity grows with frequency
# (dielectric shading of the abdomen at 3 T).
BIAS_AMPLITUDE = {1.5: (0.1, 0.25), 3.0: (0.25, 0.45)}


@dataclass(frozen=True)
class Patient:
    """Physiology of one subject that every scan of the subject shares.

    Proton-density fat fractions: liver (hepatic steatosis, PDFF above 5 %, in about a quarter of adults),
    pancreas, and the vertebral marrow (which grows with age).
    """

    liver_fat: float
    pancreas_fat: float
    marrow_fat: float

    @classmethod
    def draw(cls, rng: np.random.Generator) -> Patient:
        steatosis, steatotic, normal = rng.random() < 0.25, rng.uniform(0.06, 0.22), rng.uniform(0.01, 0.04)
        liver = steatotic if steatosis else normal
        return cls(float(liver), float(rng.uniform(0.02, 0.12)), float(rng.uniform(0.3, 0.6)))

    def fat_fraction(self) -> np.ndarray:
        table = _lookup(FAT_FRACTION)
        table[Tissue.LIVER], table[Tissue.PANCREAS] = self.liver_fat, self.pancreas_fat
        table[Tissue.MARROW] = self.marrow_fat
        return table


@dataclass(frozen=True)
class RenderInfo:
    """What the renderer drew for one volume (recorded so a data set documents its acquisition)."""

    modality: str
    tr_ms: float | None = None
    te_ms: float | None = None
    noise_sigma: float = 0.0


def _lookup(values: dict[Tissue, float]) -> np.ndarray:
    table = np.zeros(len(Tissue), np.float32)
    for tissue, value in values.items():
        table[tissue] = value
    return table


def _correlated_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Unit-variance noise low-passed by a Gaussian of `sigma` voxels in-plane (a kernel's noise texture)."""
    white = rng.standard_normal(shape, dtype=np.float32)
    if sigma <= 0.05:
        return white
    texture = gaussian_filter(white, sigma=(sigma, sigma, 0.3 * sigma))
    return texture / max(float(texture.std()), 1e-6)


def _bias_field(rng: np.random.Generator, shape: tuple[int, int, int], amplitude: float) -> np.ndarray:
    """A smooth multiplicative field exp(a * p), p a random quadratic polynomial scaled to max |p| = 1."""
    u, v, w = (np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape)
    u, v, w = u[:, None, None], v[None, :, None], w[None, None, :]
    c = rng.standard_normal(9).astype(np.float32)
    poly = c[0] * u + c[1] * v + c[2] * w + c[3] * u * u + c[4] * v * v + c[5] * w * w + c[6] * u * v
    poly = poly + c[7] * u * w + c[8] * v * w
    poly /= max(float(np.abs(poly).max()), 1e-6)
    return np.exp(np.float32(amplitude) * poly)


def _z_sigma(slice_mm: float, spacing_z_mm: float) -> float:
    """Gaussian sigma (voxels along z) of a slice profile whose FWHM is the slice thickness."""
    return slice_mm / 2.3548 / spacing_z_mm


def ct_values(protocol: CTProtocol, rng: np.random.Generator) -> np.ndarray:
    """HU per tissue of this scan: phase, kVp, bolus timing (cardiac output) and per-tissue jitter."""
    phase = CT_PHASES.index(protocol.phase)
    timing = rng.uniform(0.8, 1.2)  # drawn for every phase, so the draws after it do not depend on the phase
    iodine, bone, fat = KVP_IODINE[protocol.kvp], KVP_BONE[protocol.kvp], KVP_FAT[protocol.kvp]
    jitter = rng.normal(0.0, 5.0, len(Tissue))
    values = {}
    for tissue, hu in CT_HU.items():
        native = hu[0]
        if tissue in (Tissue.MARROW, Tissue.CORTICAL_BONE):
            native *= bone
        elif tissue == Tissue.FAT:
            native *= fat
        values[tissue] = native + iodine * timing * (hu[phase] - hu[0]) + jitter[tissue]
    values[Tissue.AIR] = values[Tissue.GAS] = -1000.0
    values[Tissue.LUNG] = -850.0 + jitter[Tissue.LUNG]
    return _lookup(values)


def render_ct(
    anatomy: Anatomy, protocol: CTProtocol, rng: np.random.Generator, spacing: tuple[float, float, float]
) -> tuple[np.ndarray, RenderInfo]:
    """CT in HU under `protocol`: tissue values, texture, kernel and slice blur, kernel-shaped noise.

    Scalars, texture, spleen pattern and noise come from separate streams of `rng`, so two protocols of one
    subject differ only by what the protocols do.
    """
    scalars, texture_rng, spleen_rng, noise_rng = rng.spawn(4)
    tissue = anatomy.tissue
    image = ct_values(protocol, scalars)[tissue]
    image += _lookup(CT_TEXTURE_HU)[tissue] * _correlated_noise(texture_rng, tissue.shape, 0.8)  # type: ignore[arg-type]
    spleen = tissue == Tissue.SPLEEN
    if protocol.phase == "arterial" and spleen.any():
        coarse = _correlated_noise(spleen_rng, tissue.shape, 2.5)
        image[spleen] += SPLEEN_ARTERIAL_HETEROGENEITY_HU * coarse[spleen]
    psf, noise_factor, correlation = CT_KERNELS[protocol.kernel]
    z_sigma = max(_z_sigma(protocol.slice_mm, spacing[2]), 0.3)
    image = gaussian_filter(image, sigma=(psf, psf, z_sigma))
    thickness = float(np.sqrt(3.0 / np.clip(protocol.slice_mm, 0.75, 6.0)))
    sigma = scalars.uniform(*protocol.noise_hu) * KVP_NOISE[protocol.kvp] * noise_factor * thickness
    image += np.float32(sigma) * _correlated_noise(noise_rng, tissue.shape, correlation)
    np.clip(image, -1024.0, 3071.0, out=image)
    return image.astype(np.float32, copy=False), RenderInfo("ct", noise_sigma=float(sigma))


def _mri_echo_time(protocol: MRProtocol, unit: float) -> tuple[float, float]:
    """(TE ms, chemical-shift phase factor cos(2 pi df TE)) of the echo; `unit` in [0, 1) picks a TE."""
    te_range = SEQUENCES[protocol.sequence][1]
    opposed_te = 1000.0 / (2.0 * FAT_SHIFT_HZ_PER_T * protocol.field_t)
    if protocol.sequence == "t1_gre_opposed":
        return opposed_te, -1.0
    if te_range is None:  # in-phase gradient echo (the 3D sequences too: their TE is chosen in phase)
        return 2.0 * opposed_te, 1.0
    return te_range[0] + unit * (te_range[1] - te_range[0]), 1.0  # spin echoes refocus the chemical shift


def _signal(
    protocol: MRProtocol, pd: np.ndarray, t1: np.ndarray, t2: np.ndarray, tr: float, te: float
) -> np.ndarray:
    """Steady-state signal of the sequence: spin echo PD (1 - E1) E2, spoiled GRE with the Ernst term."""
    e1 = np.exp(-tr / t1)
    flip = np.radians(SEQUENCES[protocol.sequence][2])
    if protocol.sequence.startswith("t1_gre"):
        t2_star = 0.5 * t2 if protocol.field_t == 1.5 else 0.35 * t2  # T2' from field inhomogeneity
        return pd * np.sin(flip) * (1 - e1) / (1 - np.cos(flip) * e1) * np.exp(-te / t2_star)
    return pd * (1.0 - e1) * np.exp(-te / t2)


def mri_tables(
    protocol: MRProtocol, patient: Patient, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(water signal per tissue, fat signal per tissue (phase-signed), TR, TE) of this scan.

    Every random quantity is drawn whatever the protocol, in a fixed order, so that protocols of one subject
    share their jitter. Fat fractions are proton-density fractions: water and fat share the tissue's PD.
    """
    field = protocol.field_t
    (tr_low, tr_high), _, _ = SEQUENCES[protocol.sequence]
    tr_unit, te_unit, gd_timing, fat_residual, venous_flow = rng.uniform(size=5)
    tr = float(tr_low + tr_unit * (tr_high - tr_low))
    te, phase = _mri_echo_time(protocol, float(te_unit))
    count = len(Tissue)
    water = MRI_WATER[field]
    pd = np.array([water[t][0] for t in Tissue], np.float32) * np.exp(rng.normal(0.0, 0.03, count))
    t1 = np.array([water[t][1] for t in Tissue], np.float32) * np.exp(rng.normal(0.0, 0.06, count))
    t2 = np.array([water[t][2] for t in Tissue], np.float32) * np.exp(rng.normal(0.0, 0.06, count))
    if protocol.contrast != "none":
        column = 0 if protocol.contrast == "arterial" else 1
        timing = 0.8 + 0.4 * gd_timing
        r1, r2 = GD_RELAXIVITY[field]
        dose = np.zeros(count, np.float32)
        for tissue, mmol in GD_MMOL.items():
            dose[tissue] = timing * mmol[column]
        t1 = 1000.0 / (1000.0 / t1 + r1 * dose)  # 1/T1 = 1/T1_0 + r1 C (ms, mmol/L, L/mmol/s)
        t2 = 1000.0 / (1000.0 / t2 + r2 * dose)
    water_signal = _signal(protocol, pd, t1, t2, tr, te)
    _, fat_t1, fat_t2 = MRI_FAT[field]
    if protocol.sequence in ("t2_tse", "t2_ssfse"):
        fat_t2 *= FAT_T2_FSE_FACTOR
    fraction = patient.fat_fraction()
    fat_signal = _signal(protocol, pd, np.float32(fat_t1), np.float32(fat_t2), tr, te) * fraction
    water_signal = water_signal * (1.0 - fraction)
    if protocol.fat_sat:
        fat_signal = fat_signal * np.float32(0.03 + 0.12 * fat_residual)  # 85-97 % suppressed
    if protocol.sequence in ("t1_se", "t2_tse", "t2_ssfse"):
        # flow void of fast arterial flow; slow venous flow keeps part of its signal
        water_signal[Tissue.ARTERIAL_BLOOD] *= 0.15
        water_signal[Tissue.VENOUS_BLOOD] *= 0.3 + 0.5 * venous_flow
    return water_signal.astype(np.float32), (phase * fat_signal).astype(np.float32), tr, te


def render_mri(
    anatomy: Anatomy,
    protocol: MRProtocol,
    rng: np.random.Generator,
    spacing: tuple[float, float, float],
    patient: Patient,
) -> tuple[np.ndarray, RenderInfo]:
    """MRI under `protocol`: |water + phase * fat| partial volume, bias field, Rician noise, vendor curve.

    Water and fat are blurred separately before they add, so voxels at fat-water borders and voxels of fatty
    organs lose signal on opposed-phase images (the chemical-shift "India ink" border).
    """
    scalars, texture_rng, bias_rng, noise_rng = rng.spawn(4)
    water_table, fat_table, tr, te = mri_tables(protocol, patient, scalars)
    bias_unit, snr_jitter, top_unit = scalars.uniform(size=3)
    tissue = anatomy.tissue
    texture = 1.0 + np.float32(0.06) * _correlated_noise(texture_rng, tissue.shape, 0.8)
    psf = (0.6, 1.3 if protocol.sequence == "t2_ssfse" else 0.6, 0.4)  # single shot: T2 blur along y (PE)
    water = gaussian_filter(water_table[tissue] * texture, sigma=psf)
    fat = gaussian_filter(fat_table[tissue], sigma=psf)
    image = np.abs(water + fat)
    low, high = BIAS_AMPLITUDE[protocol.field_t]
    amplitude = protocol.bias if protocol.bias is not None else low + bias_unit * (high - low)
    image *= _bias_field(bias_rng, tissue.shape, amplitude)  # type: ignore[arg-type]
    organs = [Tissue.LIVER, Tissue.SPLEEN, Tissue.KIDNEY_CORTEX, Tissue.PANCREAS]
    reference = max(float(np.median(np.abs(water_table[organs] + fat_table[organs]))), 1e-6)
    snr = protocol.snr or SNR_15T[protocol.sequence] * (SNR_3T_FACTOR if protocol.field_t == 3.0 else 1.0)
    sigma = reference / snr * (0.8 + 0.45 * snr_jitter)
    real = image + noise_rng.normal(0.0, sigma, tissue.shape).astype(np.float32)
    imaginary = noise_rng.normal(0.0, sigma, tissue.shape).astype(np.float32)
    magnitude = np.sqrt(real * real + imaginary * imaginary)  # Rician magnitude
    vendor = VENDORS[protocol.vendor]
    brightest = max(float(np.abs(water_table + fat_table).max()), 1e-6)
    top = float(vendor.top[0] + top_unit * (vendor.top[1] - vendor.top[0]))
    image = vendor.apply(magnitude / np.float32(brightest), top)
    info = RenderInfo(f"mri_{protocol.family}", tr, te, float(sigma * top / brightest))
    return image.astype(np.float32, copy=False), info


def render(
    anatomy: Anatomy,
    protocol: CTProtocol | MRProtocol,
    rng: np.random.Generator,
    spacing: tuple[float, float, float],
    patient: Patient,
) -> np.ndarray:
    """Render `anatomy` under `protocol` as a float32 volume (CT in HU, MRI in the vendor's units)."""
    if isinstance(protocol, CTProtocol):
        return render_ct(anatomy, protocol, rng, spacing)[0]
    return render_mri(anatomy, protocol, rng, spacing, patient)[0]
