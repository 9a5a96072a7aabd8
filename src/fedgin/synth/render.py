"""Render a synthetic anatomy as CT (Hounsfield units) or spin-echo MRI (T1-weighted, T2-weighted)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.ndimage import gaussian_filter

from fedgin.synth.anatomy import Anatomy, Tissue

SynthModality = Literal["ct", "mri_t1", "mri_t2"]

# CT attenuation per tissue, (unenhanced HU, portal-venous HU). Every subject is rendered in the portal-venous
# phase (about 70 s after injection, the usual phase of abdominal CT data sets), with a per-subject timing
# factor on the enhancement. Typical values after standard HU tables and Bae KT, "Intravenous contrast medium
# administration and scan timing at CT", Radiology 2010;256:32-61. Cortical bone is given at 3 mm voxels
# (partial volume with marrow). Lumen contents without oral contrast: fluid ~15 HU, gas -1000 HU.
CT_HU: dict[Tissue, tuple[float, float]] = {
    Tissue.AIR: (-1000.0, -1000.0),
    Tissue.FAT: (-100.0, -100.0),
    Tissue.MUSCLE: (50.0, 60.0),
    Tissue.MARROW: (220.0, 235.0),
    Tissue.CORTICAL_BONE: (900.0, 900.0),
    Tissue.ARTERIAL_BLOOD: (45.0, 170.0),
    Tissue.VENOUS_BLOOD: (45.0, 165.0),
    Tissue.LUNG: (-850.0, -850.0),
    Tissue.BOWEL_WALL: (40.0, 90.0),
    Tissue.FLUID: (15.0, 15.0),
    Tissue.GAS: (-1000.0, -1000.0),
    Tissue.LIVER: (60.0, 110.0),
    Tissue.KIDNEY_CORTEX: (35.0, 180.0),
    Tissue.KIDNEY_MEDULLA: (35.0, 150.0),
    Tissue.SPLEEN: (50.0, 118.0),
    Tissue.PANCREAS: (45.0, 100.0),
    Tissue.BILE: (10.0, 10.0),
}
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

# MRI at 1.5 T: (relative proton density, T1 ms, T2 ms).
#   liver 586/46, spleen 1057/79, pancreas 584/46, renal cortex 966/87, renal medulla 1412/85,
#   subcutaneous fat 343/58, skeletal muscle 856/27, vertebral marrow 549/49: de Bazelaire CM et al.,
#   "MR imaging relaxation times of abdominal and pelvic tissues measured in vivo at 3.0 T: preliminary
#   results", Radiology 2004;230:652-659 (its 1.5 T column).
#   blood 1441/290: Stanisz GJ et al., "T1, T2 relaxation and magnetization transfer in tissue at 3T",
#   Magn Reson Med 2005;54:507-512 (1.5 T reference values).
#   free fluid (CSF-like) ~4000/2000 and gallbladder bile ~3000/1000: long-T1/long-T2 fluid values of the same
#   literature; bowel wall approximated as smooth muscle/mucosa 900/45; lung, cortical bone and gas give
#   (almost) no signal. Proton densities are typical relative water contents.
MRI_PD_T1_T2: dict[Tissue, tuple[float, float, float]] = {
    Tissue.AIR: (0.0, 1000.0, 1.0),
    Tissue.FAT: (0.9, 343.0, 58.0),
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
}
# Spin-echo timing (ms): T1-weighted TR 450-600 / TE 8-14, T2-weighted TR 3000-5000 / TE 80-100.
SEQUENCE_TIMING: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "mri_t1": ((450.0, 600.0), (8.0, 14.0)),
    "mri_t2": ((3000.0, 5000.0), (80.0, 100.0)),
}


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


def _texture(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """A fine, spatially correlated unit-variance pattern (parenchymal texture)."""
    white = rng.standard_normal(shape, dtype=np.float32)
    texture = gaussian_filter(white, sigma=0.8)
    return texture / max(float(texture.std()), 1e-6)


def _bias_field(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """A smooth multiplicative field exp(a * p), p a random quadratic polynomial scaled to max |p| = 1."""
    u, v, w = (np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape)
    u, v, w = u[:, None, None], v[None, :, None], w[None, None, :]
    c = rng.standard_normal(9).astype(np.float32)
    poly = c[0] * u + c[1] * v + c[2] * w + c[3] * u * u + c[4] * v * v + c[5] * w * w + c[6] * u * v
    poly = poly + c[7] * u * w + c[8] * v * w
    poly /= max(float(np.abs(poly).max()), 1e-6)
    return np.exp(np.float32(rng.uniform(0.15, 0.3)) * poly)


def render_ct(anatomy: Anatomy, rng: np.random.Generator) -> tuple[np.ndarray, RenderInfo]:
    """Portal-venous CT in HU: tissue values with timing jitter, texture, partial-volume blur and noise."""
    timing = rng.uniform(0.75, 1.2)  # enhancement relative to the nominal portal-venous phase
    jitter = rng.normal(0.0, 5.0, len(Tissue))
    values = {t: native + timing * (venous - native) + jitter[t] for t, (native, venous) in CT_HU.items()}
    values[Tissue.AIR] = values[Tissue.GAS] = -1000.0
    table = _lookup(values)
    texture_table = _lookup(CT_TEXTURE_HU)  # type: ignore[arg-type]
    tissue = anatomy.tissue
    image = table[tissue] + texture_table[tissue] * _texture(rng, tissue.shape)
    image = gaussian_filter(image, sigma=(0.6, 0.6, 0.4))  # scanner PSF / partial volume
    sigma = rng.uniform(8.0, 18.0)
    image += rng.normal(0.0, sigma, tissue.shape).astype(np.float32)
    np.clip(image, -1024.0, 3071.0, out=image)
    return image.astype(np.float32, copy=False), RenderInfo("ct", noise_sigma=float(sigma))


def render_mri(
    anatomy: Anatomy, rng: np.random.Generator, sequence: Literal["mri_t1", "mri_t2"]
) -> tuple[np.ndarray, RenderInfo]:
    """Spin-echo MRI, S = PD (1 - exp(-TR/T1)) exp(-TE/T2), with bias field, scanner scaling, Rician noise."""
    (tr_low, tr_high), (te_low, te_high) = SEQUENCE_TIMING[sequence]
    tr, te = rng.uniform(tr_low, tr_high), rng.uniform(te_low, te_high)
    count = len(Tissue)
    pd_jitter, t1_jitter, t2_jitter = (np.exp(rng.normal(0.0, s, count)) for s in (0.03, 0.06, 0.06))
    venous_flow = rng.uniform(0.3, 0.8)  # slow venous flow keeps part of its signal
    signal = {}
    for tissue, (pd, t1, t2) in MRI_PD_T1_T2.items():
        t1, t2 = t1 * t1_jitter[tissue], t2 * t2_jitter[tissue]
        value = pd * pd_jitter[tissue] * (1.0 - np.exp(-tr / t1)) * np.exp(-te / t2)
        if tissue == Tissue.ARTERIAL_BLOOD:
            value *= 0.15  # spin-echo flow void of fast arterial flow
        elif tissue == Tissue.VENOUS_BLOOD:
            value *= venous_flow
        signal[tissue] = value
    table = _lookup(signal)
    tissue = anatomy.tissue
    image = table[tissue] * (1.0 + np.float32(0.06) * _texture(rng, tissue.shape))
    image = gaussian_filter(image, sigma=(0.6, 0.6, 0.4))
    image *= _bias_field(rng, tissue.shape)  # type: ignore[arg-type]
    # Arbitrary scanner units: the brightest tissue lands somewhere between 300 and 1200.
    gain = np.float32(rng.uniform(300.0, 1200.0) / max(float(table.max()), 1e-6))
    image *= gain
    sigma = float(gain * table.max() * rng.uniform(0.015, 0.035))
    real = image + rng.normal(0.0, sigma, tissue.shape).astype(np.float32)
    imaginary = rng.normal(0.0, sigma, tissue.shape).astype(np.float32)
    image = np.sqrt(real * real + imaginary * imaginary)  # Rician magnitude
    return image.astype(np.float32, copy=False), RenderInfo(sequence, tr, te, sigma)


def render(anatomy: Anatomy, modality: SynthModality, rng: np.random.Generator) -> np.ndarray:
    """Render `anatomy` in `modality` (ct, mri_t1 or mri_t2) as a float32 volume."""
    if modality == "ct":
        return render_ct(anatomy, rng)[0]
    if modality in SEQUENCE_TIMING:
        return render_mri(anatomy, rng, modality)[0]
    raise ValueError(f"unknown synthetic modality {modality!r}; expected ct, mri_t1 or mri_t2")
