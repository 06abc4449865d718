"""Tests of smirk_edge.detector (BlazeFace): anchors, decoding, NMS, letterbox, shipped ONNX
models, recall on the real photos of ../shared/data (skipped when absent), input errors."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest

from smirk_edge.detector import (KEYPOINT_NAMES, MODELS, Detections, FaceDetector,
                                 decode, generate_anchors, hard_nms, iou, letterbox,
                                 model_path, weighted_nms)
from smirk_edge.errors import InputError


def _data_dir() -> Path:
    env = os.environ.get("SMIRK_EDGE_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"


PHOTOS = _data_dir() / "photos"
needs_photos = pytest.mark.skipif(
    not any(PHOTOS.glob("*.xml")),
    reason=f"real photos not found at {PHOTOS} (set SMIRK_EDGE_DATA to the shared data folder)")


# ---------------------------------------------------------------------------------- anchors
def test_anchor_counts_match_mediapipe_options():
    assert generate_anchors(MODELS["short"]).shape == (896, 2)
    assert generate_anchors(MODELS["full"]).shape == (2304, 2)
    assert MODELS["short"].num_anchors == 896


def test_short_anchor_layout():
    a = generate_anchors(MODELS["short"])
    # stride 8: 16x16 grid, 2 anchors per cell, row-major (y, then x)
    np.testing.assert_allclose(a[0], [0.5 / 16, 0.5 / 16])
    np.testing.assert_allclose(a[1], a[0])
    np.testing.assert_allclose(a[2], [1.5 / 16, 0.5 / 16])
    np.testing.assert_allclose(a[32], [0.5 / 16, 1.5 / 16])
    np.testing.assert_allclose(a[511], [15.5 / 16, 15.5 / 16])
    # stride 16 (three layers share it): 8x8 grid, 6 anchors per cell
    np.testing.assert_allclose(a[512:518], np.tile([0.5 / 8, 0.5 / 8], (6, 1)))
    np.testing.assert_allclose(a[518], [1.5 / 8, 0.5 / 8])
    np.testing.assert_allclose(a[-1], [7.5 / 8, 7.5 / 8])


def test_full_anchor_layout():
    a = generate_anchors(MODELS["full"])
    np.testing.assert_allclose(a[0], [0.5 / 48, 0.5 / 48])
    np.testing.assert_allclose(a[1], [1.5 / 48, 0.5 / 48])
    np.testing.assert_allclose(a[48], [0.5 / 48, 1.5 / 48])
    assert np.all((a > 0) & (a < 1))


# --------------------------------------------------------------------------------- decoding
def test_decode_places_box_and_keypoints_at_anchor_offsets():
    spec = MODELS["short"]
    anchors = generate_anchors(spec)
    reg = np.zeros((896, 16), np.float32)
    logits = np.full((896, 1), -20.0, np.float32)
    k = 2 * (5 * 16 + 3)  # stride-8 cell x=3, y=5, first anchor: centre (3.5/16, 5.5/16)
    reg[k, :4] = [4.0, -8.0, 32.0, 16.0]  # input pixels (S = 128)
    reg[k, 4:] = np.arange(12, dtype=np.float32)
    logits[k] = 2.0
    boxes, scores, kps = decode(reg, logits, anchors, 128)
    cx, cy = 3.5 / 16 + 4 / 128, 5.5 / 16 - 8 / 128
    np.testing.assert_allclose(boxes[k], [cx - 16 / 128, cy - 8 / 128, cx + 16 / 128, cy + 8 / 128],
                               atol=1e-6)
    np.testing.assert_allclose(kps[k, 2], [3.5 / 16 + 4 / 128, 5.5 / 16 + 5 / 128], atol=1e-6)
    np.testing.assert_allclose(scores[k], 1 / (1 + np.exp(-2.0)), rtol=1e-6)
    assert scores.max() == scores[k]


def test_decode_clips_extreme_logits_without_warnings():
    anchors = generate_anchors(MODELS["full"])
    logits = np.full(2304, -1e4, np.float32)
    logits[0] = 1e4
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        _, scores, _ = decode(np.zeros((2304, 16), np.float32), logits, anchors, 192)
    assert scores[0] == pytest.approx(1.0) and scores[1] == pytest.approx(0.0)


def test_decode_rejects_wrong_anchor_count():
    with pytest.raises(InputError):
        decode(np.zeros((10, 16)), np.zeros(10), generate_anchors(MODELS["short"]), 128)


# -------------------------------------------------------------------------------------- NMS
def _cluster():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60], [0, 0, 10, 9]], np.float32)
    scores = np.array([0.9, 0.6, 0.8, 0.3], np.float32)
    kps = np.repeat(boxes[:, None, :2], 6, axis=1)
    return boxes, scores, kps


def test_iou():
    b = np.array([0, 0, 10, 10.0])
    np.testing.assert_allclose(iou(b, np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30.0],
                                                [3, 3, 3, 3.0]])), [1, 50 / 150, 0, 0])


def test_hard_nms_keeps_best_of_each_cluster():
    b, s, k = hard_nms(*_cluster(), iou_threshold=0.3)
    np.testing.assert_allclose(s, [0.9, 0.8], rtol=1e-6)
    np.testing.assert_array_equal(b, [[0, 0, 10, 10], [50, 50, 60, 60]])
    assert k.shape == (2, 6, 2)


def test_weighted_nms_blends_cluster_and_keeps_top_score():
    b, s, k = weighted_nms(*_cluster(), iou_threshold=0.3)
    np.testing.assert_allclose(s, [0.9, 0.8], rtol=1e-6)
    w = np.array([0.9, 0.6, 0.3]) / 1.8
    expect = (np.array([[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 9]]) * w[:, None]).sum(0)
    np.testing.assert_allclose(b[0], expect, rtol=1e-6)
    np.testing.assert_allclose(k[0, 0], expect[:2], rtol=1e-6)
    np.testing.assert_array_equal(b[1], [50, 50, 60, 60])


def test_nms_max_out_and_empty():
    b, s, _ = weighted_nms(*_cluster(), iou_threshold=0.3, max_out=1)
    assert s.tolist() == [pytest.approx(0.9)]
    e = weighted_nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                     np.zeros((0, 6, 2), np.float32), 0.3)
    assert [x.shape for x in e] == [(0, 4), (0,), (0, 6, 2)]


# -------------------------------------------------------------------------------- letterbox
@pytest.mark.parametrize("hw", [(375, 500), (500, 375), (128, 128), (40, 3000), (4000, 3000)])
def test_letterbox_round_trip_exact(hw):
    h, w = hw
    img = np.zeros((h, w, 3), np.uint8)
    tensor, lb = letterbox(img, 192)
    assert tensor.shape == (3, 192, 192) and tensor.dtype == np.float32
    pts = np.random.default_rng(0).uniform(0, 1, (50, 2)) * [w, h]
    np.testing.assert_allclose(lb.to_image(lb.to_input(pts)), pts, rtol=0, atol=1e-9)
    # the image spans the tensor exactly along its longer side
    corners = lb.to_input(np.array([[0, 0], [w, h]], np.float64))
    assert corners.min() >= 0 and corners.max() <= 192
    assert max(corners[1] - corners[0]) == pytest.approx(192)


def test_letterbox_content_colour_range_and_position():
    img = np.zeros((100, 200, 3), np.uint8)
    img[:, :, 2] = 255  # red in BGR
    img[40:60, 90:110] = (255, 0, 0)  # a blue square in the middle
    t, lb = letterbox(img, 128)
    assert lb.pad_x == 0 and lb.pad_y == 32 and lb.scale_x == pytest.approx(0.64)
    assert t.min() >= -1.0 and t.max() <= 1.0
    np.testing.assert_allclose(t[:, 5, 5], [-1, -1, -1])  # black bar
    np.testing.assert_allclose(t[:, 40, 5], [1, -1, -1], atol=1e-6)  # RGB order: red first
    u, v = lb.to_input(np.array([100.0, 50.0]))
    np.testing.assert_allclose(t[:, int(v), int(u)], [-1, -1, 1], atol=1e-6)


# ----------------------------------------------------------------------- shipped ONNX files
@pytest.mark.parametrize("variant", ["short", "full"])
def test_shipped_onnx_contract(variant):
    onnx = pytest.importorskip("onnx", reason="onnx is not installed")
    path = model_path(variant)
    assert path.is_file(), f"missing {path}: run export/detector/convert_blazeface.py"
    m = onnx.load(str(path))
    onnx.checker.check_model(m)
    assert {o.domain or "": o.version for o in m.opset_import}[""] == 17
    s, n = MODELS[variant].input_size, MODELS[variant].num_anchors

    def dims(vi):
        return [d.dim_value if d.HasField("dim_value") else d.dim_param
                for d in vi.type.tensor_type.shape.dim]

    assert [(i.name, dims(i)) for i in m.graph.input] == [("input", ["B", 3, s, s])]
    assert [(o.name, dims(o)) for o in m.graph.output] == [
        ("regressors", ["B", n, 16]), ("classificators", ["B", n, 1])]
    assert any(p.key == "source" and "MediaPipe" in p.value for p in m.metadata_props)


@pytest.mark.parametrize("variant", ["short", "full"])
@pytest.mark.parametrize("batch", [1, 3])
def test_shipped_onnx_runs_with_dynamic_batch(variant, batch):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    s, n = MODELS[variant].input_size, MODELS[variant].num_anchors
    x = np.random.default_rng(1).uniform(-1, 1, (batch, 3, s, s)).astype(np.float32)
    from smirk_edge.runtimes import make_runner

    with make_runner("onnxruntime", model_path(variant), threads=1) as r:
        out = r.infer({"input": x})
    assert out["regressors"].shape == (batch, n, 16)
    assert out["classificators"].shape == (batch, n, 1)
    assert np.isfinite(out["regressors"]).all()


def test_notice_ships_with_models():
    notice = model_path("short").parent / "NOTICE.blazeface.md"
    text = notice.read_text(encoding="utf-8")
    assert "Apache" in text and "0.10.21" in text and "convert_blazeface.py" in text


# ------------------------------------------------------------------------ detector behaviour
@pytest.mark.onnxruntime
def test_black_and_flat_images_give_no_detections():
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    det = FaceDetector()
    for img in (np.zeros((480, 640, 3), np.uint8), np.full((1, 1, 3), 128, np.uint8),
                np.zeros((4000, 3000, 3), np.uint8)):
        d = det.detect(img)
        assert isinstance(d, Detections) and len(d) == 0
        assert d.boxes.shape == (0, 4) and d.keypoints.shape == (0, 6, 2)


@pytest.mark.parametrize("bad", [
    np.zeros((64, 64, 3), np.float32),
    np.zeros((64, 64, 3), np.uint16),
    np.zeros((64, 64), np.uint8),
    np.zeros((64, 64, 1), np.uint8),
    np.zeros((64, 64, 4), np.uint8),
    np.zeros((0, 64, 3), np.uint8),
    np.zeros((2, 64, 64, 3), np.uint8),
    [[0, 0, 0]],
])
def test_wrong_dtype_or_shape_raises_input_error(bad):
    det = FaceDetector(runner=_NeverRunner(), variant="short")
    with pytest.raises(InputError):
        det.detect(bad)


class _NeverRunner:
    def infer(self, feed):  # pragma: no cover - must not be reached
        raise AssertionError("runner called on invalid input")


class _FakeRunner:
    """Emits one confident face at a chosen anchor: checks the mapping back to image pixels."""

    def __init__(self, variant, cell_xy, size_px):
        self.spec = MODELS[variant]
        a = generate_anchors(self.spec)
        g = 16 if variant == "short" else 48
        self.k = (cell_xy[1] * g + cell_xy[0]) * (2 if variant == "short" else 1)
        self.size_px = size_px
        self.n = len(a)

    def infer(self, feed):
        b = feed["input"].shape[0]
        reg = np.zeros((b, self.n, 16), np.float32)
        cls = np.full((b, self.n, 1), -50, np.float32)
        reg[:, self.k, 2:4] = self.size_px
        cls[:, self.k] = 5.0
        return {"regressors": reg, "classificators": cls}


def test_detect_maps_synthetic_output_back_to_image_pixels():
    # 256 x 512 image -> 128 x 128 input: scale 0.25, pad_y 32. Cell (8, 8) of the stride-8 grid
    # has its centre at input pixel (68, 68) -> image (272, 144); a 32 px box -> 128 px.
    det = FaceDetector(_FakeRunner("short", (8, 8), 32.0), variant="short")
    d = det.detect(np.zeros((256, 512, 3), np.uint8))
    assert len(d) == 1
    np.testing.assert_allclose(d.boxes[0], [272 - 64, 144 - 64, 272 + 64, 144 + 64], atol=1e-3)
    np.testing.assert_allclose(d.keypoints[0], np.tile([272, 144], (6, 1)), atol=1e-3)
    assert d.boxes.dtype == np.float32 and d.scores.dtype == np.float32


def test_constructor_validation():
    with pytest.raises(InputError):
        FaceDetector(_NeverRunner(), variant="medium")
    with pytest.raises(InputError):
        FaceDetector(_NeverRunner(), variant="auto")  # needs one runner per model
    with pytest.raises(InputError):
        FaceDetector(_NeverRunner(), variant="short", nms="soft")
    with pytest.raises(InputError):
        FaceDetector(_NeverRunner(), variant="short", score_threshold=1.5)
    with pytest.raises(InputError):
        FaceDetector({"short": _NeverRunner()}, variant="short", min_face=40)  # tiles need full


def test_tile_plan_covers_frame_with_overlap():
    det = FaceDetector({"short": _NeverRunner(), "full": _NeverRunner()}, min_face=40)
    plan = det.tile_plan(3000, 4000)
    side = 16 * 40
    level0 = [p for p in plan if p[0] == 1.0]
    xs = sorted({p[1] for p in level0})
    ys = sorted({p[2] for p in level0})
    assert xs[0] == 0 and xs[-1] + side == 4000 and ys[0] == 0 and ys[-1] + side == 3000
    assert all(b - a <= side - side // 4 for a, b in zip(xs, xs[1:]))
    scales = sorted({p[0] for p in plan}, reverse=True)
    assert scales[0] == 1.0 and max(4000 * scales[-1] / 2, 3000 * scales[-1] / 2) <= side
    assert det.tile_plan(480, 640) == []
    assert FaceDetector({"short": _NeverRunner(), "full": _NeverRunner()}).tile_plan(4000, 4000) == []


# ----------------------------------------------------------------------------- real photos
def _ground_truth():
    out = []
    for xml in sorted(PHOTOS.glob("*.xml")):
        for im in ET.parse(xml).getroot().iter("image"):
            boxes = []
            for box in im.iter("box"):
                p = np.array([[float(q.get("x")), float(q.get("y"))] for q in box.iter("part")])
                if len(p) == 68:
                    boxes.append([p[:, 0].min(), p[:, 1].min(), p[:, 0].max() + 1, p[:, 1].max() + 1])
            out.append((PHOTOS / im.get("file"), np.array(boxes).reshape(-1, 4)))
    return out


def _recall(det, min_size=40.0):
    hits = total = 0
    for path, gt in _ground_truth():
        d = det.detect(cv2.imread(str(path), cv2.IMREAD_COLOR))
        big = np.maximum(gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]) >= min_size
        total += int(big.sum())
        used = set()
        for j in np.flatnonzero(big):
            q = iou(gt[j], d.boxes.astype(np.float64)) if len(d) else np.zeros(0)
            for i in np.argsort(-q):
                if q[i] >= 0.3 and i not in used:
                    used.add(i)
                    hits += 1
                    break
    return hits / total, total


@needs_photos
@pytest.mark.data
@pytest.mark.onnxruntime
@pytest.mark.parametrize("variant,minimum", [("full", 0.9), ("both", 0.9), ("auto", 0.9), ("short", 0.4)])
def test_recall_on_real_photos(variant, minimum):
    # measured (training/detector_recall.py): full 21/21, both 21/21, short 11/21; auto (short, then
    # full range where short finds no large face) as both here
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    rec, total = _recall(FaceDetector(variant=variant))
    assert total >= 15
    assert rec >= minimum, f"{variant}: recall {rec:.3f} < {minimum}"


@needs_photos
@pytest.mark.data
@pytest.mark.onnxruntime
def test_keypoints_sides_and_inside_boxes_on_real_photo():
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    img = cv2.imread(str(PHOTOS / "2008_002506.jpg"), cv2.IMREAD_COLOR)
    d = FaceDetector(variant="full").detect(img)
    assert len(d) >= 3
    assert len(KEYPOINT_NAMES) == d.keypoints.shape[1] == 6
    # frontal faces: the subject's right eye is on the image's left
    assert (d.keypoints[:, 0, 0] < d.keypoints[:, 1, 0]).mean() >= 0.75
    eyes_nose = d.keypoints[:, :3]
    inside = ((eyes_nose[..., 0] >= d.boxes[:, None, 0]) & (eyes_nose[..., 0] <= d.boxes[:, None, 2])
              & (eyes_nose[..., 1] >= d.boxes[:, None, 1]) & (eyes_nose[..., 1] <= d.boxes[:, None, 3]))
    assert inside.all()


@needs_photos
@pytest.mark.data
@pytest.mark.onnxruntime
@pytest.mark.slow
def test_large_frame_tiling_finds_small_faces():
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    img = cv2.imread(str(PHOTOS / "2008_002506.jpg"), cv2.IMREAD_COLOR)  # 500 x 375, 3+ faces
    canvas = np.full((3000, 4000, 3), 114, np.uint8)
    canvas[2000:2375, 3000:3500] = img  # faces ~50-100 px in a 4000 px frame
    plain = FaceDetector().detect(canvas)
    tiled = FaceDetector(min_face=40).detect(canvas)
    ref = FaceDetector(variant="full").detect(img)
    assert len(plain) < len(ref)  # measured: the whole-frame pass misses them
    found = 0
    for b in ref.boxes + np.array([3000, 2000, 3000, 2000], np.float32):
        if len(tiled) and iou(b, tiled.boxes).max() >= 0.5:
            found += 1
    assert found >= len(ref) - 1


def test_canvas_tensor_is_blazefaces_rgb_input_in_minus_one_to_one():
    """Every uint8 level maps to float32(v) * float32(1/127.5) - 1, channels reversed to RGB, planar."""
    from smirk_edge.detector import canvas_tensor

    rng = np.random.default_rng(2)
    canvas = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
    canvas[:16, :16, 1] = np.arange(256, dtype=np.uint8).reshape(16, 16)
    want = canvas[:, :, ::-1].transpose(2, 0, 1).astype(np.float32) * np.float32(1 / 127.5) - np.float32(1.0)
    got = canvas_tensor(canvas)
    assert got.shape == (3, 48, 48) and got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, want)
    assert got.min() >= -1.0 and got.max() <= 1.0


@needs_photos
@pytest.mark.data
@pytest.mark.onnxruntime
@pytest.mark.parametrize("variant", ["auto", "both", "short"])
def test_detect_many_equals_detect_image_by_image_in_one_pass_per_model(variant, astronaut):
    """Reconstructor.batch's detector: every image of a list in one network call per model (auto: the
    full-range model only on the images that need it), the same detections as one image at a time."""
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    group = cv2.imread(str(PHOTOS / "2008_002506.jpg"), cv2.IMREAD_COLOR)  # small faces: auto needs full range
    imgs = [astronaut, group, np.zeros((90, 160, 3), np.uint8), cv2.flip(astronaut, 1)]
    det = FaceDetector(variant=variant)
    calls = {v: 0 for v in det.runners}
    for v, r in det.runners.items():
        real = r.infer
        r.infer = lambda feed, real=real, v=v: (calls.__setitem__(v, calls[v] + 1), real(feed))[1]
    many = det.detect_many(imgs)
    assert calls == {v: (v in det.passes) for v in calls}  # one call per model that ran
    if variant == "auto":
        assert det.passes == ["short", "full"]
    for im, got in zip(imgs, many):
        ref = det.detect(im)
        assert len(got) == len(ref)
        np.testing.assert_allclose(got.boxes, ref.boxes, atol=0.05)
        np.testing.assert_allclose(got.scores, ref.scores, atol=1e-4)
        np.testing.assert_allclose(got.keypoints, ref.keypoints, atol=0.05)
    assert len(many[0]) == 1 and len(many[2]) == 0 and len(many[1]) >= 3 - (variant == "short") * 2
