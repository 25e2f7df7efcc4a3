"""Pictures a clinician can read: right way up, radiological, in colour, no strips; golden images."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_specs.imaging.imageio import PICTURE_AFFINE
from site_agent.clinic.picture import colour_of, mask_views, save_mask_picture

GOLDEN = Path(__file__).parent / "golden"
RAS = np.diag([2.0, 2.0, 4.0, 1.0])


def _quadrant_colour(rgb: np.ndarray, top: bool, left: bool) -> np.ndarray:
    h, w = rgb.shape[0] // 2, rgb.shape[1] // 2
    part = rgb[:h] if top else rgb[h:]
    part = part[:, :w] if left else part[:, w:]
    return part.reshape(-1, 3)


def _has_colour(pixels: np.ndarray, k: int) -> bool:
    return bool((pixels.reshape(-1, 3) == np.asarray(colour_of(k))).all(axis=1).any())


def _right_anterior_superior_volume() -> tuple[np.ndarray, np.ndarray]:
    """A RAS volume (x: left->right, y: posterior->anterior) with a mark right, anterior, high."""
    image = np.zeros((1, 16, 16, 12), np.float32)
    mask = np.zeros((16, 16, 12), np.int32)
    mask[11:15, 11:15, 7:10] = 1  # right (high x), anterior (high y), superior (high z)
    mask[6:9, 1:4, 2:5] = 2  # posterior (low y) on the midline: the spine
    image[0] = mask * 50.0
    return image, mask


def test_a_photograph_is_shown_the_right_way_up_and_in_colour() -> None:
    rgb = np.zeros((3, 40, 30), np.float32)  # (C, x, y): 40 columns, 30 rows
    rgb[0] = 200.0  # red everywhere
    mask = np.zeros((40, 30), np.int32)
    mask[2:10, 2:8] = 1  # near column 0, row 0: the top left of the photograph
    (view,) = mask_views(rgb, mask, PICTURE_AFFINE, picture=True)
    assert view.name == "image"
    assert _has_colour(_quadrant_colour(view.rgb, top=True, left=True), 1)
    assert not _has_colour(_quadrant_colour(view.rgb, top=False, left=False), 1)
    corner = view.rgb[-1, -1]
    assert corner[0] == 200 and corner[1] == corner[2] == 0  # red, not grey
    assert view.rgb.shape[1] / view.rgb.shape[0] == pytest.approx(40 / 30)  # columns x rows


def test_volumes_are_radiological_whatever_the_stored_axis_order() -> None:
    image, mask = _right_anterior_superior_volume()
    views = {v.name.split()[0]: v.rgb for v in mask_views(image, mask, RAS)}
    assert set(views) == {"axial", "coronal", "sagittal"}
    # Axial: the patient's right on the viewer's left, anterior at the top, spine at the bottom.
    assert _has_colour(_quadrant_colour(views["axial"], top=True, left=True), 1)
    assert _has_colour(_quadrant_colour(views["sagittal"], top=True, left=True), 1)
    spine_only = np.where(mask == 2, 2, 0)
    axial = mask_views(image, spine_only, RAS)[0].rgb
    assert _has_colour(axial[axial.shape[0] // 2 :], 2)  # the spine at the bottom
    assert not _has_colour(axial[: axial.shape[0] // 2], 2)
    # Coronal: superior at the top, right on the left; sagittal: anterior on the left.
    assert _has_colour(_quadrant_colour(views["coronal"], top=True, left=True), 1)
    # The same scan stored left-right and front-back flipped (as DICOM's LPS order) looks the same.
    lps = RAS.copy()
    lps[:2] *= -1
    lps[0, 3], lps[1, 3] = 30.0, 30.0
    flipped = mask_views(image[:, ::-1, ::-1], mask[::-1, ::-1], lps)
    for mine, theirs in zip(mask_views(image, mask, RAS), flipped, strict=True):
        np.testing.assert_array_equal(mine.rgb, theirs.rgb)


def test_views_go_through_the_busiest_slice_and_thin_volumes_draw_no_strips() -> None:
    image = np.random.default_rng(0).normal(size=(1, 20, 20, 9)).astype(np.float32)
    mask = np.zeros((20, 20, 9), np.int32)
    mask[5:8, 5:8, 2] = 1
    mask[4:15, 4:15, 6] = 1  # slice 7 holds the most
    names = [v.name for v in mask_views(image, mask, RAS)]
    assert names[0] == "axial 7/9"
    thin = mask_views(image[..., :2], mask[..., 5:7], RAS)
    assert [v.name.split()[0] for v in thin] == ["axial"]


def test_the_picture_file_has_a_legend_and_native_size(tmp_path: Path) -> None:
    image, mask = _right_anterior_superior_volume()
    save_mask_picture(
        image, mask, tmp_path / "p.png", class_names={1: "lesion", 2: "spine"}, affine=RAS
    )
    with Image.open(tmp_path / "p.png") as pic:
        assert pic.mode == "RGB"
        pixels = np.asarray(pic).reshape(-1, 3)
    for k in (1, 2):
        assert _has_colour(pixels, k)
    big = np.zeros((1, 600, 500), np.float32)
    big_mask = np.zeros((600, 500), np.int32)
    save_mask_picture(big, big_mask, tmp_path / "big.png", class_names={}, affine=np.eye(4))
    with Image.open(tmp_path / "big.png") as pic:
        assert pic.size[0] >= 600  # not shrunk into a fixed figure


@pytest.mark.parametrize("case", ["photo", "volume"])
def test_golden_images(case: str) -> None:
    if case == "photo":
        rgb = np.zeros((3, 24, 16), np.float32)
        rgb[0], rgb[1] = np.linspace(0, 255, 24)[:, None], np.linspace(0, 255, 16)[None, :]
        mask = np.zeros((24, 16), np.int32)
        mask[3:12, 2:7] = 1
        mask[14:20, 9:14] = 2
        views = mask_views(rgb, mask, PICTURE_AFFINE, picture=True)
    else:
        image, mask = _right_anterior_superior_volume()
        views = mask_views(image, mask, RAS)
    height = max(v.rgb.shape[0] for v in views)
    strip = np.concatenate(
        [np.pad(v.rgb, ((0, height - v.rgb.shape[0]), (0, 2), (0, 0))) for v in views], axis=1
    )
    golden = GOLDEN / f"{case}.png"
    if os.environ.get("FEDSEG_UPDATE_GOLDEN"):
        GOLDEN.mkdir(exist_ok=True)
        Image.fromarray(strip).save(golden)
    np.testing.assert_array_equal(strip, np.asarray(Image.open(golden)))


def test_outlines_erode_as_scipy_does() -> None:
    from scipy.ndimage import binary_erosion

    from site_agent.clinic.picture import _erode

    rng = np.random.default_rng(3)
    for iterations in (1, 2, 3):
        region = rng.random((37, 41)) > 0.3
        region[5:30, 8:35] = True
        want = binary_erosion(region, iterations=iterations, border_value=0)
        np.testing.assert_array_equal(_erode(region, iterations), want)
