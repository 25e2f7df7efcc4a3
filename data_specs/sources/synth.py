"""Synthetic hospitals: nested organ-like label maps imaged by a different "scanner" per site.

Each site draws one scanner (intensity curve, contrast, noise, bias field, blur, acquisition
resolution, voxel spacing and origin), so sites are non-IID the way hospitals are. The anatomy
echoes ACDC: a cavity inside a wall ring with an adjacent blob, smoothly deformed, at a random
pose and size. Everything is drawn from ``numpy.random.SeedSequence([seed, kind, site, case])``
and written with byte-stable gzip, so one seed gives the same bytes.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from data_specs.constants import SplitName
from data_specs.errors import DataSpecError
from data_specs.files import atomic_write_text
from data_specs.imaging.imageio import write_mask_nifti, write_nifti
from data_specs.manifests.manifest import CaseEntry, DatasetManifest, assign_splits, save_manifest

_LABEL_NAMES = {
    1: {"1": "organ"},
    2: {"1": "wall", "2": "cavity"},
    3: {"1": "blob", "2": "wall", "3": "cavity"},  # the ACDC order: RV, myocardium, LV
}
_SITES, _OUTSIDE = 0, 1  # seed-stream kinds


@dataclass(frozen=True)
class Scanner:
    """How one site's scanner turns tissue into intensities.

    Args:
        gamma: intensity curve exponent. Example: ``0.8``.
        contrast: gain on tissue intensities. Example: ``1.1``.
        brightness: offset before noise, fraction of full scale. Example: ``0.05``.
        noise: Rician noise level, fraction of full scale. Example: ``0.04``.
        bias: strength of the smooth multiplicative bias field. Example: ``0.3``.
        blur: Gaussian blur sigma in voxels. Example: ``0.7``.
        resolution: acquisition down-sampling factor (1 = full resolution). Example: ``1.5``.
        spacing: voxel size in mm per axis. Example: ``(1.2, 1.2)``.
        origin: world position of voxel 0 in mm. Example: ``(-20.0, 13.5)``.
        flip_x: stores the first axis right-to-left (3D only). Example: ``False``.
        full_scale: scanner units of the brightest tissue. Example: ``1000.0``.
        invert: contrast inversion (bright tissue dark), as another sequence or camera
            would give. Default ``False``.
    """

    gamma: float
    contrast: float
    brightness: float
    noise: float
    bias: float
    blur: float
    resolution: float
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    flip_x: bool
    full_scale: float
    invert: bool = False

    def affine(self, size: int) -> np.ndarray:
        """4x4 RAS affine of a ``size``-voxel cube (or square) from this scanner."""
        dims = len(self.spacing)
        affine = np.eye(4)
        affine[:dims, :dims] = np.diag(self.spacing)
        affine[:dims, 3] = self.origin
        if self.flip_x:
            affine[0, 0] = -self.spacing[0]
            affine[0, 3] = self.origin[0] + self.spacing[0] * (size - 1)
        return affine


def draw_scanner(rng: np.random.Generator, dims: int) -> Scanner:
    """Draw one site's scanner.

    Args:
        rng: the site's generator. Example: ``np.random.default_rng(0)``.
        dims: 2 or 3.
    """
    in_plane = float(rng.uniform(0.7, 1.6))
    spacing = (in_plane, in_plane) if dims == 2 else (in_plane, in_plane, float(rng.uniform(1, 3)))
    return Scanner(
        gamma=float(rng.uniform(0.6, 1.6)),
        contrast=float(rng.uniform(0.7, 1.3)),
        brightness=float(rng.uniform(0.0, 0.15)),
        noise=float(rng.uniform(0.01, 0.08)),
        bias=float(rng.uniform(0.0, 0.5)),
        blur=float(rng.uniform(0.0, 1.2)),
        resolution=float(rng.choice([1.0, 1.0, 1.5, 2.0])),
        spacing=tuple(round(s, 4) for s in spacing),
        origin=tuple(round(float(o), 2) for o in rng.uniform(-60, 60, size=dims)),
        flip_x=bool(dims == 3 and rng.random() < 0.5),
        full_scale=float(rng.choice([255.0, 1000.0, 4095.0])),
    )


def strong_shift(scanner: Scanner) -> Scanner:
    """The same scanner with a strong shift: another intensity curve, contrast inversion,
    heavy blur and a coarse acquisition resolution (an outside hospital unlike any site)."""
    return replace(
        scanner,
        gamma=2.4 if scanner.gamma < 1.0 else 0.45,
        invert=True,
        blur=max(scanner.blur, 1.6),
        resolution=3.0,
    )


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], cells: int = 4) -> np.ndarray:
    from scipy.ndimage import zoom

    coarse = rng.standard_normal((cells,) * len(shape))
    field = zoom(coarse, [s / cells for s in shape], order=3, mode="mirror")
    return (field - field.mean()) / (field.std() + 1e-8)


def _rotation(rng: np.random.Generator, dims: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((dims, dims)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def synth_case(
    rng: np.random.Generator, scanner: Scanner, *, size: int, dims: int, classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """One image and label map.

    Args:
        rng: the case's generator.
        scanner: the site's scanner.
        size: voxels per axis. Example: ``32``.
        dims: 2 or 3.
        classes: foreground classes, 1 to 3. Example: ``3``.

    Returns:
        ``(image float32, label uint8)``, both of shape ``(size,) * dims``.
    """
    from scipy.ndimage import gaussian_filter

    shape = (size,) * dims
    grid = np.indices(shape, dtype=np.float64)
    deform = 0.12 * _smooth_field(rng, shape)

    def distance(centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
        rel = np.tensordot(_rotation(rng, dims).T, grid - centre.reshape((dims,) + (1,) * dims), 1)
        return np.sqrt(sum((rel[i] / radii[i]) ** 2 for i in range(dims))) + deform

    centre = size / 2 + rng.uniform(-0.1, 0.1, dims) * size
    radii = size * rng.uniform(0.09, 0.16, dims)
    thickness = rng.uniform(0.35, 0.6)
    d_cavity = distance(centre, radii)
    cavity = d_cavity < 1
    wall = (d_cavity >= 1) & (d_cavity < 1 + thickness)
    direction = rng.standard_normal(dims)
    direction /= np.linalg.norm(direction)
    blob_radii = size * rng.uniform(0.07, 0.12, dims)
    blob_centre = centre + direction * (radii.max() * (1 + thickness) + 0.6 * blob_radii.max())
    blob = (distance(blob_centre, blob_radii) < 1) & ~cavity & ~wall
    body = distance(centre, np.full(dims, size * rng.uniform(0.38, 0.48))) < 1

    regions = {1: [wall | cavity], 2: [wall, cavity], 3: [blob, wall, cavity]}[classes]
    label = np.zeros(shape, dtype=np.uint8)
    for value, region in enumerate(regions, start=1):
        label[region] = value
    tissue = np.where(body, 0.25, 0.02)
    for region, level in ((blob, 0.7), (wall, 0.4), (cavity, 0.9)):
        tissue = np.where(region, level + rng.uniform(-0.05, 0.05), tissue)
    tissue = tissue + 0.03 * _smooth_field(rng, shape, cells=max(4, size // 4))
    return apply_scanner(rng, scanner, gaussian_filter(tissue, 0.6)), label


def apply_scanner(rng: np.random.Generator, scanner: Scanner, tissue: np.ndarray) -> np.ndarray:
    """Image clean tissue intensities (about 0..1) with a scanner.

    Args:
        rng: the case's generator (noise and bias field).
        scanner: the site's scanner.
        tissue: clean intensities. Example: ``np.full((32, 32), 0.5)``.

    Returns:
        float32 intensities in scanner units, same shape.
    """
    from scipy.ndimage import gaussian_filter, zoom

    shape = tissue.shape
    image = tissue
    if scanner.resolution > 1:
        low = zoom(image, 1 / scanner.resolution, order=1)
        image = zoom(low, [a / b for a, b in zip(shape, low.shape, strict=True)], order=1)
    if scanner.blur > 0:
        image = gaussian_filter(image, scanner.blur)
    image = image * np.exp(scanner.bias * _smooth_field(rng, shape, cells=3) / 2)
    image = np.clip(image, 0, None) ** scanner.gamma
    if scanner.invert:
        image = np.clip(1.0 - image, 0, None)
    image = scanner.brightness + scanner.contrast * image
    n1, n2 = rng.standard_normal((2, *shape)) * scanner.noise
    image = np.sqrt((image + n1) ** 2 + n2**2)  # Rician, as magnitude MRI
    return (image * scanner.full_scale).astype(np.float32)


def write_site(
    folder: Path,
    *,
    site_id: str,
    scanner: Scanner,
    seeds: list[np.random.SeedSequence],
    size: int,
    dims: int,
    classes: int,
    split_seed: int = 0,
    tint: tuple[float, float, float] | None = None,
) -> Path:
    """Write one synthetic hospital: ``imagesTr/``, ``labelsTr/``, ``scanner.json``, ``dataset.json``.

    Args:
        folder: the site folder (created). Example: ``out / "site_1"``.
        site_id: the manifest's site id. Example: ``"site_1"``.
        scanner: the site's scanner.
        seeds: one seed sequence per case.
        size: voxels per axis. Example: ``32``.
        dims: 2 or 3.
        classes: foreground classes, 1 to 3.
        split_seed: seed of the 60/20/20 split. Default 0.
        tint: RGB gains: write 8-bit RGB PNG photographs (2D only) whose colour channels are
            the image times these gains, instead of NIfTI. Default None (NIfTI).
            Example: ``(1.0, 0.6, 0.3)``.

    Returns:
        The manifest path.
    """
    for sub in ("imagesTr", "labelsTr"):
        shutil.rmtree(folder / sub, ignore_errors=True)
        (folder / sub).mkdir(parents=True)
    affine = scanner.affine(size)
    entries = []
    for i, seq in enumerate(seeds):
        image, label = synth_case(
            np.random.default_rng(seq), scanner, size=size, dims=dims, classes=classes
        )
        if tint is None:
            name = f"case_{i:03d}.nii.gz"
            write_nifti(image, affine, folder / "imagesTr" / name)
            write_mask_nifti(label, affine, folder / "labelsTr" / name)
        else:
            name = f"case_{i:03d}.png"
            _write_rgb(image / scanner.full_scale, tint, label, folder, name)
        entries.append(CaseEntry(image=f"imagesTr/{name}", label=f"labelsTr/{name}"))
    splits = assign_splits([str(i) for i in range(len(entries))], seed=split_seed)
    atomic_write_text(folder / "scanner.json", json.dumps(asdict(scanner), indent=2) + "\n")
    manifest = DatasetManifest(
        name=f"synthetic {site_id}",
        description=f"synthetic {dims}D hospital, {len(entries)} cases, its own scanner",
        site_id=site_id,
        spatial_dims=dims,  # type: ignore[arg-type]
        modality={"0": "MRI"} if tint is None else {"0": "R", "1": "G", "2": "B"},
        labels={"0": "background", **_LABEL_NAMES[classes]},
        training=[entries[i] for i in splits[SplitName.TRAINING]],
        validation=[entries[i] for i in splits[SplitName.VALIDATION]],
        test=[entries[i] for i in splits[SplitName.TEST]],
    )
    save_manifest(manifest, folder / "dataset.json")
    return folder / "dataset.json"


def _write_rgb(
    image: np.ndarray,
    tint: tuple[float, float, float],
    label: np.ndarray,
    folder: Path,
    name: str,
) -> None:
    """A 2D image (about 0..1) as an RGB PNG photograph and its mask as a grey PNG (x, y order
    of the arrays becomes PIL's column, row order, as ``read_image`` reads it back)."""
    import io

    from PIL import Image

    from data_specs.files import atomic_write_bytes

    rgb = np.stack([np.clip(image * g, 0, 1) for g in tint], axis=-1)
    pictures = (
        (
            Image.fromarray((rgb.transpose(1, 0, 2) * 255).round().astype(np.uint8), "RGB"),
            "imagesTr",
        ),
        (Image.fromarray(label.T.astype(np.uint8), "L"), "labelsTr"),
    )
    for picture, sub in pictures:
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        atomic_write_bytes(folder / sub / name, buffer.getvalue())


def synthesize(
    out: str | Path,
    *,
    sites: int,
    cases: int,
    dims: int,
    seed: int = 0,
    size: int = 32,
    classes: int = 3,
    outside: int = 0,
    overwrite: bool = False,
    rgb: bool = False,
    outside_shift: bool = False,
) -> list[Path]:
    """Write ``out/site_<i>/`` (i = 1..sites) and ``out/outside_<j>/`` (j = 1..outside).

    Outside hospitals take no part in training; their manifests still carry labels so
    adaptation can be scored. Splits are 60/20/20 with at least one case each.

    Args:
        out: output folder (created). Example: ``"demo_data"``.
        sites: federated sites. Example: ``3``.
        cases: cases per site, at least 3. Example: ``20``.
        dims: 2 or 3.
        seed: seed of everything. Default 0.
        size: voxels per axis, 16 to 512. Default 32.
        classes: foreground classes, 1 to 3 (out_channels = classes + 1). Default 3.
        outside: extra outside hospitals. Default 0.
        overwrite: replace existing synthetic sites. Default False.
        rgb: write 2D RGB PNG photographs, each site with its own colour cast (a camera),
            instead of NIfTI. Default False.
        outside_shift: give outside hospitals a strong shift (``strong_shift``: intensity
            curve, contrast inversion, blur, resolution). Default False.

    Returns:
        Manifest paths, sites first, then outside hospitals.

    Raises:
        DataSpecError: an argument is out of range or a site exists without ``overwrite``;
            nothing is written then.
    """
    checks = [
        (sites >= 1, "sites >= 1", sites),
        (cases >= 3, "cases >= 3 (one per split)", cases),
        (dims in (2, 3), "dims 2 or 3", dims),
        (16 <= size <= 512, "size in 16..512", size),
        (1 <= classes <= 3, "classes in 1..3", classes),
        (outside >= 0, "outside >= 0", outside),
        (not rgb or dims == 2, "dims 2 for RGB photographs", dims),
    ]
    for ok, expected, found in checks:
        if not ok:
            raise DataSpecError(f"synth: expected {expected}, found {found}")
    out = Path(out)
    plan = [(f"site_{i + 1}", _SITES, i) for i in range(sites)]
    plan += [(f"outside_{j + 1}", _OUTSIDE, j) for j in range(outside)]
    existing = [name for name, _, _ in plan if (out / name / "dataset.json").exists()]
    if existing and not overwrite:
        raise DataSpecError(
            f"synth: expected no synthetic sites in {out}, found {existing}; pass overwrite"
        )
    paths = []
    for name, kind, index in plan:
        site_seq = np.random.SeedSequence([seed, kind, index])
        scanner_seq, *case_seqs = site_seq.spawn(cases + 1)
        scanner = draw_scanner(np.random.default_rng(scanner_seq), dims)
        if outside_shift and kind == _OUTSIDE:
            scanner = strong_shift(scanner)
        tint = None
        if rgb:  # its own stream: grey sites keep the bytes they had
            cast = np.random.default_rng([seed, kind, index, 7]).uniform(0.35, 1.0, 3)
            tint = (float(cast[0]), float(cast[1]), float(cast[2]))
        paths.append(
            write_site(
                out / name,
                site_id=name,
                scanner=scanner,
                seeds=case_seqs,
                size=size,
                dims=dims,
                classes=classes,
                split_seed=seed * 1009 + kind * 101 + index,
                tint=tint,
            )
        )
    return paths
