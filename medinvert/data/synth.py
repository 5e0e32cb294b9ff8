"""Synthetic BraTS-like subjects made from the MNI ICBM152 2009a template (T1, GM and WM maps).

Pipeline for one subject (every random draw comes from `SubjectSpec.seed`, one independent stream
per purpose, so the output is a pure function of the spec and the template files):

1. **Template** (`load_template`): the T1 image and the grey / white matter probability maps of the
   ICBM152 2009a nonlinear symmetric template, read from the installed nilearn package (no
   download).  The template T1 is already skull-stripped, so ``brain = T1 > 0`` (morphologically
   closed with a 2-voxel ball to seal narrow clefts); cerebrospinal
   fluid is what the brain mask leaves over, ``csf = clip(brain - gm - wm, 0, 1)``.  The T1 is
   fitted by a tissue mixture ``T1 ~ a_csf csf + a_gm gm + a_wm wm`` (least squares inside the
   brain) and ``texture = T1 / fit`` keeps the real anatomy that the three maps do not explain
   (deep grey nuclei, myelination gradients, partial volume).
2. **Pose and deformation** (`sampling_coordinates`): output voxel ``v`` of the 240x240x155 BraTS
   grid sits at world point ``p = BRATS_AFFINE v``; it samples the template at
   ``q = c_mni + R S^-1 (p - c_grid) + u(v)`` with ``R`` a small rotation, ``S`` the subject's
   size relative to the template per axis (MNI152 brains are ~10% larger than typical adult
   brains, so subjects use ``S ~ 0.9``) and ``u`` a smooth free-form deformation of a few mm
   (cubic B-spline on a coarse control grid, Rueckert et al. 1999).  Template fields are pulled
   back with trilinear interpolation.
3. **Tumour** (`tumour_labels`): a blobby distance field ``g = rho + 0.22 n1`` around a centre
   in white matter (``rho`` the ellipsoidal radius, ``n1`` a smooth unit-variance random field);
   necrotic core ``g < 0.62 + 0.1 n2``, enhancing rim up to ``g < 1``, peritumoural oedema out to
   ``g < 1.5 + 0.5 wm + 0.3 n3`` inside brain tissue (the connected piece holding the centre).
   Labels follow BraTS 2021 (1 necrotic, 2 oedema, 4 enhancing).
4. **Contrasts** (`render`): per sequence a tissue mixture
   ``(csf m_csf + gm m_gm + wm m_wm) / (csf + gm + wm) * texture ** power``; the T1 uses the
   fitted template coefficients with power 1, so it *is* the (deformed) template T1.  Tumour classes
   are blended in with Gaussian-smoothed label masks (sigma 0.7 voxel for the core, 1.2 for oedema,
   support `TUMOUR_REACH` = 3 voxels), so the lesion-free version differs from the lesioned one only
   within 3 voxels of the labels.  Each sequence gets its own smooth multiplicative bias field
   ``exp(b f)``.  Stored as int16 with a per-sequence scale, zero outside the brain (skull-stripped
   like BraTS).

Everything is plain numpy / scipy; arrays are float32 ``(X, Y, Z)`` in BraTS voxel order unless
stated.  nilearn is needed only by `load_template`.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from scipy import ndimage as ndi

from medinvert.errors import MedinvertError

__all__ = [
    "BRATS_SHAPE",
    "BRATS_AFFINE",
    "TEMPLATE_FILES",
    "SEQUENCES",
    "LABELS_2021",
    "Contrast",
    "CONTRASTS",
    "Template",
    "SubjectSpec",
    "Subject",
    "template_path",
    "load_template",
    "bspline_field",
    "sampling_coordinates",
    "warp_fields",
    "tumour_labels",
    "soft_class_weights",
    "TUMOUR_REACH",
    "render",
    "synthesize_subject",
]

#: BraTS grid: 240 x 240 x 155 voxels of 1 mm (SRI24 space as distributed by the challenge)
BRATS_SHAPE: tuple[int, int, int] = (240, 240, 155)

#: voxel -> RAS affine of every BraTS 2021 / 2023 (GLI) volume: x = -i, y = 239 - j, z = k.
#: nibabel orientation code ('L', 'P', 'S'): array axis 0 runs right -> left, axis 1 anterior ->
#: posterior, axis 2 inferior -> superior; the world origin is a grid corner, not the brain centre.
BRATS_AFFINE: np.ndarray = np.array(
    [[-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 239.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)

#: template files inside the nilearn wheel (``nilearn/datasets/data``), 197x233x189 uint8, 1 mm
TEMPLATE_FILES: dict[str, str] = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}

#: the four sequences, canonical medinvert names
SEQUENCES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")

#: BraTS 2021 label codes (BraTS 2023 GLI uses 3 instead of 4 for the enhancing tumour)
LABELS_2021: dict[str, int] = {"necrotic": 1, "oedema": 2, "enhancing": 4}

#: MNI-space point (mm) placed at the centre of the BraTS grid (before the subject's own shift):
#: the brain's left-right and anterior-posterior centre, 12 mm above its vertical centre, so the
#: vertex lands near slice 147 and only the lowest ~7 mm of the medulla fall below slice 0
_MNI_CENTRE = np.array([0.0, -17.0, 12.0])
#: the BraTS grid point it lands on (voxel coordinates)
_GRID_CENTRE_VOXEL = np.array([119.5, 119.5, 77.0])


@dataclass(frozen=True)
class Contrast:
    """Relative signal of one sequence per tissue class (about 1 = white matter) and its storage.

    ``csf`` / ``gm`` / ``wm`` are the healthy mixture coefficients (``None``: use the coefficients
    fitted to the template T1); ``necrotic`` / ``enhancing`` / ``oedema`` the tumour classes;
    ``texture_power`` the exponent applied to the template texture ratio (negative: inverted, as T2
    contrast runs opposite to T1); ``scale`` the integer units per relative unit when stored.
    """

    csf: float | None
    gm: float | None
    wm: float | None
    necrotic: float
    enhancing: float
    oedema: float
    texture_power: float
    scale: float


#: Plausible relative signals (orderings follow the textbook appearance of glioma on each sequence):
#: T1 WM > GM > CSF, tumour hypointense; T1ce like T1 with a strongly enhancing rim; T2 CSF > GM > WM,
#: tumour and oedema hyperintense; FLAIR CSF suppressed (dark), oedema brightest.
CONTRASTS: dict[str, Contrast] = {
    "t1": Contrast(csf=None, gm=None, wm=None, necrotic=0.30, enhancing=0.70, oedema=0.76,
                   texture_power=1.0, scale=650.0),
    "t1ce": Contrast(csf=0.26, gm=0.70, wm=0.90, necrotic=0.24, enhancing=1.65, oedema=0.66,
                     texture_power=0.8, scale=900.0),
    "t2": Contrast(csf=1.0, gm=0.42, wm=0.30, necrotic=0.92, enhancing=0.62, oedema=0.74,
                   texture_power=-0.7, scale=1800.0),
    "flair": Contrast(csf=0.13, gm=0.56, wm=0.42, necrotic=0.42, enhancing=0.78, oedema=0.98,
                      texture_power=-0.5, scale=720.0),
}


@dataclass(frozen=True)
class Template:
    """Template fields in template voxel space, float32 ``(197, 233, 189)``, plus geometry.

    ``brain`` is 0/1; ``gm``, ``wm``, ``csf`` are probabilities; ``texture`` is ``T1 / fit`` inside
    the brain (clipped to [0.6, 1.6]) and 1 outside; ``t1_fit`` the mixture coefficients
    ``(a_csf, a_gm, a_wm)`` divided by ``a_wm``; ``affine`` the template voxel -> MNI mm affine.
    """

    brain: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    texture: np.ndarray
    t1_fit: tuple[float, float, float]
    affine: np.ndarray


@dataclass(frozen=True)
class SubjectSpec:
    """Everything that makes one synthetic subject (angles in degrees, lengths in mm).

    ``scale`` is the subject's brain size relative to the template along each axis (0.9 = 10% smaller).

    ``tumour_centre_mni`` is ``None`` for a lesion-free subject; otherwise the tumour is centred at
    the output voxel that samples the template closest to that MNI point.
    """

    seed: int
    rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    warp_mm: float = 3.0
    warp_spacing_mm: float = 40.0
    bias_strength: float = 0.12
    tumour_centre_mni: tuple[float, float, float] | None = None
    tumour_radius_mm: tuple[float, float, float] = (16.0, 14.0, 13.0)


@dataclass(frozen=True)
class Subject:
    """A synthesised subject on the BraTS grid.

    ``images``: sequence -> int16 ``(240, 240, 155)`` with the tumour; ``healthy``: the same without
    it (same pose, deformation and bias fields); ``labels``: uint8 BraTS 2021 codes (all zero when
    the spec has no tumour); ``affine``: `BRATS_AFFINE`.
    """

    images: dict[str, np.ndarray]
    healthy: dict[str, np.ndarray]
    labels: np.ndarray
    affine: np.ndarray


# --------------------------------------------------------------------------------------- template
def template_path(name: str) -> Path:
    """Path of the template file ``name`` (``t1``, ``gm`` or ``wm``) inside the installed nilearn.

    Raises `MedinvertError` when nilearn is not installed or the file is missing.
    """
    if name not in TEMPLATE_FILES:
        raise MedinvertError(f"unknown template map {name!r}; expected one of {sorted(TEMPLATE_FILES)}")
    try:
        root = importlib.resources.files("nilearn.datasets.data")
    except ModuleNotFoundError as exc:
        raise MedinvertError("regenerating sample data needs nilearn (pip install 'medinvert[data]')") from exc
    path = Path(str(root / TEMPLATE_FILES[name]))
    if not path.is_file():
        raise MedinvertError("template file missing from the installed nilearn package", path=path)
    return path


def load_template() -> Template:
    """Read the ICBM152 2009a T1 / GM / WM maps from nilearn and derive brain, CSF and texture."""
    import nibabel as nib

    images = {name: nib.load(str(template_path(name))) for name in TEMPLATE_FILES}
    affine = np.asarray(images["t1"].affine, dtype=np.float64)
    for name, image in images.items():
        if not np.allclose(image.affine, affine) or image.shape != images["t1"].shape:
            raise MedinvertError("template maps do not share one grid", path=template_path(name))
    # uint8 0..255 -> [0, 1]
    t1, gm, wm = (np.asarray(images[n].dataobj, dtype=np.float32) / np.float32(255.0) for n in ("t1", "gm", "wm"))
    # the template's own skull-stripping mask, with its narrow clefts (tentorium, sinuses) closed
    ball = np.sum(np.square(np.mgrid[-2:3, -2:3, -2:3]), axis=0) <= 4
    brain = (ndi.binary_closing(t1 > 0, structure=ball) | (t1 > 0)).astype(np.float32)
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    inside = brain > 0
    design = np.stack([csf[inside], gm[inside], wm[inside]], axis=1).astype(np.float64)
    coef, *_ = np.linalg.lstsq(design, t1[inside].astype(np.float64), rcond=None)
    fit = (csf * coef[0] + gm * coef[1] + wm * coef[2]).astype(np.float32)
    texture = np.ones_like(t1)
    texture[inside] = np.clip(t1[inside] / np.maximum(fit[inside], 1e-3), 0.6, 1.6)
    t1_fit = (float(coef[0] / coef[2]), float(coef[1] / coef[2]), 1.0)
    return Template(brain=brain, gm=gm, wm=wm, csf=csf, texture=texture, t1_fit=t1_fit, affine=affine)


# ---------------------------------------------------------------------------------- random fields
def _rng(seed: int, purpose: int) -> np.random.Generator:
    """An independent generator per (subject seed, purpose) pair."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(purpose)]))


def _bspline_matrix(n_out: int, n_ctrl: int) -> np.ndarray:
    """``(n_out, n_ctrl)`` uniform cubic B-spline weights spreading ``n_ctrl >= 4`` control points
    evenly over ``n_out`` samples (each row sums to 1)."""
    u = np.linspace(0.0, n_ctrl - 3.0, n_out)
    seg = np.minimum(np.floor(u).astype(np.int64), n_ctrl - 4)
    t = u - seg
    basis = np.stack([(1 - t) ** 3, 3 * t**3 - 6 * t**2 + 4, -3 * t**3 + 3 * t**2 + 3 * t + 1, t**3], axis=1) / 6.0
    weights = np.zeros((n_out, n_ctrl))
    rows = np.arange(n_out)
    for m in range(4):
        weights[rows, seg + m] = basis[:, m]
    return weights


def bspline_field(rng: np.random.Generator, shape: tuple[int, ...], spacing: float) -> np.ndarray:
    """Smooth zero-mean, unit-std random field of ``shape`` (float32).

    Control points ``~N(0, 1)`` every ``spacing`` voxels (at least 4 per axis), interpolated by a
    tensor-product cubic B-spline, then standardised over the field.
    """
    n_ctrl = [max(4, int(round(s / spacing)) + 3) for s in shape]
    field = rng.standard_normal(n_ctrl)
    for axis, (n_out, n_c) in enumerate(zip(shape, n_ctrl)):
        field = np.moveaxis(np.tensordot(_bspline_matrix(n_out, n_c), np.moveaxis(field, axis, 0), axes=1), 0, axis)
    field = field - field.mean()
    return (field / max(float(field.std()), 1e-12)).astype(np.float32)


# ------------------------------------------------------------------------------ pose and sampling
def _rotation(angles_deg: tuple[float, float, float]) -> np.ndarray:
    """``Rz @ Ry @ Rx`` for rotations about the x, y, z axes by the given angles (degrees)."""
    ax, ay, az = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def sampling_coordinates(spec: SubjectSpec, template_affine: np.ndarray,
                         shape: tuple[int, int, int] = BRATS_SHAPE, affine: np.ndarray = BRATS_AFFINE,
                         chunk: int = 16) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield ``(z_slice, coords)`` chunks: template voxel coordinates ``(3, X, Y, dz)`` (float64)
    sampled by output voxels ``[:, :, z_slice]`` (see the module docstring, step 2)."""
    warp_rng = _rng(spec.seed, 1)
    displacement = [spec.warp_mm * bspline_field(warp_rng, shape, spec.warp_spacing_mm) for _ in range(3)]
    linear = _rotation(spec.rotation_deg) @ np.diag(1.0 / np.asarray(spec.scale, dtype=np.float64))
    grid_centre = affine[:3, :3] @ _GRID_CENTRE_VOXEL + affine[:3, 3]
    # world -> template voxel, folded into one affine: vox = T (c_mni + shift + L (p - c_grid)) + u
    to_vox = np.linalg.inv(template_affine)
    mat = to_vox[:3, :3] @ linear @ affine[:3, :3]
    offset = to_vox[:3, :3] @ (_MNI_CENTRE + np.asarray(spec.shift_mm) - linear @ grid_centre) + to_vox[:3, 3] \
        + to_vox[:3, :3] @ linear @ affine[:3, 3]
    disp_vox = to_vox[:3, :3]  # displacement is in mm along template axes
    ii, jj = np.meshgrid(np.arange(shape[0], dtype=np.float64), np.arange(shape[1], dtype=np.float64), indexing="ij")
    for z0 in range(0, shape[2], chunk):
        zs = slice(z0, min(z0 + chunk, shape[2]))
        kk = np.arange(zs.start, zs.stop, dtype=np.float64)
        voxels = np.stack(np.broadcast_arrays(ii[..., None], jj[..., None], kk[None, None, :]))
        coords = np.tensordot(mat, voxels, axes=1) + offset[:, None, None, None]
        disp = np.stack([d[:, :, zs] for d in displacement]).astype(np.float64)
        coords += np.tensordot(disp_vox, disp, axes=1)
        yield zs, coords


def warp_fields(template: Template, spec: SubjectSpec) -> tuple[dict[str, np.ndarray], tuple[int, int, int]]:
    """Pull the template fields onto the BraTS grid for ``spec``.

    Returns ``(fields, centre)``: ``fields`` maps ``brain`` (0/1 after thresholding at 0.5), ``gm``,
    ``wm``, ``csf`` and ``texture`` to float32 ``(240, 240, 155)`` arrays; ``centre`` is the output
    voxel sampling the template closest to ``spec.tumour_centre_mni`` (``(-1, -1, -1)`` without one).
    """
    names = ("brain", "gm", "wm", "texture")
    sources = {"brain": template.brain, "gm": template.gm, "wm": template.wm, "texture": template.texture}
    fields = {name: np.zeros(BRATS_SHAPE, dtype=np.float32) for name in names}
    target = None
    if spec.tumour_centre_mni is not None:
        to_vox = np.linalg.inv(template.affine)
        target = to_vox[:3, :3] @ np.asarray(spec.tumour_centre_mni, dtype=np.float64) + to_vox[:3, 3]
    best = (np.inf, (-1, -1, -1))
    for zs, coords in sampling_coordinates(spec, template.affine):
        for name in names:
            cval = 1.0 if name == "texture" else 0.0
            fields[name][:, :, zs] = ndi.map_coordinates(sources[name], coords, order=1, mode="constant", cval=cval)
        if target is not None:
            dist = ((coords - target[:, None, None, None]) ** 2).sum(axis=0)
            flat = int(np.argmin(dist))
            if dist.flat[flat] < best[0]:
                i, j, k = np.unravel_index(flat, dist.shape)
                best = (float(dist.flat[flat]), (int(i), int(j), int(k) + zs.start))
    brain = (fields["brain"] >= 0.5).astype(np.float32)
    fields["brain"] = brain
    for name in ("gm", "wm"):
        fields[name] *= brain
    fields["csf"] = np.clip(brain - fields["gm"] - fields["wm"], 0.0, 1.0)
    fields["texture"] = np.where(brain > 0, fields["texture"], np.float32(1.0)).astype(np.float32)
    return fields, best[1]


# ----------------------------------------------------------------------------------------- tumour
def tumour_labels(rng: np.random.Generator, centre: tuple[int, int, int], radius_vox: tuple[float, float, float],
                  fields: dict[str, np.ndarray]) -> np.ndarray:
    """uint8 ``(240, 240, 155)`` BraTS 2021 labels of a blobby tumour around ``centre``.

    Necrotic core (1) inside an enhancing rim (4), surrounded by oedema (2) that spreads further
    in white matter; all of it inside brain tissue (``gm + wm > 0.35`` for oedema, the brain mask for
    the core).  See the module docstring, step 3.
    """
    shape = fields["brain"].shape
    radii = np.asarray(radius_vox, dtype=np.float64)
    half = np.ceil(2.6 * radii).astype(int) + 4
    lo = np.maximum(np.asarray(centre) - half, 0)
    hi = np.minimum(np.asarray(centre) + half + 1, shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    box_shape = tuple(int(b - a) for a, b in zip(lo, hi))
    n1, n2, n3 = (bspline_field(rng, box_shape, 9.0) for _ in range(3))
    axes = [np.arange(a, b, dtype=np.float64) - c for a, b, c in zip(lo, hi, centre)]
    gi, gj, gk = np.meshgrid(*axes, indexing="ij")
    rho = np.sqrt((gi / radii[0]) ** 2 + (gj / radii[1]) ** 2 + (gk / radii[2]) ** 2)
    g = rho + 0.22 * n1
    brain = fields["brain"][box] > 0
    tissue = (fields["gm"][box] + fields["wm"][box]) > 0.35
    core = (g < 1.0) & brain
    necrotic = core & (g < np.clip(0.62 + 0.1 * n2, 0.4, 0.78))
    oedema = (g < 1.5 + 0.5 * fields["wm"][box] + 0.3 * n3) & tissue & ~core
    # keep the lesion in one piece: the connected component holding the centre
    lesion, _ = ndi.label(core | oedema)
    keep = lesion == lesion[tuple(np.asarray(centre) - lo)]
    labels = np.zeros(shape, dtype=np.uint8)
    sub = np.zeros(box_shape, dtype=np.uint8)
    sub[oedema & keep] = LABELS_2021["oedema"]
    sub[core & keep] = LABELS_2021["enhancing"]
    sub[necrotic & keep] = LABELS_2021["necrotic"]
    labels[box] = sub
    return labels


#: Gaussian sigma (voxels) of each class's partial-volume blur: oedema fades out more gradually
_CLASS_SIGMA: dict[str, float] = {"necrotic": 0.7, "enhancing": 0.7, "oedema": 1.2}
#: kernel half-width in sigmas; scipy's radius is int(truncate * sigma + 0.5): 2 and 3 voxels here
_TRUNCATE = 2.5
#: no voxel farther than this (in voxels, chessboard distance) from a label is touched by the tumour
TUMOUR_REACH = max(int(_TRUNCATE * s + 0.5) for s in _CLASS_SIGMA.values())


def soft_class_weights(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Partial-volume weights per tumour class: Gaussian-smoothed one-hot masks (float32, same shape).

    Each weight is exactly 0 farther than `TUMOUR_REACH` voxels from its class; where the weights
    add up to more than 1 (at class borders, as the sigmas differ) they are rescaled to sum to 1.
    """
    weights = {name: ndi.gaussian_filter((labels == code).astype(np.float32), _CLASS_SIGMA[name], truncate=_TRUNCATE)
               for name, code in LABELS_2021.items()}
    total = weights["necrotic"] + weights["enhancing"] + weights["oedema"]
    excess = np.maximum(total, np.float32(1.0))
    return {name: (w / excess).astype(np.float32) for name, w in weights.items()}


# --------------------------------------------------------------------------------------- contrast
def render(contrast: Contrast, fields: dict[str, np.ndarray], bias: np.ndarray, t1_fit: tuple[float, float, float],
           weights: dict[str, np.ndarray] | None = None, heterogeneity: np.ndarray | None = None) -> np.ndarray:
    """int16 ``(240, 240, 155)`` image of one sequence (module docstring, step 4).

    ``bias`` is the multiplicative bias field, ``weights`` the tumour class weights (``None``: the
    lesion-free image), ``heterogeneity`` a relative modulation of the tumour signal (``1 + ...``).
    """
    m_csf, m_gm, m_wm = t1_fit if contrast.csf is None else (contrast.csf, contrast.gm, contrast.wm)
    csf, gm, wm = fields["csf"], fields["gm"], fields["wm"]
    texture = fields["texture"] ** np.float32(contrast.texture_power)
    mixture = (csf * m_csf + gm * m_gm + wm * m_wm) / np.maximum(csf + gm + wm, np.float32(0.05))
    signal = mixture * texture
    if weights is not None:
        total = weights["necrotic"] + weights["enhancing"] + weights["oedema"]
        lesion = (weights["necrotic"] * contrast.necrotic + weights["enhancing"] * contrast.enhancing
                  + weights["oedema"] * contrast.oedema) * texture
        if heterogeneity is not None:
            lesion = lesion * heterogeneity
        signal = signal * (1.0 - total) + lesion
    values = signal * bias * fields["brain"] * np.float32(contrast.scale)
    return np.clip(np.rint(values), 0, np.iinfo(np.int16).max).astype(np.int16)


def synthesize_subject(template: Template, spec: SubjectSpec) -> Subject:
    """Make one subject: warped tissue maps, tumour (if any), four sequences with and without it."""
    fields, centre = warp_fields(template, spec)
    labels = np.zeros(BRATS_SHAPE, dtype=np.uint8)
    weights = heterogeneity = None
    if spec.tumour_centre_mni is not None:
        labels = tumour_labels(_rng(spec.seed, 2), centre, spec.tumour_radius_mm, fields)
        weights = soft_class_weights(labels)
        heterogeneity = 1.0 + 0.08 * bspline_field(_rng(spec.seed, 3), BRATS_SHAPE, 12.0)
    bias_rng = _rng(spec.seed, 4)
    images: dict[str, np.ndarray] = {}
    healthy: dict[str, np.ndarray] = {}
    for name in SEQUENCES:
        bias = np.exp(np.float32(spec.bias_strength) * bspline_field(bias_rng, BRATS_SHAPE, 60.0)).astype(np.float32)
        healthy[name] = render(CONTRASTS[name], fields, bias, template.t1_fit)
        images[name] = healthy[name] if weights is None else render(
            CONTRASTS[name], fields, bias, template.t1_fit, weights, heterogeneity)
    return Subject(images=images, healthy=healthy, labels=labels, affine=BRATS_AFFINE.copy())
