"""Acquisition protocols of the synthetic abdomen: the physics each protocol shows, determinism, the mixes,
the protocol recorded per case, and one-line errors for bad protocol settings.

Intensities are measured on rendered volumes (small grids), as medians over the "core" of a tissue: its
voxels whose four in-plane neighbours are the same tissue, so that the kernel's and the slice's partial volume
at borders does not blur the tissue levels. MRI images are scaled by a vendor gain drawn per image, so MRI
comparisons between two images use ratios to a reference tissue (muscle, which holds no fat), never absolute
values.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import binary_dilation, binary_erosion

import fedgin.prepare as prepare_module
from fedgin.cache import Cache
from fedgin.config import CTProtocol, MRProtocol, PreprocessConfig, SynthConfig, validate
from fedgin.errors import ConfigError
from fedgin.synth import generate, make_subject, subject_anatomy, subject_image, subject_patient
from fedgin.synth.anatomy import Anatomy, Structure, Tissue, make_anatomy
from fedgin.synth.protocols import MIXES, PROTOCOLS, VENDORS, family_of, resolve_mix
from fedgin.synth.render import KVP_IODINE, Patient, render_ct, render_mri

SEED, SHAPE, SPACING = 0, (96, 96, 32), (4.0, 4.0, 10.0)
CT_NAMES = sorted(name for name, protocol in PROTOCOLS.items() if isinstance(protocol, CTProtocol))
MR_NAMES = sorted(name for name, protocol in PROTOCOLS.items() if isinstance(protocol, MRProtocol))
FAT_SAT_NAMES = [name for name in MR_NAMES if PROTOCOLS[name].fat_sat]
ARTERIAL_MR_NAMES = [name for name in MR_NAMES if PROTOCOLS[name].contrast == "arterial"]
PORTAL_MR_NAMES = [name for name in MR_NAMES if PROTOCOLS[name].contrast == "portal_venous"]
#: In-plane 4-neighbourhood: a core voxel has its four in-plane neighbours in the same tissue.
CROSS = np.zeros((3, 3, 1), bool)
CROSS[1, :, 0] = CROSS[:, 1, 0] = True


@dataclass
class Subject:
    """One rendered subject of the test grid, with tissue-core masks computed once."""

    config: SynthConfig
    index: int
    anatomy: Anatomy
    _cores: dict[int, np.ndarray] = field(default_factory=dict)

    def core(self, tissue: Tissue) -> np.ndarray:
        if tissue not in self._cores:
            self._cores[tissue] = binary_erosion(self.anatomy.tissue == tissue, CROSS)
            assert self._cores[tissue].sum() >= 30, f"too few core voxels of {tissue.name}"
        return self._cores[tissue]

    def level(self, image: np.ndarray, tissue: Tissue) -> float:
        """The tissue's level: the median over its core (robust to the partial volume a smooth kernel or a
        thick slice still leaves next to fat in thin organs)."""
        return float(np.median(image[self.core(tissue)]))

    def structure_level(self, image: np.ndarray, structure: Structure) -> float:
        core = binary_erosion(self.anatomy.structure == structure, CROSS)
        return float(np.median(image[core]))

    def render(self, protocol: CTProtocol | MRProtocol, **config: object) -> np.ndarray:
        chosen = self.config.model_copy(update=config) if config else self.config
        return subject_image(chosen, self.index, family_of(protocol), self.anatomy, protocol)  # type: ignore[arg-type]


def make_test_subject(seed: int = SEED, index: int = 0) -> Subject:
    config = SynthConfig(subjects=1, seed=seed, shape=SHAPE, spacing=SPACING)
    return Subject(config, index, subject_anatomy(config, index))


@pytest.fixture(scope="module")
def subject() -> Subject:
    """A subject without steatosis (a fatty liver is darker on opposed-phase T1 and brighter on T2 FSE)."""
    chosen = make_test_subject()
    assert subject_patient(chosen.config, chosen.index).liver_fat < 0.05
    return chosen


def tissue_levels(subject: Subject, image: np.ndarray) -> dict[str, float]:
    names = ("fat", "muscle", "liver", "spleen", "pancreas", "bile", "cortex", "medulla", "aorta")
    tissues = (Tissue.FAT, Tissue.MUSCLE, Tissue.LIVER, Tissue.SPLEEN, Tissue.PANCREAS, Tissue.BILE,
               Tissue.KIDNEY_CORTEX, Tissue.KIDNEY_MEDULLA, Tissue.ARTERIAL_BLOOD)  # fmt: skip
    return {name: subject.level(image, tissue) for name, tissue in zip(names, tissues, strict=True)}


# --- CT -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CT_NAMES)
def test_ct_intensity_order(subject: Subject, name: str) -> None:
    protocol = PROTOCOLS[name]
    assert isinstance(protocol, CTProtocol)
    image = subject.render(protocol)
    hu = tissue_levels(subject, image)
    air, lung = subject.level(image, Tissue.AIR), subject.level(image, Tissue.LUNG)
    assert hu["fat"] < 0 < hu["muscle"], hu
    assert hu["bile"] < hu["liver"], hu
    assert air < hu["fat"] - 700 and lung < hu["fat"] - 500, (air, lung, hu["fat"])
    if protocol.phase == "native":
        for organ in ("liver", "spleen", "cortex", "medulla", "pancreas"):
            assert 20 <= hu[organ] <= 75, (organ, hu)
        assert hu["aorta"] < 80, hu
    elif protocol.phase == "arterial":
        assert hu["aorta"] > 200 * KVP_IODINE[protocol.kvp], hu
        assert hu["cortex"] > hu["medulla"] + 50, hu  # corticomedullary phase
    elif protocol.phase == "portal_venous":
        native = tissue_levels(subject, subject.render(protocol.model_copy(update={"phase": "native"})))
        assert hu["liver"] > native["liver"] + 25 * KVP_IODINE[protocol.kvp], (hu["liver"], native["liver"])
    else:
        assert protocol.phase == "delayed"
        assert hu["medulla"] > hu["cortex"], hu  # excretory phase


def render_ct_seeded(anatomy: Anatomy, protocol: CTProtocol, seed: int = 3, spacing=SPACING):
    return render_ct(anatomy, protocol, np.random.default_rng(seed), spacing)


def ct_noise(subject: Subject, protocol: CTProtocol) -> tuple[np.ndarray, float, float]:
    """(image, SD of the noise alone in the liver core, RenderInfo.noise_sigma): the noise alone is the image
    minus the same render (same seed) with almost no noise."""
    image, info = render_ct_seeded(subject.anatomy, protocol)
    quiet, _ = render_ct_seeded(subject.anatomy, protocol.model_copy(update={"noise_hu": (1e-3, 1e-3)}))
    return image, float((image - quiet)[subject.core(Tissue.LIVER)].std()), info.noise_sigma


def test_low_kvp_raises_iodine_enhancement_and_noise(subject: Subject) -> None:
    """80 vs 120 kVp, all else equal: iodine attenuates more near its K edge, and noise rises."""
    measured = {}
    for kvp in (80, 120):
        portal = CTProtocol(phase="portal_venous", kvp=kvp, kernel="standard", slice_mm=3.0)
        image, noise, sigma = ct_noise(subject, portal)
        base, _ = render_ct_seeded(subject.anatomy, portal.model_copy(update={"phase": "native"}))
        measured[kvp] = {
            "liver": subject.level(image, Tissue.LIVER) - subject.level(base, Tissue.LIVER),
            "aorta": subject.level(image, Tissue.ARTERIAL_BLOOD) - subject.level(base, Tissue.ARTERIAL_BLOOD),
            "noise": noise,
            "sigma": sigma,
        }
    low, high = measured[80], measured[120]
    assert low["liver"] > 1.3 * high["liver"] > 0, measured
    assert low["aorta"] > 1.3 * high["aorta"] > 0, measured
    assert low["noise"] > 1.2 * high["noise"] and low["sigma"] > 1.2 * high["sigma"], measured


def test_sharp_kernel_is_noisier_than_smooth(subject: Subject) -> None:
    measured = {}
    for kernel in ("smooth", "sharp"):
        protocol = CTProtocol(phase="portal_venous", kvp=120, kernel=kernel, slice_mm=3.0)
        _, noise, sigma = ct_noise(subject, protocol)
        measured[kernel] = {"noise": noise, "sigma": sigma}
    sharp, smooth = measured["sharp"], measured["smooth"]
    assert sharp["noise"] > 2 * smooth["noise"] and sharp["sigma"] > 2 * smooth["sigma"], measured


@pytest.fixture(scope="module")
def thin_slice_anatomy() -> Anatomy:
    """An anatomy on a grid with 2.5 mm slices (the test grid's 10 mm slices hide a 1-5 mm slice profile)."""
    return make_anatomy((48, 48, 128), np.random.default_rng(11))


def test_thick_slices_blur_along_z(thin_slice_anatomy: Anatomy) -> None:
    """Noise-free part (noise SD ~0): a 5 mm slice has smaller z gradients than a 1 mm slice."""
    spacing = (8.0, 8.0, 2.5)
    body = thin_slice_anatomy.tissue[:, :, 1:] != Tissue.AIR
    gradient = {}
    for slice_mm in (1.0, 5.0):
        protocol = CTProtocol(kernel="standard", slice_mm=slice_mm, noise_hu=(1e-3, 1e-3))
        image, _ = render_ct_seeded(thin_slice_anatomy, protocol, spacing=spacing)
        gradient[slice_mm] = float(np.abs(np.diff(image, axis=2))[body].mean())
    assert gradient[5.0] < 0.8 * gradient[1.0], gradient


# --- MRI ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MR_NAMES)
def test_mri_intensity_order(subject: Subject, name: str) -> None:
    protocol = PROTOCOLS[name]
    assert isinstance(protocol, MRProtocol)
    signal = tissue_levels(subject, subject.render(protocol))
    if protocol.family == "t1":
        assert signal["bile"] < signal["liver"], signal  # bile: long T1 (and no gadolinium)
        if protocol.contrast == "none":
            assert signal["liver"] > signal["spleen"], signal  # the liver's T1 is the shorter
        if not protocol.fat_sat:
            assert signal["fat"] > signal["muscle"], signal
        else:
            assert signal["fat"] < signal["liver"], signal
    else:
        assert signal["spleen"] > signal["liver"], signal  # the spleen's T2 is the longer
        assert signal["bile"] > 2 * signal["liver"], signal
        if not protocol.fat_sat:
            assert signal["fat"] > signal["muscle"], signal


def ratio(subject: Subject, image: np.ndarray, tissue: Tissue, reference: Tissue = Tissue.MUSCLE) -> float:
    return subject.level(image, tissue) / subject.level(image, reference)


@pytest.mark.parametrize("name", FAT_SAT_NAMES)
def test_fat_saturation_suppresses_fat(subject: Subject, name: str) -> None:
    """Fat relative to muscle (no fat), with fat saturation and without (same subject and index)."""
    protocol = PROTOCOLS[name]
    saturated = ratio(subject, subject.render(protocol), Tissue.FAT)
    plain = ratio(subject, subject.render(protocol.model_copy(update={"fat_sat": False})), Tissue.FAT)
    assert saturated < 0.4 * plain, (saturated, plain)


STEATOTIC = Patient(liver_fat=0.25, pancreas_fat=0.05, marrow_fat=0.5)
LEAN = Patient(liver_fat=0.02, pancreas_fat=0.03, marrow_fat=0.5)


def chemical_shift_pair(
    subject: Subject, patient: Patient, field_t: float, seed: int = 5
) -> tuple[np.ndarray, np.ndarray]:
    """(in-phase, opposed-phase) T1 GRE of one field strength and vendor, same rng seed, bias off."""
    images = []
    for sequence in ("t1_gre_in", "t1_gre_opposed"):
        protocol = MRProtocol(field_t=field_t, sequence=sequence, vendor="a", bias=0.0)
        image, _ = render_mri(subject.anatomy, protocol, np.random.default_rng(seed), SPACING, patient)
        images.append(image)
    return images[0], images[1]


@pytest.mark.parametrize("field_t", [1.5, 3.0])
def test_opposed_phase_darkens_fatty_liver_and_marrow(subject: Subject, field_t: float) -> None:
    """Chemical shift: water and fat cancel on opposed-phase echoes, in proportion to the fat fraction."""
    in_phase, opposed = chemical_shift_pair(subject, STEATOTIC, field_t)
    for tissue, least_loss in ((Tissue.LIVER, 0.2), (Tissue.MARROW, 0.3)):
        kept = ratio(subject, opposed, tissue) / ratio(subject, in_phase, tissue)
        assert kept < 1.0 - least_loss, (tissue.name, kept)


@pytest.mark.parametrize("organ", [Tissue.LIVER, Tissue.KIDNEY_CORTEX])
def test_opposed_phase_india_ink_border(subject: Subject, organ: Tissue) -> None:
    """Fat voxels bordering a water organ lose more signal on opposed phase than the organ's interior."""
    in_phase, opposed = chemical_shift_pair(subject, LEAN, 1.5)
    fat = subject.anatomy.tissue == Tissue.FAT
    border = fat & binary_dilation(subject.anatomy.tissue == organ, CROSS)
    assert border.sum() >= 30
    # muscle (no fat) calibrates the two images' units
    scale = subject.level(opposed, Tissue.MUSCLE) / subject.level(in_phase, Tissue.MUSCLE)
    border_kept = float(opposed[border].mean()) / float(in_phase[border].mean()) / scale
    interior_kept = subject.level(opposed, organ) / subject.level(in_phase, organ) / scale
    assert border_kept < interior_kept - 0.15, (border_kept, interior_kept)


@pytest.mark.parametrize("name", ARTERIAL_MR_NAMES)
def test_arterial_gadolinium(subject: Subject, name: str) -> None:
    image = subject.render(PROTOCOLS[name])
    aorta = subject.structure_level(image, Structure.AORTA)
    others = {
        s.name: subject.structure_level(image, s)
        for s in Structure
        if s not in (Structure.NONE, Structure.AORTA)
    }
    assert aorta > max(others.values()), (aorta, others)
    assert subject.level(image, Tissue.KIDNEY_CORTEX) > subject.level(image, Tissue.KIDNEY_MEDULLA)


@pytest.mark.parametrize("name", PORTAL_MR_NAMES)
def test_portal_venous_gadolinium_brightens_the_liver(subject: Subject, name: str) -> None:
    protocol = PROTOCOLS[name].model_copy(update={"bias": 0.0})  # the two renders' bias fields differ
    post = ratio(subject, subject.render(protocol), Tissue.LIVER)
    pre = ratio(subject, subject.render(protocol.model_copy(update={"contrast": "none"})), Tissue.LIVER)
    assert post > 1.1 * pre, (post, pre)


@pytest.mark.parametrize("sequence", ["t1_gre_in", "t1_se"])
def test_t1_contrast_falls_at_3t(subject: Subject, sequence: str) -> None:
    """The liver's T1 lengthens much more from 1.5 T to 3 T than muscle's (586 -> 809 vs 856 -> 898 ms):
    the liver-to-muscle ratio on T1-weighted images falls."""
    ratios = {}
    for field_t in (1.5, 3.0):
        protocol = MRProtocol(field_t=field_t, sequence=sequence, vendor="a", bias=0.0)
        ratios[field_t] = ratio(subject, subject.render(protocol), Tissue.LIVER)
    assert ratios[3.0] < 0.9 * ratios[1.5], ratios


def shading(subject: Subject, image: np.ndarray, tissue: Tissue = Tissue.FAT, block: int = 8) -> float:
    """SD of the log mean intensity over blocks of a tissue's core voxels: a low-pass of a homogeneous tissue
    (subcutaneous and visceral fat span the body), with no other tissue mixed in."""
    core = subject.core(tissue)
    logs = []
    for x in range(0, core.shape[0], block):
        for y in range(0, core.shape[1], block):
            for z in range(0, core.shape[2], 4):
                cell = (slice(x, x + block), slice(y, y + block), slice(z, z + 4))
                if core[cell].sum() >= 40:
                    logs.append(np.log(image[cell][core[cell]].mean()))
    assert len(logs) >= 20
    return float(np.std(logs))


def test_bias_field_amplitude(subject: Subject) -> None:
    flat, shaded = (
        shading(subject, subject.render(MRProtocol(field_t=3.0, sequence="t1_gre_in", bias=bias)))
        for bias in (0.0, 0.45)
    )
    assert shaded > 3 * flat, (flat, shaded)


def test_bias_field_is_stronger_at_3t() -> None:
    """bias=None: the amplitude grows with the field (dielectric shading at 3 T); over several subjects."""
    shades: dict[float, list[float]] = {1.5: [], 3.0: []}
    for index in range(4):
        other = make_test_subject(seed=21, index=index)
        for field_t, values in shades.items():
            values.append(shading(other, other.render(MRProtocol(field_t=field_t, sequence="t1_gre_in"))))
    assert np.mean(shades[3.0]) > 1.4 * np.mean(shades[1.5]), shades


@pytest.mark.parametrize("vendor", sorted(VENDORS))
def test_vendor_curve_is_monotone(vendor: str) -> None:
    curve = VENDORS[vendor]
    grid = np.linspace(-0.5, 3.0, 3501)
    for top in curve.top:
        values = curve.apply(grid, top)
        assert np.all(np.diff(values) >= 0), vendor
        assert values[grid <= 0].max() == 0 and values[-1] > 0


# --- Determinism --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ct_art_80kvp_sharp_2mm", "mr3t_t1_gre_fs_pv_c", "mr15t_t2_ssfse_a"])
def test_rendering_is_deterministic(subject: Subject, name: str) -> None:
    protocol = PROTOCOLS[name]
    first, second = subject.render(protocol), subject.render(protocol)
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, subject.render(protocol, seed=SEED + 1))


def test_anatomy_is_shared_by_every_protocol_and_modality() -> None:
    config = SynthConfig(subjects=1, seed=4, shape=(48, 48, 16), spacing=(8.0, 8.0, 20.0))
    reference = make_subject(config, 0, "ct", "ct_pv_120kvp_standard_3mm")[1]
    for name in ("ct_nat_140kvp_sharp_2mm", "mr15t_t1_gre_opposed_a", "mr3t_t2_tse_fs_a", "mr15t_t1_se_c"):
        _, labels, _ = make_subject(config, 0, family_of(PROTOCOLS[name]), name)  # type: ignore[arg-type]
        np.testing.assert_array_equal(labels, reference)


TINY = {"shape": (40, 40, 12), "spacing": (9.0, 9.0, 25.0)}


def test_generate_is_deterministic(tmp_path: Path) -> None:
    for layout, modalities, case_file in (
        ("totalseg", ["mri_t1", "mri_t2"], "s0001/mri.nii.gz"),
        ("amos", ["ct", "mri_t1"], "imagesTr/amos_0001.nii.gz"),
    ):
        config = SynthConfig(subjects=3, seed=9, modalities=modalities, **TINY)  # type: ignore[arg-type]
        first, second = tmp_path / f"{layout}_a", tmp_path / f"{layout}_b"
        generate(config, layout, first, progress=False)  # type: ignore[arg-type]
        generate(config, layout, second, progress=False)  # type: ignore[arg-type]
        index = "meta.csv" if layout == "totalseg" else "dataset.json"
        for name in (index, "protocols.json"):
            assert (first / name).read_text() == (second / name).read_text(), name
        if not (first / case_file).exists():  # amos_0001 may be a validation case
            case_file = case_file.replace("imagesTr", "imagesVa")
        assert (first / case_file).read_bytes() == (second / case_file).read_bytes()


# --- Mixes --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("preset", "modality"), [("totalseg-ct", "ct"), ("totalseg-mri", "mri_t2"),
                                                   ("amos", "mri_t1"), ("amos", "ct")])  # fmt: skip
def test_choose_follows_the_weights(preset: str, modality: str) -> None:
    mix = resolve_mix(SynthConfig(protocols=preset, modalities=[modality]))
    entries = mix.for_modality(modality)
    total = sum(weight for _, weight in entries.values())
    rng = np.random.default_rng(0)
    draws = 2000
    counts: dict[str, int] = dict.fromkeys(entries, 0)
    for _ in range(draws):
        counts[mix.choose(modality, rng)] += 1
    for name, (_, weight) in entries.items():
        expected = weight / total
        tolerance = 4 * np.sqrt(expected * (1 - expected) / draws) + 0.005
        assert abs(counts[name] / draws - expected) < tolerance, (name, counts[name] / draws, expected)


def test_amos_mix_shares_some_protocols_with_training_mixes_and_adds_others() -> None:
    training = set(MIXES["totalseg-ct"]) | set(MIXES["totalseg-mri"])
    amos = set(MIXES["amos"])
    unseen, shared = amos - training, amos & training
    assert unseen and shared
    for modality in ("ct", "mri_t1", "mri_t2"):  # per modality too: each shifts and overlaps
        of_modality = {name for name in amos if family_of(PROTOCOLS[name]) == modality}
        assert of_modality - training, modality
    assert {family_of(PROTOCOLS[name]) for name in shared} >= {"ct", "mri_t2"}


@pytest.mark.parametrize(
    ("preset", "families"),
    [
        ("totalseg-ct", {"ct"}),
        ("totalseg-mri", {"mri_t1", "mri_t2"}),
        ("amos", {"ct", "mri_t1", "mri_t2"}),
        ("single", {"ct", "mri_t1", "mri_t2"}),
    ],
)
def test_presets_hold_the_families_they_claim(preset: str, families: set[str]) -> None:
    weights = MIXES[preset]
    assert all(name in PROTOCOLS and weight > 0 for name, weight in weights.items())
    assert {family_of(PROTOCOLS[name]) for name in weights} == families
    if preset == "single":  # one protocol per modality: no shift within a modality
        assert len(weights) == 3
    resolve_mix(SynthConfig(protocols=preset, modalities=sorted(families)))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("protocols", "modality"),
    [("totalseg-ct", "mri_t2"), ("totalseg-mri", "ct"), ({"weights": {"mr15t_t1_se_a": 1.0}}, "mri_t2")],
)
def test_mix_without_the_modality_is_refused_before_writing(
    tmp_path: Path, protocols: object, modality: str
) -> None:
    config = SynthConfig(subjects=2, seed=1, modalities=[modality], protocols=protocols, **TINY)  # type: ignore[arg-type]
    absent, empty = tmp_path / "absent", tmp_path / "empty"
    empty.mkdir()
    for out in (absent, empty):
        with pytest.raises(ConfigError, match=modality) as error:
            generate(config, "amos", out, progress=False)
        assert "\n" not in str(error.value)
    assert not absent.exists() and list(empty.iterdir()) == []


# --- The protocol recorded per case -------------------------------------------------------------------------


def read_meta(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter=";"))


def check_protocols_json(out: Path, used: set[str]) -> None:
    recorded = json.loads((out / "protocols.json").read_text())
    assert set(recorded["protocols"]) == used
    for name, entry in recorded["protocols"].items():
        assert entry["description"]
        assert {k: v for k, v in entry.items() if k != "description"} == PROTOCOLS[name].model_dump(
            mode="json"
        )


def test_protocols_are_recorded_and_reach_the_cache(tmp_path: Path) -> None:
    preprocess = PreprocessConfig(spacing_mm=9.0, size=40)

    totalseg = tmp_path / "totalseg"
    config = SynthConfig(subjects=6, seed=2, modalities=["ct"], **TINY)  # type: ignore[arg-type]
    summary = generate(config, "totalseg", totalseg, progress=False)
    rows = read_meta(totalseg / "meta.csv")
    assert len(rows) == 6 and all(row["protocol"] in MIXES["totalseg-ct"] for row in rows)
    assert {case.case_id: case.protocol for case in summary.cases} == {
        r["image_id"]: r["protocol"] for r in rows
    }
    check_protocols_json(totalseg, {row["protocol"] for row in rows})
    report = prepare_module.prepare(
        "totalseg-ct", totalseg, tmp_path / "c1", preprocess, workers=1, progress=False
    )
    assert report.ok, report.failed
    cached = {entry.source_case_id: entry.protocol for entry in Cache(tmp_path / "c1").cases()}
    assert cached == {row["image_id"]: row["protocol"] for row in rows}

    amos = tmp_path / "amos"
    config = SynthConfig(subjects=3, seed=2, modalities=["ct", "mri_t1", "mri_t2"], **TINY)  # type: ignore[arg-type]
    generate(config, "amos", amos, progress=False)
    dataset = json.loads((amos / "dataset.json").read_text())
    recorded, modalities = dataset["synthetic_protocol"], dataset["synthetic_modality"]
    assert len(recorded) == 9
    for case_id, name in recorded.items():
        assert name in MIXES["amos"] and family_of(PROTOCOLS[name]) == modalities[case_id], case_id
    check_protocols_json(amos, set(recorded.values()))
    report = prepare_module.prepare("amos", amos, tmp_path / "c2", preprocess, workers=1, progress=False)
    assert report.ok, report.failed
    cached = {entry.source_case_id: entry.protocol for entry in Cache(tmp_path / "c2").cases()}
    assert cached == recorded


# --- Bad input ----------------------------------------------------------------------------------------------

BAD_MIXES = {
    "unknown protocol": ({"weights": {"ct_pv_120kvp_standrd_3mm": 1.0}}, ["ct_pv_120kvp_standrd_3mm"]),
    "unknown sequence": (
        {"weights": {"mine": 1.0}, "custom": {"mine": {"modality": "mri", "sequence": "t1_flash"}}},
        ["mine", "sequence", "t1_flash"],
    ),
    "negative weight": ({"weights": {"mr15t_t1_se_a": -0.5}}, ["mr15t_t1_se_a", "-0.5"]),
    "zero sum": ({"weights": {"mr15t_t1_se_a": 0.0, "ct_pv_120kvp_standard_3mm": 0.0}}, ["sum to 0"]),
    "phase on MRI": (
        {
            "weights": {"mine": 1.0},
            "custom": {"mine": {"modality": "mri", "sequence": "t1_se", "phase": "arterial"}},
        },
        ["mine", "'phase'"],
    ),
}


@pytest.mark.parametrize("case", [*BAD_MIXES, "unknown preset"])
def test_bad_protocols_are_one_line_config_errors(case: str) -> None:
    if case == "unknown preset":
        raw, expected = "totalseg-cta", ["totalseg-cta", "totalseg-ct"]
    else:
        raw, expected = BAD_MIXES[case]
    with pytest.raises(ConfigError) as error:
        validate({"protocols": raw, "modalities": ["ct"]}, SynthConfig, source="x.toml")
    message = str(error.value)
    assert "\n" not in message and message.startswith("x.toml: protocols")
    for part in expected:
        assert part in message, (part, message)


def synth_has_protocols_option() -> bool:
    from typer.main import get_command

    from fedgin.cli import app

    synth = get_command(app).commands["synth"]  # type: ignore[attr-defined]
    return any(param.name == "protocols" for param in synth.params)


needs_protocols_option = pytest.mark.skipif(
    not synth_has_protocols_option(), reason="`fedgin synth --protocols NAME|FILE` does not exist yet"
)


def invoke_synth(protocols: str, out: Path, modality: str = "ct"):
    from typer.testing import CliRunner

    from fedgin.cli import app

    args = ["synth", "--protocols", protocols, "--out", str(out), "--modality", modality, "--layout", "amos"]
    args += ["--subjects", "2", "--shape", "40,40,12", "--spacing", "9,9,25"]
    return CliRunner().invoke(app, args)


@needs_protocols_option
@pytest.mark.parametrize("case", [*BAD_MIXES, "unknown preset"])
def test_cli_bad_protocols_are_one_line_errors(tmp_path: Path, case: str) -> None:
    import tomli_w

    if case == "unknown preset":
        argument, expected = "totalseg-cta", ["totalseg-cta", "totalseg-ct"]
    else:
        raw, expected = BAD_MIXES[case]
        path = tmp_path / "mix.toml"
        path.write_text(tomli_w.dumps(raw), encoding="utf-8")
        argument = str(path)
    out = tmp_path / "out"
    result = invoke_synth(argument, out)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    for part in expected:
        assert part in lines[0], (part, lines[0])
    assert not out.exists()


@needs_protocols_option
def test_cli_protocols_file_with_a_custom_protocol(tmp_path: Path) -> None:
    mix = tmp_path / "mix.toml"
    mix.write_text(
        "[weights]\nmy_t2 = 1.0\nmr15t_t2_ssfse_a = 0.0\n\n"
        '[custom.my_t2]\nmodality = "mri"\nfield_t = 3.0\nsequence = "t2_tse"\n'
        'fat_sat = true\nvendor = "c"\n',
        encoding="utf-8",
    )
    out = tmp_path / "out"
    result = invoke_synth(str(mix), out, modality="mri_t2")
    assert result.exit_code == 0, result.output
    recorded = json.loads((out / "protocols.json").read_text())
    assert set(recorded["weights"]) == {"my_t2", "mr15t_t2_ssfse_a"}
    assert set(json.loads((out / "dataset.json").read_text())["synthetic_protocol"].values()) == {"my_t2"}
    custom = recorded["protocols"]["my_t2"]
    assert (custom["field_t"], custom["sequence"], custom["fat_sat"], custom["vendor"]) == (
        3.0,
        "t2_tse",
        True,
        "c",
    )
