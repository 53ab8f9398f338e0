"""Synthetic abdominal CT phantoms with organ and tumour label maps, deterministic by seed.

Anatomy is defined in world millimetres (RAS+: +x = patient's right, +y = anterior, +z = superior) around
the body centre, then rendered onto any voxel grid: an elliptic body with skin, subcutaneous fat and a
muscle wall; spine and paraspinal muscles; lungs at the top; liver, gallbladder, spleen, stomach (with a
gas bubble), pancreas, kidneys (cortex + medulla), aorta and inferior vena cava; hypo-dense tumours inside
the liver and kidneys. Each case moves, scales and elastically deforms the organs, jitters their HU and adds
partial-volume blur and noise.

The full label volume uses the ids of the template's ``synthetic-phantom`` label map
(:data:`FULL_LABELS`). :func:`relabel` turns it into a partially labelled dataset's own ids, putting a
lesion of an unlabelled class into its parent organ when that organ is labelled (as public datasets do).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medmoe.errors import InvalidInputError

# Ids of the generator's full label volume; equal to the template's "synthetic-phantom" label map.
FULL_LABELS: dict[int, str] = {
    1: "liver",
    2: "spleen",
    3: "kidney_right",
    4: "kidney_left",
    5: "stomach",
    6: "pancreas",
    7: "aorta",
    8: "gallbladder",
    9: "liver_tumour",
    10: "kidney_tumour",
}
_ID = {name: i for i, name in FULL_LABELS.items()}
# Lesion -> the organ its voxels belong to when a dataset does not label the lesion itself.
LESION_PARENTS = {"liver_tumour": ("liver",), "kidney_tumour": ("kidney_right", "kidney_left")}

# Mean HU per structure (venous-phase contrast in kidneys and vessels).
HU = {
    "air": -1000.0, "lung": -820.0, "fat": -100.0, "visceral_fat": -85.0, "muscle": 45.0, "skin": 30.0,
    "bone_cortex": 750.0, "bone_trabecular": 260.0, "bowel": 20.0,
    "liver": 60.0, "spleen": 50.0, "kidney_cortex": 150.0, "kidney_medulla": 60.0, "stomach": 15.0,
    "stomach_gas": -900.0, "pancreas": 40.0, "aorta": 180.0, "ivc": 130.0, "gallbladder": 5.0,
    "liver_tumour": 15.0, "kidney_tumour": 35.0,
}
FOV_MM = (288.0, 240.0, 192.0)


@dataclass(frozen=True)
class Grid:
    """A voxel grid: ``shape`` (X, Y, Z) and the 4x4 voxel -> RAS world affine (centred on the body)."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    @classmethod
    def make(cls, spacing: tuple[float, float, float] = (3.0, 3.0, 3.0), axcodes: str = "RAS",
             fov_mm: tuple[float, float, float] = FOV_MM) -> Grid:
        """A grid covering ``fov_mm`` at ``spacing``, stored with the axis directions ``axcodes``.

        ``axcodes`` is one of RAS, LAS, LPS, RPS (axes stay in x, y, z order; only their signs change).
        """
        if axcodes not in ("RAS", "LAS", "LPS", "RPS"):
            raise InvalidInputError(f"axcodes {axcodes!r}: expected RAS, LAS, LPS or RPS")
        if any(s <= 0 for s in spacing):
            raise InvalidInputError(f"spacing {spacing}: expected positive millimetres")
        shape = tuple(int(round(f / s)) for f, s in zip(fov_mm, spacing))
        signs = np.array([1.0 if axcodes[0] == "R" else -1.0, 1.0 if axcodes[1] == "A" else -1.0, 1.0])
        affine = np.eye(4)
        affine[:3, :3] = np.diag(signs * np.asarray(spacing, dtype=float))
        # Centre the grid on the world origin.
        affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
        return cls(shape=shape, affine=affine)


@dataclass
class Phantom:
    """One rendered case.

    Attributes:
        image: (X, Y, Z) int16 HU.
        label: (X, Y, Z) uint8 ids of :data:`FULL_LABELS` (lesions exclusive of their organ).
        host: (X, Y, Z) uint8 ids as ``label`` but with each lesion voxel given its host organ's id.
        affine: (4, 4) voxel -> RAS mm.
        tumours: classes present as tumours (``"liver_tumour"``, ``"kidney_tumour"``).
    """

    image: np.ndarray
    label: np.ndarray
    host: np.ndarray
    affine: np.ndarray
    tumours: tuple[str, ...]


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    angles = np.deg2rad(rng.uniform(-max_deg, max_deg, size=3))
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def smooth_field(grid: Grid, rng: np.random.Generator, smooth_mm: float) -> np.ndarray:
    """(X, Y, Z) float32 Gaussian random field with correlation length ``smooth_mm``, zero mean, unit std.

    Drawn on a grid 4x coarser than the smoothing scale needs and upsampled linearly: the same field at a
    fraction of the cost of filtering full-resolution noise.
    """
    spacing = np.abs(np.diag(grid.affine)[:3])
    step = max(1.0, smooth_mm / 4.0)
    coarse = tuple(int(np.ceil(n * s / step)) + 1 for n, s in zip(grid.shape, spacing))
    noise = ndimage.gaussian_filter(rng.standard_normal(coarse).astype(np.float32), smooth_mm / step, mode="wrap")
    field = ndimage.zoom(noise, [n / c for n, c in zip(grid.shape, coarse)], order=1, grid_mode=True,
                         mode="nearest")
    field = field[: grid.shape[0], : grid.shape[1], : grid.shape[2]]
    return (field - field.mean()) / (field.std() + 1e-6)


class _Space:
    """World coordinates of a grid after an elastic deformation, and shape primitives evaluated on them.

    Primitives are evaluated only inside their bounding box (widened by the largest displacement) and are
    +inf elsewhere: organs are small next to the field of view.
    """

    def __init__(self, grid: Grid, rng: np.random.Generator, amplitude_mm: float, smooth_mm: float):
        idx = np.indices(grid.shape, dtype=np.float32)
        world = np.einsum("ij,j...->i...", grid.affine[:3, :3].astype(np.float32), idx)
        world += grid.affine[:3, 3].astype(np.float32)[:, None, None, None]
        disp = np.stack([smooth_field(grid, rng, smooth_mm) * amplitude_mm for _ in range(3)])
        self.margin = float(np.abs(disp).max()) + 1.0
        self.xyz = world + disp
        self.shape = grid.shape
        self._inverse = np.linalg.inv(grid.affine)

    def _box(self, centre, reach: float) -> tuple[slice, slice, slice]:
        c = np.asarray(centre, dtype=float)
        corners = np.array([[c[0] + sx * reach, c[1] + sy * reach, c[2] + sz * reach, 1.0]
                            for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
        ijk = (self._inverse @ corners.T)[:3]
        lo = np.clip(np.floor(ijk.min(1)).astype(int), 0, self.shape)
        hi = np.clip(np.ceil(ijk.max(1)).astype(int) + 1, 0, self.shape)
        return tuple(slice(a, b) for a, b in zip(lo, hi))

    def ellipsoid(self, centre, semi, rotation=None, exponent: float = 2.0) -> np.ndarray:
        """Normalised radius (< 1 inside) of a (super-)ellipsoid."""
        out = np.full(self.shape, np.inf, dtype=np.float32)
        box = self._box(centre, float(np.max(semi)) * 3.0 ** 0.5 + self.margin)
        d = self.xyz[(slice(None), *box)] - np.asarray(centre, dtype=np.float32)[:, None, None, None]
        if rotation is not None:
            d = np.einsum("ji,j...->i...", rotation.astype(np.float32), d)
        d = np.abs(d / np.asarray(semi, dtype=np.float32)[:, None, None, None])
        out[box] = (d[0] ** exponent + d[1] ** exponent + d[2] ** exponent) ** (1.0 / exponent)
        return out

    def cylinder_z(self, centre_xy, semi_xy) -> np.ndarray:
        """Normalised radius of an elliptic cylinder along z."""
        dx = (self.xyz[0] - centre_xy[0]) / semi_xy[0]
        dy = (self.xyz[1] - centre_xy[1]) / semi_xy[1]
        return np.sqrt(dx**2 + dy**2)

    def capsule(self, a, b, radius) -> np.ndarray:
        """Distance to segment ab divided by ``radius`` (< 1 inside)."""
        a = np.asarray(a, dtype=np.float32)
        b = np.asarray(b, dtype=np.float32)
        out = np.full(self.shape, np.inf, dtype=np.float32)
        box = self._box((a + b) / 2, float(np.linalg.norm(b - a)) / 2 + float(np.max(radius)) + self.margin)
        xyz = self.xyz[(slice(None), *box)].reshape(3, -1)
        ab = (b - a)[:, None]
        t = np.clip(((xyz - a[:, None]) * ab).sum(0) / float((ab**2).sum()), 0.0, 1.0)
        closest = a[:, None] + ab * t
        radii = np.interp(t, [0.0, 1.0], radius) if np.ndim(radius) else np.full_like(t, radius)
        out[box] = (np.linalg.norm(xyz - closest, axis=0) / radii).reshape(out[box].shape)
        return out


def render_phantom(seed: int | tuple[int, ...], grid: Grid | None = None, *, tumour_prob: float = 0.5,
                   noise_hu: float = 12.0) -> Phantom:
    """Render one phantom CT and its label volume.

    Args:
        seed: an int or a tuple of ints (e.g. ``(base_seed, dataset, case)``); the result depends on it only.
        grid: output voxel grid (default: 3 mm RAS over a 288 x 240 x 192 mm field of view).
        tumour_prob: probability of a liver tumour, and independently of a kidney tumour.
        noise_hu: standard deviation of the additive Gaussian noise.

    Returns:
        :class:`Phantom` with ``image`` (X, Y, Z) int16 HU and ``label`` (X, Y, Z) uint8.
    """
    canvas = _Canvas(grid or Grid.make(), np.random.default_rng(seed))
    canvas.body_wall()
    canvas.spine()
    canvas.lungs()
    canvas.liver_gallbladder_spleen()
    canvas.stomach_and_pancreas()
    canvas.kidneys_and_vessels()
    host = canvas.label.copy()
    tumours = canvas.tumours(tumour_prob)
    image = canvas.blurred_noisy_image(noise_hu)
    return Phantom(image=np.clip(np.rint(image), -1024, 3071).astype(np.int16), label=canvas.label, host=host,
                   affine=canvas.grid.affine.copy(), tumours=tuple(tumours))


class _Canvas:
    """One case being painted: its random draws (deformation, HU jitter, shift, body size), the HU image and
    the label volume. The steps draw from one random generator in a fixed order, so a case depends on its
    seed only."""

    def __init__(self, grid: Grid, rng: np.random.Generator) -> None:
        self.grid, self.rng = grid, rng
        self.space = _Space(grid, rng, amplitude_mm=float(rng.uniform(3.0, 7.0)), smooth_mm=30.0)
        self.hu = {k: v + (rng.normal(0, 8) if k in ("liver", "spleen", "kidney_cortex", "pancreas", "aorta") else 0.0)
                   for k, v in HU.items()}
        self.shift = rng.normal(0, 6.0, size=3)
        self.body_scale = rng.uniform(0.92, 1.06, size=2)
        self.image = np.full(grid.shape, self.hu["air"], dtype=np.float32)
        self.label = np.zeros(grid.shape, dtype=np.uint8)
        self.cavity = np.zeros(grid.shape, dtype=bool)

    def jitter(self, centre, semi, move: float = 5.0, scale: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
        """A structure's centre moved (the case's shift and its own) and its semi-axes scaled at random."""
        c = np.asarray(centre, float) + self.shift + self.rng.normal(0, move, size=3)
        s = np.asarray(semi, float) * self.rng.uniform(1 - scale, 1 + scale, size=3)
        return c, s

    def paint(self, name: str, mask: np.ndarray, value: float) -> np.ndarray:
        """Paint organ ``name`` (its part inside the abdominal cavity) into the image and the label."""
        mask = mask & self.cavity
        self.image[mask] = value
        self.label[mask] = _ID[name]
        return mask

    def body_wall(self) -> None:
        """Body wall: skin, subcutaneous fat, muscle; the cavity inside holds visceral fat and bowel."""
        space, hu, image, shift = self.space, self.hu, self.image, self.shift
        body_semi = np.array([135.0, 100.0]) * self.body_scale
        body_c = (shift[0] * 0.3, -5.0 + shift[1] * 0.3)
        fat_mm = self.rng.uniform(8.0, 22.0)
        image[space.cylinder_z(body_c, body_semi) < 1] = hu["skin"]
        image[space.cylinder_z(body_c, body_semi - 3.0) < 1] = hu["fat"]
        image[space.cylinder_z(body_c, body_semi - 3.0 - fat_mm) < 1] = hu["muscle"]
        self.cavity = space.cylinder_z(body_c, body_semi - 3.0 - fat_mm - self.rng.uniform(8.0, 14.0)) < 1
        image[self.cavity] = hu["visceral_fat"]
        image[self.cavity & (smooth_field(self.grid, self.rng, 8.0) > 0.25)] = hu["bowel"]

    def spine(self) -> None:
        """Spine (cortex + trabecular body + posterior element) and paraspinal muscles."""
        space, hu, image = self.space, self.hu, self.image
        spine_c = (self.shift[0] * 0.3, -60.0 + self.shift[1] * 0.3)
        for side in (-1, 1):
            image[space.cylinder_z((spine_c[0] + side * 35, spine_c[1] - 20), (22, 18)) < 1] = hu["muscle"]
        image[space.cylinder_z(spine_c, (19, 17)) < 1] = hu["bone_cortex"]
        image[space.cylinder_z(spine_c, (15, 13)) < 1] = hu["bone_trabecular"]
        image[space.cylinder_z((spine_c[0], spine_c[1] - 26), (6, 10)) < 1] = hu["bone_cortex"]

    def lungs(self) -> None:
        """Lungs at the top of the field of view, above the liver dome and spleen."""
        for side in (-1, 1):
            c, s = self.jitter((side * 65.0, -5.0, 125.0), (55.0, 70.0, 75.0), move=3.0, scale=0.05)
            self.image[(self.space.ellipsoid(c, s) < 1) & self.cavity] = self.hu["lung"]

    def liver_gallbladder_spleen(self) -> None:
        """Liver (a right lobe and a smaller left lobe crossing the midline), gallbladder and spleen."""
        space, hu, rng = self.space, self.hu, self.rng
        c1, s1 = self.jitter((62.0, 5.0, 35.0), (62.0, 70.0, 55.0))
        c2, s2 = self.jitter((5.0, 35.0, 45.0), (45.0, 35.0, 30.0))
        self.paint("liver", (space.ellipsoid(c1, s1, _rotation(rng, 10)) < 1) | (space.ellipsoid(c2, s2) < 1),
                   hu["liver"])
        c, s = self.jitter((55.0, 40.0, -5.0), (14.0, 14.0, 26.0), move=3.0)
        self.paint("gallbladder", space.ellipsoid(c, s, _rotation(rng, 20)) < 1, hu["gallbladder"])
        c, s = self.jitter((-85.0, -30.0, 40.0), (26.0, 45.0, 48.0))
        self.paint("spleen", space.ellipsoid(c, s, _rotation(rng, 15)) < 1, hu["spleen"])

    def stomach_and_pancreas(self) -> None:
        """Stomach with a gas bubble at its anterior top, and the pancreas from head to tail."""
        space, hu, rng, shift = self.space, self.hu, self.rng, self.shift
        c, s = self.jitter((-45.0, 40.0, 40.0), (42.0, 32.0, 38.0))
        stomach = self.paint("stomach", space.ellipsoid(c, s, _rotation(rng, 15)) < 1, hu["stomach"])
        gas = stomach & (space.ellipsoid(c + np.array([0, s[1] * 0.5, s[2] * 0.4]), s * 0.5) < 1)
        self.image[gas] = hu["stomach_gas"]
        head = np.array([25.0, 5.0, 0.0]) + shift + rng.normal(0, 4, 3)
        tail = np.array([-70.0, -12.0, 15.0]) + shift + rng.normal(0, 4, 3)
        self.paint("pancreas", space.capsule(head, tail, (15.0, 9.0)) < 1, hu["pancreas"])

    def kidneys_and_vessels(self) -> None:
        """Kidneys (cortex + medulla), the aorta and the inferior vena cava (unlabelled)."""
        space, hu, shift = self.space, self.hu, self.shift
        for name, x, z in (("kidney_right", 65.0, -15.0), ("kidney_left", -65.0, -2.0)):
            c, s = self.jitter((x, -50.0, z), (27.0, 24.0, 52.0), move=4.0)
            rot = _rotation(self.rng, 12)
            kidney = self.paint(name, space.ellipsoid(c, s, rot) < 1, hu["kidney_cortex"])
            self.image[kidney & (space.ellipsoid(c, s * 0.6, rot) < 1)] = hu["kidney_medulla"]
        aorta_xy = (-18.0 + shift[0] * 0.5, -28.0 + shift[1] * 0.5)
        self.paint("aorta", space.cylinder_z(aorta_xy, (11.0, 11.0)) < 1, hu["aorta"])
        ivc = space.cylinder_z((24.0 + shift[0] * 0.5, -25.0 + shift[1] * 0.5), (13.0, 10.0)) < 1
        self.image[ivc & self.cavity & (self.label == 0)] = hu["ivc"]

    def tumours(self, tumour_prob: float) -> list[str]:
        """Liver tumours, and independently a kidney tumour, each with probability ``tumour_prob``; their classes."""
        rng = self.rng
        tumours = []
        if rng.random() < tumour_prob:
            tumours.append("liver_tumour")
            self.add_tumours("liver", "liver_tumour", count=int(rng.integers(1, 4)), radius=(7.0, 16.0))
        if rng.random() < tumour_prob:
            tumours.append("kidney_tumour")
            side = "kidney_right" if rng.random() < 0.5 else "kidney_left"
            self.add_tumours(side, "kidney_tumour", count=1, radius=(9.0, 17.0))
        return tumours

    def add_tumours(self, host: str, lesion: str, count: int, radius: tuple[float, float]) -> None:
        """Paint ``count`` lobulated ``lesion`` blobs centred on random voxels of organ ``host``, inside it."""
        rng, space, host_mask = self.rng, self.space, self.label == _ID[host]
        candidates = np.argwhere(ndimage.binary_erosion(host_mask, iterations=2))
        if len(candidates) == 0:
            candidates = np.argwhere(host_mask)
        if len(candidates) == 0:
            return
        for _ in range(count):
            i, j, k = candidates[rng.integers(len(candidates))]
            semi = rng.uniform(*radius) * rng.uniform(0.8, 1.2, size=3)
            blob = space.ellipsoid(space.xyz[:, i, j, k], semi, _rotation(rng, 45), exponent=2.0) < 1
            blob &= host_mask
            self.image[blob] = self.hu[lesion] + rng.normal(0, 5)
            self.label[blob] = _ID[lesion]

    def blurred_noisy_image(self, noise_hu: float) -> np.ndarray:
        """The image after partial-volume blur at the scale of a detector element, then quantum noise."""
        spacing = np.abs(np.diag(self.grid.affine)[:3])
        image = ndimage.gaussian_filter(self.image, 0.6 * 3.0 / spacing)
        image += self.rng.normal(0.0, noise_hu, size=self.grid.shape).astype(np.float32)
        return image


def relabel(phantom: Phantom, label_map: Mapping[int, str]) -> np.ndarray:
    """The label volume a dataset with ``label_map`` (its id -> class name) would store for ``phantom``.

    Classes the dataset does not label become background. A lesion of an unlabelled class takes its host
    organ's id when the dataset labels that organ (public datasets store lesions inside their organ).

    Returns:
        (X, Y, Z) uint8.
    """
    by_name = {name: int(i) for i, name in label_map.items()}
    unknown = set(by_name) - set(_ID)
    if unknown:
        raise InvalidInputError(f"phantom label map names {sorted(unknown)}; phantoms render only {sorted(_ID)}")
    out = np.zeros_like(phantom.label)
    for name, full_id in _ID.items():
        voxels = phantom.label == full_id
        if name in by_name:
            out[voxels] = by_name[name]
        elif name in LESION_PARENTS:
            for parent in LESION_PARENTS[name]:
                if parent in by_name:
                    out[voxels & (phantom.host == _ID[parent])] = by_name[parent]
    return out
