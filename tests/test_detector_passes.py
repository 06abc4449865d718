"""``detector="auto"``: one network pass on webcam-like frames, from one small resize of the frame."""

from __future__ import annotations

import numpy as np
import pytest

from smirk_edge import detector as D
from smirk_edge.detector import MODELS, FaceDetector, generate_anchors


class FakeRunner:
    """BlazeFace-shaped outputs with one face of ``width`` (fraction of the input) or none."""

    def __init__(self, variant: str, width: float | None):
        self.variant, self.width, self.calls = variant, width, 0

    def infer(self, feed):
        self.calls += 1
        spec = MODELS[self.variant]
        n, s = len(generate_anchors(spec)), spec.input_size
        reg = np.zeros((1, n, 16), np.float32)
        logits = np.full((1, n, 1), -50.0, np.float32)
        if self.width is not None:
            i = n // 2
            reg[0, i, 2:4] = self.width * s
            reg[0, i, 4:16] = np.tile([[-0.1 * s, 0.0], [0.1 * s, 0.0]], (3, 1)).reshape(-1)
            logits[0, i] = 10.0
        return {"regressors": reg, "classificators": logits}


def _detector(variant, short_width, full_width=0.1):
    runners = {"short": FakeRunner("short", short_width), "full": FakeRunner("full", full_width)}
    return FaceDetector(runners, variant=variant), runners


FRAME = np.zeros((720, 1280, 3), np.uint8)


@pytest.mark.parametrize("short_width, full_runs", [(0.5, False), (None, True), (0.1, True)])
def test_auto_runs_full_range_only_without_a_large_short_range_face(short_width, full_runs):
    det, runners = _detector("auto", short_width)
    found = det.detect(FRAME)
    assert runners["short"].calls == 1
    assert runners["full"].calls == int(full_runs)
    assert det.passes == (["short", "full"] if full_runs else ["short"])
    assert len(found) >= 1


def test_both_runs_both_and_single_variants_one():
    det, runners = _detector("both", 0.5)
    det.detect(FRAME)
    assert runners["short"].calls == runners["full"].calls == 1
    for v in ("short", "full"):
        det, runners = _detector(v, 0.5)
        det.detect(FRAME)
        assert runners[v].calls == 1 and runners["full" if v == "short" else "short"].calls == 0


def _frame_resizes(monkeypatch):
    """The output sizes of every cv2.resize of the whole frame during the test."""
    calls = []
    real = D.cv2.resize

    def counting(img, size, *a, **k):
        if img.shape[:2] == FRAME.shape[:2]:
            calls.append(tuple(size))
        return real(img, size, *a, **k)

    monkeypatch.setattr(D.cv2, "resize", counting)
    return calls


def test_auto_resizes_the_frame_once_to_the_short_range_input(monkeypatch):
    """The common case (short range finds a large face) pays one small resize of the frame: to
    128 x 72, not to the full-range model's 192 x 108 (about 3x the work on a 720p frame)."""
    calls = _frame_resizes(monkeypatch)
    det, runners = _detector("auto", 0.5)
    det.detect(FRAME)
    assert calls == [(128, 72)] and runners["full"].calls == 0


def test_auto_makes_the_full_range_canvas_only_when_that_model_runs(monkeypatch):
    calls = _frame_resizes(monkeypatch)
    det, _ = _detector("auto", None)  # no face at short range: both models run
    det.detect(FRAME)
    assert calls == [(128, 72), (192, 108)]


def test_both_resizes_the_frame_once(monkeypatch):
    calls = _frame_resizes(monkeypatch)
    det, _ = _detector("both", 0.5)
    det.detect(FRAME)
    assert calls == [(192, 108)]  # the short-range canvas is shrunk from it


def test_shrunk_canvas_maps_like_a_direct_letterbox():
    img = (np.random.default_rng(0).random((720, 1280, 3)) * 255).astype(np.uint8)
    big, box = D.letterbox_canvas(img, 192)
    small, sbox = D.shrink_canvas(big, box, 128)
    _, direct = D.letterbox(img, 128)
    pts = np.array([[0.0, 0.0], [640.0, 360.0], [1280.0, 720.0]])
    assert np.allclose(sbox.to_input(pts), direct.to_input(pts), atol=0.5)
    assert small.shape == (128, 128, 3)


def test_unknown_variant_is_refused():
    with pytest.raises(D.InputError, match="both"):
        FaceDetector(FakeRunner("short", None), variant="all")


@pytest.mark.onnxruntime
def test_reconstructor_default_runs_one_detector_pass(shared_data):
    """What a user gets: ``Reconstructor()`` on a 720p webcam-like frame (a real face photo at the
    benchmark's size) runs the short-range model alone, once, on one resize of the frame."""
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install 'smirk-edge[onnxruntime]')")
    from smirk_edge import Reconstructor
    from smirk_edge.benchmarks.inputs import default_face_photo, make_input

    frame = make_input(None, "image", face_photo=str(default_face_photo())).frames[0]
    assert frame.shape == (720, 1280, 3)
    with Reconstructor(backend="onnxruntime", threads=1) as rec:
        assert rec.options.detector == "auto" and rec.detector.variant == "auto"
        calls = {v: 0 for v in rec.detector.runners}
        for v, runner in rec.detector.runners.items():
            real = runner.infer

            def counting(feed, v=v, real=real):
                calls[v] += 1
                return real(feed)

            runner.infer = counting
        for _ in range(3):
            assert len(rec(frame)) == 1 and rec.detector.passes == ["short"]
    assert calls == {"short": 3, "full": 0}
