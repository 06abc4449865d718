"""The SDK on torch (``backend="torch"``): device crops equal OpenCV's, the torch stages equal the
numpy stages, ``batch`` equals one call per image, and the torch artifact's loading and errors.
These run on the CPU (CI); tests/runtimes/test_torch_gpu.py repeats the parity on a CUDA GPU."""

from __future__ import annotations

import copy

import cv2
import numpy as np
import pytest

pytest.importorskip("torch", reason="torch not installed (pip install 'smirk-edge[torch]')")
pytest.importorskip("timm", reason="timm not installed (pip install 'smirk-edge[torch]')")
pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install 'smirk-edge[onnxruntime]')")

import torch  # noqa: E402

from smirk_edge.crop import crop_from_box, transform_from_square  # noqa: E402
from smirk_edge.errors import OptionError  # noqa: E402
from smirk_edge.runtimes.torch_pipeline import FrameUpload, crop_thetas, source_region  # noqa: E402

pytestmark = pytest.mark.torch


def _photo():
    from smirk_edge.benchmarks.stress_sheet import example_photo

    return cv2.imread(str(example_photo()), cv2.IMREAD_COLOR)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from factories import make_tiny_bundle

    bundle, _ = make_tiny_bundle(tmp_path_factory.mktemp("torch_bundle"), torch_artifact=True)
    return bundle


def _device_crop(img, transforms, size):
    matrices = [t.matrix for t in transforms]
    region = source_region(matrices, size, img.shape[0], img.shape[1])
    frame = FrameUpload(torch.device("cpu"))(img, region)
    theta = torch.from_numpy(crop_thetas(matrices, size, region))
    grid = torch.nn.functional.affine_grid(theta, [len(transforms), 3, size, size], align_corners=False)
    out = torch.nn.functional.grid_sample(frame.expand(len(transforms), -1, -1, -1), grid, mode="bilinear",
                                          padding_mode="zeros", align_corners=False)
    return torch.round(out).permute(0, 2, 3, 1).numpy(), region


@pytest.mark.parametrize("case", ["inside", "rotated", "past the corner"])
def test_device_crop_equals_opencv_warp(case):
    img = _photo()
    h, w = img.shape[:2]
    tr = {"inside": crop_from_box(np.array([150.0, 60.0, 330.0, 280.0]), 1.4, 224),
          "rotated": transform_from_square(np.array([250.0, 170.0]), 260.0, 224, 25.0),
          "past the corner": crop_from_box(np.array([-60.0, -40.0, 120.0, 140.0]), 1.6, 96)}[case]
    got, region = _device_crop(img, [tr], tr.size)
    ref = tr.warp(img).astype(np.float32)
    diff = np.abs(got[0] - ref)
    assert diff.max() <= 1.0 and diff.mean() < 0.05, (case, diff.max(), diff.mean())
    x0, y0, x1, y1 = region
    assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
    if case == "inside":  # only the face's part of the frame is uploaded
        assert (x1 - x0) * (y1 - y0) < 0.5 * h * w


def test_two_crops_share_one_upload():
    img = _photo()
    trs = [crop_from_box(np.array([150.0, 60.0, 330.0, 280.0]), 1.4, 64),
           crop_from_box(np.array([20.0, 300.0, 90.0, 380.0]), 1.4, 64)]
    got, _ = _device_crop(img, trs, 64)
    for g, t in zip(got, trs):
        assert np.abs(g - t.warp(img).astype(np.float32)).max() <= 1.0


def test_source_region_of_a_crop_outside_the_frame_is_empty():
    tr = crop_from_box(np.array([1000.0, 1000.0, 1100.0, 1100.0]), 1.4, 32)
    x0, y0, x1, y1 = source_region([tr.matrix], 32, 100, 100)
    assert x1 == x0 or y1 == y0


def test_fold_batchnorm_is_exact_at_fp32():
    from smirk_edge.runtimes.torch_encoder import EncoderConfig, SmirkEncoder, fold_batchnorm

    torch.manual_seed(0)
    enc = SmirkEncoder(EncoderConfig.tiny()).eval()
    for m in enc.modules():  # non-trivial statistics, so folding has something to do
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    folded = copy.deepcopy(enc)
    n = fold_batchnorm(folded)
    assert n > 10 and not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        a, b = enc(x), folded(x)
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-4, rtol=1e-4)


def test_torch_stages_equal_the_numpy_stages(tiny):
    from smirk_edge import Reconstructor
    from smirk_edge.runtimes.torch_pipeline import TorchStages

    img = _photo()
    with Reconstructor(tiny.root, backend="onnxruntime", precision="fp32", refine=True) as ref, \
            Reconstructor(tiny.root, backend="torch", device="cpu", refine=True) as rec:
        assert isinstance(rec.stages, TorchStages) and rec.engine.startswith("torch:cpu fp32")
        a, b = ref(img), rec(img)
        assert len(a) == len(b) >= 1
        for fa, fb in zip(a, b):
            np.testing.assert_allclose(fb.landmarks68, fa.landmarks68, atol=0.05)
            np.testing.assert_allclose(fb.landmarks105, fa.landmarks105, atol=0.05)
            np.testing.assert_allclose(fb.vertices_image, fa.vertices_image, atol=0.05)
            np.testing.assert_allclose(fb.vertices, fa.vertices, atol=1e-5)
            np.testing.assert_allclose(fb.head_pose, fa.head_pose, atol=0.05)
            np.testing.assert_allclose(fb.crop_matrix, fa.crop_matrix, atol=1e-3)  # from the refined boxes
        assert {"detect", "crop", "encode", "decode", "project"} <= set(b.timings)


def test_vertices_come_back_from_the_device_only_when_read(tiny):
    """The torch stages bring landmarks back with every call and the vertices on their first read
    (one more decode replay, from the frame's own parameters: a later frame does not change them)."""
    from smirk_edge import Reconstructor

    img = _photo()
    with Reconstructor(tiny.root, backend="torch", device="cpu", refine=False) as rec:
        first = rec(img)
        runs = rec.stages.decode_runs
        assert runs == [1, 0]
        lm = first[0].landmarks68.copy()
        second = rec(cv2.flip(img, 1))  # another frame replays the same graph before `first` reads its vertices
        assert runs == [2, 0]
        v, vi = first[0].vertices, first[0].vertices_image
        assert runs == [2, 1]  # one replay brings back both the model-frame and the image vertices
        _ = first[0].vertices, second[0].landmarks105
        assert runs == [2, 1]
        model = rec.face_model
    p = first[0].params
    ref = model.decode(shape=p.shape[None], expression=p.expression[None], pose=p.pose[None], jaw=p.jaw[None],
                       eyelid=p.eyelid[None])
    np.testing.assert_allclose(v, ref.vertices[0], atol=1e-5)
    assert vi.shape == v.shape and np.isfinite(vi).all()
    np.testing.assert_allclose(first[0].landmarks68, lm)


def test_batch_is_one_call_per_image_in_one_encoder_batch(tiny):
    from smirk_edge import Reconstructor

    img = _photo()
    imgs = [img, cv2.flip(img, 1), np.zeros((120, 160, 3), np.uint8)]
    with Reconstructor(tiny.root, backend="torch", device="cpu", refine="auto") as rec:
        batches = []
        real = rec.stages.encode_batch
        rec.stages.encode_batch = lambda batch, timer: (batches.append(len(batch)), real(batch, timer))[1]
        got = rec.batch(imgs)
        rec.stages.encode_batch = real
        single = [rec(i) for i in imgs]
    assert [len(r) for r in got] == [len(r) for r in single]
    assert batches[0] == sum(len(r) for r in single)  # every face of every image in the first pass
    for r, s in zip(got, single):
        for fa, fb in zip(r, s):
            np.testing.assert_allclose(fa.landmarks68, fb.landmarks68, atol=1e-3)


def test_torch_stream_tracks(tiny):
    from smirk_edge import Reconstructor

    img = _photo()
    with Reconstructor(tiny.root, backend="torch", device="cpu") as rec:
        out = list(rec.stream([img, img, img]))
    assert [len(r) for r in out] == [1, 1, 1] and not any(r.errors for r in out)


def test_torch_backend_errors(tiny, tmp_path):
    from factories import make_tiny_bundle

    from smirk_edge import Reconstructor
    from smirk_edge.runtimes.base import RunnerError

    with pytest.raises(OptionError, match="int8"):
        Reconstructor(tiny.root, backend="torch", device="cpu", precision="int8")
    with pytest.raises(OptionError, match="fp16.*cuda"):
        Reconstructor(tiny.root, backend="torch", device="cpu", precision="fp16")
    plain, _ = make_tiny_bundle(tmp_path / "plain")
    with pytest.raises(RunnerError, match="torch-checkpoint"):
        Reconstructor(plain.root, backend="torch", device="cpu")


def test_torch_artifact_is_fp16_official_layout(tiny):
    from smirk_edge.export.torch_artifact import KIND, NAME

    art = tiny.get(NAME)
    assert art.kind == KIND and art.precision == "fp32" and art.attrs["weights"] == "fp16"
    state = torch.load(tiny.main_path(art), map_location="cpu", weights_only=True)
    assert all(k.startswith("smirk_encoder.") for k in state if k != "smirk_edge_meta")
    assert all(v.dtype == torch.float16 for v in state.values() if isinstance(v, torch.Tensor) and v.is_floating_point())


def test_default_model_on_torch_cpu_matches_onnxruntime_on_a_real_photo():
    from smirk_edge import Reconstructor
    from smirk_edge.export.golden import selftest, selftest_verdict
    from smirk_edge.reconstructor import default_bundle_path

    img = _photo()
    with Reconstructor(backend="onnxruntime", precision="fp32", refine=False, threads=1) as ref, \
            Reconstructor(backend="torch", device="cpu", refine=False) as rec:
        a, b = ref(img), rec(img)
    assert len(a) == len(b) == 1
    assert np.abs(a[0].landmarks68 - b[0].landmarks68).max() <= 0.05
    assert np.abs(a[0].landmarks105 - b[0].landmarks105).max() <= 0.05
    rows = selftest(default_bundle_path(), backend="torch", device="cpu")
    assert [r.name for r in rows] == ["encoder.torch.pt"] and selftest_verdict(rows)

