"""SMIRK's crop policy: exact inverse, corner mapping, parity with a float64 reference warp."""

import cv2
import numpy as np
import pytest

from smirk_edge.crop import (CROP_SIZE, crop_from_box, crop_from_landmarks, preprocess, square_from_box, to_tensor,
                             transform_from_square)
from smirk_edge.errors import InputError


def _reference_warp(image: np.ndarray, inverse: np.ndarray, size: int) -> np.ndarray:
    """A float64 bilinear warp written independently (skimage's order=1, constant 0 borders)."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    sx = inverse[0, 0] * xs + inverse[0, 1] * ys + inverse[0, 2]
    sy = inverse[1, 0] * xs + inverse[1, 1] * ys + inverse[1, 2]
    x0, y0 = np.floor(sx).astype(int), np.floor(sy).astype(int)
    fx, fy = sx - x0, sy - y0
    img = image.astype(np.float64)
    H, W = img.shape[:2]

    def at(yy, xx):
        ok = (xx >= 0) & (xx < W) & (yy >= 0) & (yy < H)
        out = np.zeros(yy.shape + img.shape[2:])
        out[ok] = img[yy[ok], xx[ok]]
        return out

    w = lambda a: a[..., None]  # noqa: E731
    return (at(y0, x0) * w((1 - fx) * (1 - fy)) + at(y0, x0 + 1) * w(fx * (1 - fy))
            + at(y0 + 1, x0) * w((1 - fx) * fy) + at(y0 + 1, x0 + 1) * w(fx * fy))


def test_square_follows_smirk_policy():
    centre, side = square_from_box([100, 50, 200, 190], scale=1.4)
    np.testing.assert_allclose(centre, [150, 120])
    assert side == int((100 + 140) / 2 * 1.4)


def test_corners_map_like_the_reference_similarity():
    t = crop_from_box([100, 50, 200, 190], scale=1.4)
    centre, side = square_from_box([100, 50, 200, 190], 1.4)
    src = np.array([[centre[0] - side / 2, centre[1] - side / 2], [centre[0] - side / 2, centre[1] + side / 2],
                    [centre[0] + side / 2, centre[1] - side / 2]])
    dst = np.array([[0, 0], [0, CROP_SIZE - 1], [CROP_SIZE - 1, 0]], np.float64)
    np.testing.assert_allclose(t.to_crop(src), dst, atol=1e-9)
    np.testing.assert_allclose(t.matrix, cv2.getAffineTransform(src.astype(np.float32), dst.astype(np.float32)),
                               atol=1e-4)


@pytest.mark.parametrize("angle", [0.0, 17.0, -40.0])
def test_round_trip_is_exact(angle):
    rng = np.random.default_rng(0)
    t = transform_from_square(np.array([640.3, 355.9]), 311, angle_deg=angle)
    crop_pts = rng.uniform(0, CROP_SIZE, (105, 2))
    back = t.to_crop(t.to_image(crop_pts))
    assert np.abs(back - crop_pts).max() < 0.01
    img_pts = rng.uniform(0, 1280, (68, 2))
    assert np.abs(t.to_image(t.to_crop(img_pts)) - img_pts).max() < 0.01


def test_landmark_crop_centres_the_face():
    lm = np.array([[300, 200], [420, 200], [360, 350], [310, 330]], np.float64)
    t = crop_from_landmarks(lm, scale=1.6)
    c = t.to_crop([[(300 + 420) / 2, (200 + 350) / 2]])[0]
    np.testing.assert_allclose(c, [(CROP_SIZE - 1) / 2] * 2, atol=1e-9)


def test_warp_matches_float64_reference_on_a_gradient_image():
    H, W = 480, 640
    yy, xx = np.mgrid[0:H, 0:W]
    image = np.stack([(xx * 0.3) % 256, (yy * 0.5) % 256, ((xx + yy) * 0.2) % 256], -1).astype(np.uint8)
    t = transform_from_square(np.array([320.0, 240.0]), 300, angle_deg=11.0)
    ours = t.warp(image).astype(np.float64)
    ref = _reference_warp(image, t.inverse_matrix, CROP_SIZE)
    diff = np.abs(ours - ref)[2:-2, 2:-2]
    assert diff.mean() < 0.5 and diff.max() < 3.0


def test_warp_matches_reference_on_a_real_photo(shared_data):
    path = sorted((shared_data / "photos").glob("*.jpg"))[0]
    image = cv2.imread(str(path))
    h, w = image.shape[:2]
    t = crop_from_box([w * 0.3, h * 0.3, w * 0.6, h * 0.7], scale=1.4)
    diff = np.abs(t.warp(image).astype(np.float64) - _reference_warp(image, t.inverse_matrix, CROP_SIZE))
    assert diff.mean() < 0.5


def test_to_tensor_layout():
    crop = np.zeros((CROP_SIZE, CROP_SIZE, 3), np.uint8)
    crop[..., 0] = 255  # blue in BGR
    x = to_tensor(crop)
    assert x.shape == (1, 3, CROP_SIZE, CROP_SIZE) and x.dtype == np.float32
    assert x[0, 2].min() == 1.0 and x[0, 0].max() == 0.0  # RGB order, [0, 1]


def test_to_tensor_equals_the_plain_float_conversion():
    """Every uint8 level and a float batch: the same float32 values as RGB-reversing, transposing
    and scaling by 1/255 in float32 (what every engine's reference expects)."""
    rng = np.random.default_rng(1)
    crops = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    crops[1, :16, :16] = levels[..., None]
    want = crops[..., ::-1].transpose(0, 3, 1, 2).astype(np.float32) * np.float32(1 / 255)
    got = to_tensor(crops)
    assert got.flags.c_contiguous and got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    floats = rng.random((2, 16, 16, 3)).astype(np.float32)
    np.testing.assert_array_equal(to_tensor(floats), floats[..., ::-1].transpose(0, 3, 1, 2))


def test_preprocess_batches_faces():
    image = np.full((300, 400, 3), 128, np.uint8)
    ts = [crop_from_box([10, 10, 110, 130]), crop_from_box([200, 50, 330, 220])]
    x = preprocess(image, ts)
    assert x.shape == (2, 3, CROP_SIZE, CROP_SIZE)
    assert preprocess(image, []).shape == (0, 3, CROP_SIZE, CROP_SIZE)


def test_bad_boxes_raise_input_error():
    with pytest.raises(InputError):
        crop_from_box([10, 10, 5, 20])
    with pytest.raises(InputError):
        crop_from_box([0, 0, np.nan, 5])
    with pytest.raises(InputError):
        crop_from_landmarks(np.zeros((1, 2)))


def test_box_mappings():
    from smirk_edge.crop import LANDMARK105_TO_LANDMARK_BOX, BoxMapping

    m = BoxMapping(0.1, -0.05, 1.2, 1.5)
    np.testing.assert_allclose(m.apply([0, 0, 100, 100]), [50 + 10 - 60, 50 - 5 - 75, 50 + 10 + 60, 50 - 5 + 75])
    frontal = LANDMARK105_TO_LANDMARK_BOX.apply([0, 0, 100, 120], 0.0)
    turned = LANDMARK105_TO_LANDMARK_BOX.apply([0, 0, 100, 120], 30.0)
    # turning toward the image right moves the 478-box centre left of the 105-box centre
    assert (turned[0] + turned[2]) / 2 < (frontal[0] + frontal[2]) / 2
    assert turned[2] - turned[0] > frontal[2] - frontal[0]


def test_head_pose_is_reported_in_the_image_frame_for_rotated_crops():
    from smirk_edge.crop import transform_from_square
    from smirk_edge.results import crop_roll_degrees, head_pose_degrees

    t = transform_from_square(np.array([100.0, 100.0]), 80.0, 224, 30.0)
    assert crop_roll_degrees(t.matrix) == pytest.approx(30.0)
    pose = np.array([0.0, 0.0, np.radians(-10.0)], np.float32)  # rolled 10 deg clockwise within the crop
    np.testing.assert_allclose(head_pose_degrees(pose), [0, 0, -10], atol=1e-3)
    np.testing.assert_allclose(head_pose_degrees(pose, crop_roll_degrees(t.matrix)), [0, 0, 20], atol=1e-3)


def test_batched_head_poses_and_landmark_boxes_equal_the_per_face_formulas():
    """refine and the tracker compute every face at once; the per-face definitions are the reference."""
    from smirk_edge.crop import LANDMARK105_TO_LANDMARK_BOX
    from smirk_edge.face_model.model import rodrigues, yaw_degrees
    from smirk_edge.pipeline import head_poses, landmark_boxes
    from smirk_edge.results import head_pose_degrees
    from smirk_edge.rotation import crop_roll_degrees

    rng = np.random.default_rng(0)
    pose = rng.normal(0, 0.5, (40, 3)).astype(np.float32)
    mats = []
    for i in range(40):  # every other crop rotated in the image
        a, k = rng.uniform(-1, 1) * (i % 2), rng.uniform(0.5, 2)
        mats.append(np.array([[k * np.cos(a), -k * np.sin(a), rng.normal() * 10],
                              [k * np.sin(a), k * np.cos(a), rng.normal() * 10]]))
    ref = np.array([head_pose_degrees(p, crop_roll_degrees(m)) for p, m in zip(pose, mats)], np.float32)
    np.testing.assert_allclose(head_poses(pose, mats), ref, atol=1e-4)
    lm = rng.uniform(0, 500, (40, 105, 2))
    yaws = yaw_degrees(rodrigues(pose))
    ref = np.array([LANDMARK105_TO_LANDMARK_BOX.apply(np.r_[p.min(0), p.max(0)], y) for p, y in zip(lm, yaws)])
    np.testing.assert_allclose(landmark_boxes(lm, pose), ref, atol=1e-4)
    assert head_poses(pose[:0], []).shape == (0, 3) and landmark_boxes(lm[:0], pose[:0]).shape == (0, 4)


def test_crop_transforms_of_a_batch_equal_crop_from_box_face_by_face():
    """The upright crops of a batch are computed together, bit for bit those of crop_from_box; rolled
    faces keep their rotated crop; a bad box raises the one-box error."""
    from smirk_edge.crop import crop_from_box, square_from_box, transform_from_square
    from smirk_edge.errors import InputError
    from smirk_edge.pipeline import CropPolicy, crop_transforms

    rng = np.random.default_rng(1)
    xy = rng.uniform(-50, 600, (300, 2))
    boxes = np.c_[xy, xy + rng.uniform(0.8, 300, (300, 2))]
    rolls = rng.uniform(-60, 60, 300)
    policy = CropPolicy()
    got = crop_transforms(boxes, rolls, policy)
    for t, box, roll in zip(got, boxes, rolls):
        ref = crop_from_box(box, policy.scale, policy.size) if abs(roll) < policy.align_roll else \
            transform_from_square(*square_from_box(box, policy.scale), policy.size, float(roll))
        assert np.array_equal(t.matrix, ref.matrix) and t.size == ref.size
    assert len(crop_transforms(boxes[:0], None, policy)) == 0
    with pytest.raises(InputError, match="x1 > x0"):
        crop_transforms(np.array([[0, 0, 10, 10], [5, 5, 5, 9.0]]), None, policy)
    with pytest.raises(InputError, match="empty crop"):
        crop_transforms(np.array([[0, 0, 0.5, 0.5]]), None, policy)
