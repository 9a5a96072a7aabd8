"""Per-subject synthetic abdominal anatomy: tissue and structure label volumes on a RAS+ voxel grid."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from fedgin.labels import AMOS_TO_FEDGIN, lookup_table

#: The box (mm along x, y, z) the anatomy is laid out in. Any grid samples this box, so small test grids still
#: hold the whole abdomen; at the default 128 x 128 x 64 grid of 3 x 3 x 5 mm the scale is exactly 1.
CANONICAL_FOV_MM: tuple[float, float, float] = (384.0, 384.0, 320.0)


class Tissue(IntEnum):
    """Tissue classes: what the renderers give an intensity to."""

    AIR = 0
    FAT = 1
    MUSCLE = 2
    MARROW = 3
    CORTICAL_BONE = 4
    ARTERIAL_BLOOD = 5
    VENOUS_BLOOD = 6
    LUNG = 7
    BOWEL_WALL = 8
    FLUID = 9
    GAS = 10
    LIVER = 11
    KIDNEY_CORTEX = 12
    KIDNEY_MEDULLA = 13
    SPLEEN = 14
    PANCREAS = 15
    BILE = 16


class Structure(IntEnum):
    """Named structures, coded with the AMOS 2022 label values (0 = unnamed tissue)."""

    NONE = 0
    SPLEEN = 1
    KIDNEY_RIGHT = 2
    KIDNEY_LEFT = 3
    GALLBLADDER = 4
    LIVER = 6
    STOMACH = 7
    AORTA = 8
    IVC = 9
    PANCREAS = 10
    DUODENUM = 13


@dataclass(frozen=True)
class Anatomy:
    """One subject: `tissue` (Tissue codes) and `structure` (Structure codes), both uint8 on the x, y, z grid.

    Voxel axes are RAS+, matching the affine of `fedgin.synth.layouts.affine_for`: x grows to the patient's
    right, y to anterior, z to superior (so the liver is at high x, the spleen at low x).
    """

    tissue: np.ndarray
    structure: np.ndarray

    def labels(self) -> np.ndarray:
        """The fedgin label volume (0 background, 1 liver, 2 kidneys, 3 spleen, 4 pancreas, 5 gallbladder)."""
        return lookup_table(AMOS_TO_FEDGIN)[self.structure]


Coords = tuple[np.ndarray, np.ndarray, np.ndarray]
Box = tuple[slice, slice, slice]


def grid_axes(shape: tuple[int, int, int]) -> Coords:
    """Voxel-centre coordinates (canonical mm, origin at the volume centre) along x, y and z."""
    return tuple(  # type: ignore[return-value]
        ((np.arange(n, dtype=np.float32) - (n - 1) / 2) * np.float32(fov / n))
        for n, fov in zip(shape, CANONICAL_FOV_MM, strict=True)
    )


def _interpolation_matrix(coords: np.ndarray, spacing_mm: float) -> np.ndarray:
    """Gaussian weights from `coords` to control points `spacing_mm` apart; rows have unit L2 norm."""
    low, high = float(coords.min()), float(coords.max())
    count = math.ceil((high - low) / spacing_mm) + 2
    centres = low - spacing_mm / 2 + spacing_mm * np.arange(count, dtype=np.float32)
    weights = np.exp(-0.5 * ((coords[:, None] - centres[None, :]) / (0.6 * spacing_mm)) ** 2)
    return (weights / np.linalg.norm(weights, axis=1, keepdims=True)).astype(np.float32)


def smooth_field(rng: np.random.Generator, axes: Coords, spacing_mm: float, channels: int = 1) -> np.ndarray:
    """Smooth random fields of unit standard deviation, shape (channels, x, y, z).

    Drawn on a coarse control grid and interpolated separably (three small matrix products), which is much
    cheaper than zooming or filtering a full-resolution volume.
    """
    mx, my, mz = (_interpolation_matrix(axis, spacing_mm) for axis in axes)
    control = rng.standard_normal((channels, mx.shape[1], my.shape[1], mz.shape[1]), dtype=np.float32)
    field = np.tensordot(control, mz, axes=([3], [1]))  # (c, a, b, z)
    field = np.einsum("jb,cabz->cajz", my, field)
    return np.einsum("ia,cajz->cijz", mx, field)


def rotation(about_x: float = 0.0, about_y: float = 0.0, about_z: float = 0.0) -> np.ndarray:
    """Rotation matrix Rz @ Ry @ Rx for angles in degrees; its columns are the local axes in world space."""
    ax, ay, az = np.radians([about_x, about_y, about_z])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def local_coords(coords: Coords, centre: np.ndarray, rot: np.ndarray) -> Coords:
    """World coordinates expressed in a shape's local frame (origin `centre`, axes the columns of `rot`)."""
    dx, dy, dz = (c - np.float32(o) for c, o in zip(coords, centre, strict=True))
    r = rot.astype(np.float32)
    return (
        r[0, 0] * dx + r[1, 0] * dy + r[2, 0] * dz,
        r[0, 1] * dx + r[1, 1] * dy + r[2, 1] * dz,
        r[0, 2] * dx + r[1, 2] * dy + r[2, 2] * dz,
    )


def ellipsoid_radius(local: Coords, radii: tuple[float, float, float]) -> np.ndarray:
    """Normalised radius: below 1 inside the ellipsoid with semi-axes `radii` along the local axes."""
    u, v, w = local
    return np.sqrt((u / radii[0]) ** 2 + (v / radii[1]) ** 2 + (w / radii[2]) ** 2)


def bezier(control: np.ndarray, count: int) -> np.ndarray:
    """`count` points along the Bezier curve of `control` points (k, 3)."""
    k = len(control) - 1
    t = np.linspace(0.0, 1.0, count)[:, None]
    basis = np.stack([math.comb(k, i) * t[:, 0] ** i * (1 - t[:, 0]) ** (k - i) for i in range(k + 1)], 1)
    return basis @ control


def tube_radius(coords: Coords, points: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Normalised distance to a tube (a chain of spheres along `points` with `radii`): below 1 inside."""
    x, y, z = coords
    best = np.full(x.shape, np.inf, dtype=np.float32)
    for (px, py, pz), radius in zip(points, radii, strict=True):
        distance = ((x - px) ** 2 + (y - py) ** 2 + (z - pz) ** 2) * np.float32(1.0 / radius**2)
        np.minimum(best, distance, out=best)
    return np.sqrt(best)


def curve_points(control: np.ndarray, radius_mm: float) -> np.ndarray:
    """Points along a Bezier curve close enough (half a radius apart) for a smooth chain of spheres."""
    rough = bezier(control, 32)
    length = float(np.linalg.norm(np.diff(rough, axis=0), axis=1).sum())
    return bezier(control, max(4, math.ceil(length / (0.5 * radius_mm)) + 1))


class Canvas:
    """The label volumes being painted, with the (smoothly deformed) world coordinates of every voxel."""

    def __init__(self, shape: tuple[int, int, int], rng: np.random.Generator, warp_mm: float) -> None:
        self.shape = shape
        self.axes = grid_axes(shape)
        # One gentle global warp bends every structure consistently (posture, breathing, habitus).
        displacement = warp_mm * smooth_field(rng, self.axes, spacing_mm=110.0, channels=3)
        self.coords: Coords = (
            self.axes[0][:, None, None] + displacement[0],
            self.axes[1][None, :, None] + displacement[1],
            self.axes[2][None, None, :] + displacement[2],
        )
        self.margin = 3.0 * warp_mm + 4.0
        self.tissue = np.zeros(shape, np.uint8)
        self.structure = np.zeros(shape, np.uint8)

    def box(self, low: np.ndarray, high: np.ndarray) -> Box:
        """Voxel slices covering the world box [low, high] (mm), widened by the warp's reach."""
        slices = []
        for axis, lo, hi in zip(self.axes, low, high, strict=True):
            start = int(np.searchsorted(axis, lo - self.margin))
            stop = int(np.searchsorted(axis, hi + self.margin, side="right"))
            slices.append(slice(start, max(start, stop)))
        return tuple(slices)  # type: ignore[return-value]

    def around(self, centre: np.ndarray, reach: float) -> Box:
        return self.box(np.asarray(centre) - reach, np.asarray(centre) + reach)

    def local(self, box: Box) -> Coords:
        return tuple(c[box] for c in self.coords)  # type: ignore[return-value]

    def noise(self, rng: np.random.Generator, box: Box, spacing_mm: float) -> np.ndarray:
        """A smooth unit-variance field over `box` (for bumpy organ surfaces and textures)."""
        axes = tuple(axis[s] for axis, s in zip(self.axes, box, strict=True))
        if min(len(axis) for axis in axes) == 0:
            return np.zeros(tuple(len(axis) for axis in axes), np.float32)
        return smooth_field(rng, axes, spacing_mm)[0]  # type: ignore[arg-type]

    def paint(
        self,
        box: Box,
        mask: np.ndarray,
        tissue: int | np.ndarray,
        structure: int = Structure.NONE,
        within: np.ndarray | None = None,
    ) -> None:
        """Write `tissue` (a code or an array over `box`) and `structure` where `mask` (over `box`) holds."""
        if within is not None:
            mask = mask & within[box]
        target = self.tissue[box]
        target[mask] = tissue[mask] if isinstance(tissue, np.ndarray) else tissue
        self.structure[box][mask] = structure


def _lumen_contents(
    rng: np.random.Generator, canvas: Canvas, box: Box, inner: np.ndarray, centre_y: float, reach_y: float
) -> np.ndarray:
    """Tissue codes for a bowel/stomach lumen: fluid, gas, or an air-fluid level (gas rises anteriorly)."""
    kind = rng.choice(3, p=[0.4, 0.25, 0.35])
    contents = np.full(inner.shape, Tissue.FLUID, np.uint8)
    if kind == 1:
        contents[:] = Tissue.GAS
    elif kind == 2:
        level = centre_y + reach_y * rng.uniform(-0.4, 0.5)
        contents[canvas.coords[1][box] > level] = Tissue.GAS
    return contents


def _paint_hollow(
    rng: np.random.Generator,
    canvas: Canvas,
    box: Box,
    radius: np.ndarray,
    wall_fraction: float,
    centre_y: float,
    reach_y: float,
    structure: int,
    within: np.ndarray,
) -> None:
    """A hollow viscus: a wall of soft tissue around gas and/or fluid contents."""
    inside = radius < 1.0
    lumen = radius < 1.0 - wall_fraction
    canvas.paint(box, inside, Tissue.BOWEL_WALL, structure, within)
    contents = _lumen_contents(rng, canvas, box, lumen, centre_y, reach_y)
    canvas.paint(box, lumen, contents, structure, within)


def make_anatomy(shape: tuple[int, int, int], rng: np.random.Generator) -> Anatomy:
    """Draw one subject's anatomy on a grid of `shape` voxels (x, y, z), deterministically from `rng`.

    Painting order is the priority order: later structures overwrite earlier ones, so labels never overlap.
    Body wall and bowel first, then the solid organs (liver < spleen < kidneys < pancreas < gallbladder),
    then the great vessels and last the spine, which nothing displaces.

    The drawing frame below has x growing to the patient's LEFT (liver, gallbladder, right kidney and IVC at
    negative x; spleen, left kidney, stomach and aorta at positive x), y to anterior and z to superior. The
    finished volumes are mirrored along x before they are returned, so the result is RAS+ (x to the patient's
    right). The grid is centred on the origin (`grid_axes`, `affine_for`), so the mirror maps x to -x exactly.
    """
    canvas = Canvas(shape, rng, warp_mm=rng.uniform(3.0, 7.0))
    wx, wy, wz = canvas.coords
    u = rng.uniform

    # --- body habitus: outline, subcutaneous fat, muscle wall, abdominal cavity
    fat = u(8.0, 38.0)
    muscle = u(7.0, 13.0)
    half_width = u(118.0, 140.0) + 0.9 * fat
    half_depth = half_width * u(0.66, 0.78)
    zn = wz / np.float32(160.0)
    widening = 1.0 + np.float32(u(-0.06, 0.06)) * zn - np.float32(0.04) * zn * zn
    outline_bumps = np.float32(0.015) * smooth_field(rng, canvas.axes, 70.0)[0]
    exponent = np.where(wy < 0, np.float32(2.7), np.float32(2.0))  # flatter back
    body_r = (
        np.abs(wx / (half_width * widening)) ** exponent + np.abs(wy / (half_depth * widening)) ** exponent
    ) ** (1.0 / exponent) + outline_bumps
    body = body_r < 1.0
    cavity_r = 1.0 - (fat + muscle) / half_depth
    cavity = body_r < cavity_r
    wall = body & ~cavity & (body_r < 1.0 - fat / half_depth)
    canvas.tissue[body] = Tissue.FAT
    canvas.tissue[wall] = Tissue.MUSCLE
    cavity_half_width = half_width * cavity_r
    cavity_half_depth = half_depth * cavity_r

    spine_y = -half_depth + fat + u(55.0, 66.0)  # centre of the vertebral bodies
    liver_z = u(30.0, 55.0)
    liver_top = liver_z + u(62.0, 75.0)

    # Ribs: oblique bands in the lateral and posterior wall above the costal margin.
    rib_period = u(24.0, 30.0)
    rib_phase = ((wz - 0.45 * wy) / rib_period + u(0, 1)) % 1.0
    ribs = wall & (rib_phase < 0.28) & (wz > liver_z - 45.0 + 0.5 * wy) & (wy < 0.55 * half_depth)
    canvas.tissue[ribs] = Tissue.CORTICAL_BONE

    # Diaphragm: a dome at the liver top, lower at the back and the flanks (costophrenic recesses).
    diaphragm_z = (
        liver_top + 6.0 - 35.0 * (wx / cavity_half_width) ** 2 - 30.0 * np.clip(-wy / cavity_half_depth, 0, 1)
    )
    thorax = cavity & (diaphragm_z < wz)
    abdomen = cavity & ~thorax
    canvas.tissue[thorax] = Tissue.LUNG
    heart_centre = np.array([u(5.0, 25.0), 0.35 * cavity_half_depth, liver_top + u(40.0, 55.0)])
    box = canvas.around(heart_centre, 65.0)
    heart_r = ellipsoid_radius(
        local_coords(canvas.local(box), heart_centre, rotation(about_z=u(-30, 0))), (62.0, 48.0, 48.0)
    )
    canvas.paint(box, heart_r < 1.0, Tissue.MUSCLE, within=thorax)
    canvas.paint(box, heart_r < 0.8, Tissue.VENOUS_BLOOD, within=thorax)

    # --- posterior muscles: erector spinae either side of the spine, psoas growing towards the pelvis
    for side in (-1.0, 1.0):
        centre = np.array([side * u(32.0, 40.0), spine_y - u(32.0, 40.0), 0.0])
        reach = np.array([40.0, 35.0, 170.0])
        box = canvas.box(centre - reach, centre + reach)
        x, y, _ = canvas.local(box)
        paraspinal = ((x - centre[0]) / u(28.0, 34.0)) ** 2 + ((y - centre[1]) / u(20.0, 26.0)) ** 2 < 1.0
        canvas.paint(box, paraspinal, Tissue.MUSCLE, within=body)
        box = canvas.box(
            np.array([side * 60 - 40, spine_y - 40, -170]), np.array([side * 60 + 40, spine_y + 40, 40])
        )
        x, y, z = canvas.local(box)
        psoas_radius = np.clip((30.0 - z) * 0.16, 0.0, 24.0)
        psoas_x = side * (28.0 + 0.6 * psoas_radius)
        psoas = (x - psoas_x) ** 2 + (y - spine_y - 5.0) ** 2 < psoas_radius**2
        canvas.paint(box, psoas, Tissue.MUSCLE, within=abdomen)

    # --- distractors: colon, small bowel, duodenum, stomach (unlabelled except stomach/duodenum for AMOS)
    colon_radius = u(15.0, 21.0)
    hepatic_flexure = [-0.68 * cavity_half_width, 0.05 * cavity_half_depth, liver_z - u(35.0, 50.0)]
    splenic_flexure = [0.72 * cavity_half_width, 0.0, liver_z + u(-5.0, 15.0)]
    colon_segments = (
        [[-0.72 * cavity_half_width, u(-0.15, 0.15) * cavity_half_depth, -150.0], hepatic_flexure],
        [
            hepatic_flexure,
            [-0.2 * cavity_half_width, 0.6 * cavity_half_depth, liver_z - u(50.0, 90.0)],
            [0.3 * cavity_half_width, 0.6 * cavity_half_depth, liver_z - u(40.0, 80.0)],
            splenic_flexure,
        ],
        [splenic_flexure, [0.78 * cavity_half_width, u(-0.2, 0.1) * cavity_half_depth, -150.0]],
    )
    for control in colon_segments:
        _paint_tube(rng, canvas, np.array(control, float), colon_radius, 0.2, Structure.NONE, abdomen)
    for _ in range(int(rng.integers(10, 17))):
        start = np.array(
            [
                u(-0.5, 0.5) * cavity_half_width,
                u(-0.1, 0.65) * cavity_half_depth,
                u(-150.0, liver_z - 60.0),
            ]
        )
        control = start + np.cumsum(rng.normal(0.0, 28.0, (4, 3)), axis=0)
        control[:, 2] = np.clip(control[:, 2], -150.0, liver_z - 30.0)
        _paint_tube(rng, canvas, control, u(9.0, 14.0), 0.25, Structure.NONE, abdomen)

    pancreas_z = liver_z - u(15.0, 30.0)
    kidney_left_z = pancreas_z - u(0.0, 20.0)
    duodenum = np.array(
        [
            [u(-5.0, 10.0), spine_y + u(85.0, 100.0), pancreas_z + 25.0],
            [-0.42 * cavity_half_width, spine_y + 80.0, pancreas_z + 20.0],
            [-0.52 * cavity_half_width, spine_y + 55.0, pancreas_z - 35.0],
            [-0.10 * cavity_half_width, spine_y + 50.0, pancreas_z - 55.0],
            [u(20.0, 35.0), spine_y + 55.0, pancreas_z - u(25.0, 40.0)],
        ]
    )
    _paint_tube(rng, canvas, duodenum, u(10.0, 13.0), 0.3, Structure.DUODENUM, abdomen)

    stomach_centre = np.array(
        [u(0.25, 0.42) * cavity_half_width, u(0.05, 0.3) * cavity_half_depth, liver_z + u(5.0, 30.0)]
    )
    stomach_radii = (u(32.0, 48.0), u(26.0, 40.0), u(45.0, 62.0))
    box = canvas.around(stomach_centre, max(stomach_radii) * 1.3)
    local = local_coords(canvas.local(box), stomach_centre, rotation(u(-20, 20), u(-35, -10), u(-30, 30)))
    stomach_r = ellipsoid_radius(local, stomach_radii) - 0.1 * canvas.noise(rng, box, 45.0)
    _paint_hollow(
        rng, canvas, box, stomach_r, 5.0 / min(stomach_radii), stomach_centre[1], stomach_radii[1],
        Structure.STOMACH, abdomen,
    )  # fmt: skip

    # --- liver: a large right lobe tapering to an inferior tip, plus a left lobe crossing the midline
    right_lobe_centre = np.array([-0.42 * cavity_half_width, u(-0.05, 0.15) * cavity_half_depth, liver_z])
    right_lobe_radii = (
        u(0.55, 0.66) * cavity_half_width,
        u(0.75, 0.9) * cavity_half_depth,
        liver_top - liver_z,
    )
    left_lobe_centre = np.array(
        [u(0.0, 0.2) * cavity_half_width, u(0.35, 0.5) * cavity_half_depth, liver_z + u(15.0, 35.0)]
    )
    left_lobe_radii = (u(0.38, 0.55) * cavity_half_width, u(0.28, 0.4) * cavity_half_depth, u(35.0, 50.0))
    box = canvas.box(
        np.array([-cavity_half_width, -cavity_half_depth, liver_z - right_lobe_radii[2] * 1.2]),
        np.array([cavity_half_width * 0.8, cavity_half_depth, liver_top + 10.0]),
    )
    coords = canvas.local(box)
    lu, lv, lw = local_coords(coords, right_lobe_centre, rotation(u(-8, 8), u(-8, 8), u(-10, 10)))
    taper = np.clip(lw / right_lobe_radii[2], -1.0, 1.0)
    narrowing = 1.0 + u(0.25, 0.4) * taper  # wide under the dome, narrow at the inferior tip
    lateral_shift = -u(0.1, 0.25) * right_lobe_radii[0] * np.minimum(taper, 0.0) ** 2  # tip bends laterally
    right_r = np.sqrt(
        ((lu - lateral_shift) / (right_lobe_radii[0] * narrowing)) ** 2
        + (lv / (right_lobe_radii[1] * narrowing)) ** 2
        + (lw / right_lobe_radii[2]) ** 2
    )
    left_r = ellipsoid_radius(
        local_coords(coords, left_lobe_centre, rotation(u(-10, 10), u(-15, 5), u(-15, 15))), left_lobe_radii
    )
    liver = np.minimum(right_r, left_r) - 0.07 * canvas.noise(rng, box, 40.0) < 1.0
    canvas.paint(box, liver, Tissue.LIVER, Structure.LIVER, abdomen)

    # --- spleen: posterolateral left, convex towards the ribs, concave towards the hilum
    spleen_centre = np.array(
        [u(0.66, 0.76) * cavity_half_width, -u(0.15, 0.35) * cavity_half_depth, liver_z + u(10.0, 30.0)]
    )
    spleen_radii = (u(18.0, 26.0), u(42.0, 62.0), u(38.0, 55.0))
    box = canvas.around(spleen_centre, max(spleen_radii) * 1.4)
    su, sv, sw = local_coords(canvas.local(box), spleen_centre, rotation(u(-10, 10), u(-10, 10), u(-45, -20)))
    bend = u(0.4, 0.8) * spleen_radii[0]
    spleen_r = ellipsoid_radius((su + bend * (sv / spleen_radii[1]) ** 2, sv, sw), spleen_radii)
    spleen = spleen_r - 0.06 * canvas.noise(rng, box, 35.0) < 1.0
    canvas.paint(box, spleen, Tissue.SPLEEN, Structure.SPLEEN, abdomen)

    # --- kidneys: posterior beside the spine, hilum facing anteromedially, upper pole tilted medially;
    # the right one sits lower (under the liver)
    for structure, side, centre_z in (
        (Structure.KIDNEY_LEFT, 1.0, kidney_left_z),
        (Structure.KIDNEY_RIGHT, -1.0, kidney_left_z - u(5.0, 20.0)),
    ):
        centre = np.array([side * u(58.0, 72.0), spine_y + u(0.0, 12.0), centre_z])
        radii = (u(21.0, 26.0), u(26.0, 32.0), u(46.0, 60.0))
        # local u points to the convex (posterolateral) border, w along the long axis
        yaw = -u(25.0, 45.0) if side > 0 else 180.0 + u(25.0, 45.0)
        rot = rotation(about_y=-u(8.0, 18.0), about_z=yaw)
        box = canvas.around(centre, max(radii) * 1.3)
        local = local_coords(canvas.local(box), centre, rot)
        kidney_r = ellipsoid_radius(local, radii) - 0.04 * canvas.noise(rng, box, 30.0)
        hilum_r = ellipsoid_radius(
            (local[0] + radii[0] * 0.95, local[1], local[2]),
            (0.6 * radii[0], 0.4 * radii[1], 0.35 * radii[2]),
        )
        kidney = (kidney_r < 1.0) & (hilum_r > 1.0)
        canvas.paint(box, kidney, Tissue.KIDNEY_CORTEX, structure, abdomen)
        canvas.paint(box, kidney & (kidney_r < u(0.55, 0.7)), Tissue.KIDNEY_MEDULLA, structure, abdomen)

    # --- pancreas: head in the duodenal C-loop, body anterior to the aorta, tail towards the splenic hilum
    spleen_hilum = spleen_centre + np.array([-u(28.0, 40.0), u(20.0, 35.0), -u(0.0, 15.0)])
    pancreas_control = np.array(
        [
            [-u(25.0, 38.0), spine_y + u(45.0, 55.0), pancreas_z - u(10.0, 25.0)],
            [u(-10.0, 10.0), spine_y + u(62.0, 75.0), pancreas_z],
            [0.5 * (spleen_hilum[0] + 10.0), spine_y + u(45.0, 60.0), pancreas_z + u(5.0, 15.0)],
            spleen_hilum,
        ]
    )
    head, body, tail = u(13.0, 19.0), u(8.5, 12.0), u(7.5, 10.0)
    points = curve_points(pancreas_control, tail)
    along = np.linspace(0.0, 1.0, len(points))
    pancreas_radii = np.interp(along, [0.0, 0.3, 1.0], [head, body, tail])
    box = canvas.box(points.min(0) - head, points.max(0) + head)
    pancreas_r = tube_radius(canvas.local(box), points, pancreas_radii) - 0.1 * canvas.noise(rng, box, 20.0)
    canvas.paint(box, pancreas_r < 1.0, Tissue.PANCREAS, Structure.PANCREAS, abdomen)

    # --- gallbladder: a pear in the fossa under the liver, overlapping its visceral surface
    gb_x = -u(0.22, 0.38) * cavity_half_width
    gb_y = u(0.25, 0.45) * cavity_half_depth
    column = (
        int(np.clip(np.searchsorted(canvas.axes[0], gb_x), 0, shape[0] - 1)),
        int(np.clip(np.searchsorted(canvas.axes[1], gb_y), 0, shape[1] - 1)),
    )
    in_liver = np.flatnonzero(canvas.structure[column[0], column[1], :] == Structure.LIVER)
    liver_bottom = float(canvas.axes[2][in_liver[0]]) if len(in_liver) else liver_z - 30.0
    gb_radii = (u(10.0, 16.0), u(11.0, 17.0), u(24.0, 38.0))
    gb_centre = np.array([gb_x, gb_y, liver_bottom + 0.35 * gb_radii[2]])
    box = canvas.around(gb_centre, max(gb_radii) * 1.3)
    gu, gv, gw = local_coords(canvas.local(box), gb_centre, rotation(about_x=-u(20, 45), about_z=u(-20, 20)))
    pear = 1.0 + 0.25 * np.clip(-gw / gb_radii[2], -1.0, 1.0)  # wide fundus at the inferior end
    gb_r = np.sqrt(
        (gu / (gb_radii[0] * pear)) ** 2 + (gv / (gb_radii[1] * pear)) ** 2 + (gw / gb_radii[2]) ** 2
    )
    canvas.paint(box, gb_r < 1.0, Tissue.BILE, Structure.GALLBLADDER, abdomen)

    # --- vessels: aorta, IVC, portal and splenic veins (the veins are distractors in the pancreas region)
    confluence = pancreas_control[1] + np.array([-5.0, -13.0, 0.0])
    liver_hilum = np.array([-0.35 * cavity_half_width, spine_y + u(55.0, 70.0), liver_z - u(0.0, 15.0)])
    splenic_vein = np.array(
        [
            confluence,
            pancreas_control[2] + np.array([0.0, -12.0, 0.0]),
            spleen_hilum + np.array([0.0, -8.0, 0.0]),
        ]
    )
    for control, radius in ((splenic_vein, u(3.5, 5.0)), (np.array([confluence, liver_hilum]), u(6.0, 8.0))):
        points = curve_points(control, radius)
        box = canvas.box(points.min(0) - radius, points.max(0) + radius)
        vein = tube_radius(canvas.local(box), points, np.full(len(points), radius)) < 1.0
        canvas.paint(box, vein, Tissue.VENOUS_BLOOD, Structure.NONE, abdomen)
    aorta_radius, ivc_radius = u(9.0, 13.0), u(10.0, 14.0)
    aorta_x, ivc_x = u(8.0, 18.0), -u(20.0, 28.0)
    vessel_y = spine_y + u(28.0, 34.0)
    box = canvas.box(np.array([-60.0, vessel_y - 30, -170]), np.array([50.0, vessel_y + 30, liver_top + 40]))
    x, y, z = canvas.local(box)
    sway = 4.0 * np.sin(z / 60.0 + u(0, 6.3))
    aorta = (x - aorta_x - sway) ** 2 + (y - vessel_y) ** 2 < aorta_radius**2
    ivc = ((x - ivc_x - sway) / ivc_radius) ** 2 + ((y - vessel_y) / (0.7 * ivc_radius)) ** 2 < 1.0
    canvas.paint(box, ivc & (z < liver_top - 5.0), Tissue.VENOUS_BLOOD, Structure.IVC, cavity)
    canvas.paint(box, aorta, Tissue.ARTERIAL_BLOOD, Structure.AORTA, cavity)

    # --- spine: vertebral bodies (marrow in a cortical shell), posterior arch with the spinal canal
    box = canvas.box(np.array([-45.0, spine_y - 75, -170]), np.array([45.0, spine_y + 30, 170]))
    x, y, _ = canvas.local(box)
    body_r = np.sqrt((x / u(19.0, 24.0)) ** 2 + ((y - spine_y) / u(15.0, 19.0)) ** 2)
    arch_r = np.sqrt((x / 24.0) ** 2 + ((y - spine_y + 36.0) / 20.0) ** 2)
    spinous = (np.abs(x) < 5.0) & (y > spine_y - 68.0) & (y < spine_y - 30.0)
    canal = np.sqrt((x / 10.0) ** 2 + ((y - spine_y + 30.0) / 8.0) ** 2) < 1.0
    canvas.paint(box, (body_r < 1.0) | (arch_r < 1.0) | spinous, Tissue.CORTICAL_BONE)
    canvas.paint(box, (body_r < 0.8) | ((arch_r < 0.7) & ~canal), Tissue.MARROW)
    canvas.paint(box, canal, Tissue.FLUID)

    # Drawing frame (x to the patient's left) -> RAS+ voxel order (x to the patient's right): mirror along x.
    return Anatomy(
        tissue=np.ascontiguousarray(canvas.tissue[::-1]),
        structure=np.ascontiguousarray(canvas.structure[::-1]),
    )


def _paint_tube(
    rng: np.random.Generator,
    canvas: Canvas,
    control: np.ndarray,
    radius: float,
    wall_fraction: float,
    structure: int,
    within: np.ndarray,
) -> None:
    """A bowel segment along a Bezier curve, with a wall and gas/fluid contents."""
    points = curve_points(control, radius)
    box = canvas.box(points.min(0) - radius, points.max(0) + radius)
    if min(s.stop - s.start for s in box) <= 0:
        return
    radii = radius * rng.uniform(0.85, 1.15, len(points))
    tube_r = tube_radius(canvas.local(box), points, radii)
    centre_y = float(points[:, 1].mean())
    _paint_hollow(rng, canvas, box, tube_r, wall_fraction, centre_y, radius, structure, within)
